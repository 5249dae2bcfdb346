"""Returns: ACCOUNTING.md "Returns" and worked examples 2 and 4, with exact numbers."""

from datetime import date, timedelta
from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.domain.returns import (
    Drawdown,
    PricePoint,
    SubPeriod,
    annualise,
    max_drawdown,
    period_returns,
    sharpe,
    sub_periods,
    total_return_index,
    twr,
    volatility,
    xirr,
)

D = Decimal


def series(*prices: str, start: date = date(2024, 1, 1), step: int = 30) -> list[PricePoint]:
    return [PricePoint(start + timedelta(days=step * i), D(p)) for i, p in enumerate(prices)]


# --- worked example 4: flows do not move TWR ------------------------------------

EXAMPLE_4 = [
    PricePoint(date(2024, 1, 1), D("10.00")),
    PricePoint(date(2024, 7, 1), D("11.00")),  # before the 5,500.00 contribution
    PricePoint(date(2024, 12, 31), D("10.00")),
]


def test_example_4_first_period_is_exactly_ten_percent():
    assert twr(EXAMPLE_4, end=date(2024, 7, 1)) == D("0.1")


def test_example_4_second_period_is_10_over_11_minus_1():
    second = twr(EXAMPLE_4, start=date(2024, 7, 1))
    assert second.quantize(D("1e-9")) == D("-0.090909091")
    assert abs(second - (D(10) / D(11) - 1)) < D("1e-25")


def test_example_4_over_both_periods_is_exactly_zero():
    assert twr(EXAMPLE_4) == 0


def test_example_4_shows_the_math():
    first, second = sub_periods(EXAMPLE_4)
    assert first == SubPeriod(date(2024, 1, 1), date(2024, 7, 1), D("10.00"), D("11.00"), D(0), D("0.1"))
    assert (second.start, second.end, second.start_price, second.end_price) == (
        date(2024, 7, 1),
        date(2024, 12, 31),
        D("11.00"),
        D("10.00"),
    )
    assert period_returns(EXAMPLE_4) == [first.period_return, second.period_return]


def test_twr_picks_last_point_on_or_before_each_bound():
    # start mid-period falls back to the 2024-01-01 point, end mid-period to 2024-07-01
    assert twr(EXAMPLE_4, start=date(2024, 3, 1), end=date(2024, 11, 1)) == D("0.1")
    # a start before the series begins at the first point
    assert twr(EXAMPLE_4, start=date(2020, 1, 1)) == 0


def test_twr_is_none_with_fewer_than_two_points_in_range():
    assert twr([]) is None
    assert twr(EXAMPLE_4[:1]) is None
    assert twr(EXAMPLE_4, end=date(2023, 12, 31)) is None  # nothing on or before end
    assert twr(EXAMPLE_4, start=date(2024, 7, 1), end=date(2024, 12, 1)) is None  # same point


def test_points_must_be_in_date_order():
    with pytest.raises(ValueError):
        total_return_index(list(reversed(EXAMPLE_4)))


# --- distributions ----------------------------------------------------------------


def test_distribution_paid_out_is_not_a_loss():
    points = [
        PricePoint(date(2024, 1, 1), D("10")),
        PricePoint(date(2024, 2, 1), D("9"), distribution_per_unit=D("1")),
        PricePoint(date(2024, 3, 1), D("9.9")),
    ]
    assert twr(points, end=date(2024, 2, 1)) == 0
    assert total_return_index(points) == [
        (date(2024, 1, 1), D(1)),
        (date(2024, 2, 1), D(1)),  # 1 * (9 + 1) / 10
        (date(2024, 3, 1), D("1.1")),  # 1 * 9.9 / 9
    ]
    assert twr(points) == D("0.1")


# --- annualise --------------------------------------------------------------------


def test_annualise_two_years():
    assert abs(annualise(D("0.21"), 730) - D("0.1")) < D("1e-12")


def test_annualise_one_year_is_the_return_itself():
    assert abs(annualise(D("0.07"), 365) - D("0.07")) < D("1e-30")


def test_shorter_periods_are_not_annualised():
    assert annualise(D("0.05"), 100) is None
    assert annualise(D("0.05"), 364) is None


# --- XIRR (worked example 2) ------------------------------------------------------

EXAMPLE_2 = [
    (date(2008, 1, 1), D("-10000")),
    (date(2008, 3, 1), D("2750")),
    (date(2008, 10, 30), D("4250")),
    (date(2009, 2, 15), D("3250")),
    (date(2009, 4, 1), D("2750")),
]


def test_example_2_xirr():
    result = xirr(EXAMPLE_2)
    assert isinstance(result, Decimal)
    assert abs(result - D("0.373362535")) < D("1e-8")
    assert result.as_tuple().exponent == -10  # rounded to 10 decimal places


def test_xirr_sums_flows_on_one_date_and_ignores_order():
    split = [(date(2008, 1, 1), D("-4000")), *reversed(EXAMPLE_2[1:]), (date(2008, 1, 1), D("-6000"))]
    assert xirr(split) == xirr(EXAMPLE_2)


@pytest.mark.parametrize(
    "flows",
    [
        [(date(2024, 1, 1), D("-100")), (date(2024, 6, 1), D("-50"))],  # all negative
        [(date(2024, 1, 1), D("100")), (date(2024, 6, 1), D("50"))],  # all positive
        [(date(2024, 1, 1), D("-100"))],  # a single flow
        [(date(2024, 1, 1), D("-100")), (date(2024, 1, 1), D("100"))],  # nets to nothing
        [],
    ],
)
def test_xirr_not_available(flows):
    assert xirr(flows) is None


def test_xirr_none_when_there_is_no_rate():
    # NPV(v) = -100 + 50 v - 100 v^2 (v = discount factor for one year) never
    # reaches zero: its maximum, at v = 1/4, is -93.75. So there is no solution.
    flows = [(date(2021, 1, 1), D("-100")), (date(2022, 1, 1), D("50")), (date(2023, 1, 1), D("-100"))]
    assert xirr(flows) is None


# --- max drawdown -----------------------------------------------------------------


def test_max_drawdown_with_recovery():
    points = series("10", "12", "9", "11", "13")
    d = [p.date for p in points]
    assert max_drawdown(points) == Drawdown(D("-0.25"), peak_date=d[1], trough_date=d[2], recovery_date=d[4])


def test_max_drawdown_not_yet_recovered():
    points = series("10", "12", "9", "11")
    dd = max_drawdown(points)
    assert (dd.depth, dd.peak_date, dd.trough_date) == (D("-0.25"), points[1].date, points[2].date)
    assert dd.recovery_date is None


def test_max_drawdown_recovery_on_touching_the_peak_again():
    points = series("10", "12", "9", "12")
    assert max_drawdown(points).recovery_date == points[3].date


def test_max_drawdown_of_a_series_that_never_falls():
    points = series("10", "11", "12")
    assert max_drawdown(points) == Drawdown(D(0), points[0].date, points[0].date, points[0].date)
    assert max_drawdown(points[:1]) is None


# --- volatility and Sharpe --------------------------------------------------------

# Prices 100 -> 110 -> 99 -> 108.9 give period returns +0.1, -0.1, +0.1.
# mean m = 0.1/3; deviations 2/30, -4/30, 2/30; squares sum to 24/900 = 2/75;
# sample variance (n - 1 = 2) = 1/75; stdev = sqrt(1/75).
VOL_PRICES = ("100", "110", "99", "108.9")


def _sqrt(x: Decimal) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 34
        return x.sqrt()


def _close(a: Decimal, b: Decimal, tol: str = "1e-25") -> bool:
    return abs(a - b) < D(tol)


def test_period_returns_of_the_volatility_series():
    assert period_returns(series(*VOL_PRICES)) == [D("0.1"), D("-0.1"), D("0.1")]


def test_volatility_with_given_periods_per_year():
    # quarterly: sqrt(1/75) * sqrt(4) = sqrt(4/75) = 0.2309401076758503...
    vol = volatility(series(*VOL_PRICES, step=91), periods_per_year=4)
    assert _close(vol, _sqrt(D(4) / D(75)))
    assert vol.quantize(D("1e-12")) == D("0.230940107676")


def test_volatility_infers_periods_per_year_from_spacing():
    # points 73 days apart: 365 / 73 = 5 periods a year; sqrt(1/75) * sqrt(5) = sqrt(1/15)
    assert _close(volatility(series(*VOL_PRICES, step=73)), _sqrt(D(1) / D(15)))


def test_volatility_needs_two_returns():
    assert volatility(series("10", "11")) is None
    assert sharpe(series("10", "11"), D("0.02")) is None


def test_sharpe():
    # (m * N - rf) / (stdev * sqrt(N)) with N = 4, rf = 0.02:
    # (0.1/3 * 4 - 0.02) / sqrt(4/75) = 0.11333... / 0.23094... = 0.4907477288...
    points = series(*VOL_PRICES, step=91)
    with localcontext() as ctx:
        ctx.prec = 34
        expected = (D("0.1") / 3 * 4 - D("0.02")) / _sqrt(D(4) / D(75))
    result = sharpe(points, D("0.02"), periods_per_year=4)
    assert _close(result, expected)
    assert result.quantize(D("1e-10")) == D("0.4907477288")
    # inferred N = 365 / 73 = 5: (0.1/3 * 5 - 0.02) / sqrt(1/15)
    with localcontext() as ctx:
        ctx.prec = 34
        expected_5 = (D("0.1") / 3 * 5 - D("0.02")) / _sqrt(D(1) / D(15))
    assert _close(sharpe(series(*VOL_PRICES, step=73), D("0.02")), expected_5)


def test_sharpe_none_for_zero_volatility():
    assert sharpe(series("100", "110", "121", "133.1"), D("0.02")) is None  # +10% every period


# --- properties -------------------------------------------------------------------

prices = st.decimals(min_value=D("0.01"), max_value=D("100000"), places=6, allow_nan=False, allow_infinity=False)
distributions = st.decimals(min_value=D(0), max_value=D("50"), places=6, allow_nan=False, allow_infinity=False)


def dated(values: list[tuple[Decimal, Decimal]]) -> list[PricePoint]:
    return [PricePoint(date(2020, 1, 1) + timedelta(days=7 * i), p, d) for i, (p, d) in enumerate(values)]


@given(st.lists(prices, min_size=2, max_size=40))
def test_twr_without_distributions_is_last_over_first(values):
    points = dated([(p, D(0)) for p in values])
    growth = values[-1] / values[0]
    assert abs((1 + twr(points)) - growth) <= D("1e-20") * growth


@given(st.lists(st.tuples(prices, distributions), min_size=3, max_size=40), st.data())
def test_twr_chains_over_adjacent_periods(values, data):
    points = dated(values)
    a, b, c = sorted(data.draw(st.lists(st.integers(0, len(points) - 1), min_size=3, max_size=3, unique=True)))
    da, db, dc = points[a].date, points[b].date, points[c].date
    whole = twr(points, da, dc)
    chained = (1 + twr(points, da, db)) * (1 + twr(points, db, dc)) - 1
    assert abs(whole - chained) <= D("1e-20") * (1 + whole)
