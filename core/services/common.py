"""Plumbing shared by the services: running a write once, idempotently, with retries."""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Callable, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from core.db.models import IdempotencyKey, OutboxMessage, Pool
from core.db.session import Database
from core.domain.errors import ConflictError, IdempotencyError, NotFound, PooldeskError, ValidationError
from core.services.context import Actor

T = TypeVar("T")
RETRYABLE_SQLSTATES = ("40001", "40P01")
# Per-process count of writes that were tried again (deadlock, serialization failure, twin key).
retry_stats = {"retries": 0}


IDEMPOTENCY_MISMATCH = ("This idempotency key was already used for a different request; "
                        "use a new key for a new request.")


def same_number(value: object) -> str:
    """How a number enters a request's fingerprint: "100", "100.00" and "1,000" vs "1000" are the
    same request; anything that is not a number is kept as given (it will be refused anyway)."""
    from core.domain.money import to_decimal

    if value is None or value == "":
        return ""
    try:
        number = to_decimal(value)
    except PooldeskError:
        return str(value)
    return format(number.normalize(), "f")


def request_hash(operation: str, params: dict) -> str:
    return hashlib.sha256(json.dumps([operation, params], sort_keys=True, default=str).encode()).hexdigest()


def clean_key(key: object) -> str | None:
    if key is None:
        return None
    key = str(key).strip()
    if not key or len(key) > 200:
        raise ValidationError("The idempotency key must be 1 to 200 characters.")
    return key


def run_write(db: Database, work: Callable[[Session], dict], *, actor: Actor, operation: str,
              params: dict, key: str | None, attempts: int = 10) -> dict:
    """Run ``work`` in one transaction and return its (JSON-able) result.

    With an idempotency key, a repeat of the same request returns the first result
    and writes nothing; the same key with different parameters is refused. Deadlocks
    and serialization failures are retried with backoff.
    """
    key = clean_key(key)
    digest = request_hash(operation, params)
    for attempt in range(attempts):
        try:
            with db.transaction() as session:
                if key is not None:
                    prior = session.get(IdempotencyKey, key)
                    if prior is not None:
                        # A key belongs to whoever first used it: a replay returns the first result without
                        # running the access checks again, so nobody else may replay it.
                        if prior.request_hash != digest or prior.operation != operation or prior.actor_id != actor.id:
                            raise IdempotencyError(IDEMPOTENCY_MISMATCH)
                        return dict(prior.result, replayed=True)
                    claim = IdempotencyKey(key=key, actor_id=actor.id, operation=operation,
                                           request_hash=digest, result={})
                    session.add(claim)
                    session.flush()  # a concurrent twin blocks here, then fails on the primary key
                result = work(session)
                if key is not None:
                    claim.result = result
                return dict(result, replayed=False)
        except IntegrityError as exc:
            if key is None or "idempotency_keys" not in str(exc.orig) or attempt == attempts - 1:
                raise
            # The twin request committed first: the next attempt replays its result.
            retry_stats["retries"] += 1
        except DBAPIError as exc:
            if getattr(getattr(exc, "orig", None), "sqlstate", None) not in RETRYABLE_SQLSTATES or attempt == attempts - 1:
                raise
            retry_stats["retries"] += 1
            time.sleep(min(0.2, 0.002 * (2 ** attempt)))
    raise AssertionError("unreachable")


def lock_pool(session: Session, pool_id: int) -> Pool:
    pool = session.execute(select(Pool).where(Pool.id == pool_id).with_for_update()).scalar_one_or_none()
    if pool is None:
        raise NotFound(f"No pool with id {pool_id}.")
    return pool


def bump_version(session: Session, model: Any, ident: dict, expected_version: int, what: str, **values: Any) -> None:
    """Optimistic concurrency: write only if nobody changed the row since it was read."""
    conditions = [getattr(model, name) == value for name, value in ident.items()]
    result = session.execute(
        update(model).where(*conditions, model.version == expected_version)
        .values(version=model.version + 1, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise ConflictError(what)


def enqueue(session: Session, queue: str, job: str, **payload: Any) -> None:
    """Write work for the background jobs in the caller's transaction (transactional outbox)."""
    session.add(OutboxMessage(queue=queue, job=job, payload=json.loads(json.dumps(payload, default=str))))
