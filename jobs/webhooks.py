"""Outbound webhooks: events POSTed as signed JSON to the URLs an admin registered.

Each request carries ``X-Pooldesk-Event``, ``X-Pooldesk-Delivery`` (the same id on
every retry, so receivers can drop repeats), ``X-Pooldesk-Timestamp`` and
``X-Pooldesk-Signature: sha256=<hex>``, the HMAC-SHA256 of
``"<timestamp>.<body>"`` under the endpoint's secret. Receivers check the
signature with ``verify_signature`` (or the same three lines) and refuse
timestamps older than a few minutes. A 2xx answer is success; anything else
retries with backoff and the delivery log keeps each outcome.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from decimal import Decimal

from sqlalchemy import select

from core.db.models import Distribution, Pool, Transaction, WebhookDelivery, WebhookEndpoint, utcnow
from core.db.session import Database
from core.domain.money import round_money
from core.services.common import enqueue
from jobs.errors import PermanentError, TransientError
from jobs.runner import database, job
from jobs.settings import job_settings

SIGNATURE_HEADER = "X-Pooldesk-Signature"
TIMESTAMP_HEADER = "X-Pooldesk-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, tolerance: int = 300,
                     now: float | None = None) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        age = abs((now or time.time()) - int(timestamp))
    except (TypeError, ValueError):
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature or "")


def _amount(value: Decimal | None, currency: str | None) -> str | None:
    """An amount as a string at the currency's minor units ("55.00", not the stored "55.0000")."""
    if value is None:
        return None
    return str(round_money(value, currency)) if currency else str(value)


def _event_data(session, event: str, pool_id: int, transaction_id: int | None, extra: dict) -> dict:
    pool = session.get(Pool, pool_id)
    currency = pool.currency if pool else None
    data: dict = {"pool": {"id": pool_id, "code": pool.code if pool else None, "currency": currency}}
    if transaction_id is not None:
        tx = session.get(Transaction, transaction_id)
        if tx is not None:
            data["transaction"] = {
                "id": tx.id, "kind": tx.kind, "status": tx.status, "investor_id": tx.investor_id,
                "amount": _amount(tx.amount, currency),
                "units": str(tx.units) if tx.units is not None else None,
                "price": str(tx.price) if tx.price is not None else None,
                "effective_date": str(tx.effective_date), "failure_reason": tx.failure_reason,
            }
    for name in ("distribution_id", "valuation_id", "reason"):
        if extra.get(name) is not None:
            data[name] = extra[name]
    if extra.get("distribution_id") is not None:
        distribution = session.get(Distribution, extra["distribution_id"])
        if distribution is not None:
            data["distribution"] = {"id": distribution.id, "record_date": str(distribution.record_date),
                                    "total": _amount(distribution.total, currency),
                                    "per_unit": str(distribution.per_unit)}
    return data


def queue_event(db: Database, *, event: str, pool_id: int, transaction_id: int | None, event_key: str,
                **extra) -> int:
    """Log one delivery per subscribed endpoint and queue its job (once per event, however often called)."""
    with db.transaction() as session:
        endpoints = [e for e in session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.active.is_(True)))
                     if event in (e.events or []) or "*" in (e.events or [])]
        if not endpoints:
            return 0
        data = _event_data(session, event, pool_id, transaction_id, extra)
        queued = 0
        for endpoint in endpoints:
            key = f"{event_key}:e{endpoint.id}"[:200]
            if session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.key == key)) is not None:
                continue
            delivery = WebhookDelivery(endpoint_id=endpoint.id, key=key, event=event, status="pending", attempts=0,
                                       payload={"id": key, "event": event, "created_at": utcnow().isoformat(),
                                                "data": data})
            session.add(delivery)
            session.flush()
            enqueue(session, "webhooks", "jobs.webhooks.deliver", delivery_id=delivery.id)
            queued += 1
        return queued


def _give_up(*, error: str, delivery_id: int, **_ignored) -> None:
    with database().transaction() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is not None and delivery.status != "delivered":
            delivery.status, delivery.error = "failed", delivery.error or error[:2000]


@job(on_give_up=_give_up)
def deliver(delivery_id: int) -> str:
    """POST one logged webhook delivery; a non-2xx answer or no answer is retried."""
    import requests

    db = database()
    with db.transaction() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None:
            return "unknown delivery"
        if delivery.status == "delivered":
            return "already delivered"
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        if endpoint is None or not endpoint.active:
            delivery.status, delivery.error = "failed", "The endpoint was removed or switched off."
            return "endpoint inactive"
        delivery.attempts += 1
        url, secret, payload, key, event = endpoint.url, endpoint.secret, delivery.payload, delivery.key, delivery.event
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "Pooldesk-Webhooks/1",
               "X-Pooldesk-Event": event, "X-Pooldesk-Delivery": key, TIMESTAMP_HEADER: timestamp,
               SIGNATURE_HEADER: sign(secret, timestamp, body)}
    code, error = None, None
    try:
        response = requests.post(url, data=body, headers=headers, timeout=job_settings().webhook_timeout_seconds,
                                 allow_redirects=False)
        code = response.status_code
        if not 200 <= code < 300:
            text = response.text.strip()[:300]
            error = f"HTTP {code}: {text}" if text else f"HTTP {code}"
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"
    with db.transaction() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        delivery.response_code = code
        if error is None:
            delivery.status, delivery.error, delivery.delivered_at = "delivered", None, utcnow()
        else:
            delivery.status, delivery.error = "error", error[:2000]
    if error is None:
        return "delivered"
    if code is not None and 400 <= code < 500 and code not in (408, 409, 425, 429):
        raise PermanentError(f"The endpoint refused the webhook: {error}")
    raise TransientError(f"The webhook was not delivered: {error}")
