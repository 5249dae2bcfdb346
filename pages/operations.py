"""Operations (admin): queues, workers, failed jobs with retry, outbox backlog, deliveries, webhooks."""
from __future__ import annotations

import streamlit as st

actor = st.session_state.get("actor")
if actor is None or getattr(actor, "role", None) != "admin":
    st.error("Only administrators can open the Operations page.")
    st.stop()

from app.components.format import md  # noqa: E402
from core.db.session import get_database  # noqa: E402
from core.domain.errors import PooldeskError  # noqa: E402
from core.domain.money import format_money  # noqa: E402
from core.services import operations  # noqa: E402

db = get_database()
st.title("Operations")

overview = operations.overview(db, actor=actor)
if overview.error:
    st.error(md(overview.error))
cols = st.columns(5)
cols[0].metric("Outbox backlog", overview.outbox_backlog)
cols[1].metric("Failed jobs", overview.jobs_failed)
cols[2].metric("Jobs waiting to retry", overview.jobs_retrying)
cols[3].metric("Failed emails/SMS", overview.deliveries_failed)
cols[4].metric("Failed payouts", overview.payouts_failed)
if overview.outbox_backlog and overview.oldest_backlog_at:
    st.caption(f"Oldest waiting outbox row since {overview.oldest_backlog_at:%Y-%m-%d %H:%M:%S} UTC"
               + (f" — last error: {md(overview.outbox_last_error)}" if overview.outbox_last_error else ""))

st.subheader(f"Queues ({'Redis + RQ' if overview.backend == 'rq' else 'embedded dispatcher'})")
st.dataframe([{"queue": name, **counts} for name, counts in overview.queues.items()], hide_index=True)
st.subheader("Workers")
if overview.workers:
    st.dataframe(overview.workers, hide_index=True)
else:
    st.warning("No worker is running: start one with `pooldesk worker`.")

st.subheader("Failed jobs")
failed = operations.failed_jobs(db, actor=actor)
if not failed:
    st.write("No failed jobs.")
for job in failed:
    with st.expander(f"#{job.outbox_id} {job.job} — {job.attempts} attempt(s)"):
        st.code(job.error or "(no error text)")
        st.json(job.payload, expanded=False)
        if st.button("Retry", key=f"retry-{job.outbox_id}"):
            try:
                operations.retry_job(db, actor=actor, outbox_id=job.outbox_id)
                st.success(f"Job #{job.outbox_id} queued again.")
            except PooldeskError as exc:
                st.error(md(exc.message))

st.subheader("Distribution payouts")
summaries = operations.payout_summaries(db, actor=actor)
if not summaries:
    st.write("No distribution has been paid out yet.")
else:
    st.dataframe([{"distribution": f"#{s.distribution_id}", "pool": s.pool_code, "record date": s.record_date,
                   "parts": s.parts, "paid": s.paid, "failed": s.failed, "pending": s.pending,
                   "paid amount": format_money(s.paid_amount, s.currency),
                   "failed amount": format_money(s.failed_amount, s.currency)} for s in summaries], hide_index=True)
for summary in (s for s in summaries if s.failed):
    with st.expander(f"Distribution #{summary.distribution_id} ({md(summary.pool_code)}): "
                     f"{summary.failed} failed payout(s)"):
        failed_parts = operations.distribution_payouts(db, actor=actor, distribution_id=summary.distribution_id,
                                                       status="failed")
        st.dataframe([{"transaction": p.transaction_id, "investor": p.investor_name,
                       "amount": format_money(p.amount, p.currency), "attempts": p.attempts, "error": p.error}
                      for p in failed_parts], hide_index=True)
        st.caption("Paying again uses a new gateway key after checking the earlier ones, so a part the gateway "
                   "did pay is recorded as paid, never paid twice. Fix the investors' payout accounts first.")
        if st.button("Pay the failed parts again", key=f"repay-{summary.distribution_id}"):
            try:
                count = operations.retry_failed_payouts(db, actor=actor, distribution_id=summary.distribution_id)
                st.success(f"{count} payout(s) queued again.")
            except PooldeskError as exc:
                st.error(md(exc.message))

st.subheader("Failed emails and SMS")
undelivered = operations.deliveries(db, actor=actor, status="failed", limit=100)
if undelivered:
    st.dataframe([{"when": d.created_at, "channel": d.channel, "event": d.event, "to": d.to_address,
                   "subject": d.subject, "attempts": d.attempts, "error": d.error} for d in undelivered],
                 hide_index=True)
else:
    st.write("Nothing failed.")

st.subheader("Webhook endpoints")
endpoints = operations.list_endpoints(db, actor=actor)
for endpoint in endpoints:
    cols = st.columns([5, 3, 1, 1])
    cols[0].write(f"**{md(endpoint.url)}**  \n{md(endpoint.description)}")
    cols[1].write(md(", ".join(endpoint.events)))
    cols[2].write("active" if endpoint.active else "off")
    if endpoint.active and cols[3].button("Remove", key=f"remove-{endpoint.id}"):
        operations.delete_endpoint(db, actor=actor, endpoint_id=endpoint.id)
        st.rerun()
with st.form("new-endpoint", clear_on_submit=True):
    url = st.text_input("URL", placeholder="https://example.com/pooldesk-hooks")
    events = st.multiselect("Events", ["*", *operations.WEBHOOK_EVENTS])
    description = st.text_input("Description")
    if st.form_submit_button("Add endpoint"):
        try:
            created = operations.create_endpoint(db, actor=actor, url=url, events=events, description=description)
            st.success("Endpoint added. Its signing secret is shown only now:")
            st.code(created.secret)
        except PooldeskError as exc:
            st.error(md(exc.message))

st.subheader("Webhook delivery log")
log = operations.webhook_log(db, actor=actor, limit=100)
if log:
    st.dataframe([{"when": d.created_at, "endpoint": d.endpoint_id, "event": d.event, "status": d.status,
                   "attempts": d.attempts, "HTTP": d.response_code, "error": d.error} for d in log], hide_index=True)
else:
    st.write("No webhook deliveries yet.")
