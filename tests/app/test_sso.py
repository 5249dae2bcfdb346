"""Single sign-on on the page side: with an ``[auth]`` section, the identity Streamlit's ``st.login``
returns signs in the matching active user, with that user's role; any other identity is told why
on the sign-in page, which offers to sign out of the provider to use another account."""
from __future__ import annotations

import streamlit as st

from tests.app.conftest import button, errors, open_app, shown
from tests.factories import make_user


class _Identity(dict):
    """What ``st.user`` holds after the identity provider's redirect."""

    is_logged_in = True


def _configure(monkeypatch, email: str) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr("app.auth.sso_configured", lambda: True)
    monkeypatch.setattr(st, "user", _Identity(email=email))
    monkeypatch.setattr(st, "logout", lambda: calls.append("logout"))
    return calls


def test_an_identity_matching_an_active_user_signs_in_with_that_users_role(db, monkeypatch):
    make_user(db, "analyst", email="ada@example.com")
    calls = _configure(monkeypatch, "Ada@Example.com")
    at = open_app(db)
    assert not at.exception
    assert [t.value for t in at.title] == ["Overview"]
    assert "ada@example.com · analyst" in " ".join(shown(m.value) for m in at.sidebar.markdown)
    assert calls == []


def test_an_unknown_identity_is_told_why_and_offered_another_account(db, monkeypatch):
    calls = _configure(monkeypatch, "stranger@example.com")
    at = open_app(db)
    assert not at.exception
    assert calls == []  # not sent off to the provider's end-session page, which would lose the reason
    assert [t.value for t in at.title] == ["Pooldesk"]
    refusal = ["This single sign-on identity does not match an active Pooldesk user."]
    assert errors(at) == refusal
    assert [b.label for b in at.button if "single sign-on" in b.label] == ["Sign in with another single sign-on account"]
    at.run()  # still refused, still told, on every run
    assert errors(at) == refusal
    assert not [m for m in at.sidebar.markdown if "stranger@example.com" in m.value]
    button(at, "Sign in with another single sign-on account").click().run()
    assert calls == ["logout"]


def test_a_deactivated_user_cannot_come_back_through_single_sign_on(db, monkeypatch):
    from core.services import users
    from tests.factories import system

    former = make_user(db, "manager", email="gone@example.com")
    users.set_status(db, actor=system(db), user_id=former.id, status="deactivated")
    calls = _configure(monkeypatch, "gone@example.com")
    at = open_app(db)
    assert calls == []
    assert [t.value for t in at.title] == ["Pooldesk"]
