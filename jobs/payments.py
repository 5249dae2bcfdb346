"""Payment jobs: collect a contribution, pay a withdrawal, through the configured gateway.

A job first asks the gateway whether a charge for the transaction's key already
exists (a previous run may have been killed after the gateway took the money)
and only creates one if not; the gateway itself refuses a second charge for the
same key. The outcome goes to the ledger as the system user: ``confirm_payment``
(units issued or redeemed per the pool's pricing policy) or ``fail_transaction``
(nothing issued; the notification jobs tell the investor and the managers why).
Transient gateway errors are retried by the runner with backoff; after the last
attempt the give-up hook fails the transaction, unless the gateway shows the
money moved after all.

A payment the gateway reports as still processing (Stripe: a bank debit, or a card
waiting for the investor) is settled by the gateway's webhook; so that none waits
forever when a webhook is lost, ``queue_payment_checks`` (run by the sweeper) asks
the gateway about each one every ``POOLDESK_PAYMENT_CHECK_SECONDS``, and after
``POOLDESK_PAYMENT_CONFIRM_HOURS`` cancels it where the gateway allows, which fails
the contribution with the reason.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from core.db.models import Payment, Pool, Transaction, User, utcnow
from core.db.session import Database
from core.services import ledger
from core.services.common import enqueue
from core.services.users import system_actor
from jobs.gateways import GatewayResult, get_gateway, payment_key
from jobs.runner import database, job
from jobs.settings import Throttle, job_settings


def _record(db: Database, tx: Transaction, gateway: str, kind: str, *, status: str, reference: str | None = None,
            error: str | None = None, attempt: bool = False) -> None:
    with db.transaction() as session:
        row = session.scalar(select(Payment).where(Payment.transaction_id == tx.id).with_for_update())
        if row is None:
            row = Payment(transaction_id=tx.id, gateway=gateway, kind=kind, amount=tx.amount,
                          currency=session.get(Pool, tx.pool_id).currency, status=status, attempts=0)
            session.add(row)
        row.status = status
        row.reference = reference or row.reference
        row.last_error = error
        row.attempts += 1 if attempt else 0
        row.updated_at = utcnow()


def apply_gateway_outcome(db: Database, transaction_id: int, result: GatewayResult) -> str:
    """Tell the ledger what the gateway said; safe to call again with the same outcome."""
    with db.read() as session:
        tx = session.get(Transaction, transaction_id)
        if tx is None:
            return "unknown transaction"
        gateway_name = session.scalar(select(Payment.gateway).where(Payment.transaction_id == tx.id)) or "gateway"
    kind = "charge" if tx.kind == "contribution" else "payout"
    if result.status == "succeeded":
        _record(db, tx, gateway_name, kind, status="succeeded", reference=result.reference)
        ledger.confirm_payment(db, actor=system_actor(db), transaction_id=transaction_id)
        return "settled"
    if result.status == "processing":
        _record(db, tx, gateway_name, kind, status="processing", reference=result.reference)
        return "processing"
    _record(db, tx, gateway_name, kind, status="failed", reference=result.reference, error=result.reason)
    ledger.fail_transaction(db, actor=system_actor(db), transaction_id=transaction_id,
                            reason=result.reason or "The payment was declined.")
    return "failed"


def _move_money(transaction_id: int, kind: str) -> str:
    db = database()
    with db.read() as session:
        tx = session.get(Transaction, transaction_id)
        if tx is None:
            return "unknown transaction"
        expected = "contribution" if kind == "charge" else "withdrawal"
        if tx.kind != expected or tx.status != "pending" or tx.payment_received_at is not None:
            return f"nothing to do ({tx.kind} is {tx.status})"
        if kind == "payout" and tx.price is None:
            return "not priced yet"
        investor = session.get(User, tx.investor_id)
        pool = session.get(Pool, tx.pool_id)
        account, currency, amount, code = investor.bank_account or "", pool.currency, tx.amount, pool.code
        session.expunge(tx)
    gateway = get_gateway()
    key = payment_key(transaction_id)
    _record(db, tx, gateway.name, kind, status="started", attempt=True)
    result = gateway.find(key=key, kind=kind)
    if result is None:
        description = f"Pooldesk {code} {expected} #{transaction_id}"
        call = gateway.charge if kind == "charge" else gateway.payout
        result = call(key=key, amount=amount, currency=currency, account=account, description=description)
    return apply_gateway_outcome(db, transaction_id, result)


def _give_up(transaction_id: int, kind: str, error: str) -> None:
    db = database()
    gateway = get_gateway()
    result = gateway.find(key=payment_key(transaction_id), kind=kind)  # the money may have moved after all
    if result is not None and result.status in ("succeeded", "processing"):
        apply_gateway_outcome(db, transaction_id, result)
        return
    apply_gateway_outcome(db, transaction_id, GatewayResult(
        "declined", "", f"The payment gateway could not complete the payment after several attempts ({error})."))


def _give_up_collect(*, error: str, transaction_id: int, **_ignored) -> None:
    _give_up(transaction_id, "charge", error)


def _give_up_payout(*, error: str, transaction_id: int, **_ignored) -> None:
    _give_up(transaction_id, "payout", error)


@job(on_give_up=_give_up_collect)
def collect_contribution(transaction_id: int) -> str:
    """Charge the investor for a pending contribution, then settle or fail it."""
    return _move_money(transaction_id, "charge")


@job(on_give_up=_give_up_payout)
def pay_withdrawal(transaction_id: int) -> str:
    """Pay a priced, pending withdrawal out to the investor, then settle or fail it."""
    return _move_money(transaction_id, "payout")


CHECKS = Throttle()  # how often this process looks for payments to ask about


def queue_payment_checks(db: Database) -> int:
    """Queue a ``check_payment`` job for every payment still processing that was not asked about for
    ``payment_check_seconds``; returns how many. Marking the payment in the same transaction makes
    running this twice (or in two workers) queue each check once."""
    every = job_settings().payment_check_seconds
    if not CHECKS.due(min(60.0, every)):
        return 0
    now = utcnow()
    due = now - timedelta(seconds=every)
    with db.transaction() as session:
        query = (select(Payment).join(Transaction, Transaction.id == Payment.transaction_id)
                 .where(Payment.status == "processing", Payment.updated_at <= due, Transaction.status == "pending")
                 .order_by(Payment.id).limit(500))
        if db.is_postgres:
            query = query.with_for_update(of=Payment, skip_locked=True)
        payments = session.scalars(query).all()
        for payment in payments:
            payment.updated_at = now
            enqueue(session, "payments", "jobs.payments.check_payment", transaction_id=payment.transaction_id)
    return len(payments)


@job
def check_payment(transaction_id: int) -> str:
    """Ask the gateway about a payment it reported as processing: settle or fail the transaction once
    it has an answer; past ``payment_confirm_hours``, cancel it where the gateway allows (and fail it)."""
    db = database()
    with db.read() as session:
        tx = session.get(Transaction, transaction_id)
        payment = session.scalar(select(Payment).where(Payment.transaction_id == transaction_id))
        if tx is None or payment is None or tx.status != "pending":
            return "nothing to do"
        kind, started = payment.kind, payment.created_at
    gateway = get_gateway()
    key = payment_key(transaction_id)
    result = gateway.find(key=key, kind=kind)
    if result is None:
        return "not found at the gateway"
    if result.status != "processing":
        return apply_gateway_outcome(db, transaction_id, result)
    hours = job_settings().payment_confirm_hours
    if utcnow() - started < timedelta(hours=hours):
        return "still processing"
    cancelled = gateway.cancel(key=key, kind=kind)
    if cancelled is None or cancelled.status == "processing":
        return "still processing (the gateway cannot cancel it)"
    if cancelled.status == "declined":
        cancelled = GatewayResult("declined", cancelled.reference,
                                  f"The payment was not confirmed within {hours:g} hours and was cancelled.")
    return apply_gateway_outcome(db, transaction_id, cancelled)
