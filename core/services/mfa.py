"""Second factor (TOTP) and re-authentication.

Admins and managers (and anyone who chose to enrol) sign in in two steps. The password, or a
single sign-on, opens a session that signs nobody in yet: ``auth.validate_session`` refuses it
until a code from the authenticator app, or a one-time recovery code, is given on it (``verify``).
Someone who must have a second factor but has none enrols on that same waiting session: a new
secret is shown (``start_enrolment``) and one valid code confirms it (``confirm_enrolment``), which
also completes the sign-in and hands out ten recovery codes, shown once and stored as keyed digests.

Codes are checked with one time step of slack either way, and a time step once accepted is
never accepted again (``users.mfa_last_step``). Wrong codes count toward the password lockout.

Re-authentication: changing a role, changing a bank account and approving a large withdrawal
need the password or a code confirmed on the acting session within ``reauth_minutes``
(``reauthenticate``); the services check it (``require_recent_reauth``), the pages ask for it.
"""
from __future__ import annotations

import io
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pyotp
from pyotp.utils import strings_equal
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.config import get_settings
from core.crypto import token_digest
from core.db.models import AuthSession, RecoveryCode, User, utcnow
from core.db.session import Database
from core.domain.errors import (
    AuthenticationError, NotFound, PermissionDenied, ReauthenticationRequired, ValidationError,
)
from core.services import audit
from core.services.context import Actor, actor_from_user, require_role

MFA_ROLES = ("admin", "manager")
ISSUER = "Pooldesk"
RECOVERY_CODE_COUNT = 10
PENDING_MINUTES = 10  # a password step not followed by its second factor in time must be done again
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i to misread
WRONG_CODE = "That code is not right (or the account is locked for a while). Try the current code."
SIGN_IN_AGAIN = "Your sign-in was not finished in time. Sign in again."


def required_for(user: User) -> bool:
    """Must this user give a second factor when signing in?"""
    return user.mfa_enabled_at is not None or (user.role in MFA_ROLES and get_settings().require_mfa)


def session_waits_for_second_factor(row: AuthSession, user: User) -> bool:
    return row.second_factor_at is None and required_for(user)


# --- codes ------------------------------------------------------------------------------------

def _normalise(code: str) -> str:
    return "".join(ch for ch in (code or "").lower() if ch.isalnum())


def _totp_step(user: User, code: str, now: datetime) -> int | None:
    """The time step a six-digit code belongs to (one step of slack), if it is newer than the last used."""
    if not user.mfa_secret or not (len(code) == 6 and code.isdigit()):
        return None
    totp = pyotp.TOTP(user.mfa_secret)
    current = totp.timecode(now)
    for step in (current - 1, current, current + 1):
        if strings_equal(code, totp.generate_otp(step)) and (user.mfa_last_step is None or step > user.mfa_last_step):
            return step
    return None


def _recovery_digest(user_id: int, code: str) -> str:
    return token_digest(f"mfa-recovery:{user_id}:{code}")


def _new_recovery_codes(session: Session, user: User, now: datetime) -> list[str]:
    """Replace the user's recovery codes by ten new ones (the old ones stop working)."""
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(10))
        codes.append(f"{raw[:5]}-{raw[5:]}")
        session.add(RecoveryCode(user_id=user.id, code_digest=_recovery_digest(user.id, raw), created_at=now))
    return codes


def _use_recovery_code(session: Session, user: User, code: str, now: datetime) -> bool:
    if len(code) != 10:
        return False
    row = session.scalar(select(RecoveryCode).where(
        RecoveryCode.user_id == user.id, RecoveryCode.code_digest == _recovery_digest(user.id, code),
        RecoveryCode.used_at.is_(None)).with_for_update())
    if row is None:
        return False
    row.used_at = now
    return True


def recovery_codes_left(session: Session, user_id: int) -> int:
    return session.scalar(select(func.count()).select_from(RecoveryCode).where(
        RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))) or 0


def _locked(user: User, now: datetime) -> bool:
    return user.locked_until is not None and user.locked_until > now


def _count_failure(session: Session, user: User, now: datetime) -> None:
    """A wrong code or password counts toward the same lockout as wrong passwords at sign-in."""
    settings = get_settings()
    user.failed_logins += 1
    if user.failed_logins >= settings.lockout_attempts:
        user.locked_until = now + timedelta(minutes=settings.lockout_minutes)
        user.failed_logins = 0
        audit.record(session, None, "user.locked", "user", user.id, None,
                     {"locked_until": user.locked_until.isoformat()})


def _check_second_factor(session: Session, user: User, code: str, now: datetime,
                         allow_recovery: bool = True) -> str | None:
    """'totp' or 'recovery_code' when the code is good (and marks it used); None otherwise."""
    code = _normalise(code)
    step = _totp_step(user, code, now)
    if step is not None:
        user.mfa_last_step = step
        return "totp"
    if allow_recovery and user.mfa_enabled_at is not None and _use_recovery_code(session, user, code, now):
        return "recovery_code"
    return None


# --- the sign-in's second step -----------------------------------------------------------------

def _waiting(session: Session, token: str | None, now: datetime, lock: bool = True) -> tuple[AuthSession, User]:
    row = session.get(AuthSession, token_digest(token or ""), with_for_update=lock)
    if (row is None or row.revoked_at is not None or row.expires_at <= now or row.second_factor_at is not None
            or now - row.created_at > timedelta(minutes=PENDING_MINUTES)):
        raise AuthenticationError(SIGN_IN_AGAIN)
    user = session.get(User, row.user_id, with_for_update=lock)
    if user is None or user.status != "active":
        raise AuthenticationError(SIGN_IN_AGAIN)
    return row, user


def second_factor_step(db: Database, *, token: str | None, now: datetime | None = None) -> str | None:
    """For a session that waits for its second factor: "code" (enrolled) or "enrol" (must enrol first).
    None when the session does not wait for one (or is unknown, expired or revoked)."""
    now = now or utcnow()
    with db.read() as session:
        try:
            row, user = _waiting(session, token, now, lock=False)
        except AuthenticationError:
            return None
        if not session_waits_for_second_factor(row, user):
            return None
        return "code" if user.mfa_enabled_at is not None else "enrol"


def verify(db: Database, *, token: str | None, code: str, now: datetime | None = None) -> Actor:
    """Finish signing in with a code from the authenticator app or a recovery code (each works once)."""
    now = now or utcnow()
    with db.transaction() as session:
        row, user = _waiting(session, token, now)
        if user.mfa_enabled_at is None:
            raise ValidationError("Set up two-step sign-in first.", field="code")
        method = None if _locked(user, now) else _check_second_factor(session, user, code, now)
        if method is None:
            _count_failure(session, user, now)
        else:
            user.failed_logins = 0
            row.second_factor_at = now
            actor = actor_from_user(user)
            audit.record(session, actor, "session.second_factor", "user", user.id, None,
                         {"session": row.id[:10], "method": method})
            if method == "recovery_code":
                audit.record(session, actor, "mfa.recovery_code_use", "user", user.id, None,
                             {"codes_left": recovery_codes_left(session, user.id)})
            return replace(actor, session_id=row.id)
    raise AuthenticationError(WRONG_CODE)


# --- enrolment -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Enrolment:
    secret: str
    uri: str  # otpauth:// for authenticator apps

    def qr_png(self) -> bytes:
        import segno

        buffer = io.BytesIO()
        segno.make(self.uri, error="m").save(buffer, kind="png", scale=5, border=2)
        return buffer.getvalue()


@dataclass(frozen=True)
class EnrolmentDone:
    actor: Actor
    recovery_codes: list[str]


def _enrolling_user(session: Session, token: str | None, actor: Actor | None, now: datetime
                    ) -> tuple[AuthSession | None, User]:
    if (token is None) == (actor is None):
        raise ValueError("give either the waiting sign-in's token or the signed-in actor")
    if token is not None:
        return _waiting(session, token, now)
    user = session.get(User, actor.id, with_for_update=True)
    if user is None or user.status != "active":
        raise NotFound(f"No active user with id {actor.id}.")
    return None, user


def start_enrolment(db: Database, *, token: str | None = None, actor: Actor | None = None,
                    now: datetime | None = None) -> Enrolment:
    """A new secret to scan; it replaces any earlier one not confirmed yet. Either during sign-in
    (``token`` of the waiting session) or from the Account page (``actor``)."""
    now = now or utcnow()
    with db.transaction() as session:
        _, user = _enrolling_user(session, token, actor, now)
        if user.mfa_enabled_at is not None:
            raise ValidationError("Two-step sign-in is already set up for this account. An admin can reset it.")
        secret = pyotp.random_base32()
        user.mfa_secret, user.mfa_last_step = secret, None
        return Enrolment(secret, pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=ISSUER))


def confirm_enrolment(db: Database, *, code: str, token: str | None = None, actor: Actor | None = None,
                      now: datetime | None = None) -> EnrolmentDone:
    """One valid code from the app switches two-step sign-in on and gives ten recovery codes (shown once).
    During sign-in it also finishes signing in on that session."""
    now = now or utcnow()
    with db.transaction() as session:
        row, user = _enrolling_user(session, token, actor, now)
        if user.mfa_enabled_at is not None:
            raise ValidationError("Two-step sign-in is already set up for this account.")
        if not user.mfa_secret:
            raise ValidationError("Start the set-up again: no secret is waiting for a code.", field="code")
        method = None if _locked(user, now) else _check_second_factor(session, user, code, now, allow_recovery=False)
        if method is None:
            _count_failure(session, user, now)
        else:
            user.failed_logins = 0
            user.mfa_enabled_at = now
            codes = _new_recovery_codes(session, user, now)
            result = actor_from_user(user)
            audit.record(session, result, "mfa.enable", "user", user.id, {"mfa": False}, {"mfa": True})
            if row is not None:
                row.second_factor_at = now
                audit.record(session, result, "session.second_factor", "user", user.id, None,
                             {"session": row.id[:10], "method": "enrolment"})
                result = replace(result, session_id=row.id)
            elif actor is not None and actor.session_id:  # the session enrolling stays signed in
                session.execute(update(AuthSession).where(AuthSession.id == actor.session_id,
                                                          AuthSession.user_id == user.id)
                                .values(second_factor_at=now))
                result = replace(result, session_id=actor.session_id)
            return EnrolmentDone(result, codes)
    raise ValidationError(WRONG_CODE, field="code")


@dataclass(frozen=True)
class MfaStatus:
    enabled: bool
    required: bool
    recovery_codes_left: int


def status(db: Database, *, actor: Actor) -> MfaStatus:
    with db.read() as session:
        user = session.get(User, actor.id)
        if user is None:
            raise NotFound(f"No user with id {actor.id}.")
        return MfaStatus(user.mfa_enabled_at is not None, user.role in MFA_ROLES and get_settings().require_mfa,
                         recovery_codes_left(session, user.id))


def regenerate_recovery_codes(db: Database, *, actor: Actor, now: datetime | None = None) -> list[str]:
    """Ten new recovery codes; the old set stops working. Needs a recent re-authentication."""
    now = now or utcnow()
    with db.transaction() as session:
        require_recent_reauth(session, actor, "make new recovery codes", now=now)
        user = session.get(User, actor.id, with_for_update=True)
        if user is None or user.mfa_enabled_at is None:
            raise ValidationError("Set up two-step sign-in first.")
        codes = _new_recovery_codes(session, user, now)
        audit.record(session, actor, "mfa.recovery_codes_regenerate", "user", user.id, None,
                     {"codes": RECOVERY_CODE_COUNT})
        return codes


def reset(db: Database, *, actor: Actor, user_id: int) -> None:
    """An admin switches someone's two-step sign-in off (lost phone and codes): the secret and recovery
    codes are deleted and every session of theirs ends; an admin or manager enrols again at the next sign-in."""
    require_role(actor, "admin", action="reset two-step sign-in")
    if user_id == actor.id:
        raise ValidationError("Ask another admin to reset your own two-step sign-in.")
    now = utcnow()
    with db.transaction() as session:
        user = session.get(User, user_id, with_for_update=True)
        if user is None or user.status == "system":
            raise NotFound(f"No user with id {user_id}.")
        before = {"mfa": user.mfa_enabled_at is not None}
        user.mfa_secret = user.mfa_enabled_at = user.mfa_last_step = None
        session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
        session.execute(update(AuthSession).where(AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None))
                        .values(revoked_at=now))
        audit.record(session, actor, "mfa.reset", "user", user.id, before, {"mfa": False})


# --- re-authentication ---------------------------------------------------------------------------

def reauthenticate(db: Database, *, actor: Actor, password: str | None = None, code: str | None = None,
                   now: datetime | None = None) -> None:
    """Confirm the password, or a code from the authenticator app, on the acting session: sensitive
    operations are then allowed on it for ``reauth_minutes``. Wrong answers count toward the lockout."""
    from core.services.users import password_matches

    now = now or utcnow()
    if not (password or code):
        raise ValidationError("Enter your password or a code from your authenticator app.", field="reauth")
    with db.transaction() as session:
        row = session.get(AuthSession, actor.session_id, with_for_update=True) if actor.session_id else None
        if row is None or row.user_id != actor.id or row.revoked_at is not None:
            raise PermissionDenied("Sign in again: this is not a signed-in session.")
        user = session.get(User, actor.id, with_for_update=True)
        accepted = False
        if not _locked(user, now):
            if password:
                accepted = password_matches(password, user.password_hash)
            elif user.mfa_enabled_at is not None:
                accepted = _check_second_factor(session, user, code, now, allow_recovery=False) is not None
        if accepted:
            user.failed_logins = 0
            row.reauth_at = now
            audit.record(session, actor, "session.reauthenticate", "user", actor.id, None,
                         {"session": row.id[:10], "method": "password" if password else "totp"})
            return
        _count_failure(session, user, now)
    raise ValidationError("That password or code is not right.", field="reauth")


def require_recent_reauth(session: Session, actor: Actor, action: str, *, now: datetime | None = None) -> None:
    """Refuse a sensitive operation unless the acting session confirmed the password or a code within
    ``reauth_minutes``.

    Every actor of the web app comes from ``auth.validate_session`` and carries its session. An actor
    without one is a caller on the server itself (the `pooldesk` command, the workers, the demo seeding),
    which no browser can reach: it is not asked."""
    if actor.session_id is None:
        return
    minutes = get_settings().reauth_minutes
    row = session.get(AuthSession, actor.session_id)
    if (row is not None and row.user_id == actor.id and row.revoked_at is None and row.reauth_at is not None
            and (now or utcnow()) - row.reauth_at <= timedelta(minutes=minutes)):
        return
    raise ReauthenticationRequired(
        f"Confirm your password or an authenticator code to {action}: it is asked again after {minutes} minutes.")
