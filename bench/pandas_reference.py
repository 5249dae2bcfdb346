"""The straightforward implementation the analytics engine is checked against.

pandas frames read with ``pd.read_sql`` (integers, ``coerce_float=False``),
Decimal object columns, a groupby per pool calling ``core.domain.returns`` on a
list of price points, and a groupby per position calling ``returns.xirr``. No
cleverness: this is what the numbers mean, written the obvious way.
"""
from __future__ import annotations

from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import pandas as pd
from sqlalchemy import create_engine

from core.domain import returns
from core.domain.money import minor_units

Q10 = Decimal("1e-10")


def _q(value):
    return None if value is None else value.quantize(Q10, rounding=ROUND_HALF_EVEN)


def _money(scaled: int) -> Decimal:
    return Decimal(int(scaled)).scaleb(-4)


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


def compute(url: str, as_of: date, risk_free_rate: Decimal) -> dict:
    engine = create_engine(url)
    with engine.connect() as conn:
        pools = pd.read_sql("SELECT id, code, currency, inception_date, initial_unit_price FROM pools", conn,
                            coerce_float=False)
        vals = pd.read_sql(f"SELECT pool_id, valuation_date, nav_per_unit, management_fee, performance_fee "
                           f"FROM valuations WHERE valuation_date <= '{as_of}'", conn, coerce_float=False)
        dists = pd.read_sql(f"SELECT pool_id, record_date, per_unit, nav_per_unit_after FROM distributions "
                            f"WHERE record_date <= '{as_of}'", conn, coerce_float=False)
        legs = pd.read_sql(
            "SELECT j.pool_id, j.investor_id, j.effective_date, j.account, j.amount, j.units, t.kind, "
            "r.kind AS reversed_kind FROM journal_entries j LEFT JOIN transactions t ON t.id = j.transaction_id "
            "LEFT JOIN transactions r ON r.id = t.reverses_id "
            f"WHERE j.account IN ('investor', 'distribution') AND j.effective_date <= '{as_of}'", conn,
            coerce_float=False)
        other = pd.read_sql(f"SELECT pool_id, account, amount FROM journal_entries WHERE account IN "
                            f"('gain', 'fee_expense', 'fees_payable') AND effective_date <= '{as_of}'", conn,
                            coerce_float=False)
    engine.dispose()
    for frame, cols in ((vals, ["valuation_date"]), (dists, ["record_date"]), (legs, ["effective_date"]),
                        (pools, ["inception_date"])):
        for col in cols:
            frame[col] = pd.to_datetime(frame[col]).dt.date
    legs["amount"] = legs["amount"].map(_money)
    legs["units"] = legs["units"].map(lambda u: Decimal(int(u)).scaleb(-6))
    other["amount"] = other["amount"].map(_money)

    starts = {"mtd": as_of.replace(day=1) - timedelta(days=1), "ytd": date(as_of.year - 1, 12, 31),
              "1y": _years_before(as_of, 1), "3y": _years_before(as_of, 3), "since_inception": None}
    pool_out, prices = {}, {}
    for pool in pools.itertuples():
        pv = vals[vals.pool_id == pool.id].sort_values("valuation_date")
        pd_ = dists[dists.pool_id == pool.id].sort_values("record_date")
        raw = [(r.valuation_date, Decimal(int(r.nav_per_unit)).scaleb(-6)) for r in pv.itertuples()]
        if pool.inception_date <= as_of and not any(d == pool.inception_date for d, _ in raw):
            raw.insert(0, (pool.inception_date, Decimal(int(pool.initial_unit_price)).scaleb(-6)))
        points = []
        for day, price in raw:
            paid = sum((Decimal(int(r.per_unit)).scaleb(-6) for r in pd_.itertuples()
                        if r.record_date < day and (not points or r.record_date >= points[-1].date)), Decimal(0))
            points.append(returns.PricePoint(day, price, paid))
        events = [(d, 0, p) for d, p in raw] + [(r.record_date, 1, Decimal(int(r.nav_per_unit_after)).scaleb(-6))
                                                for r in pd_.itertuples()]
        prices[pool.id] = max(events)[2] if events else Decimal(int(pool.initial_unit_price)).scaleb(-6)
        figures = {}
        dates = [p.date for p in points]
        for name, start in starts.items():
            if start is not None and name in ("1y", "3y") and (not dates or dates[0] > start):
                figures[name] = (None, None)
                continue
            value = returns.twr(points, start=start, end=as_of)
            if value is None:
                figures[name] = (None, None)
                continue
            a = 0 if start is None else max(i for i, d in enumerate(dates) if d <= start) if dates[0] <= start else 0
            b = max(i for i, d in enumerate(dates) if d <= as_of)
            figures[name] = (_q(value), _q(returns.annualise(value, (dates[b] - dates[a]).days)))
        dd = returns.max_drawdown(points)
        pl = legs[legs.pool_id == pool.id]
        inv_units = pl[pl.account == "investor"].groupby("investor_id")["units"].sum()
        units = sum(inv_units, Decimal(0))
        top = sum(sorted((u for u in inv_units if u > 0), reverse=True)[:10], Decimal(0))
        po = other[other.pool_id == pool.id]
        assets = -(sum(pl["amount"], Decimal(0)) + sum(po["amount"], Decimal(0)))
        fees_payable = -sum(po[po.account == "fees_payable"]["amount"], Decimal(0))
        minor = Decimal(1).scaleb(-minor_units(pool.currency))
        pool_out[pool.id] = {
            "returns": figures, "volatility": _q(returns.volatility(points)),
            "sharpe": _q(returns.sharpe(points, risk_free_rate)),
            "max_drawdown": None if dd is None else (_q(dd.depth), dd.peak_date, dd.trough_date, dd.recovery_date),
            "units_outstanding": units, "nav": (assets - fees_payable).quantize(minor),
            "nav_per_unit": prices[pool.id],
            "fees": (sum((_money(x) for x in pv.management_fee), Decimal(0)).quantize(minor),
                     sum((_money(x) for x in pv.performance_fee), Decimal(0)).quantize(minor)),
            "top10_concentration": _q(top / units) if units > 0 else None,
        }

    currency = dict(zip(pools.id, pools.currency))
    legs["contribution"] = ((legs.account == "investor") &
                            legs.kind.isin(["contribution", "reinvestment"]) |
                            (legs.kind == "reversal") & legs.reversed_kind.isin(["contribution", "reinvestment"]))

    def position(group: pd.DataFrame) -> pd.Series:
        pool_id = group.pool_id.iloc[0]
        cur = currency[pool_id]
        inv = group[group.account == "investor"]
        units = sum(inv.units, Decimal(0))
        contributed = -sum(inv[inv.contribution].amount, Decimal(0))
        withdrawn = sum(inv[~inv.contribution].amount, Decimal(0))
        distributions = sum(group[group.account == "distribution"].amount, Decimal(0))
        value = (units * prices[pool_id]).quantize(Decimal(1).scaleb(-minor_units(cur)), rounding=ROUND_HALF_EVEN)
        flows = list(zip(group.effective_date, group.amount)) + [(as_of, value)]
        return pd.Series({"currency": cur, "units": units, "value": value, "contributed": contributed,
                          "withdrawn": withdrawn, "distributions": distributions,
                          "cost_basis": contributed - withdrawn,
                          "gain": value + withdrawn + distributions - contributed,
                          "xirr": returns.xirr(flows), "flows": flows})

    positions = {}
    for key, group in legs.groupby(["pool_id", "investor_id"]):
        positions[(int(key[0]), int(key[1]))] = position(group).to_dict()
    overall = {}
    by_investor: dict = {}
    for (pool_id, investor_id), row in positions.items():
        by_investor.setdefault((investor_id, row["currency"]), []).append(row)
    for key, rows in by_investor.items():
        overall[key] = {name: sum((r[name] for r in rows), Decimal(0))
                        for name in ("value", "contributed", "withdrawn", "distributions")}
        overall[key]["xirr"] = returns.xirr([f for r in rows for f in r["flows"]])
    for row in positions.values():
        del row["flows"]
    return {"pools": pool_out, "positions": positions, "investors": overall}
