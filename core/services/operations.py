"""What the administrator sees and does about background work.

Queue depths and live workers (from RQ, or the embedded dispatcher), the outbox
backlog, jobs that failed for good with their error and a retry, email/SMS
deliveries, distribution payouts (paid, failed with their error, paying failed
parts again), and the outbound webhook endpoints with their delivery log.
Functions check that the acting user is an admin (a distribution's payouts may
also be seen by the pool's managers); every change is audited.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select

from core.db.models import (
    Delivery, Distribution, DistributionPayout, JobRun, OutboxMessage, Pool, User, WebhookDelivery, WebhookEndpoint,
    utcnow,
)
from core.db.session import Database
from core.domain.errors import NotFound, ValidationError
from core.domain.limits import check_text
from core.domain.money import round_money
from core.services import audit
from core.services.common import bump_version
from core.services.context import Actor, require_pool_manager, require_role
from core.services.notifications import EVENTS

URL_RE = re.compile(r"^https?://[^\s/]+(/\S*)?$")
WEBHOOK_EVENTS = tuple(e for e in EVENTS if e not in ("invitation", "password_reset", "monthly_statement",
                                                      "large_flow", "payment_failure", "contribution_received",
                                                      "distribution_paid"))


def _admin(actor: Actor, action: str) -> None:
    require_role(actor, "admin", action=action)


@dataclass(frozen=True)
class Overview:
    backend: str
    queues: dict
    workers: list
    outbox_backlog: int
    oldest_backlog_at: datetime | None
    outbox_last_error: str | None
    jobs_failed: int
    jobs_retrying: int
    deliveries_failed: int
    error: str | None = None
    payouts_failed: int = 0
    payouts_pending: int = 0


def overview(db: Database, *, actor: Actor) -> Overview:
    _admin(actor, "see the background jobs")
    from jobs.backend import get_backend

    backend = get_backend()
    error = None
    try:
        queues, workers = backend.depths(), backend.workers()
    except Exception as exc:  # noqa: BLE001 - Redis down is exactly what this page must show
        queues, workers, error = {}, [], f"The job queue is unreachable: {type(exc).__name__}: {exc}"
    with db.read() as session:
        backlog = session.scalar(select(func.count()).select_from(OutboxMessage)
                                 .where(OutboxMessage.dispatched_at.is_(None))) or 0
        oldest = session.scalar(select(func.min(OutboxMessage.created_at)).where(OutboxMessage.dispatched_at.is_(None)))
        last_error = session.scalar(select(OutboxMessage.last_error).where(
            OutboxMessage.dispatched_at.is_(None), OutboxMessage.last_error.is_not(None))
            .order_by(OutboxMessage.id.desc()).limit(1))
        counts = dict(session.execute(select(JobRun.status, func.count()).group_by(JobRun.status)).all())
        failed_deliveries = session.scalar(select(func.count()).select_from(Delivery)
                                           .where(Delivery.status == "failed")) or 0
        payouts = dict(session.execute(select(DistributionPayout.status, func.count())
                                       .where(DistributionPayout.status.in_(("failed", "pending")))
                                       .group_by(DistributionPayout.status)).all())
    return Overview(backend.name, queues, workers, backlog, oldest, last_error, counts.get("failed", 0),
                    counts.get("retrying", 0), failed_deliveries, error, payouts.get("failed", 0),
                    payouts.get("pending", 0))


@dataclass(frozen=True)
class FailedJob:
    outbox_id: int
    queue: str
    job: str
    payload: dict
    attempts: int
    error: str
    failed_at: datetime | None


def failed_jobs(db: Database, *, actor: Actor, limit: int = 200) -> list[FailedJob]:
    _admin(actor, "see failed jobs")
    with db.read() as session:
        rows = session.execute(select(JobRun, OutboxMessage.payload).join(OutboxMessage, OutboxMessage.id == JobRun.outbox_id)
                               .where(JobRun.status == "failed").order_by(JobRun.finished_at.desc()).limit(limit)).all()
        return [FailedJob(r.outbox_id, r.queue, r.job, payload or {}, r.attempts, r.last_error or "", r.finished_at)
                for r, payload in rows]


def retry_job(db: Database, *, actor: Actor, outbox_id: int) -> None:
    """Run a failed job again from its first attempt (its work is idempotent)."""
    _admin(actor, "retry jobs")
    from jobs.backend import get_backend

    with db.transaction() as session:
        run = session.execute(select(JobRun).where(JobRun.outbox_id == outbox_id).with_for_update()).scalar_one_or_none()
        if run is None:
            raise NotFound(f"No job for outbox row {outbox_id}.")
        if run.status != "failed":
            raise ValidationError(f"Only failed jobs can be retried; this one is {run.status}.")
        job_id = f"outbox-{outbox_id}-retry{int(utcnow().timestamp())}"
        run.status, run.attempts, run.backend_job_id = "queued", 0, job_id
        run.lease_until = utcnow() + timedelta(seconds=60)
        run.finished_at = None
        audit.record(session, actor, "job.retry", "job", outbox_id, {"status": "failed", "error": run.last_error},
                     {"status": "queued"})
        queue = run.queue
    try:
        get_backend().enqueue(queue, job_id, outbox_id)
    except Exception:  # noqa: BLE001 - the sweeper dispatches it once the queue is reachable
        pass


@dataclass(frozen=True)
class DeliveryView:
    id: int
    channel: str
    event: str
    to_address: str
    subject: str
    status: str
    attempts: int
    error: str | None
    created_at: datetime
    sent_at: datetime | None


def deliveries(db: Database, *, actor: Actor, status: str | None = None, limit: int = 200) -> list[DeliveryView]:
    _admin(actor, "see message deliveries")
    with db.read() as session:
        query = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
        if status:
            query = query.where(Delivery.status == status)
        return [DeliveryView(d.id, d.channel, d.event, d.to_address, d.subject, d.status, d.attempts, d.error,
                             d.created_at, d.sent_at) for d in session.scalars(query)]


# --- webhook endpoints ----------------------------------------------------------------

@dataclass(frozen=True)
class EndpointView:
    id: int
    url: str
    events: tuple[str, ...]
    description: str
    active: bool
    version: int
    secret: str | None = None  # only right after creation or rotation


def _check_endpoint(url: str, events: list[str]) -> None:
    if not URL_RE.match((url or "").strip()) or len(url) > 500:
        raise ValidationError("Give the endpoint as an http:// or https:// URL.", field="url")
    if not events:
        raise ValidationError("Choose at least one event to send.", field="events")
    unknown = [e for e in events if e != "*" and e not in WEBHOOK_EVENTS]
    if unknown:
        raise ValidationError(f"Unknown event(s): {', '.join(unknown)}.", field="events")


def _endpoint_view(e: WebhookEndpoint, secret: str | None = None) -> EndpointView:
    return EndpointView(e.id, e.url, tuple(e.events or ()), e.description, e.active, e.version, secret)


def list_endpoints(db: Database, *, actor: Actor) -> list[EndpointView]:
    _admin(actor, "see webhook endpoints")
    with db.read() as session:
        return [_endpoint_view(e) for e in session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id))]


def create_endpoint(db: Database, *, actor: Actor, url: str, events: list[str], description: str = "",
                    secret: str | None = None) -> EndpointView:
    """Register a URL; the signing secret is generated unless given, and shown only now."""
    _admin(actor, "register webhook endpoints")
    _check_endpoint(url, events)
    secret = secret or ("whsec_" + secrets.token_urlsafe(32))
    if len(secret) < 16:
        raise ValidationError("The secret must be at least 16 characters.", field="secret")
    with db.transaction() as session:
        endpoint = WebhookEndpoint(url=url.strip(), secret=secret, events=sorted(set(events)),
                                   description=check_text(description, "description", field="description"),
                                   active=True, created_by=actor.id)
        session.add(endpoint)
        session.flush()
        audit.record(session, actor, "webhook.create", "webhook_endpoint", endpoint.id, None,
                     {"url": endpoint.url, "events": endpoint.events})
        return _endpoint_view(endpoint, secret)


def update_endpoint(db: Database, *, actor: Actor, endpoint_id: int, expected_version: int, url: str,
                    events: list[str], active: bool, description: str = "") -> EndpointView:
    _admin(actor, "change webhook endpoints")
    _check_endpoint(url, events)
    with db.transaction() as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        if endpoint is None:
            raise NotFound(f"No webhook endpoint with id {endpoint_id}.")
        before = {"url": endpoint.url, "events": endpoint.events, "active": endpoint.active}
        bump_version(session, WebhookEndpoint, {"id": endpoint_id}, expected_version, "This webhook endpoint",
                     url=url.strip(), events=sorted(set(events)), active=bool(active),
                     description=check_text(description, "description", field="description"))
        session.refresh(endpoint)
        audit.record(session, actor, "webhook.update", "webhook_endpoint", endpoint_id, before,
                     {"url": endpoint.url, "events": endpoint.events, "active": endpoint.active})
        return _endpoint_view(endpoint)


def delete_endpoint(db: Database, *, actor: Actor, endpoint_id: int) -> None:
    """Switch an endpoint off for good (its delivery log is kept)."""
    _admin(actor, "remove webhook endpoints")
    with db.transaction() as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        if endpoint is None:
            raise NotFound(f"No webhook endpoint with id {endpoint_id}.")
        endpoint.active = False
        endpoint.version += 1
        audit.record(session, actor, "webhook.delete", "webhook_endpoint", endpoint_id, {"active": True},
                     {"active": False})


@dataclass(frozen=True)
class WebhookDeliveryView:
    id: int
    endpoint_id: int
    event: str
    status: str
    attempts: int
    response_code: int | None
    error: str | None
    created_at: datetime
    delivered_at: datetime | None


def webhook_log(db: Database, *, actor: Actor, endpoint_id: int | None = None, limit: int = 200) -> list[WebhookDeliveryView]:
    _admin(actor, "see webhook deliveries")
    with db.read() as session:
        query = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(limit)
        if endpoint_id is not None:
            query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
        return [WebhookDeliveryView(d.id, d.endpoint_id, d.event, d.status, d.attempts, d.response_code, d.error,
                                    d.created_at, d.delivered_at) for d in session.scalars(query)]


# --- distribution payouts -------------------------------------------------------------

@dataclass(frozen=True)
class PayoutSummary:
    distribution_id: int
    pool_id: int
    pool_code: str
    record_date: date
    currency: str
    parts: int
    paid: int
    failed: int
    pending: int
    paid_amount: Decimal
    failed_amount: Decimal
    pending_amount: Decimal


def payout_summaries(db: Database, *, actor: Actor, limit: int = 50) -> list[PayoutSummary]:
    """The newest distributions with cash parts: how many parts are paid, failed, still pending."""
    _admin(actor, "see distribution payouts")
    with db.read() as session:
        ids = list(session.scalars(select(DistributionPayout.distribution_id).group_by(DistributionPayout.distribution_id)
                                   .order_by(DistributionPayout.distribution_id.desc()).limit(limit)))
        return [_summary(session, distribution_id) for distribution_id in ids]


def _summary(session, distribution_id: int) -> PayoutSummary:
    distribution = session.get(Distribution, distribution_id)
    pool = session.get(Pool, distribution.pool_id)
    counts = {status: (0, Decimal(0)) for status in ("paid", "failed", "pending")}
    for status, count, total in session.execute(
            select(DistributionPayout.status, func.count(), func.sum(DistributionPayout.amount))
            .where(DistributionPayout.distribution_id == distribution_id).group_by(DistributionPayout.status)):
        counts[status] = (count, round_money(total or Decimal(0), pool.currency))
    return PayoutSummary(distribution_id, pool.id, pool.code, distribution.record_date, pool.currency,
                         sum(c for c, _ in counts.values()), counts["paid"][0], counts["failed"][0],
                         counts["pending"][0], counts["paid"][1], counts["failed"][1], counts["pending"][1])


def payout_summary(db: Database, *, actor: Actor, distribution_id: int) -> PayoutSummary:
    """One distribution's payouts; admins and the pool's managers."""
    with db.read() as session:
        distribution = session.get(Distribution, distribution_id)
        if distribution is None:
            raise NotFound(f"No distribution with id {distribution_id}.")
        require_pool_manager(session, actor, distribution.pool_id, "see the payouts of this distribution")
        return _summary(session, distribution_id)


@dataclass(frozen=True)
class PayoutView:
    transaction_id: int
    investor_id: int
    investor_name: str
    amount: Decimal
    currency: str
    status: str
    round: int
    attempts: int
    reference: str | None
    error: str | None
    paid_at: datetime | None


def distribution_payouts(db: Database, *, actor: Actor, distribution_id: int, status: str | None = None,
                         limit: int = 1000) -> list[PayoutView]:
    """Each cash part of a distribution with its payout state; admins and the pool's managers."""
    if status is not None and status not in ("pending", "paid", "failed"):
        raise ValidationError("Choose pending, paid or failed.", field="status")
    with db.read() as session:
        distribution = session.get(Distribution, distribution_id)
        if distribution is None:
            raise NotFound(f"No distribution with id {distribution_id}.")
        require_pool_manager(session, actor, distribution.pool_id, "see the payouts of this distribution")
        query = (select(DistributionPayout, User.name).join(User, User.id == DistributionPayout.investor_id)
                 .where(DistributionPayout.distribution_id == distribution_id)
                 .order_by(DistributionPayout.transaction_id).limit(limit))
        if status:
            query = query.where(DistributionPayout.status == status)
        return [PayoutView(p.transaction_id, p.investor_id, name, round_money(p.amount, p.currency), p.currency,
                           p.status, p.round, p.attempts, p.reference, p.error, p.paid_at)
                for p, name in session.execute(query)]


def retry_failed_payouts(db: Database, *, actor: Actor, distribution_id: int) -> int:
    """Pay a distribution's failed parts again (after their accounts were fixed); returns how many.

    Each part gets a new gateway key round; the job first checks every earlier key, so a
    part the gateway did pay after all is recorded as paid, never paid twice.
    """
    _admin(actor, "pay distribution parts again")
    from jobs.payouts import queue_batches

    with db.transaction() as session:
        if session.get(Distribution, distribution_id) is None:
            raise NotFound(f"No distribution with id {distribution_id}.")
        rows = session.scalars(select(DistributionPayout).where(
            DistributionPayout.distribution_id == distribution_id, DistributionPayout.status == "failed")
            .order_by(DistributionPayout.transaction_id).with_for_update()).all()
        if not rows:
            raise ValidationError("This distribution has no failed payouts to pay again.")
        now = utcnow()
        before = {r.transaction_id: r.error for r in rows}
        for row in rows:
            row.status, row.round, row.error, row.updated_at = "pending", row.round + 1, None, now
        batches = queue_batches(session, distribution_id, [r.transaction_id for r in rows])
        audit.record(session, actor, "distribution.payouts_retry", "distribution", distribution_id,
                     {"failed": before}, {"pending": len(rows), "batches": batches})
        return len(rows)
