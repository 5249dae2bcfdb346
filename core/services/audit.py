"""The audit log: every write says who did what, when, and what changed.

Rows are append-only and chained: each row's hash covers its content and the
previous row's hash, and the single ``audit_chain`` row holds the head. Writers
lock that row, so the chain stays linear under concurrency; ``verify`` walks it
and names the first row that was edited, deleted or inserted out of turn.

The hash is SHA-256 over length-prefixed fields (previous hash, time in epoch
microseconds, actor, action, entity, entity id, and the before/after JSON exactly
as stored), so the same row can be appended by Python (SQLite) or by the
``pooldesk_audit_append`` function on PostgreSQL, which does it in one round trip.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Text, cast, select, text
from sqlalchemy.orm import Session

from core.db.models import AuditChain, AuditEvent, utcnow
from core.services.context import Actor

GENESIS = "0" * 64
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_json_text(value: Any) -> str | None:
    """The stored form: canonical JSON, Decimals and dates as strings."""
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def epoch_micros(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def chain_hash(prev_hash: str, at: datetime, actor_id: int | None, action: str, entity: str, entity_id: str,
               before_text: str | None, after_text: str | None) -> str:
    fields = (prev_hash, str(epoch_micros(at)), "" if actor_id is None else str(actor_id), action, entity,
              entity_id, before_text or "", after_text or "")
    return hashlib.sha256("".join(f"{len(f)}:{f}|" for f in fields).encode()).hexdigest()


def record(session: Session, actor: Actor | None, action: str, entity: str, entity_id: Any,
           before: dict | None = None, after: dict | None = None) -> None:
    at = utcnow()
    before_text, after_text = to_json_text(before), to_json_text(after)
    actor_id = actor.id if actor else None
    if session.get_bind().dialect.name == "postgresql":
        session.flush()  # keep the ORM's pending writes ahead of the audit row, as on SQLite
        session.execute(text("SELECT pooldesk_audit_append(:at, :actor, :action, :entity, :entity_id, :before, :after)"),
                        dict(at=at, actor=actor_id, action=action, entity=entity, entity_id=str(entity_id),
                             before=before_text, after=after_text))
        return
    chain = session.execute(select(AuditChain).where(AuditChain.id == 1).with_for_update()).scalar_one()
    digest = chain_hash(chain.head_hash, at, actor_id, action, entity, str(entity_id), before_text, after_text)
    event = AuditEvent(at=at, actor_id=actor_id, action=action, entity=entity, entity_id=str(entity_id),
                       before=before_text, after=after_text, prev_hash=chain.head_hash, hash=digest)
    session.add(event)
    session.flush()
    chain.head_hash = digest
    chain.last_id = event.id


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    problem: str = ""
    event_id: int | None = None


def verify(session: Session) -> ChainReport:
    expected_prev = GENESIS
    checked = 0
    last_id = 0
    rows = session.execute(
        select(AuditEvent.id, AuditEvent.at, AuditEvent.actor_id, AuditEvent.action, AuditEvent.entity,
               AuditEvent.entity_id, cast(AuditEvent.before, Text), cast(AuditEvent.after, Text),
               AuditEvent.prev_hash, AuditEvent.hash).order_by(AuditEvent.id)
        .execution_options(yield_per=5000))
    for event_id, at, actor_id, action, entity, entity_id, before_text, after_text, prev_hash, digest in rows:
        if prev_hash != expected_prev:
            return ChainReport(False, checked, f"row {event_id} does not follow row {last_id}: a row before it was deleted or changed", event_id)
        if chain_hash(prev_hash, at, actor_id, action, entity, entity_id, before_text, after_text) != digest:
            return ChainReport(False, checked, f"row {event_id} was edited after it was written", event_id)
        expected_prev = digest
        last_id = event_id
        checked += 1
    chain = session.get(AuditChain, 1)
    if chain is None or chain.head_hash != expected_prev or chain.last_id != last_id:
        return ChainReport(False, checked, "the newest rows were deleted (the chain head does not match the last row)", last_id or None)
    return ChainReport(True, checked)
