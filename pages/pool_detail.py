"""Pool detail: unit value over time, holders, flows, valuations, fees and distributions of one pool."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from app.components import format as fmt
from app.components.tables import show_table
from app.db import get_db, read_model
from app.guard import require_roles
from core.domain.errors import PooldeskError
from core.services import pools as pool_service

actor = require_roles("admin", "manager", "analyst")
db = get_db()
st.title("Pool detail")

choices = pool_service.list_pools(db, actor=actor)
if not choices:
    st.info("No pools to show yet." + (" Create one on the Pools page." if actor.role != "analyst" else ""))
    st.stop()
codes = [p.code for p in choices]
wanted = st.query_params.get("pool")
index = codes.index(wanted) if wanted in codes else 0
chosen = st.selectbox("Pool", choices, index=index, format_func=lambda p: f"{p.code} · {p.name}", key="detail_pool")
st.query_params["pool"] = chosen.code

try:
    with st.spinner("Loading the pool..."):
        detail = read_model("pool_detail", actor, pool_id=chosen.id)
        holders = read_model("pool_holders", actor, pool_id=chosen.id)
        flows = read_model("transaction_feed", actor, pool_id=chosen.id, limit=200)
except PooldeskError as exc:
    st.error(fmt.md(exc.message))
    st.stop()

pool = detail.pool
a, b, c, d = st.columns([3, 2, 2, 1])  # money needs the room
a.metric("NAV", fmt.money(pool.nav, pool.currency))
b.metric("NAV per unit", fmt.price(pool.nav_per_unit))
c.metric("Units outstanding", fmt.units(pool.units_outstanding))
d.metric("Holders", pool.holders)
st.caption(f"Status: {pool.status} · last valuation: {fmt.day(pool.last_valuation_date) or 'none yet'}")

if detail.valuations:
    figure = go.Figure(go.Scatter(
        x=[v["date"] for v in detail.valuations], y=[float(v["nav_per_unit"]) for v in detail.valuations],
        mode="lines+markers" if len(detail.valuations) < 60 else "lines", name="NAV per unit"))
    figure.update_layout(title="NAV per unit", height=320, margin=dict(l=10, r=10, t=40, b=10),
                         yaxis_title=pool.currency, xaxis_title=None)
    st.plotly_chart(figure, width="stretch")
else:
    st.info("No valuations yet: record one on the Transactions page to start the unit value history.")

tabs = st.tabs(["Holders", "Flows", "Valuations", "Fee accruals", "Distributions"])
with tabs[0]:
    show_table(holders, {
        "Investor": lambda h: h.investor, "Units": lambda h: fmt.units(h.units),
        "Value": lambda h: fmt.money(h.value, pool.currency), "Share": lambda h: fmt.percent(h.share),
        "Contributed": lambda h: fmt.money(h.contributed, pool.currency),
        "Withdrawn": lambda h: fmt.money(h.withdrawn, pool.currency),
        "Distributions": lambda h: fmt.money(h.distributions, pool.currency),
    }, empty="Nobody holds units yet. Record a contribution on the Transactions page.")
with tabs[1]:
    show_table(flows, {
        "Id": lambda r: r.id, "Date": lambda r: fmt.day(r.effective_date), "Investor": lambda r: r.investor,
        "Type": lambda r: r.kind, "Status": lambda r: r.status, "Amount": lambda r: fmt.money(r.amount, r.currency),
        "Units": lambda r: fmt.units(r.units), "Price": lambda r: fmt.price(r.price),
    }, empty="No contributions or withdrawals yet.")
with tabs[2]:
    show_table(reversed(detail.valuations), {
        "Date": lambda v: fmt.day(v["date"]), "Total assets": lambda v: fmt.money(v["total_assets"], pool.currency),
        "Management fee": lambda v: fmt.money(v["management_fee"], pool.currency),
        "Performance fee": lambda v: fmt.money(v["performance_fee"], pool.currency),
        "NAV": lambda v: fmt.money(v["nav"], pool.currency), "NAV per unit": lambda v: fmt.price(v["nav_per_unit"]),
    }, empty="No valuations yet.")
with tabs[3]:
    show_table(detail.fee_accruals, {
        "Date": lambda f: fmt.day(f["date"]), "Fee": lambda f: f["kind"],
        "Amount": lambda f: fmt.money(f["amount"], pool.currency), "How": lambda f: f["basis"],
    }, empty="No fees accrued yet.")
with tabs[4]:
    show_table(detail.distributions, {
        "Record date": lambda d: fmt.day(d["record_date"]), "Total": lambda d: fmt.money(d["total"], pool.currency),
        "Per unit": lambda d: fmt.price(d["per_unit"]), "NAV per unit after": lambda d: fmt.price(d["nav_per_unit_after"]),
    }, empty="No distributions declared yet.")
