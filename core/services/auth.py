"""Sign-in sessions, invitations and password resets.

A browser's sign-in cookie carries a random session token; the database keeps only
its keyed digest (``auth_sessions.id``), so the server decides whether a cookie
still signs anyone in: a revoked, idle (``session_idle_minutes``) or old
(``session_max_hours``) session no longer does, whatever the cookie says.

Registration is by invitation only. An invitation and a password reset are
one-time, expiring tokens, also stored as digests. They reach people through the
notification jobs (``send_direct``), which get the link encrypted and keep no copy
of it; when email is not configured the invitation link is returned so the admin or
manager can pass it on. A newer link replaces the open ones of the same person (a new
reset request, an invitation sent again), and a password change, set or reset ends
every open reset link of the account.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import select, update

from core.config import get_settings
from core.crypto import token_digest
from core.db.models import AuthSession, Invitation, PasswordReset, Pool, User, utcnow
from core.db.session import Database
from core.domain.errors import AuthenticationError, NotFound, PermissionDenied, ValidationError
from core.domain.limits import check_text
from core.services import audit, mfa
from core.services.context import ROLES, Actor, actor_from_user, manages_pool, require_role
from core.services.notifications import send_direct
from core.services.users import (  # noqa: F401 - PASSWORD_HELP is for the pages
    PASSWORD_HELP, check_password_strength, hash_password, normalise_email, revoke_open_resets,
)

INVITATION_DAYS = 7
RESET_MINUTES = 60
# Writing last_seen on every rerun would make each click a write; a minute is precise enough for a 30-minute idle limit.
TOUCH_EVERY = timedelta(seconds=60)
INVALID_LINK = "This link is not valid: check that you copied all of it, or ask for a new one."
NO_LONGER_VALID = ("This link is no longer valid: it was already used, or a newer link or a password change "
                   "replaced it. Ask for a new one.")
EXPIRED_LINK = "This link has expired. Ask for a new one."


# --- sessions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionView:
    id: str
    user_id: int
    user_email: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    user_agent: str | None

    @property
    def short_id(self) -> str:
        return self.id[:10]


def create_session(db: Database, *, actor: Actor, user_agent: str | None = None,
                   now: datetime | None = None) -> str:
    """Open a session for a user who has just proved who they are; returns the token for the cookie."""
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    hours = get_settings().session_max_hours
    with db.transaction() as session:
        session.add(AuthSession(id=token_digest(token), user_id=actor.id, created_at=now, last_seen_at=now,
                                expires_at=now + timedelta(hours=hours), user_agent=(user_agent or "")[:300] or None))
        audit.record(session, actor, "session.create", "user", actor.id, None, {"session": token_digest(token)[:10]})
    return token


def validate_session(db: Database, *, token: str | None, now: datetime | None = None,
                     touch: bool = True) -> Actor | None:
    """The signed-in user for a session token, or None when it is unknown, revoked, idle or too old, or
    still waits for its second factor (``core.services.mfa``).

    A valid session is touched (its idle clock restarts) unless ``touch=False``: background polling
    is not activity.
    """
    if not token:
        return None
    now = now or utcnow()
    idle = timedelta(minutes=get_settings().session_idle_minutes)
    digest = token_digest(token)
    with db.read() as session:
        row = session.get(AuthSession, digest)
        if row is None or row.revoked_at is not None or row.expires_at <= now or now - row.last_seen_at > idle:
            return None
        user = session.get(User, row.user_id)
        if user is None or user.status != "active" or mfa.session_waits_for_second_factor(row, user):
            return None
        actor = replace(actor_from_user(user), session_id=digest)
        stale = now - row.last_seen_at >= TOUCH_EVERY
    if stale and touch:
        with db.transaction() as session:
            session.execute(update(AuthSession).where(AuthSession.id == digest, AuthSession.revoked_at.is_(None))
                            .values(last_seen_at=now))
    return actor


def sign_out(db: Database, *, token: str | None) -> None:
    """End this browser's session (the cookie it holds stops working)."""
    if not token:
        return
    digest = token_digest(token)
    with db.transaction() as session:
        row = session.get(AuthSession, digest)
        if row is None or row.revoked_at is not None:
            return
        row.revoked_at = utcnow()
        user = session.get(User, row.user_id)
        audit.record(session, actor_from_user(user) if user else None, "session.sign_out", "user", row.user_id,
                     None, {"session": digest[:10]})


def revoke_session(db: Database, *, actor: Actor, session_id: str) -> None:
    """An admin ends one session, or a user ends one of their own."""
    with db.transaction() as session:
        row = session.get(AuthSession, session_id)
        if row is None:
            raise NotFound("No such session.")
        if row.user_id != actor.id:
            require_role(actor, "admin", action="end other people's sessions")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            audit.record(session, actor, "session.revoke", "user", row.user_id, None, {"session": session_id[:10]})


def revoke_all_sessions(db: Database, *, actor: Actor, user_id: int) -> int:
    """"Sign out everywhere": every open session of the user ends. Returns how many."""
    if user_id != actor.id:
        require_role(actor, "admin", action="sign other people out")
    with db.transaction() as session:
        count = session.execute(update(AuthSession).where(AuthSession.user_id == user_id,
                                                          AuthSession.revoked_at.is_(None))
                                .values(revoked_at=utcnow())).rowcount
        audit.record(session, actor, "session.revoke_all", "user", user_id, None, {"sessions": count})
        return count


def list_sessions(db: Database, *, actor: Actor, user_id: int | None = None, active_only: bool = True,
                  now: datetime | None = None, limit: int = 200) -> list[SessionView]:
    """Admins see everyone's sessions; others only their own."""
    if user_id != actor.id:
        require_role(actor, "admin", action="see other people's sessions")
    now = now or utcnow()
    with db.read() as session:
        query = (select(AuthSession, User.email).join(User, User.id == AuthSession.user_id)
                 .order_by(AuthSession.last_seen_at.desc()).limit(limit))
        if user_id is not None:
            query = query.where(AuthSession.user_id == user_id)
        if active_only:
            idle = timedelta(minutes=get_settings().session_idle_minutes)
            query = query.where(AuthSession.revoked_at.is_(None), AuthSession.expires_at > now,
                                AuthSession.last_seen_at > now - idle)
        return [SessionView(s.id, s.user_id, email, s.created_at, s.last_seen_at, s.expires_at, s.revoked_at,
                            s.user_agent) for s, email in session.execute(query)]


def sign_in_external(db: Database, *, email: str) -> Actor:
    """Single sign-on: the identity provider vouched for the email; it must be an active user's."""
    email = (email or "").strip().lower()
    with db.transaction() as session:
        user = session.scalar(select(User).where(User.email == email))
        if user is None or user.status != "active":
            raise AuthenticationError("This single sign-on identity does not match an active Pooldesk user.")
        user.last_login_at = utcnow()
        audit.record(session, actor_from_user(user), "user.sign_in_sso", "user", user.id, None, None)
        return actor_from_user(user)


# --- invitations ------------------------------------------------------------------------

@dataclass(frozen=True)
class InvitationResult:
    invitation_id: int
    email: str
    role: str
    expires_at: datetime
    link: str | None  # set when no email can carry it: show it to the person who invited
    emailed: bool


def _link(kind: str, token: str) -> str:
    return f"{get_settings().base_url.rstrip('/')}/?{kind}={token}"


def _check_link(row: Invitation | PasswordReset | None, now: datetime) -> None:
    """Why a sign-in link does not work any more, if it does not."""
    if row is None:
        raise ValidationError(INVALID_LINK, field="token")
    if row.used_at is not None or row.revoked_at is not None:
        raise ValidationError(NO_LONGER_VALID, field="token")
    if row.expires_at <= now:
        raise ValidationError(EXPIRED_LINK, field="token")


def _revoke_open_invitations(session, email: str, now: datetime, *, keep_id: int | None = None) -> int:
    query = update(Invitation).where(Invitation.email == email, Invitation.used_at.is_(None),
                                     Invitation.revoked_at.is_(None), Invitation.expires_at > now)
    if keep_id is not None:
        query = query.where(Invitation.id != keep_id)
    return session.execute(query.values(revoked_at=now)).rowcount


def invite_user(db: Database, *, actor: Actor, email: str, name: str, role: str,
                pool_id: int | None = None, now: datetime | None = None) -> InvitationResult:
    """Admins invite managers, analysts and admins (and investors); managers invite investors to a pool."""
    require_role(actor, "admin", "manager", action="invite people")
    email = normalise_email(email)
    if role not in ROLES:
        raise ValidationError(f"Unknown role {role!r}; choose one of {', '.join(ROLES)}.", field="role")
    check_text(name, "person_name", field="name", required=True)
    if actor.role == "manager" and role != "investor":
        raise PermissionDenied("A manager may only invite investors.")
    if role == "investor" and actor.role == "manager" and pool_id is None:
        raise ValidationError("Choose the pool the investor is invited to.", field="pool")
    now = now or utcnow()
    settings = get_settings()
    token = secrets.token_urlsafe(32)
    with db.transaction() as session:
        if pool_id is not None:
            if session.get(Pool, pool_id) is None:
                raise NotFound(f"No pool with id {pool_id}.", field="pool")
            if actor.role == "manager" and not manages_pool(session, actor, pool_id):
                raise PermissionDenied("You can only invite investors to pools you manage.")
        user = session.scalar(select(User).where(User.email == email).with_for_update())  # one open link at a time
        if user is not None and user.status != "invited":
            raise ValidationError(f"{email} already has an account.", field="email")
        if user is not None and user.role != role:
            raise ValidationError(f"{email} was already invited as {user.role}.", field="role")
        if user is None:
            user = User(email=email, name=name.strip(), role=role, status="invited")
            session.add(user)
            session.flush()
        replaced = _revoke_open_invitations(session, email, now)  # sent again: only the newest link works
        invitation = Invitation(token_digest=token_digest(token), email=email, name=name.strip(), role=role,
                                pool_id=pool_id, invited_by=actor.id, created_at=now,
                                expires_at=now + timedelta(days=INVITATION_DAYS))
        session.add(invitation)
        session.flush()
        link = _link("invite", token)
        send_direct(session, to_email=email, to_name=name.strip(), template="invitation", user_id=user.id,
                    link=link, context={"role": role, "invited_by": actor.name or actor.email,
                                        "expires_at": invitation.expires_at.isoformat(timespec="minutes")})
        audit.record(session, actor, "invitation.create", "user", user.id, None,
                     {"email": email, "role": role, "pool_id": pool_id, "invitation_id": invitation.id,
                      "replaced": replaced})
        return InvitationResult(invitation.id, email, role, invitation.expires_at,
                                None if settings.emails_enabled else link, settings.emails_enabled)


@dataclass(frozen=True)
class InvitationInfo:
    email: str
    name: str
    role: str
    pool_id: int | None
    expires_at: datetime


def _open_invitation(session, token: str, now: datetime) -> Invitation:
    invitation = session.scalar(select(Invitation).where(Invitation.token_digest == token_digest(token or "")))
    _check_link(invitation, now)
    return invitation


def check_invitation(db: Database, *, token: str, now: datetime | None = None) -> InvitationInfo:
    with db.read() as session:
        inv = _open_invitation(session, token, now or utcnow())
        return InvitationInfo(inv.email, inv.name, inv.role, inv.pool_id, inv.expires_at)


def accept_invitation(db: Database, *, token: str, password: str, name: str | None = None,
                      now: datetime | None = None) -> Actor:
    """Set a password for an invited account and activate it. The link works once."""
    now = now or utcnow()
    with db.transaction() as session:
        invitation = _open_invitation(session, token, now)
        user = session.scalar(select(User).where(User.email == invitation.email).with_for_update())
        if user is None or user.status != "invited":
            raise ValidationError(NO_LONGER_VALID, field="token")
        check_password_strength(password, email=invitation.email, name=(name or "").strip() or invitation.name)
        invitation.used_at = now
        _revoke_open_invitations(session, invitation.email, now, keep_id=invitation.id)
        user.password_hash = hash_password(password)
        user.status = "active"
        if name and name.strip():
            user.name = name.strip()[:200]
        user.version += 1
        actor = actor_from_user(user)
        audit.record(session, actor, "invitation.accept", "user", user.id, {"status": "invited"},
                     {"status": "active", "invitation_id": invitation.id})
        return actor


def list_invitations(db: Database, *, actor: Actor, limit: int = 100) -> list[dict]:
    require_role(actor, "admin", "manager", action="see invitations")
    with db.read() as session:
        query = select(Invitation).order_by(Invitation.id.desc()).limit(limit)
        if actor.role == "manager":
            query = query.where(Invitation.invited_by == actor.id)
        now = utcnow()
        return [{"id": i.id, "email": i.email, "role": i.role, "pool_id": i.pool_id,
                 "created_at": i.created_at, "expires_at": i.expires_at,
                 "state": "accepted" if i.used_at else "replaced" if i.revoked_at else (
                     "expired" if i.expires_at <= now else "waiting")}
                for i in session.scalars(query)]


# --- password reset -----------------------------------------------------------------------

def request_password_reset(db: Database, *, email: str, now: datetime | None = None) -> None:
    """Mail a one-time reset link if the email belongs to an active user; say nothing either way."""
    now = now or utcnow()
    email = (email or "").strip().lower()
    token = secrets.token_urlsafe(32)
    with db.transaction() as session:
        # Locked: two requests at once would each leave their own link open.
        user = session.scalar(select(User).where(User.email == email).with_for_update())
        if user is None or user.status != "active":
            return
        replaced = revoke_open_resets(session, user.id, now)  # only the newest link works
        reset = PasswordReset(token_digest=token_digest(token), user_id=user.id, created_at=now,
                              expires_at=now + timedelta(minutes=RESET_MINUTES))
        session.add(reset)
        session.flush()
        send_direct(session, to_email=user.email, to_name=user.name, template="password_reset", user_id=user.id,
                    link=_link("reset", token), context={"minutes": RESET_MINUTES})
        audit.record(session, None, "password_reset.request", "user", user.id, None,
                     {"reset_id": reset.id, "replaced": replaced})


def issue_reset_link(db: Database, *, actor: Actor, user_id: int, now: datetime | None = None) -> str:
    """An admin makes a reset link for someone (handed over in person when email is not configured)."""
    require_role(actor, "admin", action="make password reset links")
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    with db.transaction() as session:
        user = session.scalar(select(User).where(User.id == user_id).with_for_update())
        if user is None or user.status != "active":
            raise NotFound(f"No active user with id {user_id}.")
        replaced = revoke_open_resets(session, user.id, now)
        reset = PasswordReset(token_digest=token_digest(token), user_id=user.id, created_at=now,
                              expires_at=now + timedelta(minutes=RESET_MINUTES))
        session.add(reset)
        session.flush()
        audit.record(session, actor, "password_reset.issue", "user", user.id, None,
                     {"reset_id": reset.id, "replaced": replaced})
    return _link("reset", token)


def check_reset_link(db: Database, *, token: str, now: datetime | None = None) -> None:
    """Whether a reset link still works (the page says why not before anyone types a password)."""
    with db.read() as session:
        reset = session.scalar(select(PasswordReset).where(PasswordReset.token_digest == token_digest(token or "")))
        _check_link(reset, now or utcnow())


def reset_password(db: Database, *, token: str, password: str, now: datetime | None = None) -> Actor:
    """Use a reset link once: set the new password, clear any lockout, end every session and every other
    open reset link of the user."""
    now = now or utcnow()
    with db.transaction() as session:
        reset = session.scalar(select(PasswordReset).where(PasswordReset.token_digest == token_digest(token or ""))
                               .with_for_update())
        _check_link(reset, now)
        user = session.get(User, reset.user_id)
        if user is None or user.status != "active":
            raise ValidationError(NO_LONGER_VALID, field="token")
        check_password_strength(password, email=user.email, name=user.name)
        reset.used_at = now
        revoke_open_resets(session, user.id, now, keep_id=reset.id)
        user.password_hash = hash_password(password)
        user.failed_logins = 0
        user.locked_until = None
        session.execute(update(AuthSession).where(AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None))
                        .values(revoked_at=now))
        actor = actor_from_user(user)
        audit.record(session, actor, "password_reset.use", "user", user.id, None, {"reset_id": reset.id})
        return actor


# --- own account --------------------------------------------------------------------------

def change_password(db: Database, *, actor: Actor, current_password: str, new_password: str,
                    keep_token: str | None = None) -> None:
    """Change one's own password after proving the current one; every other session is signed out and
    every open reset link ends."""
    from core.services.users import password_matches

    with db.transaction() as session:
        user = session.get(User, actor.id)
        if user is None or not password_matches(current_password or "", user.password_hash):
            raise ValidationError("The current password is not right.", field="current_password")
        check_password_strength(new_password, email=user.email, name=user.name)
        user.password_hash = hash_password(new_password)
        revoke_open_resets(session, actor.id, utcnow())
        query = update(AuthSession).where(AuthSession.user_id == actor.id, AuthSession.revoked_at.is_(None))
        if keep_token:
            query = query.where(AuthSession.id != token_digest(keep_token))
        session.execute(query.values(revoked_at=utcnow()))
        audit.record(session, actor, "user.change_password", "user", actor.id, None, None)
