"""Forms: success and error paths, errors next to the field, nothing half-saved, double submissions post once."""
from __future__ import annotations

from datetime import date

import pyotp
from sqlalchemy import func, select

from core.db.models import AuthSession, Distribution, Invitation, Pool, Transaction, Valuation
from core.services import auth, ledger, pools, users
from tests.app.conftest import button, errors, open_app, table_text, texts, toasts
from tests.factories import PASSWORD, make_pool, make_user


def count(db, model, *where) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


# --- sign-in -----------------------------------------------------------------------------------

def sign_in(at, email, password):
    fields = {t.label: t for t in at.text_input}
    fields["Email"].input(email)
    fields["Password"].input(password)
    button(at, "Sign in").click()
    at.run()
    return at


def test_sign_in_with_the_right_password_opens_the_overview(db):
    manager = make_user(db, "manager", email="m@example.com")
    at = sign_in(open_app(db), "M@example.com", PASSWORD)
    assert not at.exception
    assert [t.value for t in at.title] == ["Two-step sign-in"]  # a manager sets up the second factor first
    secret = next(t for t in at.text_input if t.label == "Key").value
    next(t for t in at.text_input if t.label == "Code").input(pyotp.TOTP(secret).now())
    button(at, "Confirm").click()
    at.run()
    button(at, "I have saved them: continue").click()
    at.run()
    assert [t.value for t in at.title] == ["Overview"]
    assert at.session_state["actor"] == manager
    assert count(db, AuthSession) == 1


def test_wrong_password_shows_the_generic_message_and_five_lock(db):
    make_user(db, "investor", email="i@example.com")
    for _ in range(5):
        at = sign_in(open_app(db), "i@example.com", "wrong password")  # a new browser each time
        assert errors(at) == ["Incorrect email or password, or the account is locked. "
                              "Try again later or reset your password."]
    at = sign_in(open_app(db), "i@example.com", PASSWORD)
    assert [t.value for t in at.title] == ["Pooldesk"]  # locked: the right password no longer gets in
    assert errors(at)[0].startswith("Incorrect email or password")
    assert count(db, AuthSession) == 0


def test_a_revoked_session_sends_the_browser_back_to_sign_in(db):
    manager = make_user(db, "manager")
    at = open_app(db, manager)
    assert [t.value for t in at.title] == ["Overview"]
    auth.revoke_all_sessions(db, actor=manager, user_id=manager.id)
    at.run()
    assert [t.value for t in at.title] == ["Pooldesk"]
    assert "Your session ended. Please sign in again." in texts(at)


def test_sign_out_revokes_the_session(db):
    manager = make_user(db, "manager")
    at = open_app(db, manager)
    token = at.session_state["session_token"]
    button(at, "Sign out").click()
    at.run()
    assert [t.value for t in at.title] == ["Pooldesk"]
    assert auth.validate_session(db, token=token) is None


def test_accepting_an_invitation_from_its_link(db):
    admin = make_user(db, "admin")
    result = auth.invite_user(db, actor=admin, email="new@example.com", name="New Analyst", role="analyst")
    token = result.link.split("=", 1)[1]
    at = open_app(db)
    at.query_params["invite"] = token
    at.run()
    assert "You were invited as **analyst** with the email **new@example.com**" in texts(at)
    fields = {t.label: t for t in at.text_input}
    fields["Password"].input("short")
    fields["Repeat the password"].input("short")
    button(at, "Create my account").click()
    at.run()
    assert errors(at) == ["The password must be at least 10 characters long."]
    fields = {t.label: t for t in at.text_input}
    fields["Password"].input("long-enough-password")
    fields["Repeat the password"].input("long-enough-password")
    button(at, "Create my account").click()
    at.run()
    assert "Your account is ready" in texts(at)
    at = sign_in(open_app(db), "new@example.com", "long-enough-password")
    assert at.session_state["actor"].role == "analyst"


# --- pools -------------------------------------------------------------------------------------

def test_create_pool_success_and_error_next_to_the_field(db):
    manager = make_user(db, "manager")
    at = open_app(db, manager, "pools")
    at.text_input(key="new_code").input("bad code!")
    at.text_input(key="new_name").input("Growth")
    button(at, "Create pool").click()
    at.run()
    assert errors(at) == ["The pool code is 2 to 32 letters, digits, '-' or '_', e.g. GROWTH-1."]
    assert count(db, Pool) == 0
    at.text_input(key="new_code").input("GROWTH-1")
    at.text_input(key="new_minimum").input("1.234")
    button(at, "Create pool").click()
    at.run()
    assert errors(at) == ["minimum contribution: USD has 2 decimal places; 1.234 has more."]
    at.text_input(key="new_minimum").input("100")
    button(at, "Create pool").click()
    at.run()
    assert "Pool GROWTH-1 created." in toasts(at)
    assert count(db, Pool) == 1
    assert "GROWTH-1" in table_text(at)


def test_pools_list_searches_and_filters_by_status(db):
    manager = make_user(db, "manager")
    make_pool(db, manager, code="ALPHA", name="Alpha Growth")
    make_pool(db, manager, code="BETA", name="Beta Income")
    pools.create_pool(db, actor=manager, code="GAMMA", settings=pools.PoolSettings(name="Gamma Draft"), draft=True)
    at = open_app(db, manager, "pools")
    assert list(at.dataframe[0].value["Code"]) == ["ALPHA", "BETA", "GAMMA"]
    at.text_input(key="pool_search").input("income").run()
    assert list(at.dataframe[0].value["Code"]) == ["BETA"]
    at.text_input(key="pool_search").input("").run()
    at.selectbox(key="pool_status_filter").set_value("draft").run()
    assert list(at.dataframe[0].value["Code"]) == ["GAMMA"]
    at.text_input(key="pool_search").input("alpha").run()
    assert not [df for df in at.dataframe if "Code" in df.value.columns]
    assert "No pool matches. Clear the search, or create a pool below." in texts(at)


def test_a_stale_edit_shows_the_conflict_and_keeps_the_input(db):
    manager = make_user(db, "manager")
    pool = make_pool(db, manager, code="EDIT", name="Before")
    at = open_app(db, manager, "pools")
    prefix = f"edit{pool.id}"
    at.text_input(key=f"{prefix}_name").input("My new name")
    # someone else saves first
    pools.update_pool(db, actor=manager, pool_id=pool.id, expected_version=pool.version,
                      settings=pools.PoolSettings(name="Their name"))
    button(at, "Save changes").click()
    at.run()
    assert errors(at)[0].startswith("This pool was changed by someone else since you opened it.")
    assert at.text_input(key=f"{prefix}_name").value == "My new name"
    assert pools.get_pool(db, actor=manager, pool_id=pool.id).name == "Their name"
    button(at, "Load the latest version").click()
    at.run()
    assert at.text_input(key=f"{prefix}_name").value == "Their name"
    at.text_input(key=f"{prefix}_name").input("Final name")
    button(at, "Save changes").click()
    at.run()
    assert pools.get_pool(db, actor=manager, pool_id=pool.id).name == "Final name"


def test_open_and_close_a_pool(db):
    manager = make_user(db, "manager")
    pool = pools.create_pool(db, actor=manager, code="DRAFTY", settings=pools.PoolSettings(name="D"), draft=True)
    at = open_app(db, manager, "pools")
    at.checkbox(key=f"edit{pool.id}_confirm_status").check()
    at.run()
    button(at, "Open the pool").click()
    at.run()
    assert "Pool DRAFTY is now open." in toasts(at)
    assert pools.get_pool(db, actor=manager, pool_id=pool.id).status == "open"


def test_admin_edits_a_pool_whose_manager_was_deactivated(db):
    admin = make_user(db, "admin")
    gone, stays = make_user(db, "manager"), make_user(db, "manager")
    pool = pools.create_pool(db, actor=admin, code="LEFT", settings=pools.PoolSettings(name="Left"),
                             manager_ids=[gone.id, stays.id])
    users.set_status(db, actor=admin, user_id=gone.id, status="deactivated")
    at = open_app(db, admin, "pools")
    assert not at.exception
    managers = at.multiselect(key=f"edit{pool.id}_managers")
    assert managers.value == [gone.id, stays.id]
    assert managers.format_func(gone.id).endswith("(deactivated manager: remove)")
    button(at, "Save changes").click()  # keeping them is refused, with the reason next to the field
    at.run()
    assert errors(at) == [f"These users cannot manage pools (not active managers): [{gone.id}]."]
    at.multiselect(key=f"edit{pool.id}_managers").unselect(gone.id)
    button(at, "Save changes").click()
    at.run()
    assert list(pools.get_pool(db, actor=admin, pool_id=pool.id).manager_ids) == [stays.id]


# --- transactions ------------------------------------------------------------------------------

def _manager_world(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor", email="inv@example.com")
    pool = make_pool(db, manager, code="FLOW", inception=date(2024, 1, 1))
    # the investor is linked to the pool by an accepted invitation
    auth.invite_user(db, actor=manager, email="inv2@example.com", name="Invited", role="investor", pool_id=pool.id)
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                               key="first", payment="received")
    return manager, investor, pool


def test_record_contribution_error_then_success_settles_in_the_feed(db):
    manager, investor, pool = _manager_world(db)
    at = open_app(db, manager, "transactions")
    at.text_input(key="flow_amount").input("-5")
    button(at, "Record contribution").click()
    at.run()
    assert errors(at) == ["amount must be greater than zero."]
    assert count(db, Transaction) == 1
    at.text_input(key="flow_amount").input("2,500.00")
    at.radio(key="flow_payment").set_value("received")
    button(at, "Record contribution").click()
    at.run()
    assert any(t.startswith("Contribution #2 recorded: settled") for t in toasts(at))
    assert at.text_input(key="flow_amount").value == ""  # cleared for the next one
    feed = [df.value for df in at.dataframe if "Settled" in df.value.columns][0]
    assert feed.iloc[0][["Amount", "Status", "Units"]].tolist() == ["USD 2,500.00", "settled", "250.000000"]


def test_gateway_contribution_waits_as_pending(db):
    manager, investor, pool = _manager_world(db)
    at = open_app(db, manager, "transactions")
    at.text_input(key="flow_amount").input("300")
    button(at, "Record contribution").click()
    at.run()
    with db.read() as session:
        tx = session.scalar(select(Transaction).order_by(Transaction.id.desc()))
    assert (tx.status, tx.amount) == ("pending", 300)


def test_double_submission_posts_once(db):
    manager, investor, pool = _manager_world(db)
    at = open_app(db, manager, "transactions")
    at.session_state["idem:flow"] = "same-submission"
    at.text_input(key="flow_amount").input("700")
    at.radio(key="flow_payment").set_value("received")
    button(at, "Record contribution").click()
    at.run()
    assert count(db, Transaction, Transaction.amount == 700) == 1
    # the second click of a double click arrives with the same form state and key
    at.session_state["idem:flow"] = "same-submission"
    at.text_input(key="flow_amount").input("700")
    at.radio(key="flow_payment").set_value("received")
    button(at, "Record contribution").click()
    at.run()
    assert count(db, Transaction, Transaction.amount == 700) == 1
    assert any("already recorded" in t for t in toasts(at))


def test_a_double_click_on_confirm_valuation_records_it_once(db):
    manager, investor, pool = _manager_world(db)
    at = open_app(db, manager, "transactions")
    at.text_input(key="val_assets").input("110.00")
    button(at, "Preview").click()
    at.run()
    at.session_state["idem:valuation"] = "same-click"
    preview = at.session_state["valuation_preview"]
    button(at, "Confirm valuation").click()
    at.run()
    assert count(db, Valuation) == 1
    # the second click arrives with the same preview and the same key
    at.session_state["idem:valuation"] = "same-click"
    at.session_state["valuation_preview"] = preview
    at.run()
    button(at, "Confirm valuation").click()
    at.run()
    assert count(db, Valuation) == 1
    assert "This valuation was already recorded; nothing new was written." in toasts(at)


def test_a_double_click_on_an_investors_request_sends_it_once(db):
    manager, investor, pool = _manager_world(db)
    at = open_app(db, investor, "portfolio")
    for _ in range(2):  # the second click arrives with the same form state and key
        at.session_state["idem:request"] = "same-request"
        at.text_input(key="req_amount").input("40")
        button(at, "Send request").click()
        at.run()
    assert count(db, Transaction, Transaction.status == "requested") == 1
    assert "This request was already sent." in toasts(at)


def test_valuation_preview_then_confirm(db):
    manager, investor, pool = _manager_world(db)
    at = open_app(db, manager, "transactions")
    at.text_input(key="val_assets").input("not money")
    button(at, "Preview").click()
    at.run()
    assert errors(at) == ["total assets: 'not money' is not a number."]
    at.text_input(key="val_assets").input("110.00")
    button(at, "Preview").click()
    at.run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["NAV per unit"] == "11.00"
    assert count(db, Valuation) == 0  # a preview writes nothing
    button(at, "Confirm valuation").click()
    at.run()
    assert "Valuation recorded: NAV per unit 11.00." in toasts(at)
    assert count(db, Valuation) == 1


def test_distribution_preview_shows_each_part_then_confirm(db):
    manager, investor, pool = _manager_world(db)
    at = open_app(db, manager, "transactions")
    at.text_input(key="dist_total").input("10.00")
    [b for b in at.button if b.label == "Preview"][1].click()
    at.run()
    assert "10.00 to 1 holder(s)" in texts(at)
    parts = [df.value for df in at.dataframe if "Part" in df.value.columns][0]
    assert parts.iloc[0][["Investor", "Part"]].tolist() == ["inv@example.com", "USD 10.00"]
    assert count(db, Distribution) == 0
    button(at, "Confirm distribution").click()
    at.run()
    assert count(db, Distribution) == 1
    assert "Distribution of USD 10.00 declared." in toasts(at)


def test_approve_and_reject_requests(db):
    manager, investor, pool = _manager_world(db)
    first = ledger.record_contribution(db, actor=investor, pool_id=pool.id, investor_id=investor.id, amount="50",
                                       key="r1")
    second = ledger.record_contribution(db, actor=investor, pool_id=pool.id, investor_id=investor.id, amount="60",
                                        key="r2")
    at = open_app(db, manager, "transactions")
    at.radio(key="approve_payment").set_value("received")
    at.button(key=f"approve_{first.id}").click()
    at.run()
    at.button(key=f"reject_{second.id}").click()
    at.run()
    assert ledger.get_transaction(db, actor=manager, transaction_id=first.id).status == "settled"
    assert ledger.get_transaction(db, actor=manager, transaction_id=second.id).status == "cancelled"
    assert "No investor requests are waiting for approval." in texts(at)


def test_a_request_to_withdraw_everything_says_so(db):
    manager, investor, pool = _manager_world(db)
    request = ledger.record_withdrawal(db, actor=investor, pool_id=pool.id, investor_id=investor.id, key="all",
                                       all_units=True)
    at = open_app(db, manager, "transactions")
    shown = texts(at)
    assert f"#{request.id} · {date.today().isoformat()} · " in shown
    assert "· withdrawal of all units" in shown
    assert f"Latest: #{request.id} withdrawal of all units for " in shown  # the live feed's caption


def test_manager_invites_an_investor_and_sees_the_link(db):
    manager, investor, pool = _manager_world(db)
    at = open_app(db, manager, "transactions")
    at.text_input(key="inv_name").input("Nia")
    at.text_input(key="inv_email").input("not-an-email")
    button(at, "Invite to FLOW").click()
    at.run()
    assert errors(at) == ["'not-an-email' is not an email address."]
    at.text_input(key="inv_email").input("nia@example.com")
    button(at, "Invite to FLOW").click()
    at.run()
    assert at.code[0].value.startswith("http://localhost:8501/?invite=")
    assert count(db, Invitation, Invitation.email == "nia@example.com") == 1


# --- investor ----------------------------------------------------------------------------------

def test_investor_requests_a_contribution_and_downloads_a_statement(db):
    manager, investor, pool = _manager_world(db)
    at = open_app(db, investor, "portfolio")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Value (USD)"] == "USD 100.00"
    at.text_input(key="req_amount").input("0")
    button(at, "Send request").click()
    at.run()
    assert errors(at) == ["amount must be greater than zero."]
    at.text_input(key="req_amount").input("40")
    button(at, "Send request").click()
    at.run()
    assert any(t.startswith("Request #") for t in toasts(at))
    assert count(db, Transaction, Transaction.status == "requested") == 1
    assert at.get("download_button")[0].proto.label == "Download statement (CSV)"


def test_notification_preferences_need_a_phone_for_sms(db):
    investor = make_user(db, "investor")
    at = open_app(db, investor, "notifications")
    at.checkbox(key="pref_contribution_settled_sms").check()
    button(at, "Save preferences").click()
    at.run()
    assert errors(at) == ["Add a phone number before turning on SMS."]
    at.text_input(key="pref_phone").input("+447700900123")
    button(at, "Save preferences").click()
    at.run()
    assert "Preferences saved." in toasts(at)
    # Clearing the number while SMS stays on is refused as a whole: the number is kept.
    at.text_input(key="pref_phone").input("")
    button(at, "Save preferences").click()
    at.run()
    assert errors(at) == ["Add a phone number before turning on SMS."]
    assert users.get_user(db, actor=investor, user_id=investor.id).phone == "+447700900123"


# --- admin -------------------------------------------------------------------------------------

def test_admin_invites_verifies_the_chain_and_unlocks(db):
    admin = make_user(db, "admin")
    at = open_app(db, admin, "admin")
    at.text_input(key="invite_name").input("Ana")
    at.text_input(key="invite_email").input("ana@example.com")
    at.selectbox(key="invite_role").set_value("analyst")
    button(at, "Send invitation").click()
    at.run()
    assert "Invitation created for ana@example.com." in texts(at)
    button(at, "Verify chain").click()
    at.run()
    assert any(s.value.startswith("The audit chain is intact:") for s in at.success)
