"""Two-step sign-in and re-authentication on the pages: the sign-in's second step, the Account page's
set-up and recovery codes, and the password prompt before a role change or a large withdrawal approval."""
from __future__ import annotations

from datetime import date, datetime, timezone

import pyotp
from sqlalchemy import select

from core.db.models import User
from core.services import auth, ledger, mfa, users
from tests.app.conftest import button, errors, open_app, texts, toasts
from tests.factories import PASSWORD, make_pool, make_user, signed_in


def sign_in(at, email, password):
    fields = {t.label: t for t in at.text_input}
    fields["Email"].input(email)
    fields["Password"].input(password)
    button(at, "Sign in").click()
    at.run()
    return at


def enter_code(at, code: str, label: str):
    next(t for t in at.text_input if t.label == "Code").input(code)
    button(at, label).click()
    at.run()
    return at


def titles(at) -> list[str]:
    return [t.value for t in at.title]


def next_code(db, user_id: int) -> tuple[str, datetime]:
    """A code the app would show that was not used yet (the one of the next time step if need be)."""
    with db.read() as session:
        row = session.get(User, user_id)
        totp, last = pyotp.TOTP(row.mfa_secret), row.mfa_last_step
    step = max(totp.timecode(datetime.now(timezone.utc)), (last or 0) + 1)
    return totp.at(step * 30), datetime.fromtimestamp(step * 30, timezone.utc)


def test_a_manager_sets_up_the_second_factor_at_the_first_sign_in(db):
    manager = make_user(db, "manager", email="m@example.com")
    at = sign_in(open_app(db), "m@example.com", PASSWORD)
    assert not at.exception
    assert titles(at) == ["Two-step sign-in"]  # not signed in yet
    assert "actor" not in at.session_state
    secret = next(t for t in at.text_input if t.label == "Key").value
    assert len(at.get("image")) == 1  # the QR code
    good = pyotp.TOTP(secret).now()
    enter_code(at, str((int(good) + 1) % 1_000_000).zfill(6), "Confirm")
    assert errors(at) == [mfa.WRONG_CODE]
    enter_code(at, good, "Confirm")
    codes = at.code[0].value.split("\n")
    assert len(codes) == 10
    button(at, "I have saved them: continue").click()
    at.run()
    assert titles(at) == ["Overview"]
    assert at.session_state["actor"] == manager
    assert auth.validate_session(db, token=at.session_state["session_token"]) == manager


def test_an_enrolled_admin_gives_a_code_a_wrong_one_is_refused_and_a_recovery_code_works_once(db):
    admin = make_user(db, "admin", email="a@example.com")
    signed_in(db, admin)  # enrolled
    with db.read() as session:
        totp = pyotp.TOTP(session.get(User, admin.id).mfa_secret)
    codes = mfa.regenerate_recovery_codes(db, actor=signed_in(db, admin, reauthenticated=True)[0])

    at = sign_in(open_app(db), "a@example.com", PASSWORD)
    assert titles(at) == ["Two-step sign-in"]
    assert "Key" not in [t.label for t in at.text_input]  # no secret shown once enrolled
    enter_code(at, "123456" if totp.now() != "123456" else "654321", "Verify")
    assert errors(at) == [mfa.WRONG_CODE]
    assert "actor" not in at.session_state
    enter_code(at, codes[0], "Verify")
    assert titles(at) == ["Overview"]
    assert at.session_state["actor"] == admin

    again = sign_in(open_app(db), "a@example.com", PASSWORD)
    enter_code(again, codes[0], "Verify")  # used already
    assert errors(again) == [mfa.WRONG_CODE]
    assert titles(again) == ["Two-step sign-in"]


def test_an_investor_signs_in_with_the_password_alone_and_may_turn_two_step_sign_in_on(db):
    investor = make_user(db, "investor", email="i@example.com")
    at = sign_in(open_app(db), "i@example.com", PASSWORD)
    assert titles(at) == ["Overview"]
    at.switch_page("../pages/account.py")
    at.run()
    assert "Off. Add a code from an authenticator app to your sign-in." in texts(at)
    button(at, "Set up two-step sign-in").click()
    at.run()
    secret = next(t for t in at.text_input if t.label == "Key").value
    next(t for t in at.text_input if t.label == "Code from the app").input(pyotp.TOTP(secret).now())
    button(at, "Turn on two-step sign-in").click()
    at.run()
    assert "Two-step sign-in is on." in toasts(at)
    assert len(at.code[0].value.split("\n")) == 10
    assert mfa.status(db, actor=investor).enabled
    assert mfa.second_factor_step(db, token=auth.create_session(db, actor=investor)) == "code"


def test_new_recovery_codes_ask_for_the_password_first(db):
    manager = make_user(db, "manager")
    at = open_app(db, manager, "account")
    assert "10 of 10 recovery codes left." in texts(at)
    button(at, "Make new recovery codes").click()
    at.run()
    assert "Confirm your password or an authenticator code to make new recovery codes" in texts(at)
    next(t for t in at.text_input if t.label == "Your password").input("not my password")
    button(at, "Confirm it is me").click()
    at.run()
    assert "That password or code is not right." in errors(at)
    next(t for t in at.text_input if t.label == "Your password").input(PASSWORD)
    button(at, "Confirm it is me").click()
    at.run()
    button(at, "Make new recovery codes").click()
    at.run()
    assert len(at.code[0].value.split("\n")) == 10


def test_a_role_change_on_the_admin_page_asks_for_the_password_first(db):
    admin = make_user(db, "admin")
    person = make_user(db, "analyst")
    at = open_app(db, admin, "admin")
    at.selectbox(key="user_pick").set_value(next(o for o in at.selectbox(key="user_pick").options
                                                 if person.email in o)).run()
    at.selectbox(key=f"role_{person.id}").set_value("manager").run()
    at.button(key=f"change_role_{person.id}").click().run()
    assert "Confirm your password or an authenticator code to change a role" in texts(at)
    assert users.get_user(db, actor=admin, user_id=person.id).role == "analyst"
    next(t for t in at.text_input if t.label == "Your password").input(PASSWORD)
    button(at, "Confirm it is me").click()
    at.run()
    assert "Confirmed. You can go on for the next few minutes." in toasts(at)
    at.button(key=f"change_role_{person.id}").click().run()
    assert f"{person.email} is now manager." in toasts(at)
    assert users.get_user(db, actor=admin, user_id=person.id).role == "manager"


def test_approving_a_large_withdrawal_asks_for_a_code_first(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager)
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="20000.00",
                               key=None, effective_date=date(2024, 1, 2), payment="received")
    request = ledger.record_withdrawal(db, actor=investor, pool_id=pool.id, investor_id=investor.id, key=None,
                                       amount="15000.00", effective_date=date(2024, 1, 3), payment="gateway")
    at = open_app(db, manager, "transactions")
    at.button(key=f"approve_{request.id}").click().run()
    assert "Confirm your password or an authenticator code to approve a withdrawal of USD 10,000.00 or more" \
        in texts(at)
    code, _ = next_code(db, manager.id)
    next(t for t in at.text_input if t.label == "or a code from your authenticator app").input(code)
    button(at, "Confirm it is me").click()
    at.run()
    at.button(key=f"approve_{request.id}").click().run()
    assert f"Request #{request.id} approved." in toasts(at)
    assert ledger.get_transaction(db, actor=manager, transaction_id=request.id).status != "requested"


def test_an_admin_resets_a_managers_two_step_sign_in(db):
    admin = make_user(db, "admin")
    manager = make_user(db, "manager")
    _, token = signed_in(db, manager)
    at = open_app(db, admin, "admin")
    at.selectbox(key="user_pick").set_value(next(o for o in at.selectbox(key="user_pick").options
                                                 if manager.email in o)).run()
    at.button(key=f"mfa_reset_{manager.id}").click().run()
    assert f"Two-step sign-in of {manager.email} reset; they were signed out." in toasts(at)
    assert auth.validate_session(db, token=token) is None
    with db.read() as session:
        assert session.scalar(select(User.mfa_enabled_at).where(User.id == manager.id)) is None


def test_changing_the_bank_account_on_the_account_page_asks_for_the_password_first(db):
    investor = make_user(db, "investor")
    at = open_app(db, investor, "account")
    next(t for t in at.text_input if t.label.startswith("New bank account")).input("GB33BUKB20201555555555")
    button(at, "Save bank account").click()
    at.run()
    assert "Confirm your password or an authenticator code to change a bank account" in texts(at)
    with db.read() as session:
        assert session.get(User, investor.id).bank_account is None
    next(t for t in at.text_input if t.label == "Your password").input(PASSWORD)
    button(at, "Confirm it is me").click()
    at.run()
    button(at, "Save bank account").click()
    at.run()
    assert "Bank account saved." in toasts(at)
    with db.read() as session:
        assert session.get(User, investor.id).bank_account == "GB33BUKB20201555555555"
