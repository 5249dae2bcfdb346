"""Sign-in for the app: streamlit-authenticator's widgets and cookie, backed by our users table.

The library draws the sign-in form and keeps a signed cookie (JWT, key = the
per-install secret). Two of its pieces are replaced by this adapter:

* ``check_credentials`` asks ``core.services.users.authenticate`` (bcrypt, lockout
  counted in the database) instead of a YAML credentials dict, and opens a
  server-side session on success;
* the cookie carries that session's token, and a cookie only signs someone in
  while ``core.services.auth.validate_session`` accepts the token, so signing out,
  "sign out everywhere", an admin's revoke, idle time and the absolute limit all
  end a cookie whatever its own expiry says.

The library's own failed-login counter (kept in session_state) is not used.

When the user must give a second factor (``core.services.mfa``: admins, managers, anyone enrolled),
the password (or single sign-on) only opens a waiting session: its token is kept as
``MFA_TOKEN_KEY``, nobody is signed in and no cookie is written until the sign-in page's second
step finishes it (``finish_sign_in``).
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

import jwt
import streamlit as st
import streamlit_authenticator as stauth
from streamlit_authenticator.models.authentication_model import AuthenticationModel
from streamlit_authenticator.models.cookie_model import CookieModel

from core.config import get_settings
from core.db.session import Database
from app.components.forms import flash
from core.domain.errors import AuthenticationError, PooldeskError
from core.services import auth as auth_service
from core.services import mfa, users
from core.services.context import Actor

COOKIE_NAME = "pooldesk_session"
TOKEN_KEY = "session_token"
ACTOR_KEY = "actor"
MFA_TOKEN_KEY = "mfa_token"
REAUTH_KEY = "reauth_asked"
LOGIN_FIELDS = {"Form name": "Sign in", "Username": "Email", "Password": "Password", "Login": "Sign in"}


def _remember(actor: Actor, token: str, credentials: dict | None = None) -> None:
    st.session_state[ACTOR_KEY] = actor
    st.session_state[TOKEN_KEY] = token
    if credentials is not None:
        credentials["usernames"][actor.email] = {
            "email": actor.email, "first_name": actor.name, "last_name": "", "password": None,
            "roles": [actor.role], "failed_login_attempts": 0, "logged_in": True,
        }


def _await_second_factor(token: str) -> None:
    st.session_state[MFA_TOKEN_KEY] = token
    for key in ("login_error", "signin_notice", "session_ended", "sso_error", "mfa_enrolment", "mfa_done"):
        st.session_state.pop(key, None)


def second_factor_step(db: Database) -> str | None:
    """"enrol" or "code" while this browser's sign-in waits for its second factor; None otherwise."""
    token = st.session_state.get(MFA_TOKEN_KEY)
    if not token:
        return None
    step = mfa.second_factor_step(db, token=token)
    if step is None and not st.session_state.get("mfa_done"):
        cancel_second_factor(db, notice=mfa.SIGN_IN_AGAIN)
    return step


def finish_sign_in(actor: Actor) -> None:
    """The second factor was given: this browser is signed in, and its cookie is written from now on."""
    token = st.session_state.pop(MFA_TOKEN_KEY)
    _remember(actor, token)
    st.session_state.update({"logout": False, "cookie_pending": True, "username": actor.email,
                             "authentication_status": True})
    for key in ("mfa_enrolment", "mfa_done", "login_error", "session_ended"):
        st.session_state.pop(key, None)


def cancel_second_factor(db: Database, notice: str | None = None) -> None:
    auth_service.sign_out(db, token=st.session_state.pop(MFA_TOKEN_KEY, None))
    for key in ("mfa_enrolment", "mfa_done", "authentication_status"):
        st.session_state.pop(key, None)
    if notice:
        st.session_state["signin_notice"] = notice


def ask_reauth(message: str, key: str) -> None:
    """A service refused a sensitive operation for want of a recent re-authentication: open the prompt
    drawn by ``reauth_prompt(..., key)``."""
    st.session_state[REAUTH_KEY] = (key, message)


def reauth_prompt(db: Database, actor: Actor, key: str) -> None:
    """The password-or-code form, drawn while a refused sensitive operation waits for it."""
    asked = st.session_state.get(REAUTH_KEY)
    if not asked or asked[0] != key:
        return
    message = asked[1]
    st.warning(message, icon=":material/lock:")
    with st.form(f"reauth_{key}", clear_on_submit=True):
        password = st.text_input("Your password", type="password", key=f"reauth_password_{key}")
        code = st.text_input("or a code from your authenticator app", key=f"reauth_code_{key}")
        confirmed = st.form_submit_button("Confirm it is me", type="primary")
    if confirmed:
        try:
            mfa.reauthenticate(db, actor=actor, password=password or None, code=code or None)
        except PooldeskError as exc:
            st.error(exc.message)
            return
        st.session_state.pop(REAUTH_KEY, None)
        flash("Confirmed. You can go on for the next few minutes.")
        st.rerun()


def _user_agent() -> str | None:
    try:
        return st.context.headers.get("User-Agent")
    except Exception:  # noqa: BLE001 - no request context (AppTest)
        return None


class DatabaseAuthenticationModel(AuthenticationModel):
    """Credentials come from the users table; failures are counted there."""

    pooldesk_db: Database

    def check_credentials(self, username: str, password: str) -> bool:
        try:
            actor = users.authenticate(self.pooldesk_db, email=username, password=password)
        except AuthenticationError as exc:
            st.session_state["login_error"] = exc.message
            return False
        token = auth_service.create_session(self.pooldesk_db, actor=actor, user_agent=_user_agent())
        if mfa.second_factor_step(self.pooldesk_db, token=token):
            _await_second_factor(token)
            return False  # not signed in yet: the sign-in page asks for the second factor
        _remember(actor, token, self.credentials)
        st.session_state["logout"] = False
        st.session_state["cookie_pending"] = True
        for key in ("login_error", "signin_notice", "session_ended", "sso_error"):
            st.session_state.pop(key, None)
        return True


class SessionCookieModel(CookieModel):
    """The cookie names a server-side session; it is honoured only while that session is valid."""

    pooldesk_db: Database
    credentials: dict

    def _token_encode(self) -> str:
        return jwt.encode({"username": st.session_state["username"], "sid": st.session_state.get(TOKEN_KEY),
                           "exp_date": self.exp_date}, self.cookie_key, algorithm="HS256")

    def get_cookie(self):
        st.session_state.setdefault("logout", False)
        token = super().get_cookie()
        if not token or not token.get("sid"):
            return None
        actor = auth_service.validate_session(self.pooldesk_db, token=token["sid"])
        if actor is None or actor.email != token.get("username"):
            return None
        _remember(actor, token["sid"], self.credentials)
        return token


def authenticator(db: Database) -> stauth.Authenticate:
    """The library object for this run (it draws an invisible cookie component, so build it only when needed)."""
    settings = get_settings()
    credentials: dict = {"usernames": {}}
    instance = stauth.Authenticate(credentials, cookie_name=COOKIE_NAME, cookie_key=settings.secret(),
                                   cookie_expiry_days=settings.session_max_hours / 24, auto_hash=False,
                                   login_sleep_time=0)
    model = instance.authentication_controller.authentication_model
    model.__class__ = DatabaseAuthenticationModel
    model.pooldesk_db = db
    cookie = instance.cookie_controller.cookie_model
    cookie.__class__ = SessionCookieModel
    cookie.pooldesk_db = db
    cookie.credentials = model.credentials
    return instance


def store_cookie(db: Database) -> None:
    """Write the sign-in cookie, drawing the writer on every run until the browser says it is stored.

    The component's frame runs only once it has loaded; a rerun that comes first (the user
    clicks on at once, a slow machine) removes it, and a writer drawn once would leave the
    browser without the cookie, so a reload would sign the user out. The token and expiry are
    fixed on the first run so the frame keeps the same arguments until it answers ``True``.
    """
    pending = st.session_state.get("cookie_pending")
    if not pending:
        return
    model = authenticator(db).cookie_controller.cookie_model
    if not isinstance(pending, dict):
        model.exp_date = model._set_exp_date()
        pending = {"value": model._token_encode(), "expires": datetime.fromtimestamp(model.exp_date).isoformat()}
        st.session_state["cookie_pending"] = pending
    key = "cookie_set_" + hashlib.sha256(pending["value"].encode()).hexdigest()[:16]
    write = model.cookie_manager.cookie_manager
    if write(method="set", cookie=COOKIE_NAME, value=pending["value"], key=key, default=False,
             options={"path": "/", "expires": pending["expires"], "sameSite": "strict"}):
        st.session_state.pop("cookie_pending", None)


def remove_cookie(instance: stauth.Authenticate) -> None:
    """Delete the sign-in cookie after sign-out, drawing the eraser until the browser confirms it."""
    pending = st.session_state.get("cookie_delete_pending")
    if not pending:
        return
    if pending is True:  # one key per sign-out, so an earlier answer is not taken for this one
        pending = st.session_state["cookie_delete_pending"] = secrets.token_hex(8)
    erase = instance.cookie_controller.cookie_model.cookie_manager.cookie_manager
    if erase(method="delete", cookie=COOKIE_NAME, key="cookie_delete_" + pending, default=False):
        st.session_state.pop("cookie_delete_pending", None)


def current_actor(db: Database) -> Actor | None:
    """The signed-in user of this browser session, checked against the server-side session on every run."""
    token = st.session_state.get(TOKEN_KEY)
    if not token:
        return None
    actor = auth_service.validate_session(db, token=token)
    if actor is None:
        forget()
        st.session_state["session_ended"] = True
        return None
    st.session_state[ACTOR_KEY] = actor
    return actor


def session_is_live(db: Database) -> bool:
    """For fragments that rerun on a timer without the page's sign-in check: is this browser's session
    still valid (not revoked, idle or expired)? Does not count as activity."""
    return auth_service.validate_session(db, token=st.session_state.get(TOKEN_KEY), touch=False) is not None


ENDED = "Your session ended: reload the page to sign in again."


def _cookie_session_is_valid(db: Database) -> bool:
    """Check the cookie before drawing anything: the library's cookie component may be drawn once per run."""
    try:
        raw = st.context.cookies.get(COOKIE_NAME)
    except Exception:  # noqa: BLE001 - no request context
        return False
    if not raw:
        return False
    try:
        claims = jwt.decode(raw, get_settings().secret(), algorithms=["HS256"])
    except jwt.PyJWTError:
        return False
    actor = auth_service.validate_session(db, token=claims.get("sid"))
    return actor is not None and actor.email == claims.get("username")


def actor_from_cookie(db: Database) -> Actor | None:
    """A new browser session (reload, new tab) with a sign-in cookie: let it in while its session is valid.

    Done before the page list is built, so a deep link to a page opens that page.
    """
    if st.session_state.get("logout") or not _cookie_session_is_valid(db):
        return None
    instance = authenticator(db)
    token = instance.cookie_controller.get_cookie()
    if not token:
        return None
    instance.authentication_controller.login(token=token)
    return st.session_state.get(ACTOR_KEY)


def forget() -> None:
    for key in (ACTOR_KEY, TOKEN_KEY, "authentication_status", "username", "name", "email", "roles",
                "cookie_pending", MFA_TOKEN_KEY, REAUTH_KEY):  # a cookie not yet written for the session that ended never will be
        st.session_state.pop(key, None)
    st.session_state["logout"] = True  # the library must not read the old cookie again in this browser session


def sign_out(db: Database, *, everywhere: bool = False) -> None:
    """End this browser's session (or all of the user's) and start a fresh run. After a single
    sign-on, also sign out of the identity provider: the browser leaves for its sign-out page. That
    run is stopped, not rerun, since a rerun can drop the message that sends the browser there (the
    identity cookie would then stay, and a reload would sign the user back in)."""
    actor = st.session_state.get(ACTOR_KEY)
    if everywhere and isinstance(actor, Actor):
        auth_service.revoke_all_sessions(db, actor=actor, user_id=actor.id)
    else:
        auth_service.sign_out(db, token=st.session_state.get(TOKEN_KEY))
    used_sso = st.session_state.pop("signed_in_with_sso", False)
    forget()
    st.session_state["cookie_delete_pending"] = True
    if used_sso and sso_configured():
        st.logout()
        st.stop()
    st.rerun()


def sso_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all
        return False


def sign_in_with_sso(db: Database) -> Actor | None:
    """After the identity provider's redirect: the email must be an active user's, who keeps their role."""
    if not sso_configured() or not getattr(st.user, "is_logged_in", False) or st.session_state.get(MFA_TOKEN_KEY):
        return None
    email = st.user.get("email") or ""
    refused = st.session_state.get("sso_refused")
    if refused and refused[0] == email:  # asked once per browser session
        st.session_state["sso_error"] = refused[1]
        return None
    try:
        actor = auth_service.sign_in_external(db, email=email)
    except AuthenticationError as exc:
        # Told on the sign-in page, which offers to sign out of the provider to use another account.
        # (Signing out at once would leave for the provider's end-session page, and the reason with it.)
        st.session_state["sso_error"] = exc.message
        st.session_state["sso_refused"] = (email, exc.message)
        return None
    token = auth_service.create_session(db, actor=actor, user_agent=_user_agent())
    st.session_state["signed_in_with_sso"] = True
    if mfa.second_factor_step(db, token=token):
        _await_second_factor(token)
        return None
    _remember(actor, token)
    st.session_state.pop("sso_error", None)
    return actor
