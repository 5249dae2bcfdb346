"""Overview: the first screen, with what matters to each role."""
from __future__ import annotations

import streamlit as st

from app.components import format as fmt
from app.components.tables import show_table
from app.db import read_model
from app.guard import require_roles

actor = require_roles("admin", "manager", "investor", "analyst")
st.title("Overview")


def pools_table(pools) -> None:
    show_table(pools, {
        "Code": lambda p: p.code, "Name": lambda p: p.name, "Status": lambda p: p.status,
        "NAV": lambda p: fmt.money(p.nav, p.currency), "NAV per unit": lambda p: fmt.price(p.nav_per_unit),
        "Units outstanding": lambda p: fmt.units(p.units_outstanding), "Holders": lambda p: p.holders,
        "Last valuation": lambda p: fmt.day(p.last_valuation_date),
    }, empty="No pools yet. Create one on the Pools page.")


def figures_by_currency(aum, first, first_label: str, second, second_label: str) -> None:
    """One row of figures per currency (a sum across currencies would mean nothing)."""
    currencies = sorted(set(aum) | {f.currency for f in first} | {f.currency for f in second})
    if not currencies:
        st.info("No money in any pool yet.")
        return
    by_first = {f.currency: f.net for f in first}
    by_second = {f.currency: f.net for f in second}
    for currency in currencies:
        a, b, c = st.columns(3)
        a.metric(f"Assets under management ({currency})", fmt.money(aum.get(currency, 0), currency))
        b.metric(f"{first_label} ({currency})", fmt.money(by_first.get(currency, 0), currency))
        c.metric(f"{second_label} ({currency})", fmt.money(by_second.get(currency, 0), currency))


def manager() -> None:
    with st.spinner("Loading figures..."):
        data = read_model("manager_overview", actor)
    figures_by_currency(data.assets_under_management, data.flows_today, "Net flows today",
                        data.flows_month, "Net flows this month")
    a, b = st.columns(3)[:2]
    a.metric("Pending approvals", data.pending_approvals)
    b.metric("Failed payments (30 days)", data.failed_payments_30d)
    if data.failed_payments_30d:
        st.warning(f"{data.failed_payments_30d} payment(s) failed in the last 30 days: see Transactions.")
    if data.pending_approvals:
        st.info(f"{data.pending_approvals} investor request(s) wait for your approval: see Transactions → Requests.")
    st.subheader("Pools")
    pools_table(data.pools)


def investor() -> None:
    with st.spinner("Loading your holdings..."):
        data = read_model("portfolio", actor)
    if not data.holdings:
        st.info("You hold no units yet. Request a contribution on My portfolio, or wait for your manager to record one.")
        return
    for currency, totals in data.totals.items():
        a, b, c = st.columns(3)
        a.metric(f"Total value ({currency})", fmt.money(totals["value"], currency))
        b.metric("Gain", fmt.money(totals["gain"], currency))
        c.metric("Contributed", fmt.money(totals["contributed"], currency))
    st.subheader("Holdings")
    show_table(data.holdings, {
        "Pool": lambda h: f"{h.pool_code} · {h.pool_name}", "Units": lambda h: fmt.units(h.units),
        "Unit value": lambda h: fmt.price(h.nav_per_unit), "Value": lambda h: fmt.money(h.value, h.currency),
        "Gain": lambda h: fmt.money(h.gain, h.currency),
        "As of": lambda h: fmt.day(h.as_of) or "no valuation yet",
    }, empty="No holdings.")
    st.subheader("Recent activity")
    show_table(data.recent, {
        "Date": lambda r: fmt.day(r.effective_date), "Pool": lambda r: r.pool_code, "Type": lambda r: r.kind,
        "Status": lambda r: r.status, "Amount": lambda r: fmt.money(r.amount, r.currency),
        "Units": lambda r: fmt.units(r.units),
    }, empty="No activity yet.")


def analyst() -> None:
    with st.spinner("Loading figures..."):
        data = read_model("analyst_overview", actor)
    figures_by_currency(data.assets_under_management, data.flows_month, "Net flows this month",
                        data.flows_year, "Net flows this year")
    st.metric("Investors holding units", data.investors)
    st.subheader("Pools")
    pools_table(data.pools)


def admin() -> None:
    with st.spinner("Loading..."):
        data = read_model("admin_overview", actor)
    a, b, c, d = st.columns(4)
    a.metric("Active users", sum(data.users_by_role.values()))
    b.metric("Invitations waiting", data.invited)
    c.metric("Jobs waiting", data.jobs_waiting)
    d.metric("Jobs failed", data.jobs_failed)
    st.caption(" · ".join(f"{role}: {n}" for role, n in data.users_by_role.items()) +
               (f" · locked accounts: {data.locked}" if data.locked else ""))
    st.subheader("Recent audit events")
    show_table(data.recent_audit, {
        "When": lambda e: fmt.day(e.at), "Who": lambda e: e.actor_email or "system", "Action": lambda e: e.action,
        "Entity": lambda e: f"{e.entity} {e.entity_id}",
    }, empty="Nothing has happened yet.")


{"manager": manager, "investor": investor, "analyst": analyst, "admin": admin}[actor.role]()
