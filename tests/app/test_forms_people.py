"""Forms about people: the admin's user, session and audit tools, one's own account, the inbox."""
from __future__ import annotations

import pytest

from core.domain.errors import AuthenticationError
from core.services import auth, notifications, users
from core.services.notifications import add_in_app
from tests.app.conftest import button, errors, open_app, table_text, texts, toasts
from tests.factories import PASSWORD, make_user, signed_in

NEW_PASSWORD = "a-brand-new-password"


def field(at, label):
    return next(t for t in at.text_input if t.label == label)


def _lock(db, email):
    for _ in range(5):
        with pytest.raises(AuthenticationError):
            users.authenticate(db, email=email, password="not the password")


def test_admin_changes_a_role_deactivates_reactivates_and_unlocks(db):
    admin = make_user(db, "admin")
    person = make_user(db, "analyst")
    _lock(db, person.email)
    at = open_app(db, admin, "admin")
    at.selectbox(key="user_pick").set_value(next(o for o in at.selectbox(key="user_pick").options
                                                 if person.email in o)).run()
    at.selectbox(key=f"role_{person.id}").set_value("manager").run()
    at.button(key=f"change_role_{person.id}").click().run()
    next(t for t in at.text_input if t.label == "Your password").input(PASSWORD)  # a role change asks first
    button(at, "Confirm it is me").click()
    at.run()
    at.button(key=f"change_role_{person.id}").click().run()
    assert f"{person.email} is now manager." in toasts(at)
    assert users.get_user(db, actor=admin, user_id=person.id).role == "manager"

    at.button(key=f"unlock_{person.id}").click().run()
    assert f"{person.email} unlocked." in toasts(at)
    assert users.authenticate(db, email=person.email, password=PASSWORD).id == person.id

    at.button(key=f"deactivate_{person.id}").click().run()
    assert f"{person.email} deactivated and signed out." in toasts(at)
    with pytest.raises(AuthenticationError):
        users.authenticate(db, email=person.email, password=PASSWORD)
    at.button(key=f"activate_{person.id}").click().run()
    assert f"{person.email} reactivated." in toasts(at)
    assert users.authenticate(db, email=person.email, password=PASSWORD).id == person.id


def test_admin_revokes_a_session_and_signs_someone_out_everywhere(db):
    admin = make_user(db, "admin")
    person = make_user(db, "manager")
    first, second = signed_in(db, person)[1], signed_in(db, person)[1]
    at = open_app(db, admin, "admin")
    picks = at.selectbox(key="revoke_pick")
    mine = [o for o in picks.options if person.email in o]
    assert len(mine) == 2
    picks.set_value(mine[0]).run()
    at.button(key="revoke_one").click().run()
    assert any(t.startswith("Session ") and t.endswith(" revoked.") for t in toasts(at))
    assert [auth.validate_session(db, token=t) is None for t in (first, second)].count(True) == 1
    at.selectbox(key="revoke_pick").set_value(next(o for o in at.selectbox(key="revoke_pick").options
                                                   if person.email in o)).run()
    at.button(key="revoke_all").click().run()
    assert f"1 session(s) of {person.email} revoked." in toasts(at)
    assert auth.validate_session(db, token=first) is None and auth.validate_session(db, token=second) is None


def test_the_audit_log_filters_by_action_and_person(db):
    admin = make_user(db, "admin")
    make_user(db, "manager", email="filtered@example.com")
    at = open_app(db, admin, "admin")
    at.text_input(key="audit_action").input("user.create").run()
    shown = table_text(at)
    assert "user.create" in shown and "pool.create" not in shown
    at.text_input(key="audit_who").input("nobody-like-this").run()
    assert "No audit events match these filters." in [i.value for i in at.info]


def test_changing_my_password_needs_the_current_one_and_ends_my_other_sessions(db):
    me = make_user(db, "investor")
    other = auth.create_session(db, actor=me)
    at = open_app(db, me, "account")
    field(at, "Current password").input("not my password")
    field(at, "New password").input(NEW_PASSWORD)
    button(at, "Change password").click()
    at.run()
    assert errors(at) == ["The current password is not right."]
    assert users.authenticate(db, email=me.email, password=PASSWORD).id == me.id  # nothing changed
    field(at, "Current password").input(PASSWORD)
    field(at, "New password").input(NEW_PASSWORD)
    button(at, "Change password").click()
    at.run()
    assert "Password changed; your other sessions were signed out." in toasts(at)
    assert users.authenticate(db, email=me.email, password=NEW_PASSWORD).id == me.id
    assert auth.validate_session(db, token=other) is None
    assert auth.validate_session(db, token=at.session_state["session_token"]) is not None  # this one stays


def test_sign_out_everywhere_ends_every_session_and_shows_the_sign_in(db):
    me = make_user(db, "manager")
    other = auth.create_session(db, actor=me)
    at = open_app(db, me, "account")
    token = at.session_state["session_token"]
    at.button(key="sign_out_everywhere").click().run()
    assert auth.validate_session(db, token=token) is None and auth.validate_session(db, token=other) is None
    assert [t.value for t in at.title] == ["Pooldesk"]  # the sign-in screen


def test_the_inbox_marks_one_or_all_read_and_counts_unread(db):
    me = make_user(db, "investor")
    with db.transaction() as session:
        for n in range(3):
            add_in_app(session, user_id=me.id, event="valuation_published", title=f"Valuation {n}")
    at = open_app(db, me, "notifications")
    assert "3 unread notifications" in " ".join(c.value for c in at.sidebar.caption)
    newest = notifications.inbox(db, actor=me)[0]
    at.button(key=f"read_{newest.id}").click().run()
    assert notifications.unread_count(db, actor=me) == 2
    at.toggle(key="inbox_unread_only").set_value(True).run()
    assert f"read_{newest.id}" not in [b.key for b in at.button]
    at.button(key="mark_all_read").click().run()
    assert "All notifications marked read." in toasts(at)
    assert notifications.unread_count(db, actor=me) == 0


def test_a_locked_out_user_resets_the_password_from_the_link(db):
    me = make_user(db, "manager")
    _lock(db, me.email)
    token = auth.issue_reset_link(db, actor=make_user(db, "admin"), user_id=me.id).split("=", 1)[1]
    at = open_app(db)
    at.query_params["reset"] = token
    at.run()
    assert [t.value for t in at.title] == ["Choose a new password"]
    fields = {t.label: t for t in at.text_input}
    fields["New password"].input(NEW_PASSWORD)
    fields["Repeat the new password"].input(NEW_PASSWORD + "x")
    button(at, "Set the password").click()
    at.run()
    assert errors(at) == ["The two passwords differ."]
    fields = {t.label: t for t in at.text_input}
    fields["New password"].input(NEW_PASSWORD)
    fields["Repeat the new password"].input(NEW_PASSWORD)
    button(at, "Set the password").click()
    at.run()
    assert "Your password was changed and every session signed out. Sign in again." in texts(at)
    assert users.authenticate(db, email=me.email, password=NEW_PASSWORD).id == me.id  # and the lockout is gone


def test_a_replaced_reset_link_says_so_when_opened(db):
    me = make_user(db, "manager")
    admin = make_user(db, "admin")
    old = auth.issue_reset_link(db, actor=admin, user_id=me.id).split("=", 1)[1]
    auth.issue_reset_link(db, actor=admin, user_id=me.id)  # a newer link replaces it
    at = open_app(db)
    at.query_params["reset"] = old
    at.run()
    assert [e.value for e in at.error] == [auth.NO_LONGER_VALID]
    assert "New password" not in [t.label for t in at.text_input]


def test_forgot_password_says_the_same_whether_or_not_the_account_exists(db):
    me = make_user(db, "investor")
    answers = []
    for email in (me.email, "nobody@example.com"):
        at = open_app(db)
        field(at, "Your email").input(email)
        button(at, "Send me a reset link").click()
        at.run()
        answers.append([s.value for s in at.success])
    assert answers[0] == answers[1] == ["If this email belongs to an account, a reset link is on its way. "
                                        "It works once, within the hour."]
    with db.read() as session:
        from sqlalchemy import func, select

        from core.db.models import PasswordReset

        assert session.scalar(select(func.count()).select_from(PasswordReset)) == 1  # only for the real account


def test_a_new_notification_pops_up_once_as_a_toast_and_counts_as_unread(db):
    """The sidebar fragment (rerun every 4 s in the browser) shows what arrived since the last look."""
    me = make_user(db, "investor")
    at = open_app(db, me)
    assert toasts(at) == []
    with db.transaction() as session:
        add_in_app(session, user_id=me.id, event="valuation_published", title="New valuation of Test pool")
    at.run()
    assert toasts(at) == ["New valuation of Test pool"]
    assert "1 unread notification" in " ".join(c.value for c in at.sidebar.caption)
    at.run()
    assert toasts(at) == []  # once
