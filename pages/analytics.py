"""Analytics: pool performance, risk, AUM and flows, with the math behind every return."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import pandas as pd
import plotly.express as px
import streamlit as st

from app.components.format import md
from app.db import get_db
from app.guard import require_roles
from core.analytics import exports, metrics
from core.domain.errors import PermissionDenied, ValidationError

actor = require_roles("admin", "analyst", "manager")
db = get_db()
st.title("Analytics")


def pct(value) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def text(value) -> str:
    return "" if value is None else str(value)


# Tables keep numbers as exact Decimals (so columns sort as numbers, not as text); these say how to show them.
def percent_points(value) -> Decimal | None:
    return None if value is None else (Decimal(value) * 100).quantize(Decimal("0.01"))


def money_value(value) -> Decimal | None:
    return None if value is None else Decimal(value).quantize(Decimal("0.01"))


PERCENT = st.column_config.NumberColumn(format="%.2f%%")
MONEY = st.column_config.NumberColumn(format="accounting")
UNITS = st.column_config.NumberColumn(format="%.6f")


end = st.date_input("As of", value=date.today(), key="an_end")
start = st.date_input("Range start (optional)", value=None, key="an_start")
try:
    overview = metrics.compare_pools(db, actor=actor, as_of=end, start=start)
except (PermissionDenied, ValidationError) as exc:
    st.error(md(exc.message))
    st.stop()
rows = overview["pools"]
if not rows:
    st.info("No pools to show yet.")
    st.stop()
codes = {r["code"]: r["pool_id"] for r in rows}
chosen = st.multiselect("Pools", list(codes), default=list(codes)[:5], key="an_pools",
                        help="The totals, the comparison, the charts and the details below are for these pools.")
chosen_rows = [r for r in rows if r["code"] in chosen]
if not chosen_rows:
    st.info("Choose one or more pools above.")
    st.stop()
if len(chosen_rows) < len(rows):
    st.caption(f"Showing {len(chosen_rows)} of {len(rows)} pools.")

totals = metrics.aum_by_currency(chosen_rows)
cols = st.columns(max(1, len(totals)))
for col, (currency, aum) in zip(cols, totals.items()):
    col.metric(f"Total AUM ({currency})", f"{aum:,.2f}")

st.subheader("Comparison")
table = pd.DataFrame([{
    "Pool": r["code"], "Currency": r["currency"], "NAV": money_value(r["nav"]), "Units": r["units_outstanding"],
    "NAV per unit": r["nav_per_unit"], "MTD": percent_points(r["returns"]["mtd"]["return"]),
    "YTD": percent_points(r["returns"]["ytd"]["return"]), "1y": percent_points(r["returns"]["1y"]["return"]),
    "3y p.a.": percent_points(r["returns"]["3y"]["annualised"]),
    "Since inception": percent_points(r["returns"]["since_inception"]["return"]),
    "Range": percent_points(r["returns"]["range"]["return"]), "Volatility": percent_points(r["volatility"]),
    "Sharpe": None if r["sharpe"] is None else Decimal(r["sharpe"]).quantize(Decimal("0.01")),
    "Max drawdown": percent_points((r["max_drawdown"] or {}).get("depth")), "Fees": money_value(r["fees"]["total"]),
    "Top-10 share": percent_points(r["top10_concentration"]), "Holders": r["holders"],
} for r in chosen_rows])
st.dataframe(table, hide_index=True, width="stretch", column_config={
    "NAV": MONEY, "Fees": MONEY, "Units": UNITS, "NAV per unit": UNITS,
    "Sharpe": st.column_config.NumberColumn(format="%.2f"),
    **{name: PERCENT for name in ("MTD", "YTD", "1y", "3y p.a.", "Since inception", "Range", "Volatility",
                                  "Max drawdown", "Top-10 share")}})
st.caption("Returns, volatility, drawdown and top-10 share in percent; None where a period has no data. "
           "Each pool's figures are explained below (Show the math).")
st.download_button("Download comparison (CSV)", table.to_csv(index=False).encode(), "pooldesk-comparison.csv",
                   "text/csv", key="an_dl_compare")

charts = metrics.pool_series(db, actor=actor, pool_ids=[codes[c] for c in chosen], as_of=end, start=start)
series = charts["series"].to_pandas()
names = {r["pool_id"]: r["code"] for r in rows}
series["pool"] = series["pool_id"].map(names)
for column in ("nav_per_unit", "total_assets", "nav"):
    series[column] = series[column].astype(float)  # floats for drawing only
measure = st.radio("Price chart", ["NAV per unit", "Total-return index"], horizontal=True, key="an_measure")
y = "nav_per_unit" if measure == "NAV per unit" else "tri_chart"
st.plotly_chart(px.line(series, x="date", y=y, color="pool", title=measure), key="an_chart_price")
st.plotly_chart(px.area(series, x="date", y="drawdown_chart", color="pool", title="Drawdown"),
                key="an_chart_dd")
st.plotly_chart(px.area(series.dropna(subset=["nav"]), x="date", y="nav", color="pool",
                        title="Assets under management (NAV, stacked)"), key="an_chart_aum")
flows = charts["monthly_flows"].to_pandas()
if len(flows):
    flows["pool"] = flows["pool_id"].map(names)
    flows["net_flow"] = flows["net_flow"].astype(float)
    st.plotly_chart(px.bar(flows, x="month", y="net_flow", color="pool", title="Net flows by month"),
                    key="an_chart_flows")

for r in chosen_rows:
    st.subheader(f"{md(r['code'])} · {md(r['name'])}")
    st.dataframe(pd.DataFrame([{
        "Period": key, "From": text(v["start"]), "To": text(v["end"]), "Days": v["days"],
        "Return": percent_points(v["return"]), "Annualised": percent_points(v["annualised"]),
    } for key, v in r["returns"].items()]), hide_index=True, width="stretch",
        column_config={"Return": PERCENT, "Annualised": PERCENT})
    mdd = r["max_drawdown"] or {}
    st.caption(f"Max drawdown {pct(mdd.get('depth'))}: peak {text(mdd.get('peak_date'))}, trough "
               f"{text(mdd.get('trough_date'))}, recovered {text(mdd.get('recovery_date')) or 'not yet'}.")
    with st.expander(f"Show the math: TWR of {md(r['code'])}"):
        period = st.selectbox("Period", list(r["returns"]), key=f"an_math_period_{r['pool_id']}",
                              help="Each return in the table above, from its own valuation points.")
        chosen_period = r["returns"][period]
        if chosen_period["start"] is None:
            st.info("No two valuation points fall in this period, so it has no return yet.")
            chosen_period = r["returns"]["since_inception"]
        math = metrics.twr_math(db, actor=actor, pool_id=r["pool_id"], as_of=chosen_period["end"] or end,
                                start=chosen_period["start"])
        st.write("TRI_t = TRI_(t-1) x (p_t + d_t) / p_(t-1); TWR = TRI_end / TRI_start - 1. "
                 f"Over these points: {pct(math.twr)}."
                 + (f" Annualised over {chosen_period['days']} days: (1 + TWR)^(365 / days) - 1 = "
                    f"{pct(chosen_period['annualised'])}." if chosen_period["annualised"] is not None else ""))
        st.dataframe(pd.DataFrame([{"date": str(p.date), "NAV per unit": str(p.nav_per_unit),
                                    "distribution per unit": str(p.distribution_per_unit)}
                                   for p in math.points]), hide_index=True)
        st.dataframe(pd.DataFrame([{"from": str(s.start), "to": str(s.end), "p start": str(s.start_price),
                                    "p end": str(s.end_price), "d": str(s.distribution_per_unit),
                                    "return": f"{s.period_return:.10f}"} for s in math.sub_periods]),
                     hide_index=True)
    holders = metrics.positions(db, actor=actor, pool_id=r["pool_id"], as_of=end)
    with st.expander(f"Holders of {md(r['code'])} (by investor id)"):
        st.dataframe(pd.DataFrame([{
            "investor_id": h["investor_id"], "units": h["units"], "value": h["value"],
            "cost basis": h["cost_basis"], "gain": h["gain"], "XIRR": percent_points(h["xirr"]),
        } for h in holders]), hide_index=True, column_config={
            "units": UNITS, "value": MONEY, "cost basis": MONEY, "gain": MONEY, "XIRR": PERCENT})
        if holders:
            who = st.selectbox("Show the math: XIRR of investor", [h["investor_id"] for h in holders],
                               key=f"an_xirr_{r['pool_id']}")
            flows_used = metrics.xirr_flows(db, actor=actor, investor_id=who, pool_id=r["pool_id"], as_of=end)
            st.dataframe(pd.DataFrame([{"date": str(d), "amount": str(a), "flow": k} for d, a, k in flows_used]),
                         hide_index=True)

st.subheader("Downloads")
dataset = st.selectbox("Data", exports.DATASETS, key="an_dataset")
formats = list(exports.FORMATS) if actor.role in ("admin", "analyst") else ["csv", "xlsx"]
fmt = st.selectbox("Format", formats, key="an_format")
if st.button("Prepare download", key="an_prepare"):
    bar = st.progress(0.0, text="Preparing...")

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / total) if total else 1.0, text=f"{done:,} of {total:,} rows")

    st.session_state["an_file"] = (exports.export_bytes(db, actor=actor, dataset=dataset, fmt=fmt, as_of=end,
                                                        start=start, progress=progress),
                                   exports.filename(dataset, fmt, end), exports.MIME[fmt])
if st.session_state.get("an_file"):
    data, name, mime = st.session_state["an_file"]
    st.download_button(f"Download {name}", data, name, mime, key="an_download")
