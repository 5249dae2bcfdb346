"""People: creating users, profiles, roles, passwords, sign-in with lockout."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import bcrypt
from sqlalchemy import delete, func, select, update

from core.config import get_settings
from core.db.models import PoolManager, User, utcnow
from core.db.session import Database
from core.domain.errors import AuthenticationError, NotFound, PermissionDenied, ValidationError
from core.domain.limits import check_text
from core.services import audit
from core.services.common import bump_version
from core.services.context import ROLES, SYSTEM_EMAIL, Actor, actor_from_user, require_role
from core.services.mfa import require_recent_reauth

# Practical addresses only, so that an email is safe wherever it is shown or exported: a local part of letters,
# digits and . _ + - that starts with a letter, digit or _ (never = + - @, which spreadsheets read as a formula),
# without quotes, pipes, spaces or control characters; a domain of labels ending in a letter TLD (or xn--).
# \Z, not $: "$" would accept a trailing newline.
EMAIL_RE = re.compile(
    r"^(?=[^@]{1,64}@)[a-z0-9_](?:[a-z0-9_+-]|\.(?![.@]))*"
    r"@(?=.{1,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})\Z",
    re.IGNORECASE)
PHONE_RE = re.compile(r"^\+[1-9]\d{6,14}$")
MIN_PASSWORD = 10
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further
MIN_PASSWORD_SCORE = 3  # zxcvbn: 0 (too guessable) .. 4 (very unguessable); 3 = "safely unguessable"
PASSWORD_HELP = (f"At least {MIN_PASSWORD} characters and hard to guess (a few uncommon words work well); "
                 f"at most {MAX_PASSWORD_BYTES} bytes.")
# bcrypt work factor: 12 in production; tests and demo data set POOLDESK_BCRYPT_ROUNDS lower.
_BCRYPT_ROUNDS_ENV = "POOLDESK_BCRYPT_ROUNDS"
MANAGING_ROLES = ("manager", "admin")


@dataclass(frozen=True)
class UserView:
    id: int
    email: str
    name: str
    role: str
    status: str
    phone: str | None
    locked_until: datetime | None
    failed_logins: int
    version: int
    last_login_at: datetime | None


def _view(user: User) -> UserView:
    return UserView(user.id, user.email, user.name, user.role, user.status, user.phone, user.locked_until,
                    user.failed_logins, user.version, user.last_login_at)


def normalise_email(email: str) -> str:
    email = (email or "").strip().lower()
    if EMAIL_RE.match(email) and len(email) <= 254:
        return email
    if "@" in email:
        raise ValidationError(f"{email!r} is not an email address we accept: before the @ use only letters, "
                              "digits and . _ + - (and start with a letter, digit or _), after it a domain such as "
                              "example.com.", field="email")
    raise ValidationError(f"{email!r} is not an email address.", field="email")


def _personal_words(email: str | None, name: str | None) -> list[str]:
    """What a guesser of this account's password tries first: its email, its parts, the name, the product."""
    words = ["pooldesk"]
    for value in (email, name):
        value = (value or "").strip().lower()
        if value:
            words.append(value)
            words += [part for part in re.split(r"[^a-z0-9]+", value) if len(part) > 1]
    return words


def check_password_strength(password: str, *, email: str | None = None, name: str | None = None) -> None:
    """Refuse a password that is short, too long for bcrypt, the account's email, or easy to guess.

    "Easy to guess" is zxcvbn's estimate (offline: its lists of common passwords, names and
    words, keyboard patterns, repeats, dates) with the account's email and name as extra
    words; its advice becomes the message.
    """
    password = password or ""
    if len(password) < MIN_PASSWORD:
        raise ValidationError(f"The password must be at least {MIN_PASSWORD} characters long.", field="password")
    if password != password.strip():  # the sign-in form trims what is typed, so it could never match
        raise ValidationError("The password cannot start or end with a space.", field="password")
    if len(password.encode()) > MAX_PASSWORD_BYTES:  # bcrypt would silently ignore the rest
        raise ValidationError(f"The password is too long: at most {MAX_PASSWORD_BYTES} bytes ({MAX_PASSWORD_BYTES} "
                              "plain letters, fewer with accents or emoji).", field="password")
    if email and password.lower() == email.strip().lower():
        raise ValidationError("The password cannot be your email address.", field="password")
    from zxcvbn import zxcvbn  # imported when needed: loading its word lists takes ~0.1 s

    result = zxcvbn(password, user_inputs=_personal_words(email, name))
    if result["score"] < MIN_PASSWORD_SCORE:
        feedback = result["feedback"]
        advice = " ".join(part for part in [feedback.get("warning") or "", *feedback.get("suggestions", [])] if part)
        raise ValidationError(f"This password is easy to guess. {advice or 'Use a few uncommon words.'}",
                              field="password")


def hash_password(password: str) -> str:
    import os

    encoded = password.encode()
    if len(encoded) > MAX_PASSWORD_BYTES:  # check_password_strength says so first; never hash a truncated one
        raise ValidationError(f"The password is too long: at most {MAX_PASSWORD_BYTES} bytes.", field="password")
    rounds = int(os.environ.get(_BCRYPT_ROUNDS_ENV, "12"))
    return bcrypt.hashpw(encoded, bcrypt.gensalt(rounds)).decode()


def password_matches(password: str, password_hash: str | None) -> bool:
    if not password_hash:
        return False
    # No password over 72 bytes can be set any more; one set before is still checked on its first 72
    # bytes, as bcrypt always did, so nobody is locked out.
    return bcrypt.checkpw(password.encode()[:MAX_PASSWORD_BYTES], password_hash.encode())


def revoke_open_resets(session, user_id: int, now: datetime, *, keep_id: int | None = None) -> int:
    """End every open password-reset link of a user (but ``keep_id``); returns how many."""
    from core.db.models import PasswordReset

    query = update(PasswordReset).where(PasswordReset.user_id == user_id, PasswordReset.used_at.is_(None),
                                        PasswordReset.revoked_at.is_(None), PasswordReset.expires_at > now)
    if keep_id is not None:
        query = query.where(PasswordReset.id != keep_id)
    return session.execute(query.values(revoked_at=now)).rowcount


_DUMMY_HASH = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password("not-a-real-password-0")
    return _DUMMY_HASH


def system_actor(db: Database) -> Actor:
    """The user the `pooldesk` command and the workers act as; it cannot sign in."""
    with db.read() as session:
        user = session.scalar(select(User).where(User.email == SYSTEM_EMAIL))
        if user is not None:
            return actor_from_user(user)
    with db.transaction() as session:
        user = session.scalar(select(User).where(User.email == SYSTEM_EMAIL))
        if user is None:
            user = User(email=SYSTEM_EMAIL, name="Pooldesk system", role="admin", status="system")
            session.add(user)
            session.flush()
        return actor_from_user(user)


def _validate_profile(name: str, role: str | None = None, phone: str | None = None) -> None:
    check_text(name, "person_name", field="name", required=True)
    if role is not None and role not in ROLES:
        raise ValidationError(f"Unknown role {role!r}; choose one of {', '.join(ROLES)}.", field="role")
    if phone and not PHONE_RE.match(phone):
        raise ValidationError("Give the phone number in international form, e.g. +447700900123.", field="phone")


def create_user(db: Database, *, actor: Actor, email: str, name: str, role: str, password: str | None = None,
                phone: str | None = None, status: str = "active") -> UserView:
    require_role(actor, "admin", "manager", action="create users")
    email = normalise_email(email)
    _validate_profile(name, role, phone)
    if actor.role == "manager" and role != "investor":
        raise PermissionDenied("A manager may only add investors.")
    if password is not None:
        check_password_strength(password, email=email, name=name)
    with db.transaction() as session:
        if session.scalar(select(User.id).where(User.email == email)) is not None:
            raise ValidationError(f"A user with the email {email} already exists.", field="email")
        user = User(email=email, name=name.strip(), role=role, status=status, phone=phone or None,
                    password_hash=hash_password(password) if password else None)
        session.add(user)
        session.flush()
        audit.record(session, actor, "user.create", "user", user.id, None,
                     {"email": email, "name": user.name, "role": role, "status": status})
        return _view(user)


def get_user(db: Database, *, actor: Actor, user_id: int) -> UserView:
    if actor.id != user_id:
        require_role(actor, "admin", action="see other users' profiles")
    with db.read() as session:
        user = session.get(User, user_id)
        if user is None:
            raise NotFound(f"No user with id {user_id}.")
        return _view(user)


def find_user_by_email(db: Database, email: str) -> UserView | None:
    """For sign-in and invitations (no actor: the caller is the sign-in flow itself)."""
    with db.read() as session:
        user = session.scalar(select(User).where(User.email == (email or "").strip().lower()))
        return _view(user) if user else None


def list_users(db: Database, *, actor: Actor, role: str | None = None, search: str = "") -> list[UserView]:
    require_role(actor, "admin", action="list users")
    with db.read() as session:
        query = select(User).where(User.status != "system").order_by(User.email)
        if role:
            query = query.where(User.role == role)
        if search:
            like = f"%{search.strip().lower()}%"
            query = query.where(func.lower(User.email).like(like) | func.lower(User.name).like(like))
        return [_view(u) for u in session.scalars(query)]


_UNCHANGED = object()


def update_profile(db: Database, *, actor: Actor, user_id: int, expected_version: int, name: str,
                   phone: str | None | object = _UNCHANGED, bank_account: str | None | object = _UNCHANGED) -> UserView:
    """Change a profile. A field that is not passed keeps its value; pass None or "" to clear it."""
    if actor.id != user_id:
        require_role(actor, "admin", action="edit other users' profiles")
    _validate_profile(name, phone=None if phone is _UNCHANGED else phone)
    with db.transaction() as session:
        user = session.get(User, user_id)
        if user is None:
            raise NotFound(f"No user with id {user_id}.")
        before = {"name": user.name, "phone_set": bool(user.phone), "bank_account_set": bool(user.bank_account)}
        if bank_account is not _UNCHANGED and (bank_account or None) != user.bank_account:
            require_recent_reauth(session, actor, "change a bank account")
        bump_version(session, User, {"id": user_id}, expected_version, "This profile", name=name.strip())
        session.refresh(user)
        if phone is not _UNCHANGED:
            user.phone = phone or None
        if bank_account is not _UNCHANGED:
            user.bank_account = bank_account or None
        session.flush()
        audit.record(session, actor, "user.update_profile", "user", user_id, before,
                     {"name": user.name, "phone_set": bool(user.phone), "bank_account_set": bool(user.bank_account)})
        return _view(user)


def change_role(db: Database, *, actor: Actor, user_id: int, role: str, expected_version: int) -> UserView:
    require_role(actor, "admin", action="change roles")
    _validate_profile("x", role)
    if user_id == actor.id:
        raise ValidationError("You cannot change your own role.")
    with db.transaction() as session:
        user = session.get(User, user_id)
        if user is None or user.status == "system":
            raise NotFound(f"No user with id {user_id}.")
        require_recent_reauth(session, actor, "change a role")
        before = user.role
        bump_version(session, User, {"id": user_id}, expected_version, "This user", role=role)
        session.refresh(user)
        # Only managers and admins manage pools: an assignment left behind would still let the user post
        # flows where a check reads pool_managers (the one-trip posting in the database does).
        after: dict = {"role": role}
        if role not in MANAGING_ROLES:
            dropped = sorted(session.scalars(select(PoolManager.pool_id).where(PoolManager.user_id == user_id)))
            if dropped:
                session.execute(delete(PoolManager).where(PoolManager.user_id == user_id))
                after["removed_as_manager_of_pools"] = dropped
        audit.record(session, actor, "user.change_role", "user", user_id, {"role": before}, after)
        return _view(user)


def set_status(db: Database, *, actor: Actor, user_id: int, status: str) -> UserView:
    require_role(actor, "admin", action="activate or deactivate users")
    if status not in ("active", "deactivated"):
        raise ValidationError("Status must be active or deactivated.")
    if user_id == actor.id:
        raise ValidationError("You cannot deactivate yourself.")
    with db.transaction() as session:
        user = session.get(User, user_id)
        if user is None or user.status == "system":
            raise NotFound(f"No user with id {user_id}.")
        before = user.status
        user.status = status
        user.version += 1
        audit.record(session, actor, "user.set_status", "user", user_id, {"status": before}, {"status": status})
        if status == "deactivated":
            from core.db.models import AuthSession

            session.execute(update(AuthSession).where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
                            .values(revoked_at=utcnow()))
        return _view(user)


def unlock(db: Database, *, actor: Actor, user_id: int) -> UserView:
    require_role(actor, "admin", action="unlock accounts")
    with db.transaction() as session:
        user = session.get(User, user_id)
        if user is None:
            raise NotFound(f"No user with id {user_id}.")
        user.failed_logins = 0
        user.locked_until = None
        audit.record(session, actor, "user.unlock", "user", user_id, None, None)
        return _view(user)


def set_password(db: Database, *, actor: Actor, user_id: int, password: str) -> None:
    if actor.id != user_id:
        require_role(actor, "admin", action="set other users' passwords")
    with db.transaction() as session:
        user = session.get(User, user_id)
        if user is None or user.status == "system":
            raise NotFound(f"No user with id {user_id}.")
        check_password_strength(password, email=user.email, name=user.name)
        user.password_hash = hash_password(password)
        user.failed_logins = 0
        user.locked_until = None
        revoke_open_resets(session, user_id, utcnow())
        audit.record(session, actor, "user.set_password", "user", user_id, None, None)


GENERIC_LOGIN_ERROR = "Incorrect email or password, or the account is locked. Try again later or reset your password."


def authenticate(db: Database, *, email: str, password: str, now: datetime | None = None) -> Actor:
    """Check a password; count failures in the database and lock after too many.

    The error is the same whether the account exists, is locked or the password is
    wrong, and every refusal costs one bcrypt check, so the time taken tells nothing either.
    """
    settings = get_settings()
    now = now or utcnow()
    email = (email or "").strip().lower()
    with db.transaction() as session:
        user = session.execute(select(User).where(User.email == email).with_for_update()).scalar_one_or_none()
        if user is None or user.status != "active":
            password_matches(password or "", _dummy_hash())
            raise AuthenticationError(GENERIC_LOGIN_ERROR)
        if user.locked_until is not None and user.locked_until > now:
            password_matches(password or "", user.password_hash)  # as slow as any other refusal
            raise AuthenticationError(GENERIC_LOGIN_ERROR)
        accepted = password_matches(password or "", user.password_hash)
        if accepted:
            user.failed_logins = 0
            user.locked_until = None
            user.last_login_at = now
            return actor_from_user(user)
        # The failure is counted (committed) before the error is raised.
        user.failed_logins += 1
        if user.failed_logins >= settings.lockout_attempts:
            user.locked_until = now + timedelta(minutes=settings.lockout_minutes)
            user.failed_logins = 0
            audit.record(session, None, "user.locked", "user", user.id, None,
                         {"locked_until": user.locked_until.isoformat()})
    raise AuthenticationError(GENERIC_LOGIN_ERROR)
