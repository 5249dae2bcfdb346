"""The unit-accounting rules of ACCOUNTING.md as pure functions.

A pool is unitised: investors own units, and the NAV per unit (p) is what one unit
is worth. Deposits buy units at p and so never move it; only valuations, fees and
distributions do. Each function here takes and returns Decimals already at their
precision (money at the currency's minor unit, units and prices at 6 places) and
rounds exactly as the rules say, so that the services only move the results into
the ledger.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Hashable, Sequence

from core.domain.errors import ValidationError
from core.domain.money import PRICE_Q, UNIT_Q, divide, money_quantum, multiply, round_money

ZERO = Decimal(0)
DAYS_PER_YEAR = Decimal(365)
BPS = Decimal(10000)


def nav_per_unit(nav: Decimal, units_outstanding: Decimal, initial_unit_price: Decimal | None) -> Decimal:
    """Rule 1: p = NAV / units; with no units outstanding, the initial unit price."""
    if units_outstanding == 0:
        if initial_unit_price is None or initial_unit_price <= 0:
            raise ValidationError("The pool has no units outstanding and no initial unit price to price them at.")
        return initial_unit_price
    return divide(nav, units_outstanding, PRICE_Q)


def units_for_contribution(amount: Decimal, price: Decimal) -> Decimal:
    """Rule 3: units = A / p, 6 places, half-even."""
    return divide(amount, price, UNIT_Q, ROUND_HALF_EVEN)


def units_for_withdrawal(amount: Decimal, price: Decimal) -> Decimal:
    """Rule 4: a withdrawal of A redeems A / p rounded up, so the holders who stay are never diluted."""
    return divide(amount, price, UNIT_Q, ROUND_CEILING)


def amount_for_units(units: Decimal, price: Decimal, currency: str) -> Decimal:
    """Rule 4: redeeming u units pays u * p rounded down to the minor unit."""
    return multiply(units, price, money_quantum(currency), ROUND_FLOOR)


def split_distribution(total: Decimal, holdings: Sequence[tuple[Hashable, Decimal]], currency: str) -> list[Decimal]:
    """Rule 5: each holder gets D * u_i / U rounded down; leftover minor units go one each to the
    largest remainders, ties to the earliest position (the order of ``holdings``)."""
    units_total = sum((units for _, units in holdings), ZERO)
    if units_total <= 0:
        raise ValidationError("Nobody holds units on the record date, so there is nobody to distribute to.")
    quantum = money_quantum(currency)
    shares: list[Decimal] = []
    remainders: list[tuple[Decimal, int]] = []
    for index, (_, units) in enumerate(holdings):
        exact = total * units / units_total if units else ZERO
        floor = exact.quantize(quantum, rounding=ROUND_FLOOR)
        shares.append(floor)
        remainders.append((exact - floor, index))
    leftover = int(((total - sum(shares, ZERO)) / quantum).to_integral_value())
    # Largest remainder first; on a tie the earlier position (smaller index) wins.
    for _, index in sorted(remainders, key=lambda item: (-item[0], item[1]))[:leftover]:
        shares[index] += quantum
    return shares


def management_fee(nav: Decimal, fee_bps: int, days: int, currency: str) -> Decimal:
    """Rule 6: bps per year on NAV, Actual/365, for the days since the previous valuation."""
    if not fee_bps or days <= 0 or nav <= 0:
        return ZERO.quantize(money_quantum(currency))
    return round_money(nav * Decimal(fee_bps) / BPS * Decimal(days) / DAYS_PER_YEAR, currency)


def performance_fee(
    price_before_fee: Decimal, high_water_mark: Decimal, units_outstanding: Decimal, rate: Decimal, currency: str
) -> Decimal:
    """Rule 6: rate * (p before this fee - HWM) * units, when positive."""
    if not rate or price_before_fee <= high_water_mark or units_outstanding <= 0:
        return ZERO.quantize(money_quantum(currency))
    return round_money(rate * (price_before_fee - high_water_mark) * units_outstanding, currency)


@dataclass(frozen=True)
class PoolBook:
    """What a valuation needs to know of a pool."""

    currency: str
    initial_unit_price: Decimal
    units_outstanding: Decimal
    fees_payable: Decimal
    high_water_mark: Decimal | None
    previous_valuation_date: date | None
    inception_date: date
    management_fee_bps: int = 0
    performance_fee_rate: Decimal = ZERO


@dataclass(frozen=True)
class ValuationResult:
    total_assets: Decimal
    nav_before_fees: Decimal
    management_fee: Decimal
    management_fee_days: int
    performance_fee: Decimal
    nav: Decimal
    nav_per_unit: Decimal
    high_water_mark: Decimal
    fees_payable: Decimal


def value_pool(book: PoolBook, total_assets: Decimal, valuation_date: date) -> ValuationResult:
    """Rules 2 and 6: accrue the management fee, then crystallise the performance fee, then set p."""
    since = book.previous_valuation_date or book.inception_date
    days = (valuation_date - since).days
    nav_before_fees = total_assets - book.fees_payable
    units = book.units_outstanding
    if units == 0:
        # No holders: nothing to charge fees to; p is the initial price (rule 1).
        price = nav_per_unit(nav_before_fees, units, book.initial_unit_price)
        hwm = book.high_water_mark if book.high_water_mark is not None else price
        zero = ZERO.quantize(money_quantum(book.currency))
        return ValuationResult(total_assets, nav_before_fees, zero, days, zero, nav_before_fees, price, hwm, book.fees_payable)
    if nav_before_fees <= 0:
        raise ValidationError("Total assets must exceed the fees owed: the pool's net asset value would not be positive.")
    mgmt = management_fee(nav_before_fees, book.management_fee_bps, days, book.currency)
    nav_after_mgmt = nav_before_fees - mgmt
    price_before_perf = divide(nav_after_mgmt, units, PRICE_Q)
    hwm = book.high_water_mark if book.high_water_mark is not None else book.initial_unit_price
    perf = performance_fee(price_before_perf, hwm, units, book.performance_fee_rate, book.currency)
    nav = nav_after_mgmt - perf
    price = divide(nav, units, PRICE_Q)
    if price <= 0:
        # Every later flow would be priced at zero (and divide by it).
        raise ValidationError("At this total the unit value would round to zero; record the assets the pool "
                              "really has, or take the units out first.", field="total_assets")
    if perf > 0 or (book.performance_fee_rate and price > hwm):
        hwm = max(hwm, price)
    return ValuationResult(
        total_assets=total_assets,
        nav_before_fees=nav_before_fees,
        management_fee=mgmt,
        management_fee_days=days,
        performance_fee=perf,
        nav=nav,
        nav_per_unit=price,
        high_water_mark=hwm,
        fees_payable=book.fees_payable + mgmt + perf,
    )


def price_after_distribution(nav: Decimal, total: Decimal, units_outstanding: Decimal) -> Decimal:
    """Rule 5: D leaves the pool, so p drops by D / units outstanding."""
    if total > nav:
        raise ValidationError("The distribution is larger than the pool's net asset value.", field="amount")
    price = divide(nav - total, units_outstanding, PRICE_Q)
    if price <= 0:
        # Units would stay outstanding at a unit value of zero, and no later flow could be priced.
        raise ValidationError("The distribution must leave the pool a positive unit value.", field="amount")
    return price
