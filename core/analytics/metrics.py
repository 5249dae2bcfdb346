"""Analytics use cases: who may see which figures, computed by the engine and cached.

Pool-wide figures (returns, risk, flows, holders) are for admins, analysts and the
pool's managers. Investors get only their own positions (``investor_summary``)
and the public price history of pools they hold. Analysts see investors by id
only: nothing here returns a name or an email.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import pyarrow as pa
from sqlalchemy import select

from core.analytics import cache
from core.analytics.engine import Results, compute
from core.analytics.loader import load_book, load_investor_legs
from core.config import get_settings
from core.db.models import Pool, PoolManager, Position
from core.db.session import Database
from core.domain.errors import NotFound, PermissionDenied, ValidationError
from core.domain.money import minor_units
from core.domain.returns import PricePoint, sub_periods
from core.services.context import Actor, require_pool_reader, require_role, require_self_or_pool_manager


def _as_of(as_of: date | None) -> date:
    return as_of or date.today()


def _check_range(start: date | None, as_of: date) -> None:
    if start is not None and start > as_of:
        raise ValidationError("The start date must be on or before the end date.", field="start")


def results(db: Database, *, as_of: date, start: date | None = None, pool_ids: list[int] | None = None,
            investor_id: int | None = None) -> Results:
    """The engine's results for a scope, from the cache when the ledger has not changed (no access check)."""
    ids = sorted(set(pool_ids)) if pool_ids is not None else None
    rate = get_settings().risk_free_rate
    version = cache.book_version(db, ids)
    return cache.cached(
        db, ("results", as_of, start, tuple(ids) if ids is not None else None, investor_id, str(rate)), version,
        lambda: compute(load_book(db, as_of=as_of, pool_ids=ids, investor_id=investor_id), start=start,
                        risk_free_rate=rate),
    )


def readable_pool_ids(db: Database, actor: Actor) -> list[int] | None:
    """Pools whose pool-wide figures the actor may see; None means all of them."""
    if actor.role in ("admin", "analyst"):
        return None
    if actor.role == "manager":
        with db.read() as session:
            return sorted(session.scalars(select(PoolManager.pool_id).where(PoolManager.user_id == actor.id)))
    raise PermissionDenied("Investors see their own figures on My portfolio, not pool-wide analytics.")


def _pool_id(db: Database, pool_id: int | None, pool_code: str | None) -> int:
    with db.read() as session:
        if pool_id is not None:
            found = session.get(Pool, pool_id)
        else:
            found = session.scalar(select(Pool).where(Pool.code == (pool_code or "").strip().upper()))
        if found is None:
            raise NotFound(f"No pool {pool_code or pool_id}.", field="pool")
        return found.id


def pool_metrics(db: Database, *, actor: Actor, pool_id: int | None = None, pool_code: str | None = None,
                 as_of: date | None = None, start: date | None = None) -> dict:
    """NAV, units, returns for MTD/YTD/1y/3y/since inception (and the range from ``start``), volatility,
    Sharpe, max drawdown, fees, holders and top-10 concentration of one pool."""
    pid = _pool_id(db, pool_id, pool_code)
    with db.read() as session:
        require_pool_reader(session, actor, pid)
        inception = session.get(Pool, pid).inception_date
    day = _as_of(as_of)
    if day > date.today():
        raise ValidationError(f"The date {day} is in the future (today is {date.today()}): there are no figures "
                              "for it yet.", field="as_of")
    if day < inception:
        raise ValidationError(f"The date {day} is before the pool's inception ({inception}): the pool had no "
                              "figures then.", field="as_of")
    _check_range(start, day)
    return results(db, as_of=day, start=start, pool_ids=[pid]).pools[pid]


def compare_pools(db: Database, *, actor: Actor, as_of: date | None = None, start: date | None = None,
                  pool_ids: list[int] | None = None) -> dict:
    """A row per visible pool and the total AUM (NAV) by currency."""
    day = _as_of(as_of)
    _check_range(start, day)
    allowed = readable_pool_ids(db, actor)
    scope = allowed if pool_ids is None else [p for p in pool_ids if allowed is None or p in allowed]
    if pool_ids is not None and allowed is not None and len(scope) != len(set(pool_ids)):
        raise PermissionDenied("You may not see some of these pools' figures.")
    found = results(db, as_of=day, start=start, pool_ids=scope)
    rows = sorted(found.pools.values(), key=lambda p: p["code"])
    return {"as_of": day, "start": start, "pools": rows, "aum_by_currency": aum_by_currency(rows)}


def aum_by_currency(rows: list[dict]) -> dict[str, Decimal]:
    """Total assets under management (NAV) per currency of these pools' rows."""
    aum: dict[str, Decimal] = {}
    for row in rows:
        aum[row["currency"]] = aum.get(row["currency"], Decimal(0)) + row["nav"]
    return dict(sorted(aum.items()))


def pool_series(db: Database, *, actor: Actor, pool_ids: list[int], as_of: date | None = None,
                start: date | None = None) -> dict[str, pa.Table]:
    """Chart data: ``series`` (NAV per unit, TRI, drawdown, AUM, units per valuation) and ``monthly_flows``.

    Investors may see the price history of pools they hold, never their flows.
    """
    day = _as_of(as_of)
    _check_range(start, day)
    ids = sorted(set(pool_ids))
    if actor.role == "investor":
        with db.read() as session:
            held = set(session.scalars(select(Position.pool_id).where(Position.investor_id == actor.id)))
        if not set(ids) <= held:
            raise PermissionDenied("You may only see the price history of pools you hold.")
    else:
        allowed = readable_pool_ids(db, actor)
        if allowed is not None and not set(ids) <= set(allowed):
            raise PermissionDenied("You may not see some of these pools' figures.")
    found = results(db, as_of=day, start=start, pool_ids=ids)
    out = {"series": found.series}
    if actor.role != "investor":
        out["monthly_flows"] = found.monthly_flows
    return out


def positions(db: Database, *, actor: Actor, pool_id: int, as_of: date | None = None) -> list[dict]:
    """Every holder of a pool as of a date (by investor id), with value, cost basis, gain and XIRR."""
    with db.read() as session:
        require_pool_reader(session, actor, pool_id)
    day = _as_of(as_of)
    found = results(db, as_of=day, pool_ids=[pool_id])
    return [_position_row(r, found.pools.get(pool_id)) for r in found.positions.to_pylist()]


def _money(value: Decimal, currency: str) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-minor_units(currency)))


def _position_row(row: dict, pool: dict | None) -> dict:
    currency = row["currency"]
    out = {
        "pool_id": row["pool_id"], "investor_id": row["investor_id"], "currency": currency,
        "first_flow_date": row["first_date"], "units": row["units"].quantize(Decimal("0.000001")),
        "nav_per_unit": pool["nav_per_unit"] if pool else None,
    }
    for name in ("value", "contributed", "withdrawn", "distributions", "cost_basis", "gain"):
        out[name] = _money(row[name], currency)
    out["xirr"] = Decimal(row["xirr"]) if row["xirr"] is not None else None
    if pool:
        out["code"], out["name"] = pool["code"], pool["name"]
    return out


def investor_summary(db: Database, *, actor: Actor, investor_id: int, as_of: date | None = None) -> dict:
    """One investor's own figures: per pool holdings, value, cost basis (contributed - withdrawn), gain
    (value + withdrawn + distributions - contributed), flows and XIRR; totals and XIRR per currency.

    The investor themself, admins and analysts see every pool; a manager sees only the pools they manage.
    """
    day = _as_of(as_of)
    with db.read() as session:
        pool_ids = _investor_scope(session, actor, investor_id)
        meta = {p.id: p for p in session.scalars(select(Pool).where(Pool.id.in_(pool_ids or [-1])))}
    found = results(db, as_of=day, pool_ids=pool_ids, investor_id=investor_id)
    rows = []
    for r in found.positions.to_pylist():
        pool = meta[r["pool_id"]]
        rows.append(_position_row(r, {"nav_per_unit": found.prices[pool.id], "code": pool.code, "name": pool.name}))
    rows.sort(key=lambda r: r["code"])
    totals = []
    for r in found.investors.to_pylist():
        totals.append({"currency": r["currency"], "pools": r["pools"],
                       **{k: _money(r[k], r["currency"]) for k in
                          ("value", "contributed", "withdrawn", "distributions", "cost_basis", "gain")},
                       "xirr": Decimal(r["xirr"]) if r["xirr"] is not None else None})
    return {"investor_id": investor_id, "as_of": day, "positions": rows, "totals": totals}


def _investor_scope(session, actor: Actor, investor_id: int) -> list[int]:
    """The pools of an investor the actor may see figures of (``PermissionDenied`` when none)."""
    pool_ids = sorted(set(session.scalars(select(Position.pool_id).where(Position.investor_id == investor_id))))
    if actor.role == "manager":
        pool_ids = [p for p in pool_ids if _manages(session, actor, p)]
        if not pool_ids:
            raise PermissionDenied("You may not see another investor's holdings.")
    elif not (actor.role in ("admin", "analyst") or (actor.role == "investor" and actor.id == investor_id)):
        raise PermissionDenied("You may not see another investor's holdings.")
    return pool_ids


def _manages(session, actor: Actor, pool_id: int) -> bool:
    from core.services.context import manages_pool

    return manages_pool(session, actor, pool_id)


# --- show the math ---------------------------------------------------------------------

@dataclass(frozen=True)
class TwrMath:
    points: list[PricePoint]
    sub_periods: list
    start: date | None
    end: date | None
    twr: Decimal | None


def price_points(db: Database, *, actor: Actor, pool_id: int, as_of: date | None = None) -> list[PricePoint]:
    """The valuation points the TWR is computed from: inception at the initial price, every valuation's NAV
    per unit, and the distributions per unit paid since the previous point."""
    day = _as_of(as_of)
    with db.read() as session:
        if actor.role == "investor":
            held = session.get(Position, (pool_id, actor.id))
            if held is None:
                raise PermissionDenied("You may only see the price history of pools you hold.")
        else:
            require_pool_reader(session, actor, pool_id)
    book = load_book(db, as_of=day, pool_ids=[pool_id], investor_id=-1)
    return build_points(book, pool_id)


def build_points(book, pool_id: int) -> list[PricePoint]:
    """Plain-Python construction of the price points (also the reference for the engine's tests)."""
    pools = {r["pool_id"]: r for r in book.pools.to_pylist()}
    pool = pools[pool_id]
    vals = sorted((r["valuation_date"], Decimal(r["nav_per_unit"]).scaleb(-6))
                  for r in book.valuations.to_pylist()
                  if r["pool_id"] == pool_id and r["valuation_date"] <= book.as_of)
    raw = list(vals)
    if pool["inception_date"] <= book.as_of and not any(d == pool["inception_date"] for d, _ in vals):
        raw.insert(0, (pool["inception_date"], Decimal(pool["initial_price"]).scaleb(-6)))
    dists = sorted((r["record_date"], Decimal(r["per_unit"]).scaleb(-6))
                   for r in book.distributions.to_pylist()
                   if r["pool_id"] == pool_id and r["record_date"] <= book.as_of)
    points = []
    for day, price in raw:
        paid = sum((amount for record, amount in dists
                    if record < day and (not points or record >= points[-1].date)), Decimal(0))
        points.append(PricePoint(day, price, paid))
    return points


def twr_math(db: Database, *, actor: Actor, pool_id: int, as_of: date | None = None,
             start: date | None = None) -> TwrMath:
    from core.domain.returns import twr

    points = price_points(db, actor=actor, pool_id=pool_id, as_of=as_of)
    if start is not None:
        anchor = max((i for i, p in enumerate(points) if p.date <= start), default=0)
        points = points[anchor:]
    return TwrMath(points, sub_periods(points), points[0].date if points else None,
                   points[-1].date if points else None, twr(points))


def xirr_flows(db: Database, *, actor: Actor, investor_id: int, pool_id: int | None = None,
               currency: str | None = None, as_of: date | None = None) -> list[tuple[date, Decimal, str]]:
    """The dated cash flows an XIRR is computed from (investor's side), netted per date, with the closing
    value on the as-of date: for one pool, or (``pool_id`` None) every pool of the investor in ``currency``."""
    day = _as_of(as_of)
    with db.read() as session:
        if pool_id is not None:
            require_self_or_pool_manager(session, actor, pool_id, investor_id)
            scope = [pool_id]
        else:
            if not (actor.role in ("admin", "analyst") or (actor.role == "investor" and actor.id == investor_id)):
                raise PermissionDenied("You may not see another investor's flows.")
            held = select(Position.pool_id).where(Position.investor_id == investor_id)
            scope = sorted(session.scalars(select(Pool.id).where(Pool.id.in_(held), Pool.currency == currency)))
    legs = load_investor_legs(db, as_of=day, investor_id=investor_id, pool_ids=scope).to_pylist()
    summary = results(db, as_of=day, pool_ids=scope, investor_id=investor_id)
    closing = sum((r["value"] for r in summary.positions.to_pylist()), Decimal(0))
    return _netted_flows(legs, closing, day)


def _investor_currencies(db: Database, actor: Actor, investor_id: int) -> dict[int, str]:
    """The investor's pools the actor may see figures of (``_investor_scope``), with their currencies."""
    with db.read() as session:
        scope = _investor_scope(session, actor, investor_id)
        return dict(session.execute(select(Pool.id, Pool.currency).where(Pool.id.in_(scope or [-1]))).all())


def _position_values(db: Database, day: date, pool_ids: list[int], investor_id: int) -> dict[int, Decimal]:
    """The investor's holding value per pool on ``day`` (the engine's results, cached)."""
    found = results(db, as_of=day, pool_ids=pool_ids, investor_id=investor_id).positions.to_pylist()
    return {r["pool_id"]: r["value"] for r in found}


def investor_flows(db: Database, *, actor: Actor, investor_id: int, as_of: date | None = None
                   ) -> tuple[dict[int, list[tuple[date, Decimal, str]]], dict[str, list[tuple[date, Decimal, str]]]]:
    """The flows behind every XIRR of ``investor_summary`` (per pool, and per currency for the overall one),
    from one read of the investor's legs and the summary's own (cached) results."""
    day = _as_of(as_of)
    currency_of = _investor_currencies(db, actor, investor_id)
    scope = sorted(currency_of)
    legs = load_investor_legs(db, as_of=day, investor_id=investor_id, pool_ids=scope).to_pylist()
    values = _position_values(db, day, scope, investor_id)
    per_pool = {pool_id: _netted_flows([leg for leg in legs if leg["pool_id"] == pool_id], value, day)
                for pool_id, value in values.items()}
    per_currency = {}
    for currency in sorted(set(currency_of[p] for p in values)):
        mine = [p for p in values if currency_of[p] == currency]
        per_currency[currency] = _netted_flows([leg for leg in legs if leg["pool_id"] in mine],
                                               sum((values[p] for p in mine), Decimal(0)), day)
    return per_pool, per_currency


@dataclass(frozen=True)
class PeriodReturn:
    """An investor's money-weighted return over a period, and what it was computed from."""

    opening: Decimal  # the holding's value at the end of the day before the period
    flows: list[tuple[date, Decimal, str]]  # the investor's side, netted per date and kind
    closing: Decimal  # the value at the end of the period
    xirr: Decimal | None  # None: not available


def investor_period(db: Database, *, actor: Actor, investor_id: int, start: date, end: date
                    ) -> tuple[dict[int, PeriodReturn], dict[str, PeriodReturn]]:
    """Per pool and per currency: the opening value (as money put in on ``start``), the flows of the
    period and the closing value on ``end``, and the XIRR of those (ACCOUNTING: Returns)."""
    from datetime import timedelta

    from core.domain.returns import xirr

    _check_range(start, end)
    currency_of = _investor_currencies(db, actor, investor_id)
    scope = sorted(currency_of)
    legs = [leg for leg in load_investor_legs(db, as_of=end, investor_id=investor_id, pool_ids=scope).to_pylist()
            if leg["effective_date"] >= start]
    opening = _position_values(db, start - timedelta(days=1), scope, investor_id)
    closing = _position_values(db, end, scope, investor_id)

    def period(pool_ids: list[int]) -> PeriodReturn:
        first = sum((opening.get(p, Decimal(0)) for p in pool_ids), Decimal(0))
        last = sum((closing.get(p, Decimal(0)) for p in pool_ids), Decimal(0))
        by_key: dict[tuple[date, str], Decimal] = {}
        for leg in legs:
            if leg["pool_id"] in pool_ids:
                key = (leg["effective_date"], _FLOW_LABELS[leg["account"]])
                by_key[key] = by_key.get(key, Decimal(0)) + Decimal(leg["amount"]).scaleb(-4)
        flows = [(day, amount, _money_side(kind, amount)) for (day, kind), amount in sorted(by_key.items())
                 if amount != 0]
        dated = [(start, -first)] + [(day, amount) for day, amount, _ in flows] + [(end, last)]
        return PeriodReturn(first, flows, last, xirr(dated))

    per_pool = {p: period([p]) for p in scope}
    per_currency = {c: period([p for p in scope if currency_of[p] == c]) for c in sorted(set(currency_of.values()))}
    return per_pool, per_currency


_FLOW_LABELS = {0: "contribution / withdrawal", 1: "distribution"}


def _money_side(kind: str, amount: Decimal) -> str:
    """A day's net money in or out of one pool, named by its direction."""
    if kind != _FLOW_LABELS[0]:
        return kind
    return "contribution" if amount < 0 else "withdrawal"


def _netted_flows(legs: list[dict], closing: Decimal, day: date) -> list[tuple[date, Decimal, str]]:
    """The investor's side of the legs netted per date, with the closing value on ``day``."""
    by_date: dict[date, list] = {}
    for leg in legs:
        entry = by_date.setdefault(leg["effective_date"], [Decimal(0), set()])
        entry[0] += Decimal(leg["amount"]).scaleb(-4)
        entry[1].add(_FLOW_LABELS[leg["account"]])
    if closing:
        entry = by_date.setdefault(day, [Decimal(0), set()])
        entry[0] += closing
        entry[1].add("closing value")
    return [(d, amount, ", ".join(sorted(kinds))) for d, (amount, kinds) in sorted(by_date.items()) if amount != 0]


def all_metrics(db: Database, *, actor: Actor, as_of: date | None = None, start: date | None = None) -> Results:
    """Every pool's and every investor's figures (admins and analysts)."""
    require_role(actor, "admin", "analyst", action="see every pool's and investor's figures")
    day = _as_of(as_of)
    _check_range(start, day)
    return results(db, as_of=day, start=start)
