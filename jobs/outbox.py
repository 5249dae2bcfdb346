"""The relay: from outbox rows (written with the business change) to job queues.

``relay_once`` takes undispatched rows in id order, enqueues each as job
``outbox-<id>-1`` and marks it dispatched in the same database transaction,
with the rows locked (``SKIP LOCKED`` on PostgreSQL, the write lock on SQLite):
two relays never take the same row, and the queue refuses a second job with the
same id. If the queue is unreachable the transaction rolls back, the rows stay
undispatched with the error noted, and the next pass sends them: nothing is lost.

``sweep_once`` finds jobs that were dispatched but will not finish on their own:
a worker died mid-job (its lease ran out) or the queue lost them (Redis was
flushed, the app restarted) and dispatches them again.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy import select, update

from core.db.models import JobRun, OutboxMessage, utcnow
from core.db.session import Database
from jobs.backend import Backend
from jobs.settings import job_settings

log = logging.getLogger("pooldesk.jobs")


def relay_once(db: Database, backend: Backend) -> int:
    """Dispatch one batch of outbox rows; returns how many rows were dispatched."""
    settings = job_settings()
    with db.read() as session:
        if session.scalar(select(OutboxMessage.id).where(OutboxMessage.dispatched_at.is_(None)).limit(1)) is None:
            return 0
    taken: list[int] = []
    try:
        with db.transaction() as session:
            query = (select(OutboxMessage).where(OutboxMessage.dispatched_at.is_(None))
                     .order_by(OutboxMessage.id).limit(settings.relay_batch))
            if db.is_postgres:
                query = query.with_for_update(skip_locked=True)
            rows = session.scalars(query).all()
            now = utcnow()
            grace = timedelta(seconds=settings.job_queued_grace_seconds)
            for message in rows:
                taken.append(message.id)
                job_id = f"outbox-{message.id}-1"
                backend.enqueue(message.queue, job_id, message.id)
                message.dispatched_at = now
                message.attempts += 1
                message.last_error = None
                if session.get(JobRun, message.id) is None:
                    session.add(JobRun(outbox_id=message.id, queue=message.queue, job=message.job, status="queued",
                                       attempts=0, backend_job_id=job_id, lease_until=now + grace))
            return len(rows)
    except Exception as exc:  # noqa: BLE001 - the queue or database is down: keep the rows for later
        log.warning("outbox relay could not dispatch %s row(s): %s", len(taken), exc)
        if taken:
            try:
                with db.transaction() as session:
                    session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(taken),
                                                                OutboxMessage.dispatched_at.is_(None))
                                    .values(attempts=OutboxMessage.attempts + 1,
                                            last_error=f"{type(exc).__name__}: {exc}"[:2000]))
            except Exception:  # noqa: BLE001
                log.exception("could not note the relay error")
        return 0


def sweep_once(db: Database, backend: Backend, *, force: bool = False) -> int:
    """Dispatch again the jobs that were lost; returns how many. ``force`` ignores leases of waiting jobs."""
    settings = job_settings()
    try:
        from jobs.payments import queue_payment_checks

        queue_payment_checks(db)  # payments still processing at the gateway are asked about again
    except Exception as exc:  # noqa: BLE001 - the next sweep tries again
        log.warning("could not queue the payment checks: %s", exc)
    try:
        from jobs.statements import schedule_if_due

        schedule_if_due(db)  # last month's statements, when the workers send them (POOLDESK_MONTHLY_STATEMENTS)
    except Exception as exc:  # noqa: BLE001 - the next look tries again
        log.warning("could not schedule the monthly statements: %s", exc)
    now = utcnow()
    grace = timedelta(seconds=settings.job_queued_grace_seconds)
    with db.read() as session:
        waiting = JobRun.status.in_(("queued", "retrying"))
        stale = (JobRun.lease_until < now) | waiting if force else (JobRun.lease_until < now)
        if session.scalar(select(JobRun.outbox_id).where(JobRun.status.in_(("queued", "retrying", "running")), stale)
                          .limit(1)) is None:
            return 0
    redispatched = 0
    try:
        with db.transaction() as session:
            query = (select(JobRun).where(JobRun.status.in_(("queued", "retrying", "running")), stale)
                     .order_by(JobRun.outbox_id).limit(settings.relay_batch))
            if db.is_postgres:
                query = query.with_for_update(skip_locked=True)
            for run in session.scalars(query).all():
                if run.status != "running" and backend.is_pending(run.backend_job_id):
                    run.lease_until = now + grace  # still waiting its turn
                    continue
                job_id = f"outbox-{run.outbox_id}-s{run.attempts + 1}-{int(time.time() * 1000) % 10**9}"
                log.warning("job %s (%s) was lost while %s; dispatching it again as %s",
                            run.outbox_id, run.job, run.status, job_id)
                backend.enqueue(run.queue, job_id, run.outbox_id)
                run.backend_job_id = job_id
                run.status = "queued"
                run.lease_until = now + grace
                redispatched += 1
    except Exception as exc:  # noqa: BLE001
        log.warning("sweeper could not run: %s", exc)
        return 0
    return redispatched


def run_relay(db: Database, backend: Backend, stop: threading.Event | None = None) -> None:
    """Relay (and sweep) until ``stop`` is set; the loop of `pooldesk relay` and of each worker."""
    settings = job_settings()
    stop = stop or threading.Event()
    last_sweep = 0.0
    while not stop.is_set():
        moved = relay_once(db, backend)
        if time.monotonic() - last_sweep >= settings.sweep_interval_seconds:
            sweep_once(db, backend)
            last_sweep = time.monotonic()
        if not moved:
            stop.wait(settings.relay_interval_seconds)
