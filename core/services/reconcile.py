"""Positions and pool totals are a cache of the journal; this checks that they agree.

Run by `pooldesk reconcile` and by the tests after every scenario. Everything is
computed with SQL aggregates over integer columns, so it is exact and quick on
millions of journal rows.
"""
from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.models import JournalEntry, Pool, Position
from core.db.session import Database

ZERO = Decimal(0)


def _sums(session: Session, account: str, *group):
    return session.execute(
        select(*group, func.coalesce(func.sum(JournalEntry.amount), 0), func.coalesce(func.sum(JournalEntry.units), 0))
        .where(JournalEntry.account == account).group_by(*group)
    ).all()


def _dec(value, scale: int) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(int(value)).scaleb(-scale)


def reconcile_session(session: Session) -> list[str]:
    problems: list[str] = []
    pools = {p.id: p for p in session.scalars(select(Pool))}
    pool_legs = {row[0]: (_dec(row[1], 4), _dec(row[2], 6)) for row in _sums(session, "pool", JournalEntry.pool_id)}
    payable = {row[0]: _dec(row[1], 4) for row in _sums(session, "fees_payable", JournalEntry.pool_id)}
    for pool in pools.values():
        assets, units = pool_legs.get(pool.id, (ZERO, ZERO))
        if pool.total_assets != assets:
            problems.append(f"pool {pool.code}: total assets {pool.total_assets} but the journal says {assets}")
        if pool.units_outstanding != -units:
            problems.append(f"pool {pool.code}: units outstanding {pool.units_outstanding} but the journal says {-units}")
        if pool.fees_payable != -payable.get(pool.id, ZERO):
            problems.append(f"pool {pool.code}: fees payable {pool.fees_payable} but the journal says {-payable.get(pool.id, ZERO)}")
    held = {(row[0], row[1]): _dec(row[3], 6) for row in _sums(session, "investor", JournalEntry.pool_id, JournalEntry.investor_id)}
    position_totals: dict[int, Decimal] = {}
    seen = set()
    for position in session.scalars(select(Position)):
        key = (position.pool_id, position.investor_id)
        seen.add(key)
        journal_units = held.get(key, ZERO)
        if position.units != journal_units:
            code = pools[position.pool_id].code
            problems.append(f"pool {code}, investor {position.investor_id}: position {position.units} units "
                            f"but the journal says {journal_units}")
        if position.units < 0:
            problems.append(f"pool {pools[position.pool_id].code}, investor {position.investor_id}: negative holding")
        position_totals[position.pool_id] = position_totals.get(position.pool_id, ZERO) + position.units
    for key, units in held.items():
        if key not in seen and units != 0:
            problems.append(f"pool {pools[key[0]].code}, investor {key[1]}: {units} units in the journal but no position")
    for pool in pools.values():
        if position_totals.get(pool.id, ZERO) != pool.units_outstanding:
            problems.append(f"pool {pool.code}: positions add up to {position_totals.get(pool.id, ZERO)} units, "
                            f"not the {pool.units_outstanding} outstanding")
    for column in (JournalEntry.transaction_id, JournalEntry.valuation_id, JournalEntry.distribution_id):
        unbalanced = session.execute(
            select(column, func.sum(JournalEntry.amount), func.sum(JournalEntry.units))
            .where(column.is_not(None)).group_by(column)
            .having((func.sum(JournalEntry.amount) != 0) | (func.sum(JournalEntry.units) != 0))
        ).all()
        for ident, amount, units in unbalanced:
            problems.append(f"journal entry for {column.key} {ident} does not balance (amount {amount}, units {units})")
    return problems


def reconcile(db: Database) -> list[str]:
    with db.read() as session:
        return reconcile_session(session)
