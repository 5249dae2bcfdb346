"""Reports: investor statements and pool factsheets (PDF), exports, and monthly statement emails."""
from __future__ import annotations

from datetime import date, timedelta

import streamlit as st

from app.components.format import md
from app.db import get_db
from app.guard import require_roles
from core.analytics import exports, pdf
from core.domain.errors import NotFound, PermissionDenied, ValidationError
from core.services import pools

actor = require_roles("admin", "analyst", "manager", "investor")
db = get_db()
st.title("Reports")
today = date.today()

if actor.role != "analyst":
    st.subheader("Investor statement (PDF)")
    if actor.role == "investor":
        investor_id = actor.id
    else:
        investor_id = st.number_input("Investor id", min_value=1, step=1, key="rp_investor")
    period_start = st.date_input("From", value=today.replace(day=1), key="rp_from")
    period_end = st.date_input("To", value=today, key="rp_to")
    if st.button("Build statement", key="rp_build_statement"):
        try:
            st.session_state["rp_statement"] = pdf.investor_statement_pdf(
                db, actor=actor, investor_id=int(investor_id), period_start=period_start, period_end=period_end)
        except (PermissionDenied, ValidationError, NotFound) as exc:
            st.error(md(exc.message))
    if st.session_state.get("rp_statement"):
        st.download_button("Download statement", st.session_state["rp_statement"],
                           f"pooldesk-statement-{period_end.isoformat()}.pdf", "application/pdf",
                           key="rp_download_statement")

if actor.role != "investor":
    st.subheader("Pool factsheet (PDF)")
    visible = pools.list_pools(db, actor=actor)
    if visible:
        code = st.selectbox("Pool", [p.code for p in visible], key="rp_pool")
        as_of = st.date_input("As of", value=today, key="rp_asof")
        if st.button("Build factsheet", key="rp_build_factsheet"):
            pool_id = next(p.id for p in visible if p.code == code)
            try:
                st.session_state["rp_factsheet"] = (pdf.pool_factsheet_pdf(db, actor=actor, pool_id=pool_id,
                                                                           as_of=as_of), code)
            except (PermissionDenied, ValidationError) as exc:
                st.error(md(exc.message))
        if st.session_state.get("rp_factsheet"):
            data, code_built = st.session_state["rp_factsheet"]
            st.download_button("Download factsheet", data, f"pooldesk-factsheet-{code_built}.pdf", "application/pdf",
                               key="rp_download_factsheet")
    else:
        st.info("No pools to report on.")

st.subheader("Exports")
datasets = ["transactions", "holdings"] if actor.role == "investor" else list(exports.DATASETS)
dataset = st.selectbox("Data", datasets, key="rp_dataset")
formats = list(exports.FORMATS) if actor.role in ("admin", "analyst") else ["csv", "xlsx"]
fmt = st.selectbox("Format", formats, key="rp_format")
if st.button("Prepare export", key="rp_prepare"):
    bar = st.progress(0.0, text="Preparing...")

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / total) if total else 1.0, text=f"{done:,} of {total:,} rows")

    try:
        st.session_state["rp_export"] = (exports.export_bytes(db, actor=actor, dataset=dataset, fmt=fmt,
                                                              progress=progress),
                                         exports.filename(dataset, fmt), exports.MIME[fmt])
    except (PermissionDenied, ValidationError) as exc:
        st.error(md(exc.message))
if st.session_state.get("rp_export"):
    data, name, mime = st.session_state["rp_export"]
    st.download_button(f"Download {name}", data, name, mime, key="rp_download_export")

if actor.role == "admin":
    st.subheader("Monthly statements by email")
    month = st.date_input("Month", value=today.replace(day=1) - timedelta(days=1),
                          key="rp_month")
    if st.button("Email statements to every investor", key="rp_schedule"):
        from jobs.statements import schedule_monthly_statements

        queued = schedule_monthly_statements(db, actor=actor, month=month)
        st.success(f"{queued} statement(s) queued for {month:%B %Y}.")
