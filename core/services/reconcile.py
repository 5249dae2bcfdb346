"""Positions and pool totals are a cache of the journal; this checks that they agree, and that the
journal is still what the audit log says was posted.

Run by `pooldesk reconcile` and by the tests after every scenario. The totals are
computed with SQL aggregates over integer columns, so they are exact and quick on
millions of journal rows. Legs edited in place so that every total still balances
(100.00 moved from one investor's leg to another's, and their positions with them)
are caught by the second check: each posting's audit row carries the digest of the
legs it wrote (``audit.legs_digest``), and the legs are read back and digested again.
"""
from __future__ import annotations

from decimal import Decimal

import json

from sqlalchemy import BigInteger, Text, and_, cast, func, not_, or_, select, true, type_coerce
from sqlalchemy.orm import Session

from core.db.models import AuditEvent, JournalEntry, Pool, Position, Transaction
from core.db.session import Database
from core.services import audit

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
    problems += check_leg_digests(session)
    return problems


# The audit rows that carry a posting's legs digest, and the legs each one covers.
_LEG_ACTIONS = ("transaction.settle", "transaction.reverse", "valuation.record", "distribution.declare",
                "import.apply")


def check_leg_digests(session: Session) -> list[str]:
    """Recompute the digest of every posting's legs from the journal and compare it with the one its
    audit row recorded. Rows written before the digests existed have none and are not checked."""
    expected: dict[tuple[str, int], tuple[int, str]] = {}  # owner: (audit row, digest)
    imports: dict[int, list[tuple[int, int, int]]] = {}  # pool: [(first leg id, last leg id, audit row)]
    rows = session.execute(select(AuditEvent.id, AuditEvent.action, AuditEvent.entity_id, cast(AuditEvent.after, Text))
                           .where(AuditEvent.action.in_(_LEG_ACTIONS)).order_by(AuditEvent.id)
                           .execution_options(yield_per=5000))
    for event_id, action, entity_id, after_text in rows:
        after = json.loads(after_text) if after_text else {}
        if not isinstance(after, dict) or "legs" not in after:
            continue
        if action == "import.apply":
            first, last = after.get("journal") or (None, None)
            if first is None:
                continue  # it wrote no legs
            imports.setdefault(int(entity_id), []).append((int(first), int(last), event_id))
            owner = ("import", event_id)
        elif action == "transaction.reverse":
            owner = ("transaction", int(after["reversal_id"]))
        else:
            owner = (action.split(".")[0], int(entity_id))
        expected[owner] = (event_id, after["legs"])
    if not expected:
        return []
    # A reinvestment's legs belong to the distribution that issued it (one digest covers both).
    reinvested = dict(session.execute(select(Transaction.id, Transaction.distribution_id).where(
        Transaction.kind == "reinvestment", Transaction.distribution_id.is_not(None))).all())
    found: dict[tuple[str, int], str] = {}
    imported = []
    for pool_id, ranges in imports.items():  # an import's legs are digested where they are (millions of them)
        for first, last, event_id in ranges:
            found[("import", event_id)] = audit.journal_range_digest(session, pool_id, first, last)
            imported.append(and_(JournalEntry.pool_id == pool_id, JournalEntry.id.between(first, last)))
    lines: dict[tuple[str, int], list[str]] = {owner: [] for owner in expected if owner[0] != "import"}
    # The stored integers, not Decimals: this reads every other leg.
    legs = session.execute(
        select(JournalEntry.transaction_id, JournalEntry.valuation_id, JournalEntry.distribution_id,
               JournalEntry.account, JournalEntry.investor_id,
               type_coerce(JournalEntry.amount, BigInteger), type_coerce(JournalEntry.units, BigInteger))
        .where(not_(or_(*imported)) if imported else true()).execution_options(yield_per=20000))
    for tx_id, valuation_id, distribution_id, account, investor_id, amount, units in legs:
        if tx_id is not None:
            owner = ("distribution", reinvested[tx_id]) if tx_id in reinvested else ("transaction", tx_id)
        elif valuation_id is not None:
            owner = ("valuation", valuation_id)
        else:
            owner = ("distribution", distribution_id)
        if owner in lines:
            lines[owner].append(audit.stored_leg_line(account, investor_id, amount, units))
    found.update((owner, audit.legs_digest_of_lines(owner_lines)) for owner, owner_lines in lines.items())
    problems = []
    for owner, (event_id, digest) in sorted(expected.items(), key=lambda item: item[1][0]):
        if found[owner] == digest:
            continue
        what = f"the import of audit row {event_id}" if owner[0] == "import" else f"{owner[0]} {owner[1]}"
        problems.append(f"{what}: its journal legs are not the ones the audit log recorded "
                        f"(audit row {event_id}); they were changed after posting")
    return problems


def reconcile(db: Database) -> list[str]:
    with db.read() as session:
        return reconcile_session(session)
