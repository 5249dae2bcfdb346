"""Invitations and password resets: one-time, expiring links, never a password in clear."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core.crypto import decrypt
from core.db.models import Invitation, OutboxMessage, PasswordReset, User, utcnow
from core.domain.errors import AuthenticationError, PermissionDenied, ValidationError
from core.services import auth, users
from tests.factories import PASSWORD, make_pool, make_user, signed_in


def _outbox(db, template):
    with db.read() as session:
        return [m.payload for m in session.scalars(select(OutboxMessage).where(OutboxMessage.job == "jobs.notify.send_direct"))
                if m.payload["template"] == template]


def _token(link: str) -> str:
    return link.split("=", 1)[1]


def test_admin_invites_a_manager_who_sets_a_password_once(db):
    admin = make_user(db, "admin")
    result = auth.invite_user(db, actor=admin, email="New.Manager@Example.com", name="New Manager", role="manager")
    assert result.link is not None and result.link.startswith("http://localhost:8501/?invite=")
    assert result.emailed is False
    sent = _outbox(db, "invitation")
    assert [m["to_email"] for m in sent] == ["new.manager@example.com"]
    assert result.link not in str(sent[0]) and _token(result.link) not in str(sent[0])  # only encrypted
    assert decrypt(sent[0]["sealed_link"]) == result.link
    with db.read() as session:
        user = session.scalar(select(User).where(User.email == "new.manager@example.com"))
        assert (user.status, user.role, user.password_hash) == ("invited", "manager", None)
        assert _token(result.link) not in session.scalar(select(Invitation.token_digest))
    with pytest.raises(AuthenticationError):
        users.authenticate(db, email="new.manager@example.com", password="")

    info = auth.check_invitation(db, token=_token(result.link))
    assert (info.email, info.role) == ("new.manager@example.com", "manager")
    with pytest.raises(ValidationError) as short:
        auth.accept_invitation(db, token=_token(result.link), password="short")
    assert short.value.field == "password"
    with pytest.raises(ValidationError) as spaced:  # the sign-in form trims what is typed: it could never match
        auth.accept_invitation(db, token=_token(result.link), password=" a-long-password ")
    assert spaced.value.message == "The password cannot start or end with a space."
    actor = auth.accept_invitation(db, token=_token(result.link), password="a-long-password", name="Mona")
    assert (actor.role, actor.name) == ("manager", "Mona")
    assert users.authenticate(db, email="new.manager@example.com", password="a-long-password").id == actor.id
    with pytest.raises(ValidationError) as reused:
        auth.accept_invitation(db, token=_token(result.link), password="another-long-one")
    assert reused.value.message == auth.NO_LONGER_VALID


def test_with_email_configured_the_link_is_not_shown(db, monkeypatch):
    from core.config import reset_settings_cache

    monkeypatch.setenv("POOLDESK_SMTP_HOST", "127.0.0.1")
    reset_settings_cache()
    admin = make_user(db, "admin")
    result = auth.invite_user(db, actor=admin, email="a@example.com", name="A", role="analyst")
    assert (result.link, result.emailed) == (None, True)
    assert len(_outbox(db, "invitation")) == 1


def test_an_expired_invitation_does_not_work(db):
    admin = make_user(db, "admin")
    past = utcnow() - timedelta(days=8)
    result = auth.invite_user(db, actor=admin, email="late@example.com", name="Late", role="analyst", now=past)
    with pytest.raises(ValidationError, match="expired"):
        auth.accept_invitation(db, token=_token(result.link), password="a-long-password")
    with pytest.raises(ValidationError):
        auth.accept_invitation(db, token="made-up-token", password="a-long-password")


def test_managers_invite_investors_to_their_own_pools_only(db):
    manager = make_user(db, "manager")
    other_manager = make_user(db, "manager")
    pool = make_pool(db, manager)
    foreign = make_pool(db, other_manager)
    with pytest.raises(PermissionDenied):
        auth.invite_user(db, actor=manager, email="x@example.com", name="X", role="analyst")
    with pytest.raises(PermissionDenied):
        auth.invite_user(db, actor=manager, email="x@example.com", name="X", role="investor", pool_id=foreign.id)
    with pytest.raises(ValidationError) as no_pool:
        auth.invite_user(db, actor=manager, email="x@example.com", name="X", role="investor")
    assert no_pool.value.field == "pool"
    with pytest.raises(PermissionDenied):
        auth.invite_user(db, actor=make_user(db, "investor"), email="x@example.com", name="X", role="investor")
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Invitation)) == 0
        assert session.scalar(select(func.count()).select_from(User).where(User.email == "x@example.com")) == 0
    result = auth.invite_user(db, actor=manager, email="x@example.com", name="X", role="investor", pool_id=pool.id)
    assert result.role == "investor"
    # an existing account cannot be invited again
    make_user(db, "investor", email="taken@example.com")
    with pytest.raises(ValidationError, match="already has an account"):
        auth.invite_user(db, actor=manager, email="taken@example.com", name="T", role="investor", pool_id=pool.id)


def test_password_reset_is_mailed_used_once_and_signs_out_everywhere(db):
    investor = make_user(db, "investor", email="forgot@example.com")
    session_token = auth.create_session(db, actor=investor)
    auth.request_password_reset(db, email="Forgot@example.com")
    auth.request_password_reset(db, email="nobody@example.com")  # silent, writes nothing
    mails = _outbox(db, "password_reset")
    assert [m["to_email"] for m in mails] == ["forgot@example.com"]
    assert "password" not in str(mails[0]["context"]).replace("password_reset", "")  # a link, never a password
    token = _token(decrypt(mails[0]["sealed_link"]))
    auth.reset_password(db, token=token, password="brand-new-password")
    assert auth.validate_session(db, token=session_token) is None
    assert users.authenticate(db, email="forgot@example.com", password="brand-new-password").id == investor.id
    with pytest.raises(ValidationError):
        auth.reset_password(db, token=token, password="another-new-password")


def test_a_reset_link_expires_after_an_hour_and_clears_a_lockout(db):
    admin = make_user(db, "admin")
    investor = make_user(db, "investor", email="locked@example.com")
    for _ in range(5):
        with pytest.raises(AuthenticationError):
            users.authenticate(db, email="locked@example.com", password="wrong-wrong")
    past = utcnow() - timedelta(minutes=61)
    old = auth.issue_reset_link(db, actor=admin, user_id=investor.id, now=past)
    with pytest.raises(ValidationError):
        auth.reset_password(db, token=_token(old), password="brand-new-password")
    fresh = auth.issue_reset_link(db, actor=admin, user_id=investor.id)
    auth.reset_password(db, token=_token(fresh), password="brand-new-password")
    assert users.authenticate(db, email="locked@example.com", password="brand-new-password").id == investor.id
    with pytest.raises(PermissionDenied):
        auth.issue_reset_link(db, actor=investor, user_id=admin.id)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(PasswordReset)) == 2


def test_changing_the_password_keeps_this_session_and_ends_the_others(db):
    manager = make_user(db, "manager")
    here, elsewhere = signed_in(db, manager)[1], signed_in(db, manager)[1]  # with the second factor
    with pytest.raises(ValidationError) as wrong:
        auth.change_password(db, actor=manager, current_password="nope", new_password="a-new-password")
    assert wrong.value.field == "current_password"
    assert auth.validate_session(db, token=elsewhere) == manager
    auth.change_password(db, actor=manager, current_password=PASSWORD, new_password="a-new-password", keep_token=here)
    assert auth.validate_session(db, token=here) == manager
    assert auth.validate_session(db, token=elsewhere) is None
