"""Monthly statements: one job per investor that builds their PDF and emails it.

``schedule_monthly_statements`` writes one outbox row per investor holding or
having held units (queue "notifications"); running it twice for a month adds
nothing. Each ``send_monthly_statement`` job builds the statement for the month
and sends it with ``jobs.notify.send_email_now``, which sends once per job run,
so a retried job does not mail twice. The investor's "Monthly statement" choices are
followed: an in-app notice (the PDF is on the Reports page) and the email with the PDF.
"""
from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import select

from core.db.models import OutboxMessage, Position, User
from core.db.session import Database
from core.services import audit
from core.services.common import enqueue
from core.services.context import Actor, require_role
from jobs.runner import database, job
from jobs.settings import Throttle, job_settings

EVENT = "monthly_statement"  # the preference (in-app, email) it follows

JOB = "jobs.statements.send_monthly_statement"


def month_bounds(month: date) -> tuple[date, date]:
    first = month.replace(day=1)
    last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    return first, last


def previous_month(today: date | None = None) -> date:
    return ((today or date.today()).replace(day=1) - timedelta(days=1)).replace(day=1)


def schedule_monthly_statements(db: Database, *, actor: Actor, month: date | None = None) -> int:
    """Queue a statement for every investor for ``month`` (default: last month). Returns how many were queued."""
    require_role(actor, "admin", action="schedule statements")
    first, last = month_bounds(month or previous_month())
    with db.transaction() as session:
        investors = session.scalars(
            select(User.id).where(User.role == "investor", User.status == "active",
                                  User.id.in_(select(Position.investor_id))).order_by(User.id)).all()
        done = {m.payload.get("investor_id") for m in session.scalars(
            select(OutboxMessage).where(OutboxMessage.job == JOB)) if m.payload.get("period_end") == last.isoformat()}
        queued = 0
        for investor_id in investors:
            if investor_id in done:
                continue
            enqueue(session, "notifications", JOB, investor_id=investor_id, period_start=first.isoformat(),
                    period_end=last.isoformat())
            queued += 1
        audit.record(session, actor, "statements.schedule", "statements", last.isoformat(), None,
                     {"period_start": first, "period_end": last, "queued": queued})
    return queued


@job
def send_monthly_statement(investor_id: int, period_start: str, period_end: str) -> str:
    from core.analytics.pdf import investor_email, investor_statement_pdf
    from core.services.users import system_actor
    from jobs.notify import send_email_now

    from core.services.notifications import add_in_app
    from jobs.notify import preferences

    db = database()
    start, end = date.fromisoformat(period_start), date.fromisoformat(period_end)
    with db.transaction() as session:  # the investor's choices for "Monthly statement"
        wants = preferences(session, [investor_id], {EVENT})
        if wants(investor_id, EVENT, "in_app"):
            add_in_app(session, user_id=investor_id, event=EVENT,
                       title=f"Your statement for {start:%B %Y} is ready",
                       body="Download it as a PDF on the Reports page: holdings, value, flows and returns.",
                       dedupe_key=f"statement:{investor_id}:{period_end}")
        emailed = wants(investor_id, EVENT, "email")
    if not emailed:
        return "email not wanted"
    pdf = investor_statement_pdf(db, actor=system_actor(db), investor_id=investor_id, period_start=start, period_end=end)
    email, name = investor_email(db, investor_id)
    return send_email_now(
        to_email=email, to_name=name, user_id=investor_id,
        subject=f"Your Pooldesk statement for {start:%B %Y}",
        text=(f"Hello {name},\n\nYour statement for {start.isoformat()} to {end.isoformat()} is attached: "
              "holdings, value, flows and returns.\n\nPooldesk"),
        attachments=[(f"pooldesk-statement-{end.isoformat()}.pdf", pdf, "application/pdf")],
    )


LOOK = Throttle()  # at most one look an hour per process


def schedule_if_due(db: Database, *, today: date | None = None) -> int:
    """With ``POOLDESK_MONTHLY_STATEMENTS`` on, queue last month's statements once the month is over
    (run by the sweeper of every worker; at most one look an hour per process, and a month already
    scheduled, by this or by an admin, is not looked at again). Returns how many were queued."""
    from core.db.models import AuditEvent
    from core.services.users import system_actor

    if not job_settings().monthly_statements or not LOOK.due(3600):
        return 0
    month = previous_month(today)
    _, last = month_bounds(month)
    with db.read() as session:
        done = session.scalar(select(AuditEvent.id).where(AuditEvent.action == "statements.schedule",
                                                          AuditEvent.entity_id == last.isoformat()).limit(1))
    if done is not None:
        return 0
    return schedule_monthly_statements(db, actor=system_actor(db), month=month)
