"""The audit log: every write says who did what, when, and what changed.

Rows are append-only and chained: each row's hash covers its content and the
previous row's hash, and the single ``audit_chain`` row holds the head. Writers
lock that row, so the chain stays linear under concurrency; ``verify`` walks it
and names the first row that was edited, deleted or inserted out of turn.

The hash is HMAC-SHA256 over length-prefixed fields (previous hash, time in epoch
microseconds, actor, action, entity, entity id, and the before/after JSON exactly
as stored), so the same row can be appended by Python (SQLite) or by the
``pooldesk_audit_append`` function on PostgreSQL, which does it in one round trip.
The key (``Settings.audit_chain_key``) is never stored in the database: whoever can
edit rows but does not hold the key cannot recompute the hashes after an edit.
PostgreSQL is handed the key's two HMAC pads with each call (``key_pads``) and
hashes with its built-in sha256, so no extension is needed.

A posting's audit row also carries ``legs``: the digest of the journal legs it
wrote (``legs_digest``), which ``pooldesk reconcile`` recomputes from the journal.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterable

from sqlalchemy import BigInteger, Text, cast, func, select, text, type_coerce
from sqlalchemy.orm import Session

from core.config import get_settings
from core.db.models import AuditChain, AuditEvent, utcnow
from core.db.types import MONEY_SCALE, UNITS_SCALE
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


def chain_key() -> bytes:
    return get_settings().audit_chain_key()


@functools.lru_cache(maxsize=8)
def key_pads(key: bytes) -> bytes:
    """HMAC's inner and outer pads of ``key`` (RFC 2104), 64 bytes each: what the PostgreSQL functions
    take, so they compute HMAC-SHA256 as sha256(opad || sha256(ipad || message))."""
    block = key if len(key) <= 64 else hashlib.sha256(key).digest()
    block = block.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in block) + bytes(b ^ 0x5C for b in block)


def chain_message(prev_hash: str, at: datetime, actor_id: int | None, action: str, entity: str, entity_id: str,
                  before_text: str | None, after_text: str | None) -> bytes:
    fields = (prev_hash, str(epoch_micros(at)), "" if actor_id is None else str(actor_id), action, entity,
              entity_id, before_text or "", after_text or "")
    return "".join(f"{len(f)}:{f}|" for f in fields).encode()


def chain_hash(prev_hash: str, at: datetime, actor_id: int | None, action: str, entity: str, entity_id: str,
               before_text: str | None, after_text: str | None, *, key: bytes | None = None) -> str:
    message = chain_message(prev_hash, at, actor_id, action, entity, entity_id, before_text, after_text)
    return hmac.new(chain_key() if key is None else key, message, hashlib.sha256).hexdigest()


def legacy_chain_hash(prev_hash: str, at: datetime, actor_id: int | None, action: str, entity: str, entity_id: str,
                      before_text: str | None, after_text: str | None) -> str:
    """The unkeyed hash rows had before migration 0009c (anyone could recompute it)."""
    return hashlib.sha256(chain_message(prev_hash, at, actor_id, action, entity, entity_id, before_text,
                                        after_text)).hexdigest()


def leg_line(account: str, investor_id: int | None, amount: Decimal, units: Decimal) -> str:
    return stored_leg_line(account, investor_id, int(Decimal(amount).scaleb(MONEY_SCALE)),
                           int(Decimal(units).scaleb(UNITS_SCALE)))


def stored_leg_line(account: str, investor_id: int | None, amount: int, units: int) -> str:
    """A leg as the journal stores it: amount in 10^-4, units in 10^-6, as integers."""
    return f"{account}|{'' if investor_id is None else investor_id}|{amount}|{units}"


def legs_digest(legs: Iterable[tuple[str, int | None, Decimal, Decimal]]) -> str:
    """SHA-256 of the legs (account, investor, amount, units) as lines of integers (amount in 10^-4,
    units in 10^-6), sorted bytewise and joined by newlines. The same text is built by
    ``pooldesk_post_flow`` on PostgreSQL and by ``pooldesk reconcile`` from the journal."""
    return legs_digest_of_lines(leg_line(*leg) for leg in legs)


def legs_digest_of_lines(lines: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def ordered_legs_digest(lines: Iterable[str]) -> str:
    """An import's digest: its legs' lines in journal id order (an import writes up to millions of
    legs; ordering them by id costs the database half what sorting their text does)."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def journal_since(session: Session, pool_id: int, after_id: int) -> dict:
    """The digest and id range of a pool's legs after journal id ``after_id``: what an import wrote
    (it holds the pool's lock, so no other posting to the pool is among them)."""
    from core.db.models import JournalEntry

    first, last = session.execute(select(func.min(JournalEntry.id), func.max(JournalEntry.id))
                                  .where(JournalEntry.pool_id == pool_id, JournalEntry.id > after_id)).one()
    return {"legs": journal_range_digest(session, pool_id, first or 0, last or 0), "journal": [first, last]}


def journal_range_digest(session: Session, pool_id: int, first: int, last: int) -> str:
    """``ordered_legs_digest`` of a pool's legs with ids from ``first`` to ``last``."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(text(
            "SELECT encode(sha256(convert_to(coalesce(string_agg(account || '|' || coalesce(investor_id::text, '') "
            "|| '|' || amount || '|' || units, E'\\n' ORDER BY id), ''), 'UTF8')), 'hex') "
            "FROM journal_entries WHERE pool_id = :pool AND id BETWEEN :first AND :last"),
            {"pool": pool_id, "first": first, "last": last})
    from core.db.models import JournalEntry

    legs = session.execute(select(JournalEntry.account, JournalEntry.investor_id,
                                  type_coerce(JournalEntry.amount, BigInteger), type_coerce(JournalEntry.units, BigInteger))
                           .where(JournalEntry.pool_id == pool_id, JournalEntry.id.between(first, last))
                           .order_by(JournalEntry.id))
    return ordered_legs_digest(stored_leg_line(*leg) for leg in legs)


def last_journal_id(session: Session) -> int:
    from core.db.models import JournalEntry

    return session.scalar(select(func.max(JournalEntry.id))) or 0


def record(session: Session, actor: Actor | None, action: str, entity: str, entity_id: Any,
           before: dict | None = None, after: dict | None = None) -> None:
    at = utcnow()
    before_text, after_text = to_json_text(before), to_json_text(after)
    actor_id = actor.id if actor else None
    key = chain_key()
    if session.get_bind().dialect.name == "postgresql":
        session.flush()  # keep the ORM's pending writes ahead of the audit row, as on SQLite
        session.execute(text("SELECT pooldesk_audit_append(:pads, :at, :actor, :action, :entity, :entity_id, "
                             ":before, :after)"),
                        dict(pads=key_pads(key), at=at, actor=actor_id, action=action, entity=entity,
                             entity_id=str(entity_id), before=before_text, after=after_text))
        return
    chain = session.execute(select(AuditChain).where(AuditChain.id == 1).with_for_update()).scalar_one()
    digest = chain_hash(chain.head_hash, at, actor_id, action, entity, str(entity_id), before_text, after_text,
                        key=key)
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


def verify(session: Session, *, expect_head: str | None = None, key: bytes | None = None) -> ChainReport:
    """Walk the chain with the key. ``expect_head`` is a head written down earlier (``pooldesk audit
    head``): it must still be the hash of a row, so history up to it was not rewritten, even by someone
    holding the key."""
    key = chain_key() if key is None else key
    wanted = (expect_head or "").strip().lower() or None
    anchored = None
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
        if chain_hash(prev_hash, at, actor_id, action, entity, entity_id, before_text, after_text, key=key) != digest:
            return ChainReport(False, checked, f"row {event_id} was edited after it was written", event_id)
        if digest == wanted:
            anchored = event_id
        expected_prev = digest
        last_id = event_id
        checked += 1
    chain = session.get(AuditChain, 1)
    if chain is None or chain.head_hash != expected_prev or chain.last_id != last_id:
        return ChainReport(False, checked, "the newest rows were deleted (the chain head does not match the last row)", last_id or None)
    if wanted is not None and anchored is None and not (wanted == GENESIS and checked == 0):
        return ChainReport(False, checked, f"the anchored head {wanted} is not the hash of any row: "
                                           "the rows up to it were rewritten or deleted")
    return ChainReport(True, checked)


@dataclass(frozen=True)
class ChainHead:
    """What to write down (or send elsewhere) to anchor the chain outside the database."""
    hash: str
    last_id: int
    rows: int
    at: datetime | None


def head(session: Session) -> ChainHead:
    chain = session.get(AuditChain, 1)
    rows = session.scalar(select(func.count()).select_from(AuditEvent)) or 0
    at = session.scalar(select(AuditEvent.at).where(AuditEvent.id == chain.last_id)) if chain.last_id else None
    return ChainHead(chain.head_hash, chain.last_id, rows, at)
