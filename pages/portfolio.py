"""My portfolio: an investor's holdings, value and gain, history, requests and statement."""
from __future__ import annotations

from datetime import date

import plotly.graph_objects as go
import streamlit as st

from app.components import format as fmt
from app.components.forms import FieldErrors, flash, renew_key, submission_key
from app.components.tables import show_table
from app.db import get_db, read_model
from core.domain.errors import PooldeskError
from app.guard import require_roles
from core.services import dashboard, ledger
from core.services import pools as pool_service

actor = require_roles("investor")
db = get_db()
st.title("My portfolio")

with st.spinner("Loading your holdings..."):
    data = read_model("portfolio", actor)

if not data.holdings:
    st.info("You hold no units yet. Request a contribution below; your manager approves it.")
for currency, totals in data.totals.items():
    a, b, c = st.columns(3)
    a.metric(f"Value ({currency})", fmt.money(totals["value"], currency))
    b.metric("Gain", fmt.money(totals["gain"], currency))
    c.metric("Contributed", fmt.money(totals["contributed"], currency))
    d, e, _ = st.columns(3)
    d.metric("Withdrawn", fmt.money(totals["withdrawn"], currency))
    e.metric("Distributions", fmt.money(totals["distributions"], currency))

if data.holdings:
    # Two narrower tables rather than one that scrolls sideways on a laptop screen.
    show_table(data.holdings, {
        "Pool": lambda h: f"{h.pool_code} · {h.pool_name}", "Units": lambda h: fmt.units(h.units),
        "Unit value": lambda h: fmt.price(h.nav_per_unit),
        "As of": lambda h: fmt.day(h.as_of) or "no valuation yet",
        "Value": lambda h: fmt.money(h.value, h.currency), "Gain": lambda h: fmt.money(h.gain, h.currency),
    }, empty="No holdings.", key="holdings_table")
    st.caption("Money in and out, per pool")
    show_table(data.holdings, {
        "Pool": lambda h: f"{h.pool_code} · {h.pool_name}",
        "Contributed": lambda h: fmt.money(h.contributed, h.currency),
        "Withdrawn": lambda h: fmt.money(h.withdrawn, h.currency),
        "Distributions": lambda h: fmt.money(h.distributions, h.currency),
    }, empty="No holdings.", key="money_table")

    st.subheader("Returns")
    with st.spinner("Computing your returns..."):
        returns = read_model("portfolio_returns", actor)
    for total in returns.totals:
        st.metric(f"Your return overall ({total['currency']}, XIRR a year)", fmt.percent(total["xirr"]),
                  help="Money-weighted: your contributions, withdrawals and cash distributions in every "
                       f"{total['currency']} pool, with today's value as the last flow. n/a when it has no solution.")
    show_table(returns.positions, {
        "Pool": lambda r: f"{r['code']} · {r['name']}",
        "Cost basis": lambda r: fmt.money(r["cost_basis"], r["currency"]),
        "Gain": lambda r: fmt.money(r["gain"], r["currency"]),
        "Your return (XIRR a year)": lambda r: fmt.percent(r["xirr"]),
        "Pool since inception (TWR)": lambda r: fmt.percent(returns.pool_twr[r["pool_id"]].twr),
    }, empty="No holdings.", key="returns_table")
    for r in returns.positions:
        with st.expander(f"Show the math: your return in {fmt.md(r['code'])}"):
            st.caption("XIRR solves for the yearly rate at which these dated flows (yours: money in negative, "
                       "money out positive, today's value last) are worth zero today (Actual/365).")
            show_table(returns.pool_flows[r["pool_id"]], {
                "Date": lambda f: fmt.day(f[0]), "Amount": lambda f, c=r["currency"]: fmt.money(f[1], c),
                "Flow": lambda f: f[2]}, empty="No flows yet.", key=f"xirr_math_{r['pool_id']}")
            st.caption("The pool's time-weighted return chains its unit value from one valuation to the next: "
                       "(p end + distribution per unit) / p start - 1 per step; flows do not move it.")
            show_table(returns.pool_twr[r["pool_id"]].sub_periods, {
                "From": lambda x: fmt.day(x.start), "To": lambda x: fmt.day(x.end),
                "p start": lambda x: fmt.price(x.start_price), "p end": lambda x: fmt.price(x.end_price),
                "Distribution per unit": lambda x: fmt.price(x.distribution_per_unit),
                "Return": lambda x: fmt.percent(x.period_return, 4),
            }, empty="No valuation since inception yet: the pool's return starts with its first valuation.",
                key=f"twr_math_{r['pool_id']}")
    for total in returns.totals:
        with st.expander(f"Show the math: your overall return ({total['currency']})"):
            show_table(returns.currency_flows[total["currency"]], {
                "Date": lambda f: fmt.day(f[0]), "Amount": lambda f, c=total["currency"]: fmt.money(f[1], c),
                "Flow": lambda f: f[2]}, empty="No flows yet.", key=f"xirr_total_{total['currency']}")

    holding = st.selectbox("History of", data.holdings, format_func=lambda h: f"{h.pool_code} · {h.pool_name}",
                           key="history_pool")
    points = read_model("holding_history", actor, pool_id=holding.pool_id)
    if len(points) > 1:
        figure = go.Figure(go.Scatter(x=[p["date"] for p in points], y=[float(p["value"]) for p in points],
                                      mode="lines", name="Value"))
        figure.update_layout(title=f"Value of your {holding.pool_code} holding", height=300,
                             margin=dict(l=10, r=10, t=40, b=10), yaxis_title=holding.currency)
        st.plotly_chart(figure, width="stretch")
    else:
        st.caption("The history chart appears after the pool's next valuation.")
    reinvest = st.toggle("Reinvest my distributions from this pool", value=holding.reinvest_distributions,
                         key=f"reinvest_{holding.pool_id}")
    if reinvest != holding.reinvest_distributions:
        try:
            ledger.set_reinvestment(db, actor=actor, pool_id=holding.pool_id, investor_id=actor.id, reinvest=reinvest)
        except PooldeskError as exc:
            st.error(fmt.md(exc.message))
        else:
            flash("Reinvestment choice saved.")
            st.rerun()

st.subheader("Request a contribution or withdrawal")
open_pools = [p for p in pool_service.list_pools(db, actor=actor) if p.status == "open"]
if not open_pools:
    st.info("No pool is open for requests right now.")
else:
    kind = st.radio("Type", ["contribution", "withdrawal"], horizontal=True, key="req_kind", format_func=str.capitalize)
    errors = FieldErrors()
    with st.form("request_flow"):
        chosen = st.selectbox("Pool", open_pools, format_func=lambda p: f"{p.code} · {p.name} ({p.currency})",
                              key="req_pool")
        amount = st.text_input("Amount", key="req_amount", placeholder="e.g. 500.00",
                               help="In the pool's currency." + (" Leave empty and tick below to withdraw everything."
                                                                 if kind == "withdrawal" else ""))
        everything = st.checkbox("Withdraw everything", key="req_all") if kind == "withdrawal" else False
        errors.slot("amount")
        errors.general()
        sent = st.form_submit_button("Send request", type="primary")
    if sent:
        key = submission_key("request")
        try:
            if kind == "contribution":
                tx = ledger.record_contribution(db, actor=actor, pool_id=chosen.id, investor_id=actor.id,
                                                amount=amount, key=key)
            else:
                tx = ledger.record_withdrawal(db, actor=actor, pool_id=chosen.id, investor_id=actor.id, key=key,
                                              amount=None if everything else amount, all_units=everything)
        except PooldeskError as exc:
            errors.show(exc)
        else:
            renew_key("request")
            st.session_state.pop("req_amount", None)
            flash(f"Request #{tx.id} sent to your manager." if not tx.replayed else "This request was already sent.")
            st.rerun()

st.subheader("Statement")
# Built when the button is pressed, not on every page view (thousands of rows for an active investor).
st.download_button("Download statement (CSV)", data=lambda: dashboard.statement_csv(db, actor=actor),
                   file_name=f"pooldesk-statement-{date.today().isoformat()}.csv", mime="text/csv",
                   icon=":material/download:")
