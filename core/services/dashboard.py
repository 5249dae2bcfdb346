"""Read models for the dashboard screens: what each role sees on Overview, Pool detail and My portfolio.

The queries live here so pages stay thin. Access rules hold as in every service:
an investor sees only their own holdings (never another investor's name, email,
phone or holding), a manager only the pools they manage, an analyst figures
across pools with investors as ids only, an admin everything.

``change_marker`` is the newest audit row id: every write is audited, so the
screens can cache a read model until it moves.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.models import (
    AuditEvent, Distribution, FeeAccrual, Invitation, JournalEntry, OutboxMessage, Pool, PoolManager, Position,
    Transaction, User, Valuation, utcnow,
)
from core.db.session import Database
from core.domain.errors import NotFound, PermissionDenied
from core.domain.money import money_quantum
from core.services.context import Actor, require_pool_reader, require_role

ZERO = Decimal(0)


def change_marker(db: Database) -> int:
    with db.read() as session:
        return session.scalar(select(func.max(AuditEvent.id))) or 0


def _managed_pool_ids(session: Session, actor: Actor) -> list[int] | None:
    """None means every pool (admin, analyst)."""
    if actor.role in ("admin", "analyst"):
        return None
    if actor.role == "manager":
        return list(session.scalars(select(PoolManager.pool_id).where(PoolManager.user_id == actor.id)))
    raise PermissionDenied("Only managers, analysts and admins see pool-wide figures.")


def _value(units: Decimal, price: Decimal, currency: str) -> Decimal:
    return (units * price).quantize(money_quantum(currency))


# --- pools table, flows ---------------------------------------------------------------------

@dataclass(frozen=True)
class PoolRow:
    id: int
    code: str
    name: str
    currency: str
    status: str
    nav: Decimal
    nav_per_unit: Decimal
    units_outstanding: Decimal
    holders: int
    last_valuation_date: date | None


@dataclass(frozen=True)
class FlowTotals:
    currency: str
    contributions: Decimal
    withdrawals: Decimal

    @property
    def net(self) -> Decimal:
        return self.contributions - self.withdrawals


def _pool_rows(session: Session, pool_ids: list[int] | None) -> list[PoolRow]:
    holders = (select(Position.pool_id, func.count().label("n")).where(Position.units > 0)
               .group_by(Position.pool_id).subquery())
    query = (select(Pool, func.coalesce(holders.c.n, 0)).outerjoin(holders, holders.c.pool_id == Pool.id)
             .order_by(Pool.code))
    if pool_ids is not None:
        query = query.where(Pool.id.in_(pool_ids))
    return [PoolRow(p.id, p.code, p.name, p.currency, p.status, p.total_assets - p.fees_payable, p.nav_per_unit,
                    p.units_outstanding, int(n), p.last_valuation_date) for p, n in session.execute(query)]


def _flows(session: Session, pool_ids: list[int] | None, since: date) -> list[FlowTotals]:
    query = (select(Pool.currency, Transaction.kind, func.sum(Transaction.amount))
             .join(Pool, Pool.id == Transaction.pool_id)
             .where(Transaction.status == "settled", Transaction.effective_date >= since,
                    Transaction.kind.in_(("contribution", "withdrawal")))
             .group_by(Pool.currency, Transaction.kind))
    if pool_ids is not None:
        query = query.where(Transaction.pool_id.in_(pool_ids))
    sums: dict[str, dict[str, Decimal]] = {}
    for currency, kind, total in session.execute(query):
        sums.setdefault(currency, {})[kind] = total or ZERO
    return [FlowTotals(cur, k.get("contribution", ZERO), k.get("withdrawal", ZERO)) for cur, k in sorted(sums.items())]


def _count_status(session: Session, pool_ids: list[int] | None, status: str, since: datetime | None = None) -> int:
    query = select(func.count()).select_from(Transaction).where(Transaction.status == status)
    if pool_ids is not None:
        query = query.where(Transaction.pool_id.in_(pool_ids))
    if since is not None:
        query = query.where(Transaction.created_at >= since)
    return session.scalar(query) or 0


def _aum(rows: list[PoolRow]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for row in rows:
        totals[row.currency] = totals.get(row.currency, ZERO) + row.nav
    return dict(sorted(totals.items()))


@dataclass(frozen=True)
class ManagerOverview:
    assets_under_management: dict[str, Decimal]
    flows_today: list[FlowTotals]
    flows_month: list[FlowTotals]
    pending_approvals: int
    failed_payments_30d: int
    pools: list[PoolRow]


def manager_overview(db: Database, *, actor: Actor, today: date | None = None) -> ManagerOverview:
    require_role(actor, "manager", "admin", action="see the manager overview")
    today = today or date.today()
    with db.read() as session:
        ids = _managed_pool_ids(session, actor)
        rows = _pool_rows(session, ids)
        return ManagerOverview(
            _aum(rows), _flows(session, ids, today), _flows(session, ids, today.replace(day=1)),
            _count_status(session, ids, "requested"),
            _count_status(session, ids, "failed", utcnow() - timedelta(days=30)), rows)


@dataclass(frozen=True)
class AnalystOverview:
    assets_under_management: dict[str, Decimal]
    flows_month: list[FlowTotals]
    flows_year: list[FlowTotals]
    investors: int
    pools: list[PoolRow]


def analyst_overview(db: Database, *, actor: Actor, today: date | None = None) -> AnalystOverview:
    require_role(actor, "analyst", "admin", action="see figures across pools")
    today = today or date.today()
    with db.read() as session:
        rows = _pool_rows(session, None)
        investors = session.scalar(select(func.count(func.distinct(Position.investor_id))).where(Position.units > 0)) or 0
        return AnalystOverview(_aum(rows), _flows(session, None, today.replace(day=1)),
                               _flows(session, None, today.replace(month=1, day=1)), int(investors), rows)


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor_id: int | None
    actor_email: str | None
    action: str
    entity: str
    entity_id: str
    before: dict | None
    after: dict | None


@dataclass(frozen=True)
class AdminOverview:
    users_by_role: dict[str, int]
    invited: int
    locked: int
    jobs_waiting: int
    jobs_failed: int
    recent_audit: list[AuditRow]


def admin_overview(db: Database, *, actor: Actor) -> AdminOverview:
    require_role(actor, "admin", action="see the admin overview")
    now = utcnow()
    with db.read() as session:
        by_role = dict(session.execute(select(User.role, func.count()).where(User.status == "active")
                                       .group_by(User.role).order_by(User.role)).all())
        invited = session.scalar(select(func.count()).select_from(User).where(User.status == "invited")) or 0
        locked = session.scalar(select(func.count()).select_from(User).where(User.locked_until > now)) or 0
        waiting = session.scalar(select(func.count()).select_from(OutboxMessage)
                                 .where(OutboxMessage.dispatched_at.is_(None), OutboxMessage.last_error.is_(None))) or 0
        failed = session.scalar(select(func.count()).select_from(OutboxMessage)
                                .where(OutboxMessage.dispatched_at.is_(None), OutboxMessage.last_error.is_not(None))) or 0
    return AdminOverview({k: int(v) for k, v in by_role.items()}, int(invited), int(locked), int(waiting), int(failed),
                         audit_events(db, actor=actor, limit=15))


def audit_events(db: Database, *, actor: Actor, action: str = "", entity: str = "", actor_email: str = "",
                 since: date | None = None, until: date | None = None, limit: int = 200) -> list[AuditRow]:
    require_role(actor, "admin", action="browse the audit log")
    with db.read() as session:
        query = (select(AuditEvent, User.email).outerjoin(User, User.id == AuditEvent.actor_id)
                 .order_by(AuditEvent.id.desc()).limit(limit))
        if action:
            query = query.where(AuditEvent.action.like(f"%{action.strip()}%"))
        if entity:
            query = query.where(AuditEvent.entity == entity)
        if actor_email:
            query = query.where(func.lower(User.email).like(f"%{actor_email.strip().lower()}%"))
        if since:
            query = query.where(AuditEvent.at >= datetime.combine(since, datetime.min.time()).astimezone())
        if until:
            query = query.where(AuditEvent.at < datetime.combine(until + timedelta(days=1), datetime.min.time()).astimezone())
        return [AuditRow(e.id, e.at, e.actor_id, email, e.action, e.entity, e.entity_id, e.before, e.after)
                for e, email in session.execute(query)]


# --- pool detail ------------------------------------------------------------------------------

@dataclass(frozen=True)
class HolderRow:
    investor_id: int
    investor: str  # name and email for managers and admins, "Investor #id" for analysts
    units: Decimal
    value: Decimal
    share: Decimal  # fraction of units outstanding
    contributed: Decimal
    withdrawn: Decimal
    distributions: Decimal


def pool_holders(db: Database, *, actor: Actor, pool_id: int) -> list[HolderRow]:
    with db.read() as session:
        require_pool_reader(session, actor, pool_id)
        pool = session.get(Pool, pool_id)
        if pool is None:
            raise NotFound(f"No pool with id {pool_id}.")
        query = (select(Position, User.name, User.email).join(User, User.id == Position.investor_id)
                 .where(Position.pool_id == pool_id, Position.units > 0).order_by(Position.units.desc()))
        rows = []
        for position, name, email in session.execute(query):
            label = f"Investor #{position.investor_id}" if actor.role == "analyst" else f"{name} <{email}>"
            share = (position.units / pool.units_outstanding) if pool.units_outstanding else ZERO
            rows.append(HolderRow(position.investor_id, label, position.units,
                                  _value(position.units, pool.nav_per_unit, pool.currency),
                                  share.quantize(Decimal("0.000001")), position.contributed, position.withdrawn,
                                  position.distributions))
        return rows


@dataclass(frozen=True)
class PoolDetail:
    pool: PoolRow
    valuations: list[dict]
    fee_accruals: list[dict]
    distributions: list[dict]


def pool_detail(db: Database, *, actor: Actor, pool_id: int) -> PoolDetail:
    with db.read() as session:
        require_pool_reader(session, actor, pool_id)
        rows = _pool_rows(session, [pool_id])
        if not rows:
            raise NotFound(f"No pool with id {pool_id}.")
        valuations = [
            {"date": v.valuation_date, "total_assets": v.total_assets, "management_fee": v.management_fee,
             "performance_fee": v.performance_fee, "nav": v.nav, "nav_per_unit": v.nav_per_unit,
             "units_outstanding": v.units_outstanding}
            for v in session.scalars(select(Valuation).where(Valuation.pool_id == pool_id)
                                     .order_by(Valuation.valuation_date))]
        fees = [{"date": f.accrual_date, "kind": f.kind, "amount": f.amount, "basis": f.basis}
                for f in session.scalars(select(FeeAccrual).where(FeeAccrual.pool_id == pool_id)
                                         .order_by(FeeAccrual.accrual_date.desc(), FeeAccrual.id.desc()).limit(500))]
        distributions = [{"record_date": d.record_date, "total": d.total, "per_unit": d.per_unit,
                          "nav_per_unit_after": d.nav_per_unit_after, "note": d.note}
                         for d in session.scalars(select(Distribution).where(Distribution.pool_id == pool_id)
                                                  .order_by(Distribution.record_date.desc()))]
        return PoolDetail(rows[0], valuations, fees, distributions)


# --- transactions feed --------------------------------------------------------------------------

@dataclass(frozen=True)
class FeedRow:
    id: int
    pool_code: str
    currency: str
    investor: str
    kind: str
    status: str
    amount: Decimal | None
    units: Decimal | None
    price: Decimal | None
    effective_date: date
    created_at: datetime
    settled_at: datetime | None
    failure_reason: str | None
    version: int


def transaction_feed(db: Database, *, actor: Actor, pool_id: int | None = None, statuses: tuple[str, ...] = (),
                     limit: int = 25) -> list[FeedRow]:
    """Newest first, with the pool code and who it is for (own flows only for investors)."""
    with db.read() as session:
        query = (select(Transaction, Pool.code, Pool.currency, User.name, User.email)
                 .join(Pool, Pool.id == Transaction.pool_id).outerjoin(User, User.id == Transaction.investor_id)
                 .order_by(Transaction.id.desc()).limit(limit))
        if actor.role == "investor":
            query = query.where(Transaction.investor_id == actor.id)
        else:
            ids = _managed_pool_ids(session, actor)
            if ids is not None:
                query = query.where(Transaction.pool_id.in_(ids))
        if pool_id is not None:
            query = query.where(Transaction.pool_id == pool_id)
        if statuses:
            query = query.where(Transaction.status.in_(statuses))
        rows = []
        for tx, code, currency, name, email in session.execute(query):
            if tx.investor_id is None:
                who = "(pool)"
            elif actor.role == "analyst":
                who = f"Investor #{tx.investor_id}"
            elif actor.role == "investor":
                who = "You"
            else:
                who = f"{name} <{email}>"
            rows.append(FeedRow(tx.id, code, currency, who, tx.kind, tx.status, tx.amount, tx.units, tx.price,
                                tx.effective_date, tx.created_at, tx.settled_at, tx.failure_reason, tx.version))
        return rows


@dataclass(frozen=True)
class InvestorChoice:
    id: int
    label: str


def investor_choices(db: Database, *, actor: Actor, pool_id: int) -> list[InvestorChoice]:
    """Active investors a manager can record flows for: holders of the pool and people invited to it.

    Admins may pick any active investor.
    """
    with db.read() as session:
        from core.services.context import require_pool_manager

        require_pool_manager(session, actor, pool_id, "record transactions in this pool")
        query = select(User.id, User.name, User.email).where(User.role == "investor", User.status == "active")
        if actor.role != "admin":
            held = select(Position.investor_id).where(Position.pool_id == pool_id)
            invited = select(Invitation.email).where(Invitation.pool_id == pool_id)
            query = query.where(User.id.in_(held) | User.email.in_(invited))
        return [InvestorChoice(i, f"{n} <{e}>") for i, n, e in session.execute(query.order_by(User.email))]


# --- investor portfolio ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Holding:
    pool_id: int
    pool_code: str
    pool_name: str
    currency: str
    units: Decimal
    nav_per_unit: Decimal
    value: Decimal
    contributed: Decimal
    withdrawn: Decimal
    distributions: Decimal
    reinvest_distributions: bool
    as_of: date | None

    @property
    def gain(self) -> Decimal:
        return self.value + self.withdrawn + self.distributions - self.contributed


@dataclass(frozen=True)
class Portfolio:
    investor_id: int
    holdings: list[Holding]
    totals: dict[str, dict[str, Decimal]] = field(default_factory=dict)  # currency -> value, gain, contributed...
    recent: list[FeedRow] = field(default_factory=list)


def _require_self_or_admin(actor: Actor, investor_id: int) -> None:
    if actor.role == "investor" and actor.id != investor_id:
        raise PermissionDenied("You may not see another investor's holdings.")
    if actor.role not in ("investor", "admin"):
        raise PermissionDenied(f"A {actor.role} has no portfolio here.")


def portfolio(db: Database, *, actor: Actor, investor_id: int | None = None, recent: int = 10) -> Portfolio:
    investor_id = actor.id if investor_id is None else investor_id
    _require_self_or_admin(actor, investor_id)
    with db.read() as session:
        query = (select(Position, Pool).join(Pool, Pool.id == Position.pool_id)
                 .where(Position.investor_id == investor_id).order_by(Pool.code))
        holdings = []
        for position, pool in session.execute(query):
            if position.units == 0 and position.contributed == 0:
                continue
            holdings.append(Holding(pool.id, pool.code, pool.name, pool.currency, position.units, pool.nav_per_unit,
                                    _value(position.units, pool.nav_per_unit, pool.currency), position.contributed,
                                    position.withdrawn, position.distributions, position.reinvest_distributions,
                                    pool.last_valuation_date))
    totals: dict[str, dict[str, Decimal]] = {}
    for h in holdings:
        t = totals.setdefault(h.currency, {"value": ZERO, "gain": ZERO, "contributed": ZERO, "withdrawn": ZERO,
                                           "distributions": ZERO})
        for key, amount in (("value", h.value), ("gain", h.gain), ("contributed", h.contributed),
                            ("withdrawn", h.withdrawn), ("distributions", h.distributions)):
            t[key] += amount
    feed = transaction_feed(db, actor=actor, limit=recent) if actor.id == investor_id else []
    return Portfolio(investor_id, holdings, dict(sorted(totals.items())), feed)


@dataclass(frozen=True)
class PortfolioReturns:
    """An investor's own returns and what each was computed from (the analytics engine's figures)."""

    investor_id: int
    positions: list[dict]  # per pool: code, name, currency, cost_basis, gain, xirr (None: not available), ...
    totals: list[dict]  # per currency: value, gain, xirr, ...
    pool_twr: dict[int, object]  # pool id -> metrics.TwrMath since inception (points and sub-periods)
    pool_flows: dict[int, list[tuple[date, Decimal, str]]]  # pool id -> the dated flows behind its XIRR
    currency_flows: dict[str, list[tuple[date, Decimal, str]]]  # currency -> the flows behind the overall XIRR


def portfolio_returns(db: Database, *, actor: Actor, investor_id: int | None = None) -> PortfolioReturns:
    """XIRR per pool and overall per currency, and each held pool's TWR since inception, with the math."""
    from core.analytics import metrics

    investor_id = actor.id if investor_id is None else investor_id
    _require_self_or_admin(actor, investor_id)
    summary = metrics.investor_summary(db, actor=actor, investor_id=investor_id)
    positions, totals = summary["positions"], summary["totals"]
    per_pool, per_currency = metrics.investor_flows(db, actor=actor, investor_id=investor_id,
                                                    as_of=summary["as_of"])
    return PortfolioReturns(
        investor_id, positions, totals,
        {r["pool_id"]: metrics.twr_math(db, actor=actor, pool_id=r["pool_id"], as_of=summary["as_of"])
         for r in positions},
        per_pool, per_currency)


def holding_history(db: Database, *, actor: Actor, pool_id: int, investor_id: int | None = None) -> list[dict]:
    """Value of one holding at each valuation date: units held that day times that day's NAV per unit."""
    investor_id = actor.id if investor_id is None else investor_id
    _require_self_or_admin(actor, investor_id)
    with db.read() as session:
        pool = session.get(Pool, pool_id)
        if pool is None:
            raise NotFound(f"No pool with id {pool_id}.")
        moves = session.execute(
            select(JournalEntry.effective_date, func.sum(JournalEntry.units))
            .where(JournalEntry.pool_id == pool_id, JournalEntry.account == "investor",
                   JournalEntry.investor_id == investor_id)
            .group_by(JournalEntry.effective_date).order_by(JournalEntry.effective_date)).all()
        if not moves:
            return []
        prices = session.execute(select(Valuation.valuation_date, Valuation.nav_per_unit)
                                 .where(Valuation.pool_id == pool_id, Valuation.valuation_date >= moves[0][0])
                                 .order_by(Valuation.valuation_date)).all()
    deltas = [(d, u or ZERO) for d, u in moves]
    points: list[dict] = []
    held, i = ZERO, 0
    for day, price in prices:
        while i < len(deltas) and deltas[i][0] <= day:
            held += deltas[i][1]
            i += 1
        points.append({"date": day, "units": held, "value": _value(held, price, pool.currency)})
    while i < len(deltas):
        held += deltas[i][1]
        i += 1
    today = date.today()
    if not points or points[-1]["date"] < today:
        points.append({"date": today, "units": held, "value": _value(held, pool.nav_per_unit, pool.currency)})
    return points


def statement_csv(db: Database, *, actor: Actor, investor_id: int | None = None, limit: int = 100000) -> str:
    """Every flow of the investor, oldest first, as CSV (the statement download)."""
    investor_id = actor.id if investor_id is None else investor_id
    _require_self_or_admin(actor, investor_id)
    with db.read() as session:
        rows = session.execute(
            select(Transaction, Pool.code, Pool.currency).join(Pool, Pool.id == Transaction.pool_id)
            .where(Transaction.investor_id == investor_id).order_by(Transaction.effective_date, Transaction.id)
            .limit(limit)).all()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["date", "pool", "currency", "type", "status", "amount", "units", "unit_price", "reference"])
    for tx, code, currency in rows:
        writer.writerow([tx.effective_date.isoformat(), code, currency, tx.kind, tx.status,
                         "" if tx.amount is None else f"{tx.amount.quantize(money_quantum(currency))}",
                         "" if tx.units is None else f"{tx.units:.6f}", "" if tx.price is None else f"{tx.price:.6f}",
                         tx.id])
    return out.getvalue()
