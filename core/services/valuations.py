"""Valuations and distributions: the only things that move the NAV per unit.

A valuation books the market move (gain leg), accrues the management fee,
crystallises the performance fee, sets p, and then, for forward-priced pools,
prices every flow that was waiting for it. A distribution takes D out of the
pool, split exactly across the holders of the record date; holders who chose
reinvestment buy units with their part at the new p.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from core.db.models import Distribution, FeeAccrual, JournalEntry, Pool, Position, Transaction, User, Valuation, utcnow
from core.db.session import Database
from core.domain import accounting
from core.domain.errors import ValidationError
from core.domain.limits import check_text
from core.domain.money import PRICE_Q, divide, parse_amount
from core.services import audit
from core.services.common import lock_pool, run_write, same_number
from core.services.context import Actor, require_pool_manager
from core.services.ledger import (
    current_price, notify, position_for, post_legs, price_withdrawal, reserved_withdrawal_units, settle_contribution,
    settle_withdrawal,
)

ZERO = Decimal(0)


@dataclass(frozen=True)
class ValuationPreview:
    pool_id: int
    valuation_date: date
    total_assets: Decimal
    nav_before_fees: Decimal
    management_fee: Decimal
    management_fee_days: int
    performance_fee: Decimal
    nav: Decimal
    nav_per_unit: Decimal
    previous_nav_per_unit: Decimal
    high_water_mark: Decimal
    units_outstanding: Decimal
    valuation_id: int | None = None
    replayed: bool = False


def _book(pool: Pool) -> accounting.PoolBook:
    return accounting.PoolBook(
        currency=pool.currency, initial_unit_price=pool.initial_unit_price, units_outstanding=pool.units_outstanding,
        fees_payable=pool.fees_payable, high_water_mark=pool.high_water_mark,
        previous_valuation_date=pool.last_valuation_date, inception_date=pool.inception_date,
        management_fee_bps=pool.management_fee_bps, performance_fee_rate=pool.performance_fee_rate,
    )


def _check_valuation(session: Session, pool: Pool, valuation_date: date) -> None:
    if pool.status == "draft":
        raise ValidationError(f"Pool {pool.code} is a draft: open it before valuing it.")
    if valuation_date < pool.inception_date:
        raise ValidationError(f"The date {valuation_date} is before the pool's inception ({pool.inception_date}).",
                              field="valuation_date")
    if valuation_date > date.today():
        raise ValidationError(f"The valuation date {valuation_date} is in the future (today is {date.today()}).",
                              field="valuation_date")
    if session.scalar(select(Valuation.id).where(Valuation.pool_id == pool.id,
                                                 Valuation.valuation_date == valuation_date)) is not None:
        raise ValidationError(f"Pool {pool.code} already has a valuation on {valuation_date}.", field="valuation_date")
    if pool.last_valuation_date and valuation_date < pool.last_valuation_date:
        raise ValidationError(f"The latest valuation is dated {pool.last_valuation_date}; "
                              "a valuation cannot be inserted before it.", field="valuation_date")
    if pool.last_flow_date and valuation_date < pool.last_flow_date:
        raise ValidationError(f"Flows are already recorded up to {pool.last_flow_date}; "
                              "a valuation cannot be dated before them.", field="valuation_date")


def apply_valuation(session: Session, actor: Actor, pool: Pool, valuation_date: date, total_assets: Decimal,
                    note: str = "") -> tuple[Valuation, accounting.ValuationResult, Decimal]:
    """Book a valuation on a locked pool (used by the service and the importer)."""
    previous_price = current_price(pool)
    result = accounting.value_pool(_book(pool), total_assets, valuation_date)
    valuation = Valuation(pool_id=pool.id, valuation_date=valuation_date, total_assets=total_assets,
                          nav_before_fees=result.nav_before_fees, management_fee=result.management_fee,
                          performance_fee=result.performance_fee, nav=result.nav,
                          units_outstanding=pool.units_outstanding, nav_per_unit=result.nav_per_unit,
                          high_water_mark=result.high_water_mark, note=note, created_by=actor.id)
    session.add(valuation)
    session.flush()
    gain = total_assets - pool.total_assets
    fees = result.management_fee + result.performance_fee
    legs = [("pool", None, gain, ZERO), ("gain", None, -gain, ZERO)]
    if fees:
        legs += [("fee_expense", None, fees, ZERO), ("fees_payable", None, -fees, ZERO)]
    post_legs(session, pool, valuation_date, legs, valuation_id=valuation.id)
    valuation.legs_digest = audit.legs_digest(legs)  # not a column: read by record_valuation's audit row
    for kind, amount, basis in (
        ("management", result.management_fee,
         f"{pool.management_fee_bps} bps a year on NAV {result.nav_before_fees} for {result.management_fee_days} days (Actual/365)"),
        ("performance", result.performance_fee,
         f"{pool.performance_fee_rate * 100}% of the gain over the high-water mark {pool.high_water_mark or pool.initial_unit_price}"),
    ):
        if amount:
            session.add(FeeAccrual(pool_id=pool.id, valuation_id=valuation.id, kind=kind, amount=amount, basis=basis,
                                   accrual_date=valuation_date))
    pool.total_assets = total_assets
    pool.fees_payable = result.fees_payable
    pool.nav_per_unit = result.nav_per_unit
    pool.high_water_mark = result.high_water_mark
    pool.last_valuation_date = valuation_date
    return valuation, result, previous_price


def _audit_settled(session: Session, actor: Actor, tx: Transaction, legs: list[tuple]) -> None:
    audit.record(session, actor, "transaction.settle", "transaction", tx.id, {"status": "pending"},
                 {"status": "settled", "units": tx.units, "amount": tx.amount, "price": tx.price,
                  "legs": audit.legs_digest(legs)})


def price_waiting_flows(session: Session, actor: Actor, pool: Pool, valuation_date: date) -> int:
    """Forward pricing: flows received before this valuation are priced at its p, in the order they arrived."""
    if pool.pricing_policy != "forward":
        return 0
    waiting = session.scalars(
        select(Transaction).where(Transaction.pool_id == pool.id, Transaction.status == "pending",
                                  Transaction.effective_date < valuation_date)
        .order_by(Transaction.effective_date, Transaction.id).with_for_update()
    ).all()
    priced = 0
    price = pool.nav_per_unit
    for tx in waiting:
        if tx.kind == "contribution" and tx.payment_received_at is not None:
            _audit_settled(session, actor, tx, settle_contribution(session, pool, tx, price))
            notify(session, "contribution_settled", pool_id=pool.id, transaction_id=tx.id)
        elif tx.kind == "withdrawal" and tx.price is None:
            position = position_for(session, pool, tx.investor_id)
            # Units already quoted to other withdrawals awaiting payout are promised: never quote them twice.
            reserved = reserved_withdrawal_units(session, pool.id, tx.investor_id, exclude_id=tx.id)
            try:
                units, amount = price_withdrawal(pool, position, tx, price, reserved)
            except ValidationError as exc:
                tx.status, tx.failure_reason = "failed", exc.message
                tx.version += 1
                audit.record(session, actor, "transaction.fail", "transaction", tx.id, {"status": "pending"},
                             {"status": "failed", "reason": exc.message})
                notify(session, "withdrawal_failed", pool_id=pool.id, transaction_id=tx.id, reason=exc.message)
                continue
            if tx.payment_received_at is not None:  # already paid outside Pooldesk
                _audit_settled(session, actor, tx, settle_withdrawal(session, pool, tx, units, amount, price))
                notify(session, "withdrawal_paid", pool_id=pool.id, transaction_id=tx.id)
            else:
                tx.units, tx.amount, tx.price = units, amount, price
                audit.record(session, actor, "transaction.price", "transaction", tx.id, {"price": None},
                             {"status": "pending", "units": units, "amount": amount, "price": price})
                from core.services.common import enqueue
                enqueue(session, "payments", "jobs.payments.pay_withdrawal", transaction_id=tx.id)
        else:
            continue
        priced += 1
    return priced


def record_valuation(db: Database, *, actor: Actor, pool_id: int, valuation_date: date, total_assets: object,
                     key: str | None, preview: bool = False, note: str = "") -> ValuationPreview:
    """Rule 2 and 6. With ``preview=True`` nothing is written: the screen shows the new p and fees first."""
    note = check_text(note, "note", field="note")
    params = dict(pool_id=pool_id, date=valuation_date, total_assets=same_number(total_assets))

    def compute(session: Session) -> tuple[Pool, Decimal]:
        pool = lock_pool(session, pool_id)
        require_pool_manager(session, actor, pool.id, "value this pool")
        value = parse_amount(total_assets, pool.currency, field="total assets", allow_zero=True)
        _check_valuation(session, pool, valuation_date)
        return pool, value

    if preview:
        with db.read() as session:
            pool, value = compute(session)
            result = accounting.value_pool(_book(pool), value, valuation_date)
            return ValuationPreview(pool.id, valuation_date, value, result.nav_before_fees, result.management_fee,
                                    result.management_fee_days, result.performance_fee, result.nav,
                                    result.nav_per_unit, current_price(pool), result.high_water_mark,
                                    pool.units_outstanding)

    def work(session: Session) -> dict:
        pool, value = compute(session)
        valuation, result, previous = apply_valuation(session, actor, pool, valuation_date, value, note)
        priced = price_waiting_flows(session, actor, pool, valuation_date)
        audit.record(session, actor, "valuation.record", "valuation", valuation.id, None,
                     {"pool_id": pool.id, "date": valuation_date, "total_assets": value,
                      "nav_per_unit": result.nav_per_unit, "management_fee": result.management_fee,
                      "performance_fee": result.performance_fee, "flows_priced": priced,
                      "legs": valuation.legs_digest})
        notify(session, "valuation_published", pool_id=pool.id, valuation_id=valuation.id)
        return {"valuation_id": valuation.id, "previous_nav_per_unit": str(previous),
                "management_fee_days": result.management_fee_days}

    outcome = run_write(db, work, actor=actor, operation="valuation", params=params, key=key)
    with db.read() as session:
        v = session.get(Valuation, outcome["valuation_id"])
        return ValuationPreview(v.pool_id, v.valuation_date, v.total_assets, v.nav_before_fees, v.management_fee,
                                outcome["management_fee_days"], v.performance_fee, v.nav, v.nav_per_unit,
                                Decimal(outcome["previous_nav_per_unit"]), v.high_water_mark, v.units_outstanding,
                                v.id, outcome["replayed"])


# --- distributions ---------------------------------------------------------------------

@dataclass(frozen=True)
class DistributionPart:
    investor_id: int
    investor_email: str
    units: Decimal
    amount: Decimal
    reinvest: bool


@dataclass(frozen=True)
class DistributionPreview:
    pool_id: int
    record_date: date
    total: Decimal
    per_unit: Decimal
    units_outstanding: Decimal
    nav_per_unit_before: Decimal
    nav_per_unit_after: Decimal
    parts: tuple[DistributionPart, ...]
    distribution_id: int | None = None
    replayed: bool = False


def holders_on(session: Session, pool_id: int, record_date: date) -> list[tuple[int, Decimal]]:
    """Units per investor from the journal up to the record date, in order of first holding."""
    rows = session.execute(
        select(JournalEntry.investor_id, func.sum(JournalEntry.units))
        .where(JournalEntry.pool_id == pool_id, JournalEntry.investor_id.isnot(None),  # ix_journal_investor
               JournalEntry.account == "investor", JournalEntry.effective_date <= record_date)
        .group_by(JournalEntry.investor_id)
    ).all()
    order = dict(session.execute(select(Position.investor_id, Position.opened_seq)
                                 .where(Position.pool_id == pool_id)).all())
    return sorted(((inv, units) for inv, units in rows if units and units > 0), key=lambda h: (order.get(h[0], 0), h[0]))


def _holder_emails(session: Session, pool_id: int) -> dict[int, str]:
    """Emails of everyone with a position in the pool (a join, not an IN list of thousands of ids)."""
    return dict(session.execute(select(User.id, User.email).join(Position, Position.investor_id == User.id)
                                .where(Position.pool_id == pool_id)).all())


def _plan_distribution(session: Session, pool: Pool, record_date: date, total: Decimal):
    if pool.status == "draft":
        raise ValidationError(f"Pool {pool.code} is a draft.")
    if record_date < pool.inception_date:
        raise ValidationError(f"The record date {record_date} is before the pool's inception ({pool.inception_date}).",
                              field="record_date")
    if record_date > date.today():
        raise ValidationError(f"The record date {record_date} is in the future (today is {date.today()}).",
                              field="record_date")
    if pool.last_valuation_date and record_date < pool.last_valuation_date:
        raise ValidationError(f"The record date cannot be before the latest valuation ({pool.last_valuation_date}).",
                              field="record_date")
    holders = holders_on(session, pool.id, record_date)
    units_total = sum((u for _, u in holders), ZERO)
    if units_total <= 0:
        raise ValidationError("Nobody holds units on the record date, so there is nobody to distribute to.",
                              field="record_date")
    if units_total != pool.units_outstanding:
        raise ValidationError("Units changed after the record date; choose the latest date as record date.",
                              field="record_date")
    nav = pool.total_assets - pool.fees_payable
    price_after = accounting.price_after_distribution(nav, total, pool.units_outstanding)
    shares = accounting.split_distribution(total, holders, pool.currency)
    emails = _holder_emails(session, pool.id)
    reinvest = dict(session.execute(select(Position.investor_id, Position.reinvest_distributions)
                                    .where(Position.pool_id == pool.id)).all())
    parts = tuple(DistributionPart(inv, emails.get(inv, ""), units, share, bool(reinvest.get(inv)))
                  for (inv, units), share in zip(holders, shares))
    return parts, units_total, price_after


def declare_distribution(db: Database, *, actor: Actor, pool_id: int, record_date: date, total: object,
                         key: str | None, preview: bool = False, note: str = "") -> DistributionPreview:
    note = check_text(note, "note", field="note")
    params = dict(pool_id=pool_id, record_date=record_date, total=same_number(total))

    def plan(session: Session):
        pool = lock_pool(session, pool_id)
        require_pool_manager(session, actor, pool.id, "declare distributions")
        value = parse_amount(total, pool.currency, field="distribution total")
        return (pool, value, *_plan_distribution(session, pool, record_date, value))

    if preview:
        with db.read() as session:
            pool, value, parts, units_total, price_after = plan(session)
            return DistributionPreview(pool.id, record_date, value, divide(value, units_total, PRICE_Q), units_total,
                                       pool.nav_per_unit, price_after, parts)

    def work(session: Session) -> dict:
        pool, value, parts, units_total, price_after = plan(session)
        price_before = pool.nav_per_unit
        distribution = apply_distribution(session, actor, pool, record_date, value, parts, units_total, price_after, note)
        # Kept with the idempotency key, so a replay shows the same split as the first answer.
        return {"distribution_id": distribution.id, "nav_per_unit_before": str(price_before),
                "parts": [[p.investor_id, str(p.units), str(p.amount), p.reinvest] for p in parts]}

    outcome = run_write(db, work, actor=actor, operation="distribution", params=params, key=key)
    with db.read() as session:
        d = session.get(Distribution, outcome["distribution_id"])
        emails = _holder_emails(session, d.pool_id)
        parts = tuple(DistributionPart(inv, emails.get(inv, ""), Decimal(units), Decimal(amount), bool(reinvest))
                      for inv, units, amount, reinvest in outcome["parts"])
        return DistributionPreview(d.pool_id, d.record_date, d.total, d.per_unit, d.units_outstanding,
                                   Decimal(outcome["nav_per_unit_before"]), d.nav_per_unit_after, parts, d.id,
                                   outcome["replayed"])


def apply_distribution(session: Session, actor: Actor, pool: Pool, record_date: date, total: Decimal,
                       parts, units_total: Decimal, price_after: Decimal, note: str = "") -> Distribution:
    price_before = pool.nav_per_unit
    distribution = Distribution(pool_id=pool.id, record_date=record_date, total=total,
                                per_unit=divide(total, units_total, PRICE_Q), units_outstanding=units_total,
                                nav_per_unit_after=price_after, note=note, created_by=actor.id)
    session.add(distribution)
    session.flush()
    pool.total_assets -= total
    pool.nav_per_unit = price_after
    now = utcnow()
    legs = [("pool", None, -total, ZERO)]
    reinvestments = []
    # One query for every holder's position (not one per holder: each lookup would also flush).
    positions = {p.investor_id: p for p in session.scalars(select(Position).where(Position.pool_id == pool.id))}
    shares = []
    for part in parts:
        if not part.amount:
            continue
        legs.append(("distribution", part.investor_id, part.amount, ZERO))
        shares.append(dict(pool_id=pool.id, investor_id=part.investor_id, kind="distribution", status="settled",
                           amount=part.amount, price=price_after, effective_date=record_date, source="system",
                           distribution_id=distribution.id, created_by=actor.id, created_at=now, settled_at=now,
                           note="", version=1))
        position = positions.get(part.investor_id) or position_for(session, pool, part.investor_id)
        position.distributions += part.amount
        if part.reinvest:
            reinvestments.append(part)
    if shares:
        session.execute(insert(Transaction), shares)  # one executemany, not thousands of ORM objects
    written = post_legs(session, pool, record_date, legs, distribution_id=distribution.id)
    reinvested = [Transaction(pool_id=pool.id, investor_id=part.investor_id, kind="reinvestment", status="pending",
                              amount=part.amount, effective_date=record_date, source="system",
                              distribution_id=distribution.id, created_by=actor.id, payment_received_at=now)
                  for part in reinvestments]
    session.add_all(reinvested)
    session.flush()  # one batch of inserts gives every reinvestment its id
    for tx in reinvested:  # their legs are the distribution's: one digest covers them all
        written = written + settle_contribution(session, pool, tx, price_after)
    audit.record(session, actor, "distribution.declare", "distribution", distribution.id, None,
                 {"pool_id": pool.id, "record_date": record_date, "total": total, "per_unit": distribution.per_unit,
                  "nav_per_unit_before": price_before, "nav_per_unit_after": price_after,
                  "holders": len(parts), "reinvested": len(reinvestments), "legs": audit.legs_digest(written)})
    notify(session, "distribution_declared", pool_id=pool.id, distribution_id=distribution.id)
    return distribution


def get_valuations(db: Database, *, actor: Actor, pool_id: int) -> list[Valuation]:
    from core.services.context import require_pool_reader

    with db.read() as session:
        require_pool_reader(session, actor, pool_id)
        rows = session.scalars(select(Valuation).where(Valuation.pool_id == pool_id)
                               .order_by(Valuation.valuation_date)).all()
        session.expunge_all()
        return list(rows)
