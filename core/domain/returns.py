"""Pool and investor returns, as set out in ACCOUNTING.md, "Returns".

The pool's time-weighted return comes from its total-return index (TRI), built
from the NAV per unit at each valuation and the distributions paid in between,
so flows never move it; drawdown, volatility and Sharpe are read off the same
index. The investor's money-weighted return is an XIRR on their signed flows.
Pure functions over Decimal; "not available" is None, never 0.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext

import pyxirr

# Working precision for every return calculation: 34 significant digits
# (IEEE decimal128), far beyond what any chained TRI loses to rounding.
_CONTEXT = Context(prec=34, rounding=ROUND_HALF_EVEN)
_XIRR_PLACES = Decimal("1e-10")
_ZERO = Decimal(0)
_ONE = Decimal(1)


@dataclass(frozen=True)
class PricePoint:
    """A valuation: NAV per unit on a date, and distributions per unit paid since the previous one."""

    date: date
    nav_per_unit: Decimal
    distribution_per_unit: Decimal = _ZERO

    def __post_init__(self) -> None:
        if not self.nav_per_unit > 0:
            raise ValueError(f"NAV per unit must be positive on {self.date}: {self.nav_per_unit}")
        if self.distribution_per_unit < 0:
            raise ValueError(f"distribution per unit is negative on {self.date}: {self.distribution_per_unit}")


@dataclass(frozen=True)
class SubPeriod:
    """One step of the index, to show the math: (end_price + distribution) / start_price - 1."""

    start: date
    end: date
    start_price: Decimal
    end_price: Decimal
    distribution_per_unit: Decimal
    period_return: Decimal


@dataclass(frozen=True)
class Drawdown:
    """Deepest fall of the TRI from a previous peak; depth is <= 0 (e.g. -0.25)."""

    depth: Decimal
    peak_date: date
    trough_date: date
    recovery_date: date | None  # first date the TRI is back at the peak; None: not yet


def _check_order(points: Sequence[PricePoint]) -> None:
    for prev, cur in zip(points, points[1:]):
        if cur.date <= prev.date:
            raise ValueError(f"price points must have strictly increasing dates: {prev.date} then {cur.date}")


def total_return_index(points: Sequence[PricePoint]) -> list[tuple[date, Decimal]]:
    """TRI_0 = 1; TRI_t = TRI_(t-1) * (p_t + d_t) / p_(t-1), each level correctly rounded to 34 digits.

    The product is kept exact (as a fraction, in the telescoped form p_t / p_0 times the
    factors (p_s + d_s) / p_s of the points with a distribution) and divided out once per
    level, so equal values compare equal: a price back at its peak is a recovery, and a
    distribution that exactly offsets a price drop leaves the index at exactly 1.
    """
    _check_order(points)
    if not points:
        return []
    index = [(points[0].date, _ONE)]
    first = Fraction(points[0].nav_per_unit)
    growth = Fraction(1)
    with localcontext(_CONTEXT):
        for cur in points[1:]:
            if cur.distribution_per_unit:
                growth *= Fraction(cur.nav_per_unit + cur.distribution_per_unit) / Fraction(cur.nav_per_unit)
            exact = Fraction(cur.nav_per_unit) * growth / first
            index.append((cur.date, Decimal(exact.numerator) / Decimal(exact.denominator)))
    return index


def twr(points: Sequence[PricePoint], start: date | None = None, end: date | None = None) -> Decimal | None:
    """Time-weighted return TRI_b / TRI_a - 1.

    a is the last point on or before ``start`` (the first point when ``start`` is None
    or precedes the series), b the last point on or before ``end`` (the last point when
    ``end`` is None). None when that leaves fewer than two points.
    """
    index = total_return_index(points)
    if len(index) < 2:
        return None
    dates = [d for d, _ in index]
    a = 0 if start is None else max(bisect_right(dates, start) - 1, 0)
    b = len(index) - 1 if end is None else bisect_right(dates, end) - 1
    if b <= a:
        return None
    with localcontext(_CONTEXT):
        return index[b][1] / index[a][1] - 1


def annualise(total_return: Decimal, days: int) -> Decimal | None:
    """(1 + r)^(365 / days) - 1 for periods of 365 days or more; None for shorter ones."""
    if days < 365:
        return None
    growth = _ONE + total_return
    if growth < 0:
        raise ValueError(f"a return below -100% cannot be annualised: {total_return}")
    if growth == 0:
        return Decimal(-1)
    with localcontext(_CONTEXT) as ctx:
        return ctx.power(growth, Decimal(365) / Decimal(days)) - 1


def sub_periods(points: Sequence[PricePoint]) -> list[SubPeriod]:
    """Each valuation-to-valuation step of the TRI with its inputs and return."""
    _check_order(points)
    with localcontext(_CONTEXT):
        return [
            SubPeriod(
                start=prev.date,
                end=cur.date,
                start_price=prev.nav_per_unit,
                end_price=cur.nav_per_unit,
                distribution_per_unit=cur.distribution_per_unit,
                period_return=(cur.nav_per_unit + cur.distribution_per_unit) / prev.nav_per_unit - 1,
            )
            for prev, cur in zip(points, points[1:])
        ]


def period_returns(points: Sequence[PricePoint]) -> list[Decimal]:
    """TRI_t / TRI_(t-1) - 1 for each step, i.e. (p_t + d_t) / p_(t-1) - 1."""
    return [step.period_return for step in sub_periods(points)]


def max_drawdown(points: Sequence[PricePoint]) -> Drawdown | None:
    """Deepest peak-to-trough fall of the TRI (the earliest one on a tie).

    None with fewer than two points. A series that never falls has depth 0, with
    peak, trough and recovery on the first date.
    """
    index = total_return_index(points)
    if len(index) < 2:
        return None
    first = index[0][0]
    depth, peak_at, trough_at = _ZERO, first, first
    peak_date, peak_level, worst_peak_level = first, _ONE, _ONE
    with localcontext(_CONTEXT):
        for day, level in index:
            if level > peak_level:
                peak_date, peak_level = day, level
            fall = level / peak_level - 1
            if fall < depth:
                depth, peak_at, trough_at, worst_peak_level = fall, peak_date, day, peak_level
    if depth == 0:
        return Drawdown(_ZERO, first, first, first)
    recovery = next((day for day, level in index if day > trough_at and level >= worst_peak_level), None)
    return Drawdown(depth, peak_at, trough_at, recovery)


def _periods_per_year(points: Sequence[PricePoint]) -> Decimal:
    """365 / average days between consecutive points (not rounded: monthly gives about 12)."""
    days = (points[-1].date - points[0].date).days
    with localcontext(_CONTEXT):
        return Decimal(365) * (len(points) - 1) / days


def _mean_and_stdev(returns: Sequence[Decimal]) -> tuple[Decimal, Decimal]:
    n = len(returns)
    with localcontext(_CONTEXT) as ctx:
        mean = sum(returns, _ZERO) / n
        variance = sum(((r - mean) ** 2 for r in returns), _ZERO) / (n - 1)
        return mean, ctx.sqrt(variance)


def volatility(points: Sequence[PricePoint], periods_per_year: int | None = None) -> Decimal | None:
    """Annualised volatility: sample standard deviation (n - 1) of the period returns * sqrt(N).

    N is ``periods_per_year``, or when None, 365 / the average days between points.
    None with fewer than two period returns.
    """
    returns = period_returns(points)
    if len(returns) < 2:
        return None
    per_year = _periods_per_year(points) if periods_per_year is None else Decimal(periods_per_year)
    if per_year <= 0:
        raise ValueError(f"periods per year must be positive: {periods_per_year}")
    _, stdev = _mean_and_stdev(returns)
    with localcontext(_CONTEXT) as ctx:
        return stdev * ctx.sqrt(per_year)


def sharpe(
    points: Sequence[PricePoint], risk_free_rate: Decimal, periods_per_year: int | None = None
) -> Decimal | None:
    """Sharpe ratio = (mean(r) * N - risk_free_rate) / (stdev(r) * sqrt(N)).

    r are the period returns of the TRI, mean their arithmetic mean, stdev their
    sample standard deviation (n - 1), N the periods per year (given, or 365 / the
    average days between points), risk_free_rate an annual rate (0.03 for 3%).
    None when the volatility is None or zero.
    """
    vol = volatility(points, periods_per_year)
    if vol is None or vol == 0:
        return None
    per_year = _periods_per_year(points) if periods_per_year is None else Decimal(periods_per_year)
    mean, _ = _mean_and_stdev(period_returns(points))
    with localcontext(_CONTEXT):
        return (mean * per_year - risk_free_rate) / vol


def xirr(flows: Sequence[tuple[date, Decimal]]) -> Decimal | None:
    """Investor money-weighted return, Actual/365, rounded to 10 decimal places.

    Flows are signed from the investor's side: contributions negative; withdrawals,
    cash distributions and the closing value (units * p) positive. Flows on one date
    are summed first. None ("not available") with fewer than two dated flows, flows
    all of one sign, or when the solver finds no rate above -100%.
    """
    by_date: dict[date, Decimal] = {}
    for day, amount in flows:
        by_date[day] = by_date.get(day, _ZERO) + amount
    netted = sorted((day, amount) for day, amount in by_date.items() if amount != 0)
    if len(netted) < 2 or all(a > 0 for _, a in netted) or all(a < 0 for _, a in netted):
        return None
    dates = [day for day, _ in netted]
    amounts = [float(amount) for _, amount in netted]  # floats only for the solver
    try:
        rate = pyxirr.xirr(dates, amounts, day_count=pyxirr.DayCount.ACT_365F)
    except (pyxirr.InvalidPaymentsError, ValueError, ArithmeticError):
        return None
    if rate is None or not math.isfinite(rate) or rate <= -1:
        return None
    value = Decimal(rate)  # exact binary value; a very short period can give a huge rate
    return value.quantize(_XIRR_PLACES, context=Context(prec=max(34, value.adjusted() + 12)))
