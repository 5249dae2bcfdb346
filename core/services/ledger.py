"""Contributions and withdrawals: request, approve, pay, price, settle, reverse.

Lifecycle (ACCOUNTING rule 8): an investor's request starts ``requested`` and a
manager approves it to ``pending`` (a manager's own entry starts ``pending``).
A pending flow waits for its payment; when the payment is confirmed it is priced
by the pool's policy (``latest``: now, at the current NAV per unit; ``forward``:
at the next valuation) and ``settled``. Units move only on settlement; a failed
payment changes no holding. Every posting locks the pool row first, so writers
to one pool queue up and none of them works from a stale units-outstanding.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import psycopg
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from core.config import get_settings
from core.db.models import JournalEntry, Pool, Position, Transaction, User, utcnow
from core.db.session import Database
from core.domain import accounting
from core.domain.errors import IdempotencyError, NotFound, PermissionDenied, ValidationError
from core.domain.limits import check_text
from core.db.types import MONEY_SCALE, PRICE_SCALE, UNITS_SCALE
from core.domain.money import MAX_AMOUNT, minor_units, parse_amount, parse_units, round_money, to_decimal
from core.services import audit
from core.services.mfa import require_recent_reauth
from core.services.common import (
    IDEMPOTENCY_MISMATCH, RETRYABLE_SQLSTATES, clean_key, enqueue, lock_pool, request_hash, retry_stats, run_write,
    same_number,
)
from core.services.context import (
    Actor, manager_refusal, manages_pool, require_pool_manager, require_self_or_pool_manager,
)

ZERO = Decimal(0)


@dataclass(frozen=True)
class TransactionView:
    id: int
    pool_id: int
    investor_id: int | None
    kind: str
    status: str
    amount: Decimal | None
    units: Decimal | None
    price: Decimal | None
    withdrawal_mode: str | None
    effective_date: date
    source: str
    failure_reason: str | None
    note: str
    created_at: datetime
    settled_at: datetime | None
    payment_received_at: datetime | None
    version: int
    replayed: bool = False


def tx_view(tx: Transaction, replayed: bool = False) -> TransactionView:
    return TransactionView(tx.id, tx.pool_id, tx.investor_id, tx.kind, tx.status, tx.amount, tx.units, tx.price,
                           tx.withdrawal_mode, tx.effective_date, tx.source, tx.failure_reason, tx.note,
                           tx.created_at, tx.settled_at, tx.payment_received_at, tx.version, replayed)


def _write_and_view(db: Database, work, **write_args) -> TransactionView:
    """Run a write (common.run_write) and return the transaction as that write left it: a payment job
    may settle it the moment it is committed, and the caller is told what it did, not what happened next.
    A replayed request returns the transaction as it is now."""
    seen: dict[str, TransactionView] = {}

    def recorded(session: Session) -> dict:
        result = work(session)
        session.flush()
        seen["view"] = tx_view(session.get(Transaction, result["transaction_id"]))
        return result

    outcome = run_write(db, recorded, **write_args)
    return _load_view(db, outcome) if outcome["replayed"] else seen["view"]


def _load_view(db: Database, result: dict) -> TransactionView:
    with db.read() as session:
        return tx_view(session.get(Transaction, result["transaction_id"]), result.get("replayed", False))


# --- postings (called with the pool row locked) --------------------------------------

def position_for(session: Session, pool: Pool, investor_id: int) -> Position:
    position = session.get(Position, (pool.id, investor_id))
    if position is None:
        seq = session.scalar(select(func.count()).select_from(Position).where(Position.pool_id == pool.id)) or 0
        position = Position(pool_id=pool.id, investor_id=investor_id, units=ZERO, contributed=ZERO, withdrawn=ZERO,
                            distributions=ZERO, opened_seq=seq + 1, reinvest_distributions=False)
        session.add(position)
        session.flush()
    return position


def current_price(pool: Pool) -> Decimal:
    """Rule 1: the latest NAV per unit, or the initial price when nobody holds units."""
    return pool.nav_per_unit if pool.units_outstanding > 0 else pool.initial_unit_price


def post_legs(session: Session, pool: Pool, effective: date, legs: list[tuple[str, int | None, Decimal, Decimal]], *,
              transaction_id: int | None = None, valuation_id: int | None = None,
              distribution_id: int | None = None) -> list[tuple[str, int | None, Decimal, Decimal]]:
    """Rule 7: write balanced legs (account, investor, amount, units); refuse anything unbalanced.
    Returns the legs, whose digest (audit.legs_digest) goes into the posting's audit row."""
    if sum((leg[2] for leg in legs), ZERO) != 0 or sum((leg[3] for leg in legs), ZERO) != 0:
        raise AssertionError(f"unbalanced journal entry: {legs}")
    now = utcnow()
    # A Core executemany: legs are never read back as objects, and a distribution to thousands of
    # holders writes thousands of them.
    session.execute(insert(JournalEntry), [
        dict(pool_id=pool.id, transaction_id=transaction_id, valuation_id=valuation_id, distribution_id=distribution_id,
             account=account, investor_id=investor_id, amount=amount, units=units, effective_date=effective,
             created_at=now)
        for account, investor_id, amount, units in legs])
    pool.ledger_version += 1
    return legs


def settle_contribution(session: Session, pool: Pool, tx: Transaction, price: Decimal) -> list[tuple]:
    """Issue the units; returns the legs posted."""
    units = accounting.units_for_contribution(tx.amount, price)
    if units <= 0:
        raise ValidationError("The amount is too small to buy any units at the current unit value.", field="amount")
    position = position_for(session, pool, tx.investor_id)
    legs = post_legs(session, pool, tx.effective_date, [
        ("pool", None, tx.amount, -units),
        ("investor", tx.investor_id, -tx.amount, units),
    ], transaction_id=tx.id)
    position.units += units
    position.contributed += tx.amount
    if pool.units_outstanding == 0:
        pool.nav_per_unit = price  # rule 1: an empty pool restarts at the price these first units were issued at
    pool.units_outstanding += units
    pool.total_assets += tx.amount
    pool.last_flow_date = max(pool.last_flow_date or tx.effective_date, tx.effective_date)
    tx.units, tx.price, tx.status, tx.settled_at = units, price, "settled", utcnow()
    return legs


def price_withdrawal(pool: Pool, position: Position, tx: Transaction, price: Decimal,
                     reserved_units: Decimal = ZERO) -> tuple[Decimal, Decimal]:
    """Rule 4: units and amount of a withdrawal at ``price``; refuse more units than held."""
    available = position.units - reserved_units
    if tx.withdrawal_mode == "amount":
        units = accounting.units_for_withdrawal(tx.amount, price)
        amount = tx.amount
    elif tx.withdrawal_mode == "units":
        units = tx.units
        amount = accounting.amount_for_units(units, price, pool.currency)
    else:  # all
        units = available
        amount = accounting.amount_for_units(units, price, pool.currency)
    if units <= 0 or units > available:
        raise ValidationError(
            f"The withdrawal needs {units} units but the investor holds {available} available units.", field="amount")
    if amount <= 0:
        raise ValidationError("The withdrawal is worth nothing at the current unit value.", field="amount")
    return units, amount


def settle_withdrawal(session: Session, pool: Pool, tx: Transaction, units: Decimal, amount: Decimal,
                      price: Decimal) -> list[tuple]:
    """Redeem the units; returns the legs posted."""
    position = position_for(session, pool, tx.investor_id)
    if units > position.units:
        raise ValidationError(f"The investor holds {position.units} units, fewer than the {units} to redeem.")
    legs = post_legs(session, pool, tx.effective_date, [
        ("pool", None, -amount, units),
        ("investor", tx.investor_id, amount, -units),
    ], transaction_id=tx.id)
    position.units -= units
    position.withdrawn += amount
    pool.units_outstanding -= units
    pool.total_assets -= amount
    pool.last_flow_date = max(pool.last_flow_date or tx.effective_date, tx.effective_date)
    tx.units, tx.amount, tx.price, tx.status, tx.settled_at = units, amount, price, "settled", utcnow()
    return legs


def reserved_withdrawal_units(session: Session, pool_id: int, investor_id: int, exclude_id: int | None = None) -> Decimal:
    """Units already promised to pending withdrawals that have been priced (awaiting payout)."""
    query = select(func.sum(Transaction.units)).where(
        Transaction.pool_id == pool_id, Transaction.investor_id == investor_id, Transaction.kind == "withdrawal",
        Transaction.status == "pending", Transaction.price.is_not(None))
    if exclude_id is not None:
        query = query.where(Transaction.id != exclude_id)
    return session.scalar(query) or ZERO


def notify(session: Session, event: str, *, pool_id: int, transaction_id: int | None = None, **extra) -> None:
    enqueue(session, "notifications", "jobs.notify.dispatch_event", event=event, pool_id=pool_id,
            transaction_id=transaction_id, **extra)


# --- use cases ------------------------------------------------------------------------

def _check_flow(session: Session, pool: Pool, investor_id: int, effective: date) -> None:
    investor = session.get(User, investor_id)
    check_flow_values(pool_code=pool.code, pool_status=pool.status, inception=pool.inception_date,
                      effective=effective, investor_id=investor_id,
                      investor=None if investor is None else (investor.role, investor.status, investor.email))


def check_flow_values(*, pool_code: str, pool_status: str, inception: date, effective: date, investor_id: int,
                      investor: tuple[str, str, str] | None) -> None:
    """Whether a pool may take a flow for this investor on this date (investor = role, status, email)."""
    if pool_status != "open":
        raise ValidationError(f"Pool {pool_code} is {pool_status}: it takes no contributions or withdrawals.")
    if effective < inception:
        raise ValidationError(f"The date {effective} is before the pool's inception ({inception}).",
                              field="effective_date")
    if effective > date.today():
        raise ValidationError(f"The date {effective} is in the future (today is {date.today()}).",
                              field="effective_date")
    if investor is None or investor[0] != "investor":
        raise NotFound(f"No investor with id {investor_id}.", field="investor")
    if investor[1] != "active":
        raise ValidationError(f"{investor[2]} is {investor[1]} and cannot transact.", field="investor")


def _minimum_contribution_error(code: str, minimum: Decimal, currency: str) -> ValidationError:
    return ValidationError(f"The minimum contribution to {code} is {round_money(minimum, currency)} {currency}.",
                           field="amount")


def _start_status(session: Session, actor: Actor, pool: Pool, investor_id: int) -> tuple[str, str]:
    if actor.role == "investor":
        if actor.id != investor_id:
            raise PermissionDenied("Investors may only make requests for themselves.")
        return "requested", "investor"
    require_pool_manager(session, actor, pool.id, "record transactions in this pool")
    return "pending", "manager"


class _StaleConnection(Exception):
    """The first read found its pooled connection closed by the server; a fresh one is taken."""


# Run on the driver connection itself (psycopg, prepared after a few calls): plain tuples, none of the
# result processing of the ORM, which on this path cost a quarter of the posting rate.
_FLOW_CONTEXT = (
    "SELECT p.code, p.status, p.currency, p.pricing_policy, p.inception_date, p.minimum_contribution, "
    "u.role, u.status, u.email, m.user_id FROM pools p "
    "LEFT JOIN users u ON u.id = %(investor)s "
    "LEFT JOIN pool_managers m ON m.pool_id = p.id AND m.user_id = %(actor)s WHERE p.id = %(pool)s")
_POST_FLOW = (
    "SELECT out_tx, out_units, out_amount, out_price, out_error FROM pooldesk_post_flow("
    "%(pool)s, %(investor)s, %(kind)s, %(mode)s, %(amount)s, %(units)s, %(minor)s, %(effective)s, %(actor)s, "
    "%(note)s, %(key)s, %(payment)s, %(at)s, %(operation)s, %(request_hash)s, %(pads)s)")
_POST_CHECKED_FLOW = (
    "SELECT out_tx, out_units, out_amount, out_price, out_error FROM pooldesk_post_checked_flow("
    "%(pool)s, %(investor)s, %(kind)s, %(mode)s, %(amount)s, %(units)s, %(currency)s, %(minor)s, %(effective)s, "
    "%(today)s, %(actor)s, %(note)s, %(key)s, %(payment)s, %(at)s, %(operation)s, %(request_hash)s, %(pads)s)")


def _settle_now_on_postgres(db: Database, *, actor: Actor, pool_id: int, investor_id: int, kind: str,
                            mode: str | None, amount: object, units: object, effective: date, note: str,
                            key: str | None, payment: str, operation: str, params: dict) -> TransactionView | None:
    """A manager's flow whose money already moved, in a `latest`-priced pool, on PostgreSQL, posted by
    ``pooldesk_post_flow`` (migrations 0002 and 0006) so the pool row is locked only for that call and
    the commit. A keyed flow to a pool posted to before goes in one round trip, the database running
    the checks (migration 0007); otherwise the pool is read and checked here first, with the same rules
    and words as the general path. Returns None when the general path applies (forward pricing)."""
    key = clean_key(key)
    for attempt in range(10):
        try:
            return _post_flow_once(db, actor=actor, pool_id=pool_id, investor_id=investor_id, kind=kind, mode=mode,
                                   amount=amount, units=units, effective=effective, note=note, key=key,
                                   payment=payment, operation=operation, params=params)
        except _StaleConnection:
            if attempt == 9:
                raise
            continue
        except psycopg.Error as exc:
            # A deadlock or serialization failure: nothing was written; try again.
            if exc.sqlstate not in RETRYABLE_SQLSTATES or attempt == 9:
                raise
            retry_stats["retries"] += 1
            time.sleep(0.001 * (2 ** attempt))
    raise AssertionError("unreachable")


def _post_flow_once(db: Database, *, actor: Actor, pool_id: int, investor_id: int, kind: str, mode: str | None,
                    amount: object, units: object, effective: date, note: str, key: str | None, payment: str,
                    operation: str, params: dict) -> TransactionView | None:
    at = utcnow()
    request = request_hash(operation, params)
    pads = audit.key_pads(audit.chain_key())  # the audit chain's key, handed to the database per call
    # Autocommit: the function call is a transaction of its own (a refusal inside it is raised and
    # writes nothing), which saves the BEGIN and COMMIT round trips; plain rows, no ORM objects.
    with db.autocommit_engine.connect() as conn:
        raw = conn.connection.driver_connection
        currency = _POOL_CURRENCY.get((db.url, pool_id))
        # One round trip once the pool's currency is known, for a keyed request (a connection lost during
        # the call can then be retried: the key makes a second call a replay). The database runs the
        # checks and posts (migration 0007); when a check would refuse, it writes nothing and the
        # Python checks below say what is wrong.
        fast = None if currency is None or key is None else _fast_values(mode, amount, units)
        if fast is not None:
            try:
                row = _call(conn, raw, _POST_CHECKED_FLOW, retry=True, params=dict(
                    pool=pool_id, investor=investor_id, kind=kind, mode=mode, amount=fast[0], units=fast[1],
                    currency=currency, minor=minor_units(currency), effective=effective, today=date.today(),
                    actor=actor.id, note=note, key=key, payment=payment, at=at, operation=operation,
                    request_hash=request, pads=pads))
            except psycopg.errors.UndefinedFunction:  # a database not yet migrated to 0007
                row = (None, None, None, None, "unknown", None)
            if row[4] == "general":
                return None
            if row[4] not in ("check", "unknown"):
                return _flow_result(db, row, pool_id, investor_id, kind, mode, effective, note, at)
            if row[4] == "unknown":  # no such pool, or its currency is not the one remembered
                _POOL_CURRENCY.pop((db.url, pool_id), None)
        found = _call(conn, raw, _FLOW_CONTEXT, retry=True,
                      params={"pool": pool_id, "investor": investor_id, "actor": actor.id})
        if found is None:
            raise NotFound(f"No pool with id {pool_id}.")
        (code, status, currency, policy, inception, minimum_raw, role, investor_status, email, assigned) = found
        if policy != "latest":
            return None
        if not (actor.role == "admin" or (actor.role == "manager" and assigned is not None)):  # as manages_pool
            raise manager_refusal(actor, "record transactions in this pool")
        value = parse_amount(amount, currency) if mode in (None, "amount") else None
        unit_count = parse_units(units) if mode == "units" else None
        check_flow_values(pool_code=code, pool_status=status, inception=inception, effective=effective,
                          investor_id=investor_id, investor=None if role is None else (role, investor_status, email))
        minimum = Decimal(minimum_raw).scaleb(-MONEY_SCALE)
        if kind == "contribution" and value < minimum:
            raise _minimum_contribution_error(code, minimum, currency)
        if len(_POOL_CURRENCY) >= 10_000:
            _POOL_CURRENCY.clear()
        _POOL_CURRENCY[(db.url, pool_id)] = currency
        row = _call(conn, raw, _POST_FLOW, retry=key is not None, params=dict(
            pool=pool_id, investor=investor_id, kind=kind, mode=mode,
            amount=None if value is None else int(value.scaleb(MONEY_SCALE)),
            units=None if unit_count is None else int(unit_count.scaleb(UNITS_SCALE)),
            minor=minor_units(currency), effective=effective, actor=actor.id, note=note, key=key,
            payment=payment, at=at, operation=operation, request_hash=request, pads=pads))
    return _flow_result(db, row, pool_id, investor_id, kind, mode, effective, note, at)


# The currency of each pool a flow was last posted to, per database: the one-trip call states it, and
# the database refuses the call when the pool's currency is another (the checks then run here).
_POOL_CURRENCY: dict[tuple[str, int], str] = {}


def _fast_values(mode: str | None, amount: object, units: object) -> tuple[int | None, int | None] | None:
    """The amount (scale 4) or units (scale 6) of a flow whose number is well formed whatever the
    currency, or None: a number that would be refused goes the way that says why."""
    try:
        if mode in (None, "amount"):
            value = to_decimal(amount)
            if value <= 0 or value > MAX_AMOUNT or value != value.quantize(Decimal(1).scaleb(-MONEY_SCALE)):
                return None
            return int(value.scaleb(MONEY_SCALE)), None
        if mode == "units":
            return None, int(parse_units(units).scaleb(UNITS_SCALE))
        return None, None
    except ValidationError:
        return None


def _call(conn, raw, query: str, *, retry: bool, params: dict) -> tuple | None:
    """One statement on the connection's driver; a refusal raised inside the database (SQLSTATE P0001)
    becomes the Python path's error. On a pooled connection the server dropped (a restart, an idle
    timeout), a statement that is safe to send again (a read, or a posting with its idempotency key)
    asks for a fresh connection."""
    try:
        with raw.cursor() as cursor:
            return cursor.execute(query, params).fetchone()
    except psycopg.errors.RaiseException as exc:
        raise _refusal(exc.diag.message_primary, exc.diag.message_detail) from None
    except psycopg.OperationalError as exc:
        if retry and (raw.closed or raw.broken):
            conn.invalidate()
            raise _StaleConnection() from exc
        raise


def _flow_result(db: Database, row: tuple, pool_id: int, investor_id: int, kind: str, mode: str | None,
                 effective: date, note: str, at: datetime) -> TransactionView:
    tx_id, out_units, out_amount, out_price, error = row[:5]
    if error == "idempotency_mismatch":
        raise IdempotencyError(IDEMPOTENCY_MISMATCH)
    if error == "replay":
        return _load_view(db, {"transaction_id": tx_id, "replayed": True})
    return TransactionView(
        tx_id, pool_id, investor_id, kind, "settled", Decimal(out_amount).scaleb(-MONEY_SCALE),
        Decimal(out_units).scaleb(-UNITS_SCALE), Decimal(out_price).scaleb(-PRICE_SCALE),
        mode if kind == "withdrawal" else None, effective, "manager", None, note, at, at, at, 1)


def _refusal(reason: str, detail: str | None) -> ValidationError | PermissionDenied:
    """The words of the Python path for a refusal raised by ``pooldesk_post_flow``."""
    if reason == "not_permitted":  # the actor's role and status, as the users table has them now
        role, status = detail.split()
        if status not in ("active", "system"):
            return PermissionDenied("Your account is not active, so you may not record transactions in this pool.")
        return manager_refusal(Actor(0, role, ""), "record transactions in this pool")
    if reason == "pool_not_open":
        return ValidationError("The pool was closed a moment ago: it takes no contributions or withdrawals.")
    if reason == "too_small":
        return ValidationError("The amount is too small to buy any units at the current unit value.", field="amount")
    if reason == "nothing_held":
        return ValidationError("The investor holds no units in this pool to withdraw.", field="amount")
    if reason == "insufficient":
        needed, available = (Decimal(int(n)).scaleb(-UNITS_SCALE) for n in detail.split())
        return ValidationError(f"The withdrawal needs {needed} units but the investor holds {available} "
                               "available units.", field="amount")
    if reason == "worthless":
        return ValidationError("The withdrawal is worth nothing at the current unit value.", field="amount")
    raise AssertionError(f"unknown refusal {reason!r}")


def record_contribution(db: Database, *, actor: Actor, pool_id: int, investor_id: int, amount: object,
                        key: str | None, effective_date: date | None = None, payment: str = "gateway",
                        note: str = "") -> TransactionView:
    """A contribution. ``payment='gateway'`` collects it through the payment gateway (a job);
    ``payment='received'`` records money that already arrived (cash, bank transfer)."""
    if payment not in ("gateway", "received"):
        raise ValidationError("Payment must be 'gateway' or 'received'.")
    note = check_text(note, "note", field="note")
    effective = effective_date or date.today()
    params = dict(pool_id=pool_id, investor_id=investor_id, amount=same_number(amount), effective=effective,
                  payment=payment)
    if payment == "received" and actor.role != "investor" and db.is_postgres:
        view = _settle_now_on_postgres(db, actor=actor, pool_id=pool_id, investor_id=investor_id,
                                       kind="contribution", mode=None, amount=amount, units=None, effective=effective,
                                       note=note, key=key, payment=payment, operation="contribution", params=params)
        if view is not None:
            return view

    def work(session: Session) -> dict:
        pool = lock_pool(session, pool_id)
        status, source = _start_status(session, actor, pool, investor_id)
        if actor.role == "investor" and payment == "received":
            raise PermissionDenied("Only a manager can record money already received.")
        value = parse_amount(amount, pool.currency)
        _check_flow(session, pool, investor_id, effective)
        if value < pool.minimum_contribution:
            raise _minimum_contribution_error(pool.code, pool.minimum_contribution, pool.currency)
        tx = Transaction(pool_id=pool.id, investor_id=investor_id, kind="contribution", status=status, amount=value,
                         effective_date=effective, source=source, note=note, idempotency_key=key, created_by=actor.id)
        session.add(tx)
        session.flush()
        audit.record(session, actor, "transaction.create", "transaction", tx.id, None,
                     {"kind": "contribution", "status": status, "amount": value, "pool_id": pool.id,
                      "investor_id": investor_id, "payment": payment})
        if status == "pending":
            _after_approval(session, actor, pool, tx, payment)
        else:
            notify(session, "contribution_requested", pool_id=pool.id, transaction_id=tx.id)
        return {"transaction_id": tx.id}

    return _write_and_view(db, work, actor=actor, operation="contribution", params=params, key=key)


def record_withdrawal(db: Database, *, actor: Actor, pool_id: int, investor_id: int, key: str | None,
                      amount: object = None, units: object = None, all_units: bool = False,
                      effective_date: date | None = None, payment: str = "gateway", note: str = "") -> TransactionView:
    """A withdrawal by amount, by units, or of everything the investor holds (rule 4)."""
    chosen = sum(1 for given in (amount not in (None, ""), units not in (None, ""), all_units) if given)
    if chosen != 1:
        raise ValidationError("Give exactly one of: an amount, a number of units, or 'all'.", field="amount")
    mode = "all" if all_units else ("units" if units not in (None, "") else "amount")
    note = check_text(note, "note", field="note")
    effective = effective_date or date.today()
    params = dict(pool_id=pool_id, investor_id=investor_id, amount=same_number(amount), units=same_number(units),
                  all=all_units,
                  effective=effective, payment=payment)
    if payment == "received" and actor.role != "investor" and db.is_postgres:
        view = _settle_now_on_postgres(db, actor=actor, pool_id=pool_id, investor_id=investor_id, kind="withdrawal",
                                       mode=mode, amount=amount, units=units, effective=effective, note=note, key=key,
                                       payment=payment, operation="withdrawal", params=params)
        if view is not None:
            return view

    def work(session: Session) -> dict:
        pool = lock_pool(session, pool_id)
        status, source = _start_status(session, actor, pool, investor_id)
        if actor.role == "investor" and payment == "received":
            raise PermissionDenied("Only a manager can record a withdrawal paid outside Pooldesk.")
        value = parse_amount(amount, pool.currency) if mode == "amount" else None
        unit_count = parse_units(units) if mode == "units" else None
        _check_flow(session, pool, investor_id, effective)
        position = session.get(Position, (pool.id, investor_id))
        held = position.units if position else ZERO
        reserved = reserved_withdrawal_units(session, pool.id, investor_id)
        probe = Transaction(withdrawal_mode=mode, amount=value, units=unit_count)
        if held - reserved <= 0:
            raise ValidationError("The investor holds no units in this pool to withdraw.", field="amount")
        price_withdrawal(pool, position, probe, current_price(pool), reserved)  # refuse now what cannot be paid
        tx = Transaction(pool_id=pool.id, investor_id=investor_id, kind="withdrawal", status=status, amount=value,
                         units=unit_count, withdrawal_mode=mode, effective_date=effective, source=source, note=note,
                         idempotency_key=key, created_by=actor.id)
        session.add(tx)
        session.flush()
        audit.record(session, actor, "transaction.create", "transaction", tx.id, None,
                     {"kind": "withdrawal", "status": status, "mode": mode, "amount": value, "units": unit_count,
                      "pool_id": pool.id, "investor_id": investor_id, "payment": payment})
        if status == "pending":
            _after_approval(session, actor, pool, tx, payment)
        else:
            notify(session, "withdrawal_requested", pool_id=pool.id, transaction_id=tx.id)
        return {"transaction_id": tx.id}

    return _write_and_view(db, work, actor=actor, operation="withdrawal", params=params, key=key)


def _after_approval(session: Session, actor: Actor, pool: Pool, tx: Transaction, payment: str) -> None:
    """A pending flow: collect or pay through the gateway, or apply now when the money already moved."""
    if payment == "received":
        if tx.kind == "withdrawal" and pool.pricing_policy == "forward":
            tx.payment_received_at = utcnow()  # paid outside; priced and settled at the next valuation
            return
        _payment_confirmed(session, actor, pool, tx)
        return
    if tx.kind == "contribution":
        enqueue(session, "payments", "jobs.payments.collect_contribution", transaction_id=tx.id)
    elif pool.pricing_policy == "latest":
        _quote_withdrawal(session, pool, tx)
        enqueue(session, "payments", "jobs.payments.pay_withdrawal", transaction_id=tx.id)
    # forward withdrawals are priced, then paid, after the next valuation


def _quote_withdrawal(session: Session, pool: Pool, tx: Transaction) -> None:
    position = position_for(session, pool, tx.investor_id)
    reserved = reserved_withdrawal_units(session, pool.id, tx.investor_id, exclude_id=tx.id)
    price = current_price(pool)
    units, amount = price_withdrawal(pool, position, tx, price, reserved)
    tx.units, tx.amount, tx.price = units, amount, price


def _payment_confirmed(session: Session, actor: Actor, pool: Pool, tx: Transaction) -> None:
    tx.payment_received_at = tx.payment_received_at or utcnow()
    if tx.kind == "contribution":
        if pool.pricing_policy == "forward":
            audit.record(session, actor, "transaction.payment_received", "transaction", tx.id,
                         {"status": "pending", "payment_received": False},
                         {"status": "pending", "payment_received": True})
            return  # waits for the next valuation (rule 1, forward pricing)
        legs = settle_contribution(session, pool, tx, current_price(pool))
        event = "contribution_settled"
    else:
        if tx.price is None:
            _quote_withdrawal(session, pool, tx)
        legs = settle_withdrawal(session, pool, tx, tx.units, tx.amount, tx.price)
        event = "withdrawal_paid"
    audit.record(session, actor, "transaction.settle", "transaction", tx.id, {"status": "pending"},
                 {"status": "settled", "units": tx.units, "amount": tx.amount, "price": tx.price,
                  "legs": audit.legs_digest(legs)})
    notify(session, event, pool_id=pool.id, transaction_id=tx.id)


def _require_reauth_for_large_withdrawal(session: Session, actor: Actor, pool: Pool, tx: Transaction) -> None:
    """A withdrawal worth the re-authentication threshold or more (at the current unit value when asked
    in units) is approved only after the password or a code was confirmed again."""
    if tx.kind != "withdrawal":
        return
    threshold = get_settings().reauth_withdrawal_threshold
    if tx.withdrawal_mode == "amount" and tx.amount is not None:
        value = tx.amount
    else:
        units = tx.units if tx.withdrawal_mode == "units" and tx.units is not None else \
            position_for(session, pool, tx.investor_id).units
        value = accounting.amount_for_units(units, current_price(pool), pool.currency)
    if value >= threshold:
        require_recent_reauth(session, actor,
                              f"approve a withdrawal of {pool.currency} {threshold:,.2f} or more")


def approve_request(db: Database, *, actor: Actor, transaction_id: int, expected_version: int,
                    payment: str = "gateway") -> TransactionView:
    def work(session: Session) -> dict:
        tx = _get_tx(session, transaction_id)
        pool = lock_pool(session, tx.pool_id)
        require_pool_manager(session, actor, pool.id, "approve requests in this pool")
        session.refresh(tx, with_for_update=True)
        if tx.version != expected_version:
            from core.domain.errors import ConflictError
            raise ConflictError("This request")
        if tx.status != "requested":
            raise ValidationError(f"Only requested transactions can be approved; this one is {tx.status}.")
        if pool.status != "open":
            raise ValidationError(f"Pool {pool.code} is {pool.status}.")
        _require_reauth_for_large_withdrawal(session, actor, pool, tx)
        tx.status = "pending"
        tx.version += 1
        audit.record(session, actor, "transaction.approve", "transaction", tx.id, {"status": "requested"},
                     {"status": "pending"})
        _after_approval(session, actor, pool, tx, payment)
        return {"transaction_id": tx.id}

    return _write_and_view(db, work, actor=actor, operation="approve", params={"id": transaction_id}, key=None)


def cancel_transaction(db: Database, *, actor: Actor, transaction_id: int, reason: str,
                       expected_version: int | None = None) -> TransactionView:
    """Reject a request, or cancel a pending flow whose payment has not started."""
    reason = check_text(reason, "reason", field="reason")

    def work(session: Session) -> dict:
        tx = _get_tx(session, transaction_id)
        pool = lock_pool(session, tx.pool_id)
        session.refresh(tx, with_for_update=True)
        own_request = actor.role == "investor" and actor.id == tx.investor_id and tx.status == "requested"
        if not own_request:
            require_pool_manager(session, actor, pool.id, "cancel transactions in this pool")
        if expected_version is not None and tx.version != expected_version:
            from core.domain.errors import ConflictError
            raise ConflictError("This transaction")
        if tx.status not in ("requested", "pending") or tx.payment_received_at is not None:
            raise ValidationError(f"This transaction is {tx.status} and can no longer be cancelled.")
        before = tx.status
        tx.status, tx.failure_reason = "cancelled", (reason or "cancelled").strip()
        tx.version += 1
        audit.record(session, actor, "transaction.cancel", "transaction", tx.id, {"status": before},
                     {"status": "cancelled", "reason": tx.failure_reason})
        notify(session, f"{tx.kind}_cancelled", pool_id=pool.id, transaction_id=tx.id)
        return {"transaction_id": tx.id}

    return _write_and_view(db, work, actor=actor, operation="cancel", params={"id": transaction_id}, key=None)


def confirm_payment(db: Database, *, actor: Actor, transaction_id: int) -> TransactionView:
    """The gateway confirmed the money moved. Safe to call twice: a settled flow stays as it is."""
    def work(session: Session) -> dict:
        tx = _get_tx(session, transaction_id)
        pool = lock_pool(session, tx.pool_id)
        require_pool_manager(session, actor, pool.id, "confirm payments")
        session.refresh(tx, with_for_update=True)
        if tx.status == "pending" and tx.payment_received_at is None:
            _payment_confirmed(session, actor, pool, tx)
        return {"transaction_id": tx.id}

    return _write_and_view(db, work, actor=actor, operation="confirm", params={"id": transaction_id}, key=None)


def fail_transaction(db: Database, *, actor: Actor, transaction_id: int, reason: str) -> TransactionView:
    """The payment failed for good: nothing is issued or redeemed. Safe to call twice."""
    def work(session: Session) -> dict:
        tx = _get_tx(session, transaction_id)
        pool = lock_pool(session, tx.pool_id)
        require_pool_manager(session, actor, pool.id, "fail payments")
        session.refresh(tx, with_for_update=True)
        if tx.status == "pending":
            tx.status, tx.failure_reason = "failed", reason
            tx.version += 1
            audit.record(session, actor, "transaction.fail", "transaction", tx.id, {"status": "pending"},
                         {"status": "failed", "reason": reason})
            notify(session, f"{tx.kind}_failed", pool_id=pool.id, transaction_id=tx.id, reason=reason)
        return {"transaction_id": tx.id}

    return _write_and_view(db, work, actor=actor, operation="fail", params={"id": transaction_id}, key=None)


def reverse_transaction(db: Database, *, actor: Actor, transaction_id: int, reason: str,
                        key: str | None = None) -> TransactionView:
    """Rule 7: a settled flow is never edited; a reversal posts the opposite legs at the original price."""
    if not (reason or "").strip():
        raise ValidationError("Say why the transaction is reversed.", field="reason")
    reason = check_text(reason, "reason", field="reason")

    def work(session: Session) -> dict:
        original = _get_tx(session, transaction_id)
        pool = lock_pool(session, original.pool_id)
        require_pool_manager(session, actor, pool.id, "reverse transactions")
        if original.status != "settled" or original.kind not in ("contribution", "withdrawal", "reinvestment"):
            raise ValidationError("Only settled contributions and withdrawals can be reversed.")
        if session.scalar(select(Transaction.id).where(Transaction.reverses_id == original.id)) is not None:
            raise ValidationError("This transaction has already been reversed.")
        position = position_for(session, pool, original.investor_id)
        sign = 1 if original.kind == "withdrawal" else -1  # undo: give back units, or take them away
        units, amount = original.units, original.amount
        if sign < 0 and units > position.units:
            raise ValidationError("The investor no longer holds the units this contribution issued; "
                                  "record a withdrawal instead.")
        reversal = Transaction(pool_id=pool.id, investor_id=original.investor_id, kind="reversal", status="settled",
                               amount=amount, units=units, price=original.price, effective_date=date.today(),
                               source="manager", note=reason.strip(), reverses_id=original.id, idempotency_key=key,
                               created_by=actor.id, settled_at=utcnow())
        session.add(reversal)
        session.flush()
        legs = post_legs(session, pool, reversal.effective_date, [
            ("pool", None, sign * amount, -sign * units),
            ("investor", original.investor_id, -sign * amount, sign * units),
        ], transaction_id=reversal.id)
        position.units += sign * units
        pool.units_outstanding += sign * units
        pool.total_assets += sign * amount
        # Like any flow, a reversal fixes the order of the books: no valuation may be dated before it.
        pool.last_flow_date = max(pool.last_flow_date or reversal.effective_date, reversal.effective_date)
        if original.kind == "withdrawal":
            position.withdrawn -= amount
        else:
            position.contributed -= amount
        audit.record(session, actor, "transaction.reverse", "transaction", original.id, None,
                     {"reversal_id": reversal.id, "reason": reversal.note, "legs": audit.legs_digest(legs)})
        return {"transaction_id": reversal.id}

    return _write_and_view(db, work, actor=actor, operation="reverse", params={"id": transaction_id}, key=key)


def _get_tx(session: Session, transaction_id: int) -> Transaction:
    tx = session.get(Transaction, transaction_id)
    if tx is None:
        raise NotFound(f"No transaction with id {transaction_id}.")
    return tx


def get_transaction(db: Database, *, actor: Actor, transaction_id: int) -> TransactionView:
    with db.read() as session:
        tx = _get_tx(session, transaction_id)
        if tx.investor_id is not None:
            require_self_or_pool_manager(session, actor, tx.pool_id, tx.investor_id)
        elif not manages_pool(session, actor, tx.pool_id) and actor.role != "analyst":
            raise PermissionDenied("You may not see this transaction.")
        return tx_view(tx)


def list_transactions(db: Database, *, actor: Actor, pool_id: int | None = None, investor_id: int | None = None,
                      statuses: tuple[str, ...] | None = None, limit: int = 200) -> list[TransactionView]:
    """Newest first. Investors see only their own; managers only their pools'."""
    with db.read() as session:
        query = select(Transaction).order_by(Transaction.id.desc()).limit(limit)
        if actor.role == "investor":
            query = query.where(Transaction.investor_id == actor.id)
        elif actor.role == "manager":
            from core.db.models import PoolManager
            mine = select(PoolManager.pool_id).where(PoolManager.user_id == actor.id)
            query = query.where(Transaction.pool_id.in_(mine))
        if pool_id is not None:
            query = query.where(Transaction.pool_id == pool_id)
        if investor_id is not None:
            query = query.where(Transaction.investor_id == investor_id)
        if statuses:
            query = query.where(Transaction.status.in_(statuses))
        return [tx_view(tx) for tx in session.scalars(query)]


def set_reinvestment(db: Database, *, actor: Actor, pool_id: int, investor_id: int, reinvest: bool) -> None:
    with db.transaction() as session:
        if not (actor.role == "investor" and actor.id == investor_id):
            require_pool_manager(session, actor, pool_id, "change reinvestment choices")
        pool = lock_pool(session, pool_id)
        investor = session.get(User, investor_id)
        if investor is None or investor.role != "investor":
            raise NotFound(f"No investor with id {investor_id}.", field="investor")
        position = position_for(session, pool, investor_id)
        before = position.reinvest_distributions
        position.reinvest_distributions = bool(reinvest)
        audit.record(session, actor, "position.reinvest", "position", f"{pool_id}:{investor_id}",
                     {"reinvest": before}, {"reinvest": bool(reinvest)})
