"""Server-side sessions and lockout: what makes a cookie sign someone in, or not."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core.db.models import AuditEvent, AuthSession, User, utcnow
from core.domain.errors import AuthenticationError, PermissionDenied
from core.services import auth, users
from core.services.users import GENERIC_LOGIN_ERROR
from tests.factories import PASSWORD, make_user, signed_in


def test_a_new_session_signs_in_until_it_is_signed_out(db):
    investor = make_user(db, "investor")
    token = auth.create_session(db, actor=investor, user_agent="pytest")
    assert auth.validate_session(db, token=token) == investor
    with db.read() as session:
        stored = session.scalars(select(AuthSession.id)).all()
    assert token not in stored and len(stored) == 1  # only a digest is kept
    auth.sign_out(db, token=token)
    assert auth.validate_session(db, token=token) is None
    auth.sign_out(db, token=token)  # twice is harmless


def test_idle_and_absolute_limits_end_a_session(db):
    manager = make_user(db, "analyst")  # no second factor to give
    start = utcnow()
    token = auth.create_session(db, actor=manager, now=start)
    assert auth.validate_session(db, token=token, now=start + timedelta(minutes=29)) == manager
    # touched at 29 minutes, so 29 more minutes of idleness are still fine
    assert auth.validate_session(db, token=token, now=start + timedelta(minutes=58)) == manager
    assert auth.validate_session(db, token=token, now=start + timedelta(minutes=58 + 31)) is None

    other = auth.create_session(db, actor=manager, now=start)
    moment = start
    while moment + timedelta(minutes=20) < start + timedelta(hours=12):  # never idle, but 12 hours is the end
        moment += timedelta(minutes=20)
        assert auth.validate_session(db, token=other, now=moment) == manager
    assert auth.validate_session(db, token=other, now=start + timedelta(hours=12, minutes=1)) is None


def test_settings_change_the_limits(db, monkeypatch):
    from core.config import reset_settings_cache

    monkeypatch.setenv("POOLDESK_SESSION_IDLE_MINUTES", "5")
    monkeypatch.setenv("POOLDESK_SESSION_MAX_HOURS", "1")
    reset_settings_cache()
    analyst = make_user(db, "analyst")
    start = utcnow()
    token = auth.create_session(db, actor=analyst, now=start)
    assert auth.validate_session(db, token=token, now=start + timedelta(minutes=6)) is None
    with db.read() as session:
        row = session.scalar(select(AuthSession))
    assert row.expires_at - row.created_at == timedelta(hours=1)


def test_sign_out_everywhere_ends_every_session_of_that_user_only(db):
    investor = make_user(db, "investor")
    other = make_user(db, "investor")
    tokens = [auth.create_session(db, actor=investor) for _ in range(3)]
    keep = auth.create_session(db, actor=other)
    assert auth.revoke_all_sessions(db, actor=investor, user_id=investor.id) == 3
    assert [auth.validate_session(db, token=t) for t in tokens] == [None, None, None]
    assert auth.validate_session(db, token=keep) == other
    with pytest.raises(PermissionDenied):
        auth.revoke_all_sessions(db, actor=investor, user_id=other.id)


def test_admin_revokes_one_session_and_sees_only_open_ones(db):
    admin = make_user(db, "admin")
    manager = make_user(db, "manager")
    first, second = signed_in(db, manager)[1], signed_in(db, manager)[1]  # with the second factor
    listed = auth.list_sessions(db, actor=admin, user_id=manager.id)
    assert len(listed) == 2
    target = next(s for s in listed if s.id != listed[0].id)
    auth.revoke_session(db, actor=admin, session_id=target.id)
    still = {t for t in (first, second) if auth.validate_session(db, token=t)}
    assert len(still) == 1
    assert len(auth.list_sessions(db, actor=admin, user_id=manager.id)) == 1
    with pytest.raises(PermissionDenied):
        auth.list_sessions(db, actor=manager, user_id=admin.id)


def test_a_deactivated_user_is_signed_out(db):
    admin = make_user(db, "admin")
    investor = make_user(db, "investor")
    token = auth.create_session(db, actor=investor)
    users.set_status(db, actor=admin, user_id=investor.id, status="deactivated")
    assert auth.validate_session(db, token=token) is None


def test_five_wrong_passwords_lock_for_fifteen_minutes_counted_in_the_database(db):
    manager = make_user(db, "manager", email="lock@example.com")
    now = utcnow()
    for _ in range(5):
        with pytest.raises(AuthenticationError) as wrong:
            users.authenticate(db, email="lock@example.com", password="not the password", now=now)
        assert wrong.value.message == GENERIC_LOGIN_ERROR
    with pytest.raises(AuthenticationError) as locked:
        users.authenticate(db, email="lock@example.com", password=PASSWORD, now=now + timedelta(minutes=14))
    assert locked.value.message == GENERIC_LOGIN_ERROR
    with pytest.raises(AuthenticationError) as unknown:
        users.authenticate(db, email="nobody@example.com", password=PASSWORD, now=now)
    assert unknown.value.message == locked.value.message  # does not reveal whether the account exists
    assert users.authenticate(db, email="lock@example.com", password=PASSWORD,
                              now=now + timedelta(minutes=16)).id == manager.id


def test_every_refusal_costs_one_password_check_so_timing_tells_nothing(db, monkeypatch):
    make_user(db, "manager", email="slow@example.com")
    now = utcnow()
    for _ in range(5):
        with pytest.raises(AuthenticationError):
            users.authenticate(db, email="slow@example.com", password="not the password", now=now)
    checks = []
    real = users.password_matches
    monkeypatch.setattr(users, "password_matches", lambda *a: checks.append(a) or real(*a))
    for email in ("slow@example.com", "nobody@example.com"):  # locked, unknown
        with pytest.raises(AuthenticationError):
            users.authenticate(db, email=email, password=PASSWORD, now=now + timedelta(minutes=1))
    assert len(checks) == 2


def test_single_sign_on_needs_an_active_user_who_keeps_their_role(db):
    analyst = make_user(db, "analyst", email="sso@example.com")
    assert auth.sign_in_external(db, email="SSO@example.com") == analyst
    with pytest.raises(AuthenticationError):
        auth.sign_in_external(db, email="stranger@example.com")
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(User).where(User.email == "stranger@example.com")) == 0
        assert session.scalar(select(func.count()).select_from(AuditEvent)
                              .where(AuditEvent.action == "user.sign_in_sso")) == 1


def test_polling_without_touch_does_not_keep_a_session_alive(db):
    investor = make_user(db, "investor")
    start = utcnow()
    token = auth.create_session(db, actor=investor, now=start)
    for minute in range(5, 30, 5):
        assert auth.validate_session(db, token=token, now=start + timedelta(minutes=minute), touch=False) == investor
    assert auth.validate_session(db, token=token, now=start + timedelta(minutes=31)) is None
