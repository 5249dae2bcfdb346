"""Transactions: record flows, approve requests, value a pool, declare a distribution, watch payments settle."""
from __future__ import annotations

from datetime import timedelta

import streamlit as st

from app.auth import ENDED, ask_reauth, reauth_prompt, session_is_live
from app.components import format as fmt
from app.components.forms import FieldErrors, date_field, flash, renew_key, submission_key
from app.components.tables import show_table
from app.db import get_db
from app.guard import require_roles
from core.domain.errors import PooldeskError, ReauthenticationRequired
from core.services import auth as auth_service
from core.services import dashboard, ledger, valuations
from core.services import pools as pool_service

actor = require_roles("admin", "manager")
db = get_db()
st.title("Transactions")

PAYMENT_IN = {"gateway": "Collect through the payment gateway", "received": "Money already received"}
PAYMENT_OUT = {"gateway": "Pay through the payment gateway", "received": "Already paid outside Pooldesk"}

managed = [p for p in pool_service.list_pools(db, actor=actor) if actor.role == "admin" or actor.id in p.manager_ids]
if not managed:
    st.info("You manage no pools yet. Create one on the Pools page.")
    st.stop()
pool = st.selectbox("Pool", managed, format_func=lambda p: f"{p.code} · {p.name} ({p.status})", key="tx_pool")
currency = pool.currency


def record_flow() -> None:
    kind = st.radio("Type", ["contribution", "withdrawal"], horizontal=True, key="flow_kind",
                    format_func=str.capitalize)
    mode = "amount"
    if kind == "withdrawal":
        mode = st.radio("Withdraw", ["amount", "units", "all"], horizontal=True, key="flow_mode",
                        format_func={"amount": "an amount", "units": "a number of units", "all": "everything"}.get)
    investors = dashboard.investor_choices(db, actor=actor, pool_id=pool.id)
    if not investors:
        st.info("No active investor can transact in this pool yet: invite one in the Investors tab, "
                "and they appear here once they have accepted.")
        return
    if st.session_state.pop("flow_clear", False):
        # Set (not just forget) the values before the widgets exist, so the browser shows them cleared.
        for name in ("flow_amount", "flow_units", "flow_note"):
            st.session_state[name] = ""
    errors = FieldErrors()
    with st.form("record_flow"):
        investor = st.selectbox("Investor", investors, format_func=lambda i: i.label, key="flow_investor")
        errors.slot("investor")
        value = ""
        if mode == "amount":
            value = st.text_input(f"Amount ({currency})", key="flow_amount", placeholder="e.g. 1,000.00")
        elif mode == "units":
            value = st.text_input("Units", key="flow_units", placeholder="e.g. 12.5")
        errors.slot("amount")
        errors.slot("units")
        effective = date_field("Date", key="flow_date")
        errors.slot("effective_date")
        labels = PAYMENT_IN if kind == "contribution" else PAYMENT_OUT
        payment = st.radio("Payment", list(labels), format_func=labels.get, key="flow_payment")
        note = st.text_input("Note (optional)", key="flow_note")
        errors.general()
        submitted = st.form_submit_button(f"Record {kind}", type="primary")
    if not submitted:
        return
    key = submission_key("flow")
    try:
        with st.spinner("Recording..."):
            if kind == "contribution":
                tx = ledger.record_contribution(db, actor=actor, pool_id=pool.id, investor_id=investor.id, amount=value,
                                                key=key, effective_date=effective, payment=payment, note=note)
            else:
                tx = ledger.record_withdrawal(db, actor=actor, pool_id=pool.id, investor_id=investor.id, key=key,
                                              amount=value if mode == "amount" else None,
                                              units=value if mode == "units" else None, all_units=mode == "all",
                                              effective_date=effective, payment=payment, note=note)
    except PooldeskError as exc:
        errors.show(exc)
        return
    renew_key("flow")
    st.session_state["flow_clear"] = True
    if tx.replayed:
        flash(f"This {kind} was already recorded (#{tx.id}); nothing new was written.", icon="ℹ️")
    else:
        flash(f"{kind.capitalize()} #{tx.id} recorded: {tx.status}.")
    st.rerun()


def requests() -> None:
    waiting = dashboard.transaction_feed(db, actor=actor, pool_id=pool.id, statuses=("requested",), limit=100)
    if not waiting:
        st.info("No investor requests are waiting for approval.")
        return
    payment = st.radio("When approving a contribution", list(PAYMENT_IN), format_func=PAYMENT_IN.get,
                       horizontal=True, key="approve_payment")
    for row in waiting:
        cols = st.columns([4, 1, 1])
        cols[0].write(f"#{row.id} · {fmt.day(row.effective_date)} · {fmt.md(row.investor)} · {row.kind} of "
                      f"{_flow_size(row)}")
        if cols[1].button("Approve", key=f"approve_{row.id}", type="primary"):
            try:
                ledger.approve_request(db, actor=actor, transaction_id=row.id, expected_version=row.version,
                                       payment=payment)
            except ReauthenticationRequired as exc:  # a large withdrawal: confirm, then approve again
                ask_reauth(exc.message, "approve")
            except PooldeskError as exc:
                st.error(fmt.md(exc.message))
            else:
                flash(f"Request #{row.id} approved.")
                st.rerun()
        if cols[2].button("Reject", key=f"reject_{row.id}"):
            try:
                ledger.cancel_transaction(db, actor=actor, transaction_id=row.id, reason="rejected by the manager",
                                          expected_version=row.version)
            except PooldeskError as exc:
                st.error(fmt.md(exc.message))
            else:
                flash(f"Request #{row.id} rejected.")
                st.rerun()
    reauth_prompt(db, actor, "approve")


def confirm_step(name: str, prefix: str, label: str, working: str, save, saved_text, replayed_text: str,
                 clear: str) -> None:
    """Confirm or discard a previewed valuation/distribution; saving carries the form's idempotency key."""
    confirm, discard = st.columns(2)
    if discard.button("Discard", key=f"{prefix}_discard"):
        st.session_state.pop(f"{name}_preview", None)
        st.rerun()
    if confirm.button(label, type="primary", key=f"{prefix}_confirm"):
        try:
            with st.spinner(working):
                saved = save(submission_key(name))
        except PooldeskError as exc:
            st.error(fmt.md(exc.message))
            return
        renew_key(name)
        st.session_state.pop(f"{name}_preview", None)
        st.session_state.pop(clear, None)
        flash(replayed_text if saved.replayed else saved_text(saved))
        st.rerun()


def valuation() -> None:
    errors = FieldErrors()
    pending = st.session_state.get("valuation_preview")
    if pending and pending["pool_id"] != pool.id:
        pending = None
    with st.form("valuation"):
        valued_on = date_field("Valuation date", key="val_date")
        errors.slot("valuation_date")
        assets = st.text_input(f"Total assets V ({currency})", key="val_assets",
                               help="Holdings at market plus cash, before fees.")
        errors.slot("total assets")
        note = st.text_input("Note (optional)", key="val_note")
        errors.general()
        preview = st.form_submit_button("Preview")
    if preview:
        try:
            result = valuations.record_valuation(db, actor=actor, pool_id=pool.id, valuation_date=valued_on,
                                                 total_assets=assets, key=None, preview=True)
        except PooldeskError as exc:
            errors.show(exc)
            st.session_state.pop("valuation_preview", None)
            return
        pending = {"pool_id": pool.id, "date": valued_on, "assets": assets, "note": note, "result": result}
        st.session_state["valuation_preview"] = pending
    if not pending:
        return
    result = pending["result"]
    st.markdown(f"**Preview for {fmt.day(result.valuation_date)}** (nothing is saved yet)")
    a, b, c, d = st.columns(4)
    a.metric("NAV per unit", fmt.price(result.nav_per_unit),
             delta=f"{fmt.price(result.nav_per_unit - result.previous_nav_per_unit)} vs {fmt.price(result.previous_nav_per_unit)}")
    b.metric("NAV", fmt.money(result.nav, currency))
    c.metric("Management fee", fmt.money(result.management_fee, currency),
             help=f"{result.management_fee_days} days accrued")
    d.metric("Performance fee", fmt.money(result.performance_fee, currency))
    confirm_step("valuation", "val", "Confirm valuation", "Recording the valuation...",
                 lambda key: valuations.record_valuation(db, actor=actor, pool_id=pool.id,
                                                         valuation_date=pending["date"], total_assets=pending["assets"],
                                                         note=pending["note"], key=key),
                 lambda saved: f"Valuation recorded: NAV per unit {fmt.price(saved.nav_per_unit)}.",
                 "This valuation was already recorded; nothing new was written.", clear="val_assets")


def distribution() -> None:
    errors = FieldErrors()
    pending = st.session_state.get("distribution_preview")
    if pending and pending["pool_id"] != pool.id:
        pending = None
    with st.form("distribution"):
        record_date = date_field("Record date", key="dist_date")
        errors.slot("record_date")
        total = st.text_input(f"Total to distribute ({currency})", key="dist_total")
        errors.slot("distribution total")
        note = st.text_input("Note (optional)", key="dist_note")
        errors.general()
        preview = st.form_submit_button("Preview")
    if preview:
        try:
            result = valuations.declare_distribution(db, actor=actor, pool_id=pool.id, record_date=record_date,
                                                     total=total, key=None, preview=True)
        except PooldeskError as exc:
            errors.show(exc)
            st.session_state.pop("distribution_preview", None)
            return
        pending = {"pool_id": pool.id, "date": record_date, "total": total, "note": note, "result": result}
        st.session_state["distribution_preview"] = pending
    if not pending:
        return
    result = pending["result"]
    st.markdown(f"**Preview: {fmt.money(result.total, currency)} to {len(result.parts)} holder(s)** "
                f"(nothing is saved yet). NAV per unit {fmt.price(result.nav_per_unit_before)} → "
                f"{fmt.price(result.nav_per_unit_after)}.")
    show_table(result.parts, {
        "Investor": lambda p: p.investor_email, "Units on record date": lambda p: fmt.units(p.units),
        "Part": lambda p: fmt.money(p.amount, currency), "Reinvested": lambda p: "yes" if p.reinvest else "no",
    }, empty="Nobody would receive anything.")
    confirm_step("distribution", "dist", "Confirm distribution", "Declaring...",
                 lambda key: valuations.declare_distribution(db, actor=actor, pool_id=pool.id,
                                                             record_date=pending["date"], total=pending["total"],
                                                             note=pending["note"], key=key),
                 lambda saved: f"Distribution of {fmt.money(saved.total, currency)} declared.",
                 "This distribution was already declared; nothing new was written.", clear="dist_total")


def investors() -> None:
    errors = FieldErrors()
    with st.form("invite_investor", clear_on_submit=False):
        name = st.text_input("Name", key="inv_name")
        errors.slot("name")
        email = st.text_input("Email", key="inv_email")
        errors.slot("email")
        errors.general()
        sent = st.form_submit_button(f"Invite to {fmt.md(pool.code)}", type="primary")
    if sent:
        try:
            result = auth_service.invite_user(db, actor=actor, email=email, name=name, role="investor", pool_id=pool.id)
        except PooldeskError as exc:
            errors.show(exc)
        else:
            if result.link:
                st.success(f"Invitation created for {fmt.md(result.email)}. Email is not configured: "
                           "give them this link "
                           f"(valid until {fmt.day(result.expires_at)}, works once):")
                st.code(result.link, language=None)
            else:
                st.success(f"Invitation emailed to {fmt.md(result.email)}.")


def _flow_size(row) -> str:
    """What a flow is for: its amount, its units, or (a withdrawal of everything not yet priced) all units."""
    if row.amount is not None:
        return fmt.money(row.amount, row.currency)
    if row.units is not None:
        return f"{fmt.units(row.units)} units"
    return "all units"


@st.fragment(run_every=timedelta(seconds=3))
def live_feed(pool_id: int) -> None:
    if not session_is_live(db):  # a timed rerun skips the page's sign-in check
        st.warning(ENDED)
        return
    rows = dashboard.transaction_feed(db, actor=actor, pool_id=pool_id, limit=15)
    if rows:
        latest = rows[0]
        st.caption(f"Latest: #{latest.id} {latest.kind} of {_flow_size(latest)} "
                   f"for {fmt.md(latest.investor)}: **{latest.status}**")
    show_table(rows, {
        "Id": lambda r: r.id, "Created": lambda r: fmt.day(r.created_at), "Investor": lambda r: r.investor,
        "Type": lambda r: r.kind, "Amount": lambda r: fmt.money(r.amount, r.currency),
        "Units": lambda r: fmt.units(r.units), "Status": lambda r: r.status,
        "Settled": lambda r: fmt.day(r.settled_at), "Reason": lambda r: r.failure_reason or "",
    }, empty="No transactions yet in this pool.")


tab_flow, tab_requests, tab_valuation, tab_distribution, tab_investors = st.tabs(
    ["Record a flow", "Requests", "Valuation", "Distribution", "Investors"])
with tab_flow:
    record_flow()
with tab_requests:
    requests()
with tab_valuation:
    valuation()
with tab_distribution:
    distribution()
with tab_investors:
    investors()
st.subheader("Live feed")
st.caption("Refreshes by itself every few seconds.")
live_feed(pool.id)
