"""Distribution payouts: each holder's cash part of a declared distribution, paid through the gateway.

When the ``distribution_declared`` job runs, ``plan_payouts`` writes one
``distribution_payouts`` row per cash part (parts the holder chose to reinvest
became units and are not paid out) and one ``pay_distribution_batch`` job per
POOLDESK_PAYOUT_BATCH_SIZE parts, in one database transaction: all or nothing,
and a second run plans nothing. A batch job pays its pending parts, a few
gateway calls at once, and records each chunk's outcomes in one transaction
that also queues the investors' "distribution paid" notices and the managers'
alert for parts that failed, so each is sent once.

Each part's gateway idempotency key is ``pooldesk-tx-<transaction id>`` (the
part's ledger transaction). Before paying, the job asks the gateway whether a
payout exists for the key, so a job that runs twice, or a worker killed after
the gateway paid but before we wrote it down, never pays a part twice.
Temporary gateway errors retry the batch with backoff (only unfinished parts
are tried again); after the last attempt the give-up hook asks the gateway
once more and fails what was not paid, keeping the error. An administrator
can pay failed parts again (Operations page) after the account is fixed: that
uses the key with ``-r<round>`` appended, after checking every earlier key.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import insert, select

from core.config import get_settings
from core.db.models import Distribution, DistributionPayout, Pool, Transaction, User, utcnow
from core.db.session import Database
from core.domain.money import format_money, round_money
from core.services import audit
from core.services.common import enqueue
from core.services.users import system_actor
from jobs.errors import PermanentError, TransientError
from jobs.gateways import GatewayResult, PaymentGateway, get_gateway, payment_key
from jobs.runner import database, job, run_key
from jobs.settings import job_settings

log = logging.getLogger("pooldesk.jobs")

CHUNK = 25             # parts recorded per database transaction
ALERT_LINES = 50       # failed parts listed by name in one alert; the rest are counted


def payout_key(transaction_id: int, round_: int = 0) -> str:
    """The gateway idempotency key of a part: the transaction's key, with the round when paid again."""
    return payment_key(transaction_id) + (f"-r{round_}" if round_ else "")


def _batches(ids: list[int], size: int) -> list[list[int]]:
    size = max(1, size)
    return [ids[start:start + size] for start in range(0, len(ids), size)]


def queue_batches(session, distribution_id: int, transaction_ids: list[int]) -> int:
    """Queue payout jobs for these parts in the caller's transaction; returns how many jobs."""
    batches = _batches(transaction_ids, job_settings().payout_batch_size)
    for ids in batches:
        enqueue(session, "payouts", "jobs.payouts.pay_distribution_batch", distribution_id=distribution_id,
                transaction_ids=ids)
    return len(batches)


def plan_payouts(db: Database, *, distribution_id: int) -> int:
    """Write a payout row per cash part and queue the batch jobs, once per distribution; returns the jobs queued."""
    system = system_actor(db)
    with db.transaction() as session:
        if session.scalar(select(DistributionPayout.id)
                          .where(DistributionPayout.distribution_id == distribution_id).limit(1)) is not None:
            return 0  # planned by an earlier run of this job
        distribution = session.get(Distribution, distribution_id)
        if distribution is None:
            log.warning("distribution %s does not exist: no payouts", distribution_id)
            return 0
        currency = session.get(Pool, distribution.pool_id).currency
        reinvested = set(session.scalars(select(Transaction.investor_id).where(
            Transaction.distribution_id == distribution_id, Transaction.kind == "reinvestment")))
        parts = [(tx_id, investor_id, amount) for tx_id, investor_id, amount in session.execute(
            select(Transaction.id, Transaction.investor_id, Transaction.amount)
            .where(Transaction.distribution_id == distribution_id, Transaction.kind == "distribution",
                   Transaction.status == "settled").order_by(Transaction.id))
            if investor_id not in reinvested and amount and amount > 0]
        if not parts:
            return 0
        now = utcnow()
        session.execute(insert(DistributionPayout), [
            {"transaction_id": tx_id, "distribution_id": distribution_id, "pool_id": distribution.pool_id,
             "investor_id": investor_id, "amount": amount, "currency": currency, "status": "pending", "round": 0,
             "attempts": 0, "created_at": now, "updated_at": now} for tx_id, investor_id, amount in parts])
        batches = queue_batches(session, distribution_id, [tx_id for tx_id, _, _ in parts])
        total = sum((amount for _, _, amount in parts), Decimal(0))
        audit.record(session, system, "distribution.payouts_planned", "distribution", distribution_id, None,
                     {"parts": len(parts), "reinvested": len(reinvested), "total": round_money(total, currency),
                      "batches": batches})
        return batches


# --- paying ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Part:
    transaction_id: int
    round: int
    amount: Decimal
    currency: str
    account: str
    pool_code: str
    error: str | None


def _pending_parts(db: Database, transaction_ids: list[int]) -> list[_Part]:
    with db.read() as session:
        rows = session.execute(
            select(DistributionPayout, User.bank_account, Pool.code)
            .join(User, User.id == DistributionPayout.investor_id)
            .join(Pool, Pool.id == DistributionPayout.pool_id)
            .where(DistributionPayout.transaction_id.in_(transaction_ids), DistributionPayout.status == "pending")
            .order_by(DistributionPayout.transaction_id)).all()
        return [_Part(p.transaction_id, p.round, p.amount, p.currency, account or "", code, p.error)
                for p, account, code in rows]


def _find(gateway: PaymentGateway, part: _Part) -> GatewayResult | None:
    """A payout the gateway already made for this part under any of its keys (earlier rounds included)."""
    for round_ in range(part.round, -1, -1):
        found = gateway.find(key=payout_key(part.transaction_id, round_), kind="payout")
        if found is not None and (found.status == "succeeded" or round_ == part.round):
            return found
    return None


def _pay_one(gateway: PaymentGateway, distribution_id: int, part: _Part) -> GatewayResult:
    """The gateway's answer for one part; a temporary problem raises TransientError."""
    try:
        result = _find(gateway, part)
        if result is None:
            result = gateway.payout(key=payout_key(part.transaction_id, part.round), amount=part.amount,
                                    currency=part.currency, account=part.account,
                                    description=f"Pooldesk {part.pool_code} distribution #{distribution_id}")
    except PermanentError as exc:
        return GatewayResult("declined", "", str(exc))
    if result.status == "processing":
        raise TransientError("The payment gateway is still processing the payout.")
    return result


def _error_text(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:2000]


def _record(db: Database, distribution_id: int, gateway_name: str,
            outcomes: list[tuple[int, GatewayResult | None, str | None]], *, counted: bool = True) -> tuple[int, int]:
    """Write what the gateway said for some parts, and queue the notices and alerts of parts now final.

    ``outcomes`` holds (transaction id, result, temporary error): a result makes the part paid or
    failed; no result keeps it pending with the error noted. Returns (paid now, failed now).
    """
    system = system_actor(db)
    now = utcnow()
    ids = [tx_id for tx_id, _, _ in outcomes]
    with db.transaction() as session:
        rows = {r.transaction_id: r for r in session.scalars(
            select(DistributionPayout).where(DistributionPayout.transaction_id.in_(ids)).with_for_update())}
        paid, failed = [], []
        for tx_id, result, error in outcomes:
            row = rows.get(tx_id)
            if row is None or row.status != "pending":
                continue  # a twin run recorded it first
            row.attempts += 1 if counted else 0
            row.updated_at, row.gateway = now, gateway_name
            if result is None:
                row.error = error
                continue
            if result.status == "succeeded":
                row.status, row.reference, row.error, row.paid_at = "paid", result.reference or None, None, now
                paid.append(tx_id)
            else:
                row.status, row.reference = "failed", result.reference or None
                row.error = (result.reason or "The payout was declined.")[:2000]
                failed.append(tx_id)
            audit.record(session, system, f"distribution.payout_{row.status}", "transaction", tx_id,
                         {"status": "pending"},
                         {"status": row.status, "amount": round_money(row.amount, row.currency),
                          "reference": row.reference, "error": row.error, "round": row.round})
        if paid:
            enqueue(session, "notifications", "jobs.payouts.notify_paid", distribution_id=distribution_id,
                    transaction_ids=paid)
        if failed:
            enqueue(session, "notifications", "jobs.payouts.alert_failed", distribution_id=distribution_id,
                    transaction_ids=failed)
        return len(paid), len(failed)


def _give_up_batch(*, error: str, distribution_id: int, transaction_ids: list[int], **_ignored) -> None:
    """After the last attempt: what the gateway shows as paid is paid, the rest fails with its error."""
    db = database()
    parts = _pending_parts(db, transaction_ids)
    if not parts:
        return
    try:
        gateway = get_gateway()
        name = gateway.name
    except PermanentError as exc:  # misconfigured: nothing can have been paid through it
        gateway, name, error = None, get_settings().payment_gateway, str(exc)
    outcomes = []
    for part in parts:
        found = None
        if gateway is not None:
            try:
                found = _find(gateway, part)
            except PermanentError:
                found = None
        if found is not None and found.status == "succeeded":
            outcomes.append((part.transaction_id, found, None))
        else:
            reason = ("The payment gateway could not complete the payout after several attempts "
                      f"({part.error or error}).")
            outcomes.append((part.transaction_id, GatewayResult("declined", "", reason), None))
    _record(db, distribution_id, name, outcomes, counted=False)


@job(on_give_up=_give_up_batch)
def pay_distribution_batch(distribution_id: int, transaction_ids: list[int]) -> dict:
    """Pay one batch of a distribution's cash parts; parts already paid or failed are left alone."""
    db = database()
    parts = _pending_parts(db, transaction_ids)
    if not parts:
        return {"paid": 0, "failed": 0, "waiting": 0}
    gateway = get_gateway()
    settings = job_settings()
    paid = failed = 0
    waiting: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, min(settings.payout_connections, CHUNK))) as pool:
        for start in range(0, len(parts), CHUNK):
            chunk = parts[start:start + CHUNK]

            def attempt(part: _Part):
                try:
                    return part.transaction_id, _pay_one(gateway, distribution_id, part), None
                except TransientError as exc:
                    return part.transaction_id, None, _error_text(exc)

            outcomes = list(pool.map(attempt, chunk))
            now_paid, now_failed = _record(db, distribution_id, gateway.name, outcomes)
            paid, failed = paid + now_paid, failed + now_failed
            errors = [error for _, result, error in outcomes if result is None]
            waiting += errors
            if len(chunk) >= 5 and len(errors) == len(chunk):
                waiting += ["(not tried)"] * (len(parts) - start - len(chunk))
                break  # every call failed: the gateway looks down, so wait for the retry
    if waiting:
        raise TransientError(f"{len(waiting)} payout(s) of distribution #{distribution_id} are not made yet: "
                             f"{waiting[0]}")
    return {"paid": paid, "failed": failed, "waiting": 0}


# --- telling people -------------------------------------------------------------------------

def _paid_messages(session, distribution_id: int, transaction_ids: list[int]):
    from jobs.notify import Message

    distribution = session.get(Distribution, distribution_id)
    pool = session.get(Pool, distribution.pool_id)
    rows = session.execute(select(DistributionPayout.investor_id, DistributionPayout.amount).where(
        DistributionPayout.transaction_id.in_(transaction_ids), DistributionPayout.status == "paid")).all()
    base = {"pool_name": pool.name, "pool_code": pool.code, "pool_id": pool.id,
            "record_date": str(distribution.record_date), "link": get_settings().base_url}
    key = f"distribution_paid:d{distribution_id}"
    return [Message(investor_id, "distribution_paid", "distribution_paid",
                    dict(base, amount=format_money(round_money(amount, pool.currency), pool.currency)), key, pool.id)
            for investor_id, amount in rows]


def _give_up_notice(*, error: str, distribution_id: int, transaction_ids: list[int], **_ignored) -> None:
    from jobs.notify import fail_unsent

    db = database()
    with db.read() as session:
        users = session.scalars(select(DistributionPayout.investor_id).where(
            DistributionPayout.transaction_id.in_(transaction_ids)))
        keys = [f"distribution_paid:d{distribution_id}:u{uid}:{channel}" for uid in users for channel in ("email", "sms")]
    fail_unsent(db, keys=keys)


@job(on_give_up=_give_up_notice)
def notify_paid(distribution_id: int, transaction_ids: list[int]) -> dict:
    """Tell each investor whose part was paid ("distribution_paid"), once per person and channel."""
    from jobs.notify import deliver

    db = database()
    with db.read() as session:
        messages = _paid_messages(session, distribution_id, transaction_ids)
    outcome = deliver(db, messages)
    return {"messages": len(messages), "sent": outcome.sent, "logged": outcome.logged, "in_app": outcome.in_app}


def _alert_key(distribution_id: int, transaction_ids: list[int]) -> str:
    return f"payout_failure:d{distribution_id}:{run_key(sorted(transaction_ids))}"


def _give_up_alert(*, error: str, distribution_id: int, transaction_ids: list[int], **_ignored) -> None:
    from jobs.notify import fail_unsent

    fail_unsent(database(), _alert_key(distribution_id, transaction_ids))


@job(on_give_up=_give_up_alert)
def alert_failed(distribution_id: int, transaction_ids: list[int]) -> dict:
    """Tell the pool's managers (or the admins) which parts could not be paid, and why."""
    from jobs.notify import Message, _managers, deliver

    db = database()
    with db.read() as session:
        distribution = session.get(Distribution, distribution_id)
        pool = session.get(Pool, distribution.pool_id)
        rows = session.execute(
            select(DistributionPayout, User.name).join(User, User.id == DistributionPayout.investor_id)
            .where(DistributionPayout.transaction_id.in_(transaction_ids), DistributionPayout.status == "failed")
            .order_by(DistributionPayout.transaction_id)).all()
        if not rows:
            return {"messages": 0}
        failures = [{"investor_name": name, "transaction_id": p.transaction_id,
                     "amount": format_money(round_money(p.amount, p.currency), p.currency), "reason": p.error or ""}
                    for p, name in rows]
        total = sum((p.amount for p, _ in rows), Decimal(0))
        context = {"pool_name": pool.name, "pool_code": pool.code, "record_date": str(distribution.record_date),
                   "distribution_id": distribution_id, "count": len(failures), "failures": failures[:ALERT_LINES],
                   "more": max(0, len(failures) - ALERT_LINES), "link": get_settings().base_url,
                   "total": format_money(round_money(total, pool.currency), pool.currency)}
        key = _alert_key(distribution_id, transaction_ids)
        messages = [Message(manager_id, "payment_failure", "payout_failure", context, key, pool.id)
                    for manager_id in _managers(session, pool.id)]
        # Each investor whose part failed is told too, with the reason (once per part).
        messages += [Message(p.investor_id, "distribution_payout_failed", "distribution_payout_failed",
                             {"pool_name": pool.name, "pool_code": pool.code, "record_date": str(distribution.record_date),
                              "amount": format_money(round_money(p.amount, p.currency), p.currency),
                              "reason": p.error or "the payment gateway refused it", "link": get_settings().base_url},
                             f"distribution_payout_failed:t{p.transaction_id}", pool.id)
                     for p, _name in rows]
    outcome = deliver(db, messages)
    return {"messages": len(messages), "sent": outcome.sent, "logged": outcome.logged, "in_app": outcome.in_app}
