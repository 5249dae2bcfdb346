"""The DuckDB engine against the Decimal reference (core.domain.returns) and ACCOUNTING.md's examples.

Books are built directly as Arrow tables (no database): a pool's valuations and
distributions, and an investor's legs, at the stored integer scales.
"""
import os
from datetime import date, timedelta
from decimal import Decimal

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from core.analytics.engine import compute, q10
from core.analytics.loader import BALANCES, DISTRIBUTIONS, LEGS, POOLS, VALUATIONS, Book
from core.analytics.metrics import build_points
from core.domain import returns

D = Decimal
RF = D("0.02")


def book(prices, *, dists=(), legs=(), as_of=None, inception=None, currency="USD") -> Book:
    """prices: [(date, "p")]; dists: [(record_date, "per_unit", "price_after")]; legs: [(investor, date, account,
    "amount", "units", reversal)]."""
    inception = inception or prices[0][0]
    pools = pa.Table.from_pylist([{"pool_id": 1, "code": "P", "name": "Pool", "currency": currency,
                                   "status": "open", "inception_date": inception, "initial_price": 10_000_000,
                                   "ledger_version": 1}], schema=POOLS)
    vals = pa.Table.from_pylist([{"pool_id": 1, "valuation_date": d, "total_assets": 0, "nav": 0,
                                  "units_outstanding": 0, "nav_per_unit": int(D(p) * 10**6), "management_fee": 0,
                                  "performance_fee": 0} for d, p in prices], schema=VALUATIONS)
    dist = pa.Table.from_pylist([{"distribution_id": i + 1, "pool_id": 1, "record_date": d, "total": 0,
                                  "per_unit": int(D(u) * 10**6), "nav_per_unit_after": int(D(a) * 10**6)}
                                 for i, (d, u, a) in enumerate(dists)], schema=DISTRIBUTIONS)
    leg_rows = pa.Table.from_pylist([{"pool_id": 1, "investor_id": inv, "effective_date": d, "account": acc,
                                      "amount": int(D(amount) * 10**4), "units": int(D(units) * 10**6),
                                      "reversal": rev} for inv, d, acc, amount, units, rev in legs], schema=LEGS)
    last = max([d for d, _ in prices] + [d for d, _, _ in dists] + [l[1] for l in legs])
    return Book(as_of or last, pools, vals, dist, leg_rows, BALANCES.empty_table())


def reference_points(b: Book):
    return build_points(b, 1)


# --- worked example 4: flows do not move TWR --------------------------------------------

EXAMPLE_4 = [(date(2024, 1, 1), "10"), (date(2024, 7, 1), "11"), (date(2024, 12, 31), "10")]


def test_example_4_twr_is_zero_over_both_periods_and_ten_percent_over_the_first():
    both = compute(book(EXAMPLE_4)).pools[1]
    assert both["returns"]["since_inception"]["return"] == D("0E-10")
    first = compute(book(EXAMPLE_4, as_of=date(2024, 7, 1))).pools[1]
    assert first["returns"]["since_inception"]["return"] == D("0.1000000000")
    second = compute(book(EXAMPLE_4), start=date(2024, 7, 1)).pools[1]
    assert second["returns"]["range"]["return"] == D("-0.0909090909")


def test_example_4_drawdown_and_its_dates():
    mdd = compute(book(EXAMPLE_4)).pools[1]["max_drawdown"]
    assert mdd == {"depth": D("-0.0909090909"), "peak_date": date(2024, 7, 1), "trough_date": date(2024, 12, 31),
                   "recovery_date": None}


# --- worked example 2: XIRR -------------------------------------------------------------

def test_example_2_xirr_of_an_investor_who_has_taken_everything_out():
    legs = [(7, date(2008, 1, 1), 0, "-10000", "1000", 0), (7, date(2008, 3, 1), 0, "2750", "-200", 0),
            (7, date(2008, 10, 30), 0, "4250", "-300", 0), (7, date(2009, 2, 15), 0, "3250", "-250", 0),
            (7, date(2009, 4, 1), 0, "2750", "-250", 0)]
    result = compute(book([(date(2008, 1, 1), "10")], legs=legs, as_of=date(2009, 4, 1)))
    row = result.positions.to_pylist()[0]
    assert abs(D(row["xirr"]) - D("0.373362535")) < D("1e-8")
    assert D(row["xirr"]) == returns.xirr([(d, D(a)) for _, d, _, a, _, _ in legs])
    assert (row["contributed"], row["withdrawn"], row["units"], row["value"]) == (
        D("10000.0000"), D("13000.0000"), D("0E-6"), D("0E-4"))


def test_xirr_is_null_when_there_is_no_solution_or_flows_are_all_one_sign():
    only_in = [(7, date(2024, 1, 1), 0, "-100", "10", 0)]
    result = compute(book([(date(2024, 1, 1), "10")], legs=only_in, as_of=date(2024, 1, 1)))
    # Bought and valued on the same date: one netted flow of zero, no XIRR (never 0).
    assert result.positions.to_pylist()[0]["xirr"] is None
    lost = [(7, date(2024, 1, 1), 0, "-100", "10", 0)]
    crashed = compute(book([(date(2024, 1, 1), "10"), (date(2024, 6, 1), "0.000001")], legs=lost))
    row = crashed.positions.to_pylist()[0]
    assert row["value"] == D("0E-4") and row["xirr"] is None


def test_several_flows_on_one_date_give_the_same_answer_whatever_their_order():
    legs = [(7, date(2024, 1, 1), 0, "-1000", "100", 0), (7, date(2024, 3, 1), 0, "-500", "50", 0),
            (7, date(2024, 3, 1), 0, "200", "-20", 0), (7, date(2024, 3, 1), 0, "-300", "30", 0)]
    prices = [(date(2024, 1, 1), "10"), (date(2024, 12, 31), "12")]
    answers = {compute(book(prices, legs=order)).positions.to_pylist()[0]["xirr"]
               for order in (legs, legs[::-1], legs[1:] + legs[:1])}
    assert len(answers) == 1
    expected = returns.xirr([(d, D(a)) for _, d, _, a, _, _ in legs] + [(date(2024, 12, 31), D("1920.00"))])
    assert answers == {format(expected, "f")}


def test_a_reversal_undoes_a_contribution_rather_than_counting_as_a_withdrawal():
    legs = [(7, date(2024, 1, 1), 0, "-1000", "100", 0), (7, date(2024, 2, 1), 0, "-500", "50", 0),
            (7, date(2024, 2, 2), 0, "500", "-50", 1)]
    row = compute(book([(date(2024, 1, 1), "10")], legs=legs)).positions.to_pylist()[0]
    assert (row["contributed"], row["withdrawn"], row["cost_basis"]) == (D("1000.0000"), D("0E-4"), D("1000.0000"))


def test_value_is_units_times_price_rounded_half_even_to_cents():
    legs = [(7, date(2024, 1, 1), 0, "-100", "10.000005", 0)]
    row = compute(book([(date(2024, 1, 1), "10"), (date(2024, 2, 1), "1.000001")], legs=legs)).positions.to_pylist()[0]
    # 10.000005 * 1.000001 = 10.000015000005 -> 10.00
    assert row["value"] == D("10.0000")
    legs = [(7, date(2024, 1, 1), 0, "-100", "0.5", 0)]
    row = compute(book([(date(2024, 1, 1), "10"), (date(2024, 2, 1), "0.05")], legs=legs)).positions.to_pylist()[0]
    assert row["value"] == D("0.0200")  # 0.025 -> 0.02 (half-even)


def test_distribution_enters_the_index_at_the_next_valuation():
    prices = [(date(2024, 1, 1), "10"), (date(2024, 6, 30), "11"), (date(2024, 12, 31), "10.5")]
    b = book(prices, dists=[(date(2024, 6, 30), "1", "10")])
    figures = compute(b).pools[1]
    expected = returns.twr(reference_points(b))  # 11/10 * 11.5/11 - 1 = 0.15
    assert expected == D("0.15")
    assert figures["returns"]["since_inception"]["return"] == D("0.1500000000")
    assert figures["nav_per_unit"] == D("10.500000")


def test_periods_anchor_on_the_last_valuation_before_their_start_and_need_history_for_1y_3y():
    prices = [(date(2023, 1, 1) + timedelta(days=30 * i), str(10 + i)) for i in range(20)]
    b = book(prices, as_of=date(2024, 7, 20))
    figures = compute(b).pools[1]
    points = reference_points(b)
    for name, start in (("mtd", date(2024, 6, 30)), ("ytd", date(2023, 12, 31)), ("1y", date(2023, 7, 20))):
        assert figures["returns"][name]["return"] == q10(returns.twr(points, start=start, end=b.as_of)), name
    assert figures["returns"]["3y"]["return"] is None
    si = figures["returns"]["since_inception"]
    assert si["annualised"] == q10(returns.annualise(returns.twr(points), si["days"]))


prices_strategy = st.lists(st.integers(min_value=1, max_value=10**9), min_size=2, max_size=40)


@settings(max_examples=int(os.environ.get("POOLDESK_ENGINE_EXAMPLES", "60")), deadline=None)
@given(prices_strategy, st.lists(st.tuples(st.integers(0, 39), st.integers(1, 10**6)), max_size=5),
       st.integers(0, 39))
def test_engine_equals_the_decimal_reference_on_random_series(raw, dist_raw, start_index):
    start_day = date(2020, 1, 1)
    prices = [(start_day + timedelta(days=7 * i), str(D(p).scaleb(-6))) for i, p in enumerate(raw)]
    dists = sorted({(start_day + timedelta(days=7 * (i % len(raw)) + 1), str(D(u).scaleb(-6)), "1")
                    for i, u in dist_raw})
    b = book(prices, dists=dists, as_of=prices[-1][0])
    start = prices[min(start_index, len(prices) - 1)][0]
    figures = compute(b, start=start, risk_free_rate=RF).pools[1]
    points = reference_points(b)
    window = [p for p in points if p.date >= start]
    assert figures["returns"]["since_inception"]["return"] == q10(returns.twr(points))
    assert figures["returns"]["range"]["return"] == q10(returns.twr(points, start=start))
    assert figures["volatility"] == q10(returns.volatility(window))
    assert figures["sharpe"] == q10(returns.sharpe(window, RF))
    dd = returns.max_drawdown(window)
    got = figures["max_drawdown"]
    if dd is None:
        assert got is None
    else:
        exact = exact_drawdown(window)
        assert (got["depth"], got["peak_date"], got["trough_date"], got["recovery_date"]) == exact
        # The Decimal reference agrees to the day: its index levels are correctly rounded, so a
        # price back exactly at its peak is a recovery there too.
        assert (q10(dd.depth), dd.peak_date, dd.trough_date, dd.recovery_date) == exact


def exact_drawdown(points):
    """Max drawdown in exact rational arithmetic: what the numbers mean, with no rounding at all."""
    from fractions import Fraction

    level, index = Fraction(1), []
    for prev, cur in zip([None, *points], points):
        if prev is not None:
            level = level * (Fraction(cur.nav_per_unit) + Fraction(cur.distribution_per_unit)) / Fraction(prev.nav_per_unit)
        index.append((cur.date, level))
    depth, peak_at, trough_at, peak, worst_peak = Fraction(0), index[0][0], index[0][0], index[0], Fraction(1)
    for day, lvl in index:
        if lvl > peak[1]:
            peak = (day, lvl)
        fall = lvl / peak[1] - 1
        if fall < depth:
            depth, peak_at, trough_at, worst_peak = fall, peak[0], day, peak[1]
    if depth == 0:
        first = index[0][0]
        return (q10(Decimal(0)), first, first, first)
    recovery = next((d for d, lvl in index if d > trough_at and lvl >= worst_peak), None)
    return (q10(Decimal(depth.numerator) / Decimal(depth.denominator)), peak_at, trough_at, recovery)
