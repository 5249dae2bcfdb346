"""Sign in (with the second factor where one is needed), accept an invitation, reset a forgotten
password: the only screen before signing in."""
from __future__ import annotations

import streamlit as st

from app import auth
from app.components.format import md
from app.components.forms import FieldErrors
from app.db import get_db
from core.domain.errors import PooldeskError
from core.services import auth as auth_service
from core.services import mfa

db = get_db()
params = st.query_params


def accept_invitation(token: str) -> None:
    st.title("Welcome to Pooldesk")
    try:
        info = auth_service.check_invitation(db, token=token)
    except PooldeskError as exc:
        st.error(md(exc.message))
        return
    st.write(f"You were invited as **{info.role}** with the email **{md(info.email)}**. Choose a password to finish.")
    errors = FieldErrors()
    with st.form("accept_invitation"):
        name = st.text_input("Your name", value=info.name)
        password = st.text_input("Password", type="password", help=auth_service.PASSWORD_HELP)
        errors.slot("password")
        repeat = st.text_input("Repeat the password", type="password")
        errors.general()
        submitted = st.form_submit_button("Create my account", type="primary")
    if submitted:
        if password != repeat:
            errors.show(PooldeskError("The two passwords differ.", field="password"))
            return
        try:
            with st.spinner("Creating your account..."):
                auth_service.accept_invitation(db, token=token, password=password, name=name)
        except PooldeskError as exc:
            errors.show(exc)
            return
        st.query_params.clear()
        st.session_state["signin_notice"] = "Your account is ready: sign in with your email and new password."
        st.rerun()


def reset_password(token: str) -> None:
    st.title("Choose a new password")
    try:
        auth_service.check_reset_link(db, token=token)
    except PooldeskError as exc:
        st.error(exc.message)
        return
    errors = FieldErrors()
    with st.form("reset_password"):
        password = st.text_input("New password", type="password", help=auth_service.PASSWORD_HELP)
        errors.slot("password")
        repeat = st.text_input("Repeat the new password", type="password")
        errors.general()
        submitted = st.form_submit_button("Set the password", type="primary")
    if submitted:
        if password != repeat:
            errors.show(PooldeskError("The two passwords differ.", field="password"))
            return
        try:
            auth_service.reset_password(db, token=token, password=password)
        except PooldeskError as exc:
            errors.show(exc)
            return
        st.query_params.clear()
        st.session_state["signin_notice"] = "Your password was changed and every session signed out. Sign in again."
        st.rerun()


def sign_in() -> None:
    st.title("Pooldesk")
    # Kept until the next sign-in: the cookie component's first answer reruns this page once more.
    if notice := st.session_state.get("signin_notice"):
        st.success(notice)
    if st.session_state.get("session_ended"):
        st.info("Your session ended. Please sign in again.")
    authenticator = auth.authenticator(db)
    auth.remove_cookie(authenticator)
    left, _ = st.columns([2, 3])
    with left:
        authenticator.login(location="main", fields=auth.LOGIN_FIELDS, key="sign_in")
        if st.session_state.get(auth.ACTOR_KEY) is not None or st.session_state.get(auth.MFA_TOKEN_KEY):
            st.rerun()
        if st.session_state.get("authentication_status") is False:
            st.error(md(st.session_state.get("login_error") or "Enter your email and password."))
        if auth.sso_configured():
            if sso_error := st.session_state.get("sso_error"):
                st.error(md(sso_error))
                st.button("Sign in with another single sign-on account", on_click=st.logout, icon=":material/key:")
            else:
                st.button("Sign in with single sign-on", on_click=st.login, icon=":material/key:")
        with st.expander("Forgot your password?"):
            with st.form("forgot_password", clear_on_submit=True):
                email = st.text_input("Your email")
                if st.form_submit_button("Send me a reset link"):
                    auth_service.request_password_reset(db, email=email)
                    st.success("If this email belongs to an account, a reset link is on its way. "
                               "It works once, within the hour.")


def second_factor(step: str) -> None:
    """After the password: enrol an authenticator app (first time), or give its code or a recovery code."""
    st.title("Two-step sign-in")
    token = st.session_state[auth.MFA_TOKEN_KEY]
    errors = FieldErrors()
    if done := st.session_state.get("mfa_done"):
        st.success("Two-step sign-in is set up.")
        st.warning("Save these recovery codes somewhere safe now: each signs you in once without your phone. "
                   "They are not shown again.", icon=":material/key:")
        st.code("\n".join(done.recovery_codes), language=None)
        if st.button("I have saved them: continue", type="primary", key="mfa_continue"):
            auth.finish_sign_in(done.actor)
            st.rerun()
        return
    if step == "enrol":
        st.write("Your role needs a second factor. Scan this QR code with an authenticator app (or type the "
                 "key into it), then enter the six-digit code the app shows.")
        enrolment = st.session_state.get("mfa_enrolment")
        if enrolment is None:
            try:
                enrolment = st.session_state["mfa_enrolment"] = mfa.start_enrolment(db, token=token)
            except PooldeskError as exc:
                auth.cancel_second_factor(db, notice=exc.message)
                st.rerun()
        st.image(enrolment.qr_png(), width=220)
        st.text_input("Key", value=enrolment.secret, disabled=True, key="mfa_secret")
        st.caption(enrolment.uri)
    else:
        st.write("Enter the six-digit code from your authenticator app, or one of your recovery codes.")
    with st.form("second_factor", clear_on_submit=True):
        code = st.text_input("Code", key="mfa_code", max_chars=20)
        errors.slot("code")
        errors.general()
        submitted = st.form_submit_button("Confirm" if step == "enrol" else "Verify", type="primary")
    if st.button("Cancel and sign in again", key="mfa_cancel"):
        auth.cancel_second_factor(db)
        st.rerun()
    if not submitted:
        return
    try:
        if step == "enrol":
            st.session_state["mfa_done"] = mfa.confirm_enrolment(db, token=token, code=code)
            st.session_state.pop("mfa_enrolment", None)
        else:
            auth.finish_sign_in(mfa.verify(db, token=token, code=code))
    except PooldeskError as exc:
        if exc.message == mfa.SIGN_IN_AGAIN:
            auth.cancel_second_factor(db, notice=exc.message)
        else:
            errors.show(exc)
            return
    st.rerun()


if step := auth.second_factor_step(db) or ("code" if st.session_state.get("mfa_done") else None):
    second_factor(step)
elif token := params.get("invite"):
    accept_invitation(token)
elif token := params.get("reset"):
    reset_password(token)
else:
    sign_in()
