"""Pools: creating, editing (optimistic concurrency), opening and closing, managers."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import delete, func, or_, select

from core.db.models import Invitation, Pool, PoolManager, Position, Transaction, User
from core.db.session import Database
from core.domain.errors import NotFound, PermissionDenied, ValidationError
from core.domain.limits import check_text
from core.domain.money import minor_units, parse_amount, parse_price, to_decimal
from core.services import audit
from core.services.common import bump_version, lock_pool
from core.services.context import Actor, manages_pool, require_pool_manager, require_role

CODE_RE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{1,31}$")


@dataclass(frozen=True)
class PoolView:
    id: int
    code: str
    name: str
    currency: str
    strategy: str
    status: str
    initial_unit_price: Decimal
    pricing_policy: str
    minimum_contribution: Decimal
    management_fee_bps: int
    performance_fee_rate: Decimal
    inception_date: date
    units_outstanding: Decimal
    total_assets: Decimal
    fees_payable: Decimal
    nav_per_unit: Decimal
    high_water_mark: Decimal | None
    last_valuation_date: date | None
    ledger_version: int
    version: int
    manager_ids: tuple[int, ...] = ()

    @property
    def nav(self) -> Decimal:
        return self.total_assets - self.fees_payable


def pool_view(pool: Pool, manager_ids: tuple[int, ...] = ()) -> PoolView:
    return PoolView(
        pool.id, pool.code, pool.name, pool.currency, pool.strategy, pool.status, pool.initial_unit_price,
        pool.pricing_policy, pool.minimum_contribution, pool.management_fee_bps, pool.performance_fee_rate,
        pool.inception_date, pool.units_outstanding, pool.total_assets, pool.fees_payable, pool.nav_per_unit,
        pool.high_water_mark, pool.last_valuation_date, pool.ledger_version, pool.version, manager_ids,
    )


@dataclass(frozen=True)
class PoolSummary:
    """What every investor may see of an open pool they neither hold units in nor were invited to:
    its terms, enough to decide whether to ask to join. No total assets, units, fees payable, unit
    value or managers: those tell outsiders how big the pool is and who runs it."""

    id: int
    code: str
    name: str
    currency: str
    strategy: str
    status: str
    pricing_policy: str
    minimum_contribution: Decimal
    management_fee_bps: int
    performance_fee_rate: Decimal
    inception_date: date

    @property
    def open_for_contributions(self) -> bool:
        return self.status == "open"


def pool_summary(pool: Pool) -> PoolSummary:
    return PoolSummary(pool.id, pool.code, pool.name, pool.currency, pool.strategy, pool.status, pool.pricing_policy,
                       pool.minimum_contribution, pool.management_fee_bps, pool.performance_fee_rate,
                       pool.inception_date)


@dataclass(frozen=True)
class PoolSettings:
    """What a manager can set on a pool; parsed and checked by ``validate``."""

    name: str
    currency: str = "USD"
    initial_unit_price: object = "10.00"
    pricing_policy: str = "latest"
    minimum_contribution: object = "0"
    management_fee_bps: object = 0
    performance_fee_pct: object = "0"
    strategy: str = ""

    def validate(self) -> dict:
        name = check_text(self.name, "pool_name", field="name", required=True)
        strategy = check_text(self.strategy, "strategy", field="strategy")
        currency = (self.currency or "").strip().upper()
        minor_units(currency)
        if self.pricing_policy not in ("latest", "forward"):
            raise ValidationError("Pricing policy must be 'latest' or 'forward'.", field="pricing_policy")
        price = parse_price(self.initial_unit_price, field="initial unit price")
        minimum = parse_amount(self.minimum_contribution, currency, field="minimum contribution", allow_zero=True)
        bps = to_decimal(self.management_fee_bps, field="management fee (bps)")
        if bps != bps.to_integral_value() or not 0 <= bps <= 1000:
            raise ValidationError("The management fee is a whole number of basis points from 0 to 1000.",
                                  field="management_fee_bps")
        pct = to_decimal(self.performance_fee_pct, field="performance fee (%)")
        if not 0 <= pct <= 50:
            raise ValidationError("The performance fee is a percentage from 0 to 50.", field="performance_fee_pct")
        rate = pct / 100
        if rate != rate.quantize(Decimal("0.000001")):
            raise ValidationError("The performance fee has at most 4 decimal places.", field="performance_fee_pct")
        return dict(name=name, currency=currency, initial_unit_price=price, pricing_policy=self.pricing_policy,
                    minimum_contribution=minimum, management_fee_bps=int(bps), performance_fee_rate=rate,
                    strategy=strategy)


def _managers(session, pool_id: int) -> tuple[int, ...]:
    return tuple(session.scalars(select(PoolManager.user_id).where(PoolManager.pool_id == pool_id)
                                 .order_by(PoolManager.user_id)))


def _check_managers(session, manager_ids) -> list[int]:
    ids = sorted(set(manager_ids or ()))
    if ids:
        found = set(session.scalars(select(User.id).where(User.id.in_(ids), User.role.in_(("manager", "admin")),
                                                          User.status == "active")))
        missing = [i for i in ids if i not in found]
        if missing:
            raise ValidationError(f"These users cannot manage pools (not active managers): {missing}.",
                                  field="managers")
    return ids


def create_pool(db: Database, *, actor: Actor, code: str, settings: PoolSettings, inception_date: date | None = None,
                draft: bool = False, manager_ids: list[int] | None = None) -> PoolView:
    require_role(actor, "admin", "manager", action="create pools")
    code = (code or "").strip().upper()
    if not CODE_RE.match(code):
        raise ValidationError("The pool code is 2 to 32 letters, digits, '-' or '_', e.g. GROWTH-1.", field="code")
    values = settings.validate()
    inception = inception_date or date.today()
    if inception > date.today():
        raise ValidationError(f"The inception date {inception} is in the future (today is {date.today()}): "
                              "a pool starts today or earlier.", field="inception_date")
    with db.transaction() as session:
        if session.scalar(select(Pool.id).where(Pool.code == code)) is not None:
            raise ValidationError(f"A pool with the code {code} already exists.", field="code")
        managers = _check_managers(session, manager_ids)
        pool = Pool(code=code, inception_date=inception, status="draft" if draft else "open",
                    nav_per_unit=values["initial_unit_price"], high_water_mark=None, **values)
        session.add(pool)
        session.flush()
        if actor.role == "manager" and actor.id not in managers:
            managers.append(actor.id)
        for user_id in managers:
            session.add(PoolManager(pool_id=pool.id, user_id=user_id))
        session.flush()
        audit.record(session, actor, "pool.create", "pool", pool.id, None,
                     dict(values, code=code, status=pool.status, inception_date=inception, managers=managers))
        return pool_view(pool, tuple(sorted(managers)))


def update_pool(db: Database, *, actor: Actor, pool_id: int, expected_version: int, settings: PoolSettings,
                manager_ids: list[int] | None = None) -> PoolView:
    values = settings.validate()
    with db.transaction() as session:
        require_pool_manager(session, actor, pool_id, "edit this pool")
        pool = lock_pool(session, pool_id)  # no flow may arrive between the checks below and the edit
        has_history = pool.units_outstanding != 0 or pool.last_valuation_date is not None
        if has_history and (values["currency"] != pool.currency or values["initial_unit_price"] != pool.initial_unit_price):
            raise ValidationError("Currency and initial unit price cannot change once the pool has holders or valuations.",
                                  field="currency")
        if values["pricing_policy"] != pool.pricing_policy:
            # A flow waiting for a forward price would never be priced under 'latest', and the reverse.
            waiting = session.scalar(select(func.count()).select_from(Transaction).where(
                Transaction.pool_id == pool_id, Transaction.status == "pending"))
            if waiting:
                raise ValidationError(
                    f"The pricing policy cannot change while {waiting} transaction{'s are' if waiting > 1 else ' is'} "
                    f"pending; let {'them' if waiting > 1 else 'it'} settle, or fail or cancel "
                    f"{'them' if waiting > 1 else 'it'} first.", field="pricing_policy")
        before = {k: getattr(pool, k) for k in values}
        before["managers"] = list(_managers(session, pool_id))
        bump_version(session, Pool, {"id": pool_id}, expected_version, "This pool", **values)
        if manager_ids is not None:
            if actor.role != "admin":
                require_role(actor, "admin", action="change a pool's managers")
            ids = _check_managers(session, manager_ids)
            session.execute(delete(PoolManager).where(PoolManager.pool_id == pool_id))
            for user_id in ids:
                session.add(PoolManager(pool_id=pool_id, user_id=user_id))
        session.flush()
        session.refresh(pool)
        managers = _managers(session, pool_id)
        audit.record(session, actor, "pool.update", "pool", pool_id, before, dict(values, managers=list(managers)))
        return pool_view(pool, managers)


def set_pool_status(db: Database, *, actor: Actor, pool_id: int, status: str, expected_version: int) -> PoolView:
    if status not in ("draft", "open", "closed"):
        raise ValidationError("Status must be draft, open or closed.", field="status")
    with db.transaction() as session:
        require_pool_manager(session, actor, pool_id, "open or close this pool")
        pool = session.get(Pool, pool_id)
        if pool is None:
            raise NotFound(f"No pool with id {pool_id}.")
        if pool.status == "closed" and status != "closed":
            raise ValidationError("A closed pool cannot be reopened.", field="status")
        if status == "draft" and pool.status != "draft":
            raise ValidationError("An open pool cannot go back to draft.", field="status")
        before = pool.status
        bump_version(session, Pool, {"id": pool_id}, expected_version, "This pool", status=status)
        session.refresh(pool)
        audit.record(session, actor, "pool.set_status", "pool", pool_id, {"status": before}, {"status": status})
        return pool_view(pool, _managers(session, pool_id))


def get_pool(db: Database, *, actor: Actor, pool_id: int | None = None,
             code: str | None = None) -> PoolView | PoolSummary:
    """Admins and analysts see every pool; managers their own. An investor sees the figures of a pool they
    hold units in (or held, or were invited to), and only the terms (a ``PoolSummary``) of any other open pool."""
    with db.read() as session:
        query = select(Pool)
        query = query.where(Pool.id == pool_id) if pool_id is not None else query.where(Pool.code == (code or "").upper())
        pool = session.scalar(query)
        if pool is None:
            raise NotFound(f"No pool {code or pool_id}.")
        if actor.role == "investor":
            insider = _investor_insider_pools(session, actor, [pool.id])
            if pool.id in insider and pool.status != "draft":
                return pool_view(pool)
            if pool.status == "open":
                return pool_summary(pool)
            raise PermissionDenied("You do not hold units in this pool.")
        _require_visible(session, actor, pool)
        return pool_view(pool, _managers(session, pool.id))


def _investor_insider_pools(session, actor: Actor, pool_ids: list[int] | None = None) -> set[int]:
    """The pools whose figures an investor may see: those they have (or had) a position in, and those
    they were invited to (the invitation names the pool)."""
    held = select(Position.pool_id).where(Position.investor_id == actor.id)
    invited = select(Invitation.pool_id).where(Invitation.email == actor.email, Invitation.pool_id.is_not(None))
    if pool_ids is not None:
        held = held.where(Position.pool_id.in_(pool_ids))
        invited = invited.where(Invitation.pool_id.in_(pool_ids))
    return set(session.scalars(held)) | set(session.scalars(invited))


def _require_visible(session, actor: Actor, pool: Pool) -> None:
    """Managers see the pools they manage; admins and analysts every pool."""
    if actor.role in ("admin", "analyst"):
        return
    if actor.role == "manager":
        if manages_pool(session, actor, pool.id):
            return
        raise PermissionDenied("You are not a manager of this pool.")
    raise PermissionDenied(f"{'An' if actor.role[:1] in 'aeiou' else 'A'} {actor.role} may not see pools.")


def list_pools(db: Database, *, actor: Actor, search: str = "",
               status: str | None = None) -> list[PoolView | PoolSummary]:
    """The pools ``actor`` may see, by code; for an investor, a ``PoolSummary`` for each open pool whose
    figures are not theirs to see (see ``get_pool``)."""
    with db.read() as session:
        query = select(Pool).order_by(Pool.code)
        insider: set[int] = set()
        if actor.role == "manager":
            query = query.join(PoolManager, PoolManager.pool_id == Pool.id).where(PoolManager.user_id == actor.id)
        elif actor.role == "investor":
            insider = _investor_insider_pools(session, actor)
            query = query.where(or_(Pool.status == "open", Pool.id.in_(insider) & (Pool.status != "draft")))
        elif actor.role not in ("admin", "analyst"):
            return []
        if status:
            query = query.where(Pool.status == status)
        if search:
            like = f"%{search.strip().lower()}%"
            query = query.where(or_(func.lower(Pool.code).like(like), func.lower(Pool.name).like(like)))
        pools = list(session.scalars(query))
        if actor.role == "investor":
            return [pool_view(p) if p.id in insider else pool_summary(p) for p in pools]
        managers: dict[int, list[int]] = {}
        for pool_id, user_id in session.execute(select(PoolManager.pool_id, PoolManager.user_id)):
            managers.setdefault(pool_id, []).append(user_id)
        return [pool_view(p, tuple(sorted(managers.get(p.id, ())))) for p in pools]
