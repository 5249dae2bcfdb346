"""ACCOUNTING.md, rule by rule and worked example by worked example, exact to the digit.

The first part exercises the pure rules in core.domain.accounting; the second
builds the same worked examples through the services (record_contribution,
record_valuation, declare_distribution) on SQLite and PostgreSQL, because a rule
that holds in the domain but is lost on the way to the ledger is no rule at all.
"""
from datetime import date
from decimal import Decimal

import pytest

from core.domain import accounting
from core.domain.accounting import PoolBook, value_pool
from core.domain.errors import ValidationError
from core.domain.returns import PricePoint, twr

D = Decimal


def book(units="1000", fees="0", hwm=None, previous=None, bps=0, rate="0", price="1.00", currency="USD"):
    return PoolBook(currency=currency, initial_unit_price=D(price), units_outstanding=D(units), fees_payable=D(fees),
                    high_water_mark=None if hwm is None else D(hwm), previous_valuation_date=previous,
                    inception_date=date(2024, 1, 1), management_fee_bps=bps, performance_fee_rate=D(rate))


# --- rule 1: NAV per unit ------------------------------------------------------------

def test_rule1_price_is_nav_over_units_or_the_initial_price():
    assert accounting.nav_per_unit(D("5000.00"), D("50.000000"), D("10")) == D("100.000000")
    assert accounting.nav_per_unit(D("0"), D("0"), D("10.000000")) == D("10.000000")


def test_rule1_no_units_and_no_initial_price_is_refused():
    with pytest.raises(ValidationError) as err:
        accounting.nav_per_unit(D("0"), D("0"), None)
    assert err.value.message == "The pool has no units outstanding and no initial unit price to price them at."


# --- worked example 1 ----------------------------------------------------------------

def test_example1_unit_value():
    price = accounting.nav_per_unit(D("5000.00"), D("50.000000"), D("10"))
    assert price == D("100.000000")
    assert accounting.units_for_contribution(D("100.00"), price) == D("1.000000")
    result = value_pool(book(units="51.000000", price="10"), D("5600.00"), date(2024, 2, 1))
    assert result.nav_per_unit == D("109.803922")
    assert str(result.nav_per_unit.quantize(D("0.01"))) == "109.80"


# --- rule 3: contributions ---------------------------------------------------------

def test_rule3_units_are_six_places_half_even():
    assert accounting.units_for_contribution(D("100.00"), D("3.000000")) == D("33.333333")
    assert accounting.units_for_contribution(D("200.00"), D("3.000000")) == D("66.666667")
    # exactly half a micro-unit: half-even keeps the even digit
    assert accounting.units_for_contribution(D("0.01"), D("80.000000")) == D("0.000125")
    assert accounting.units_for_contribution(D("0.01"), D("16000.000000")) == D("0.000001")  # 0.000000625 -> up
    assert accounting.units_for_contribution(D("0.05"), D("200000.000000")) == D("0.000000")  # 0.00000025 -> down
    assert accounting.units_for_contribution(D("0.25"), D("200000.000000")) == D("0.000001")  # 0.00000125 -> 0.000001
    assert accounting.units_for_contribution(D("0.75"), D("200000.000000")) == D("0.000004")  # 0.00000375 -> 0.000004


# --- rule 4: withdrawals -----------------------------------------------------------

def test_rule4_withdrawal_by_amount_rounds_units_up():
    # 100 / 3 = 33.3333333...: the leaver gives up 33.333334 units, never 33.333333
    assert accounting.units_for_withdrawal(D("100.00"), D("3.000000")) == D("33.333334")
    # 200 / 3 = 66.6666666...: half-even would also say ...667; ceiling agrees
    assert accounting.units_for_withdrawal(D("200.00"), D("3.000000")) == D("66.666667")
    # exact division: no rounding at all
    assert accounting.units_for_withdrawal(D("100.00"), D("4.000000")) == D("25.000000")
    # 10 / 109.803922 = 0.09107142848...: up to 0.091072, where half-even would give 0.091071
    assert accounting.units_for_withdrawal(D("10.00"), D("109.803922")) == D("0.091072")
    assert accounting.units_for_contribution(D("10.00"), D("109.803922")) == D("0.091071")


def test_rule4_withdrawal_by_units_rounds_amount_down():
    # 1.5 * 109.803922 = 164.705883 -> 164.70 (half-even would give 164.71)
    assert accounting.amount_for_units(D("1.500000"), D("109.803922"), "USD") == D("164.70")
    assert accounting.amount_for_units(D("0.999999"), D("10.000000"), "USD") == D("9.99")
    assert accounting.amount_for_units(D("3"), D("1234.567891"), "JPY") == D("3703")


# --- rule 5 and worked example 5: distributions -------------------------------------

def test_example5_three_equal_holders_earliest_gets_the_extra_cent():
    holdings = [("first", D("1.000000")), ("second", D("1.000000")), ("third", D("1.000000"))]
    assert accounting.split_distribution(D("100.00"), holdings, "USD") == [D("33.34"), D("33.33"), D("33.33")]
    # the order of the positions decides the tie, not the names
    assert accounting.split_distribution(D("100.00"), list(reversed(holdings)), "USD") == [
        D("33.34"), D("33.33"), D("33.33")]


def test_rule5_largest_remainders_get_the_leftover_cents():
    # exact shares: 14.2857..., 28.5714..., 57.1428...; floors 14.28 + 28.57 + 57.14 = 99.99
    # remainders 0.0057, 0.0014, 0.0028: the single leftover cent goes to the first holder
    holdings = [(1, D("1")), (2, D("2")), (3, D("4"))]
    shares = accounting.split_distribution(D("100.00"), holdings, "USD")
    assert shares == [D("14.29"), D("28.57"), D("57.14")]
    assert sum(shares) == D("100.00")
    # two leftover cents go to the two largest remainders, not the earliest
    holdings = [(1, D("1")), (2, D("1")), (3, D("1")), (4, D("3"))]
    shares = accounting.split_distribution(D("0.05"), holdings, "USD")
    # exact: 0.008333, 0.008333, 0.008333, 0.025 -> floors 0, 0, 0, 0.02; remainders .0083 x3, .005
    assert shares == [D("0.01"), D("0.01"), D("0.01"), D("0.02")]
    assert sum(shares) == D("0.05")


def test_rule5_nobody_holding_is_refused():
    with pytest.raises(ValidationError, match="nobody to distribute to"):
        accounting.split_distribution(D("10.00"), [(1, D("0"))], "USD")


def test_rule5_price_drops_by_d_over_units():
    assert accounting.price_after_distribution(D("3000.00"), D("100.00"), D("3.000000")) == D("966.666667")
    with pytest.raises(ValidationError, match="larger than the pool's net asset value"):
        accounting.price_after_distribution(D("50.00"), D("100.00"), D("3"))


# --- rule 6: management fee ----------------------------------------------------------

def test_rule6_management_fee_is_actual_365():
    assert accounting.management_fee(D("1000000.00"), 100, 73, "USD") == D("2000.00")
    # 10,000 * 1.5% * 31 / 365 = 12.7397...
    assert accounting.management_fee(D("10000.00"), 150, 31, "USD") == D("12.74")
    # a leap year still divides by 365: 366 days cost more than one year's fee
    assert accounting.management_fee(D("10000.00"), 100, 366, "USD") == D("100.27")
    assert accounting.management_fee(D("10000.00"), 100, 365, "USD") == D("100.00")
    assert accounting.management_fee(D("10000.00"), 0, 31, "USD") == D("0.00")
    assert accounting.management_fee(D("10000.00"), 100, 0, "USD") == D("0.00")


def test_rule6_management_fee_accrues_for_the_days_since_the_previous_valuation():
    # inception 2024-01-01 -> 2024-03-01 is 60 days (2024 is a leap year)
    first = value_pool(book(units="1000", bps=100, price="10"), D("10000.00"), date(2024, 3, 1))
    assert first.management_fee_days == 60
    assert first.management_fee == D("16.44")  # 10,000 * 1% * 60/365 = 16.438...
    assert first.nav == D("9983.56")
    assert first.nav_per_unit == D("9.983560")
    assert first.fees_payable == D("16.44")
    second = value_pool(book(units="1000", bps=100, price="10", fees="16.44", previous=date(2024, 3, 1)),
                        D("10000.00"), date(2024, 4, 1))
    assert second.management_fee_days == 31
    assert second.nav_before_fees == D("9983.56")
    assert second.management_fee == D("8.48")  # 9,983.56 * 1% * 31/365 = 8.4792...
    assert second.nav == D("9975.08")
    assert second.nav_per_unit == D("9.975080")
    assert second.fees_payable == D("24.92")


# --- rule 6 and worked example 3: performance fee and high-water mark ---------------------

def test_example3_performance_fee_over_the_high_water_mark():
    rate = "0.20"
    one = value_pool(book(units="1000", rate=rate, hwm="1.00"), D("1050.00"), date(2024, 2, 1))
    assert one.performance_fee == D("10.00")  # 0.010 per unit on 1,000 units
    assert one.nav_per_unit == D("1.040000")
    assert one.high_water_mark == D("1.040000")
    assert one.fees_payable == D("10.00")
    # p 1.02 before fees (the 10.00 owed is not yet paid: V = 1,030.00)
    two = value_pool(book(units="1000", rate=rate, hwm=one.high_water_mark, fees=one.fees_payable,
                          previous=date(2024, 2, 1)), D("1030.00"), date(2024, 3, 1))
    assert two.performance_fee == D("0.00")
    assert two.nav_per_unit == D("1.020000")
    assert two.high_water_mark == D("1.040000")
    three = value_pool(book(units="1000", rate=rate, hwm=two.high_water_mark, fees=two.fees_payable,
                            previous=date(2024, 3, 1)), D("1075.00"), date(2024, 4, 1))
    assert three.nav_before_fees == D("1065.00")
    assert three.performance_fee == D("5.00")  # 0.005 per unit
    assert three.nav_per_unit == D("1.060000")
    assert three.high_water_mark == D("1.060000")
    assert three.fees_payable == D("15.00")


def test_performance_fee_function():
    assert accounting.performance_fee(D("1.05"), D("1.00"), D("1000"), D("0.2"), "USD") == D("10.00")
    assert accounting.performance_fee(D("1.00"), D("1.00"), D("1000"), D("0.2"), "USD") == D("0.00")
    assert accounting.performance_fee(D("0.90"), D("1.00"), D("1000"), D("0.2"), "USD") == D("0.00")
    assert accounting.performance_fee(D("1.05"), D("1.00"), D("1000"), D("0"), "USD") == D("0.00")


def test_fees_never_drive_nav_to_zero():
    with pytest.raises(ValidationError) as err:
        value_pool(book(units="1000", fees="100.00"), D("100.00"), date(2024, 2, 1))
    assert err.value.message == ("Total assets must exceed the fees owed: the pool's net asset value "
                                 "would not be positive.")


# --- worked example 4 (domain part): flows do not move TWR ------------------------------

def test_example4_twr_ignores_the_contribution():
    first = value_pool(book(units="1000", price="10"), D("11000.00"), date(2024, 2, 1))
    assert first.nav_per_unit == D("11.000000")
    bought = accounting.units_for_contribution(D("5500.00"), first.nav_per_unit)
    assert bought == D("500.000000")
    second = value_pool(book(units=str(D(1000) + bought), price="10", previous=date(2024, 2, 1)), D("15000.00"),
                        date(2024, 3, 1))
    assert second.nav_per_unit == D("10.000000")
    points = [PricePoint(date(2024, 1, 1), D("10")), PricePoint(date(2024, 2, 1), first.nav_per_unit),
              PricePoint(date(2024, 3, 1), second.nav_per_unit)]
    assert twr(points, date(2024, 1, 1), date(2024, 2, 1)) == D("0.1")
    assert twr(points, date(2024, 2, 1), date(2024, 3, 1)).quantize(D("0.000001")) == D("-0.090909")
    assert twr(points) == 0


# =====================================================================================
# The same worked examples through the services and the ledger (both databases).
# =====================================================================================

from core.services import ledger, valuations  # noqa: E402
from core.services.reconcile import reconcile  # noqa: E402
from tests.factories import make_pool, make_user  # noqa: E402


def _contribute(db, manager, pool, investor, amount, day, key=None):
    return ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount=amount,
                                      key=key, effective_date=day, payment="received")


def _value(db, manager, pool, day, total):
    return valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=day, total_assets=total,
                                       key=None)


def _pool(db, **settings):
    from core.services import pools

    return pools.get_pool(db, actor=settings.pop("actor"), pool_id=settings.pop("pool_id"))


def test_example1_through_the_ledger(db):
    manager = make_user(db, "manager")
    investor, other = make_user(db, "investor"), make_user(db, "investor")
    pool = make_pool(db, manager, initial_unit_price="100.00")
    first = _contribute(db, manager, pool, investor, "5000.00", date(2024, 1, 2))
    assert (first.status, first.units, first.price) == ("settled", D("50.000000"), D("100.000000"))
    second = _contribute(db, manager, pool, other, "100.00", date(2024, 1, 3))
    assert second.units == D("1.000000")
    valuation = _value(db, manager, pool, date(2024, 2, 1), "5600.00")
    assert valuation.units_outstanding == D("51.000000")
    assert valuation.nav_per_unit == D("109.803922")
    assert valuation.previous_nav_per_unit == D("100.000000")
    assert reconcile(db) == []


def test_example3_through_record_valuation(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager, initial_unit_price="1.00", performance_fee_pct="20")
    assert _contribute(db, manager, pool, investor, "1000.00", date(2024, 1, 1)).units == D("1000.000000")

    one = _value(db, manager, pool, date(2024, 2, 1), "1050.00")
    assert (one.performance_fee, one.nav, one.nav_per_unit, one.high_water_mark) == (
        D("10.00"), D("1040.00"), D("1.040000"), D("1.040000"))
    two = _value(db, manager, pool, date(2024, 3, 1), "1030.00")  # p 1.02 after the 10.00 still owed
    assert (two.performance_fee, two.nav_per_unit, two.high_water_mark) == (D("0.00"), D("1.020000"), D("1.040000"))
    three = _value(db, manager, pool, date(2024, 4, 1), "1075.00")  # p 1.065 before this fee
    assert (three.performance_fee, three.nav_per_unit, three.high_water_mark) == (
        D("5.00"), D("1.060000"), D("1.060000"))

    state = _pool(db, actor=manager, pool_id=pool.id)
    assert state.fees_payable == D("15.00")
    assert state.nav == D("1060.00")
    assert state.high_water_mark == D("1.060000")
    from core.db.models import FeeAccrual
    from sqlalchemy import select

    with db.read() as session:
        fees = [(f.kind, f.amount, f.accrual_date) for f in session.scalars(select(FeeAccrual).order_by(FeeAccrual.id))]
    assert fees == [("performance", D("10.00"), date(2024, 2, 1)), ("performance", D("5.00"), date(2024, 4, 1))]
    assert reconcile(db) == []


def test_management_fee_through_record_valuation(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager, management_fee_bps=100)
    _contribute(db, manager, pool, investor, "10000.00", date(2024, 1, 1))
    first = _value(db, manager, pool, date(2024, 3, 1), "10000.00")
    assert (first.management_fee_days, first.management_fee, first.nav, first.nav_per_unit) == (
        60, D("16.44"), D("9983.56"), D("9.983560"))
    second = _value(db, manager, pool, date(2024, 4, 1), "10000.00")
    assert (second.management_fee_days, second.management_fee, second.nav_per_unit) == (31, D("8.48"), D("9.975080"))
    assert _pool(db, actor=manager, pool_id=pool.id).fees_payable == D("24.92")
    assert reconcile(db) == []


def test_example4_through_the_ledger(db):
    manager = make_user(db, "manager")
    investor, newcomer = make_user(db, "investor"), make_user(db, "investor")
    pool = make_pool(db, manager, initial_unit_price="10.00")
    assert _contribute(db, manager, pool, investor, "10000.00", date(2024, 1, 1)).units == D("1000.000000")
    assert _value(db, manager, pool, date(2024, 2, 1), "11000.00").nav_per_unit == D("11.000000")
    assert _contribute(db, manager, pool, newcomer, "5500.00", date(2024, 2, 2)).units == D("500.000000")
    assert _value(db, manager, pool, date(2024, 3, 1), "15000.00").nav_per_unit == D("10.000000")
    history = valuations.get_valuations(db, actor=manager, pool_id=pool.id)
    points = [PricePoint(date(2024, 1, 1), D("10"))] + [PricePoint(v.valuation_date, v.nav_per_unit) for v in history]
    assert twr(points, date(2024, 1, 1), date(2024, 2, 1)) == D("0.1")
    assert twr(points, date(2024, 2, 1), date(2024, 3, 1)).quantize(D("0.0001")) == D("-0.0909")
    assert twr(points) == 0


def test_example5_distribution_is_paid_exactly_and_reinvested(db):
    manager = make_user(db, "manager")
    holders = [make_user(db, "investor") for _ in range(3)]
    pool = make_pool(db, manager, initial_unit_price="100.00")
    for n, investor in enumerate(holders):
        _contribute(db, manager, pool, investor, "100.00", date(2024, 1, 1 + n))
    ledger.set_reinvestment(db, actor=holders[2], pool_id=pool.id, investor_id=holders[2].id, reinvest=True)
    result = valuations.declare_distribution(db, actor=manager, pool_id=pool.id, record_date=date(2024, 1, 5),
                                             total="100.00", key="dist-1")
    assert [(p.investor_id, p.amount) for p in result.parts] == [
        (holders[0].id, D("33.34")), (holders[1].id, D("33.33")), (holders[2].id, D("33.33"))]
    # p drops by D / units: (300 - 100) / 3
    assert result.nav_per_unit_after == D("66.666667")
    assert result.per_unit == D("33.333333")
    state = _pool(db, actor=manager, pool_id=pool.id)
    # the reinvesting holder bought 33.33 / 66.666667 = 0.49995 units (half-even at 6 places)
    assert state.units_outstanding == D("3.499950")
    assert state.total_assets == D("233.33")
    assert state.nav_per_unit == D("66.666667")
    mine = ledger.list_transactions(db, actor=holders[2], pool_id=pool.id)
    assert [(t.kind, t.status, t.amount, t.units, t.price) for t in mine] == [
        ("reinvestment", "settled", D("33.33"), D("0.499950"), D("66.666667")),
        ("distribution", "settled", D("33.33"), None, D("66.666667")),
        ("contribution", "settled", D("100.00"), D("1.000000"), D("100.000000")),
    ]
    assert reconcile(db) == []


# --- rule 4 through the ledger -----------------------------------------------------------

def _priced_pool(db):
    """A pool at p = 109.803922 (worked example 1) with one investor holding 50 units."""
    manager = make_user(db, "manager")
    investor, other = make_user(db, "investor"), make_user(db, "investor")
    pool = make_pool(db, manager, initial_unit_price="100.00")
    _contribute(db, manager, pool, investor, "5000.00", date(2024, 1, 2))
    _contribute(db, manager, pool, other, "100.00", date(2024, 1, 3))
    _value(db, manager, pool, date(2024, 2, 1), "5600.00")
    return manager, investor, pool


def test_withdrawal_by_amount_redeems_units_rounded_up(db):
    manager, investor, pool = _priced_pool(db)
    tx = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="10.00",
                                  key=None, effective_date=date(2024, 2, 2), payment="received")
    assert (tx.status, tx.amount, tx.units, tx.price) == ("settled", D("10.00"), D("0.091072"), D("109.803922"))
    assert _pool(db, actor=manager, pool_id=pool.id).units_outstanding == D("50.908928")
    assert reconcile(db) == []


def test_withdrawal_by_units_pays_amount_rounded_down(db):
    manager, investor, pool = _priced_pool(db)
    tx = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, units="1.5",
                                  key=None, effective_date=date(2024, 2, 2), payment="received")
    assert (tx.status, tx.amount, tx.units) == ("settled", D("164.70"), D("1.500000"))
    assert _pool(db, actor=manager, pool_id=pool.id).total_assets == D("5435.30")


def test_withdrawal_of_all_units(db):
    manager, investor, pool = _priced_pool(db)
    tx = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, all_units=True,
                                  key=None, effective_date=date(2024, 2, 2), payment="received")
    # 50 * 109.803922 = 5490.1961 -> 5490.19
    assert (tx.status, tx.units, tx.amount, tx.withdrawal_mode) == ("settled", D("50.000000"), D("5490.19"), "all")
    state = _pool(db, actor=manager, pool_id=pool.id)
    assert state.units_outstanding == D("1.000000")
    assert state.total_assets == D("109.81")
    assert reconcile(db) == []


# --- rule 1: latest versus forward pricing ---------------------------------------------------

def test_latest_pricing_settles_at_the_most_recent_price(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager, pricing_policy="latest")
    _contribute(db, manager, pool, investor, "1000.00", date(2024, 1, 2))
    _value(db, manager, pool, date(2024, 1, 10), "1100.00")
    tx = _contribute(db, manager, pool, investor, "1000.00", date(2024, 1, 11))
    assert (tx.status, tx.price, tx.units) == ("settled", D("11.000000"), D("90.909091"))


def test_forward_pricing_waits_for_the_next_valuation(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager, pricing_policy="forward")
    first = _contribute(db, manager, pool, investor, "1000.00", date(2024, 1, 2))
    assert (first.status, first.units, first.price) == ("pending", None, None)
    assert first.payment_received_at is not None
    # no units yet: the first valuation prices at the initial unit price
    _value(db, manager, pool, date(2024, 1, 3), "0")
    assert ledger.get_transaction(db, actor=manager, transaction_id=first.id).units == D("100.000000")
    second = _contribute(db, manager, pool, investor, "1000.00", date(2024, 1, 5))
    assert second.status == "pending"
    valuation = _value(db, manager, pool, date(2024, 1, 10), "1100.00")
    assert valuation.nav_per_unit == D("11.000000")
    settled = ledger.get_transaction(db, actor=manager, transaction_id=second.id)
    # priced at the p of the valuation after it, not at the 10.00 current when it arrived
    assert (settled.status, settled.price, settled.units) == ("settled", D("11.000000"), D("90.909091"))
    state = _pool(db, actor=manager, pool_id=pool.id)
    assert state.units_outstanding == D("190.909091")
    assert state.total_assets == D("2100.00")
    assert reconcile(db) == []
