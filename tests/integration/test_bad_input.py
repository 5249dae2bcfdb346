"""Every bad input of issue 2 gets its own clear error and writes nothing.

Each case runs on SQLite and PostgreSQL and compares the row counts of the
ledger, audit and outbox tables before and after the refused call.
"""
from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text

from core.db.models import (
    AuditEvent, Distribution, IdempotencyKey, JournalEntry, OutboxMessage, Position, Transaction, Valuation,
)
from core.domain.errors import IdempotencyError, NotFound, ValidationError
from core.services import ledger, pools, valuations
from core.services.reconcile import reconcile
from tests.factories import make_pool, make_user

D = Decimal
DAY = date(2024, 1, 2)
TABLES = (Transaction, JournalEntry, AuditEvent, OutboxMessage, Valuation, Distribution, Position, IdempotencyKey)


def counts(db) -> dict[str, int]:
    with db.read() as session:
        return {m.__tablename__: session.scalar(select(func.count()).select_from(m)) for m in TABLES}


@pytest.fixture
def world(db):
    """An open USD pool with one investor holding 100 units at 10.00, a JPY pool, and a valuation on 2024-02-01."""
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager, code="USDPOOL")
    yen = make_pool(db, manager, code="YENPOOL", currency="JPY", initial_unit_price="1000")
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="1000.00",
                               key="first", effective_date=DAY, payment="received")
    valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 2, 1),
                                total_assets="1000.00", key=None)
    return db, manager, investor, pool, yen


def refused(db, error, message, call):
    """``call()`` raises ``error`` with exactly ``message`` and leaves every table as it was."""
    before = counts(db)
    with pytest.raises(error) as err:
        call()
    assert err.value.message == message
    assert counts(db) == before
    return err.value


def contribute(db, actor, pool_id, investor_id, amount, day=date(2024, 2, 2), key=None, payment="received"):
    return lambda: ledger.record_contribution(db, actor=actor, pool_id=pool_id, investor_id=investor_id,
                                              amount=amount, key=key, effective_date=day, payment=payment)


def withdraw(db, actor, pool_id, investor_id, day=date(2024, 2, 2), key=None, **how):
    return lambda: ledger.record_withdrawal(db, actor=actor, pool_id=pool_id, investor_id=investor_id, key=key,
                                            effective_date=day, payment="received", **how)


def value(db, actor, pool_id, total, day=date(2024, 3, 1), key=None):
    return lambda: valuations.record_valuation(db, actor=actor, pool_id=pool_id, valuation_date=day,
                                               total_assets=total, key=key)


def distribute(db, actor, pool_id, total, day=date(2024, 2, 1), key=None):
    return lambda: valuations.declare_distribution(db, actor=actor, pool_id=pool_id, record_date=day, total=total,
                                                   key=key)


AMOUNTS = [
    ("0", "amount must be greater than zero."),
    ("-5", "amount must be greater than zero."),
    ("-0.01", "amount must be greater than zero."),
    ("ten dollars", "amount: 'ten dollars' is not a number."),
    ("NaN", "amount: 'NaN' is not a finite number."),
    ("Infinity", "amount: 'Infinity' is not a finite number."),
    ("-inf", "amount: '-inf' is not a finite number."),
    ("1000000000000.01", "amount must not exceed 1,000,000,000,000."),
    ("5e12", "amount: '5e12' is in exponent notation; write the number out in digits, e.g. 1000."),
    ("1e3", "amount: '1e3' is in exponent notation; write the number out in digits, e.g. 1000."),
    ("1_000", "amount: '1_000' has an underscore; write the number without it, e.g. 1000 or 1,000."),
    ("1,00,0", "amount: '1,00,0' has a thousands separator out of place; write e.g. 1,234,567.89 or 1234567.89."),
    ("10.001", "amount: USD has 2 decimal places; 10.001 has more."),
    ("10,50", "amount: '10,50' is not a number; use a point for decimals, e.g. 1234.56."),
    ("", "amount is required."),
]


@pytest.mark.parametrize("amount, message", AMOUNTS)
def test_bad_contribution_amount(world, amount, message):
    db, manager, investor, pool, _ = world
    error = refused(db, ValidationError, message, contribute(db, manager, pool.id, investor.id, amount))
    assert error.field == "amount"


@pytest.mark.parametrize("amount, message", AMOUNTS[:-1])
def test_bad_withdrawal_amount(world, amount, message):
    db, manager, investor, pool, _ = world
    refused(db, ValidationError, message, withdraw(db, manager, pool.id, investor.id, amount=amount))


@pytest.mark.parametrize("amount, message", [
    ("-1", "total assets must be greater than zero."),
    ("NaN", "total assets: 'NaN' is not a finite number."),
    ("lots", "total assets: 'lots' is not a number."),
    ("2000000000000", "total assets must not exceed 1,000,000,000,000."),
    ("1000.005", "total assets: USD has 2 decimal places; 1000.005 has more."),
])
def test_bad_valuation_total(world, amount, message):
    db, manager, _, pool, _ = world
    refused(db, ValidationError, message, value(db, manager, pool.id, amount))


@pytest.mark.parametrize("amount, message", [
    ("0", "distribution total must be greater than zero."),
    ("-10", "distribution total must be greater than zero."),
    ("Infinity", "distribution total: 'Infinity' is not a finite number."),
    ("1.234", "distribution total: USD has 2 decimal places; 1.234 has more."),
    ("1000.01", "The distribution is larger than the pool's net asset value."),
])
def test_bad_distribution_total(world, amount, message):
    db, manager, _, pool, _ = world
    refused(db, ValidationError, message, distribute(db, manager, pool.id, amount))


def test_a_distribution_of_the_whole_nav_is_refused(world):
    # Units would stay outstanding at a unit value of zero, and no later flow could be priced.
    db, manager, _, pool, _ = world
    refused(db, ValidationError, "The distribution must leave the pool a positive unit value.",
            distribute(db, manager, pool.id, "1000.00"))


def test_more_decimals_than_the_currency_has(world):
    db, manager, investor, _, yen = world
    refused(db, ValidationError, "amount: JPY has 0 decimal places; 1000.5 has more.",
            contribute(db, manager, yen.id, investor.id, "1000.5"))


@pytest.mark.parametrize("units, message", [
    ("0", "units must be greater than zero."),
    ("-1", "units must be greater than zero."),
    ("many", "units: 'many' is not a number."),
    ("1.0000001", "units: units have at most 6 decimal places."),
    ("NaN", "units: 'NaN' is not a finite number."),
])
def test_bad_withdrawal_units(world, units, message):
    db, manager, investor, pool, _ = world
    refused(db, ValidationError, message, withdraw(db, manager, pool.id, investor.id, units=units))


def test_withdrawal_needs_exactly_one_of_amount_units_all(world):
    db, manager, investor, pool, _ = world
    message = "Give exactly one of: an amount, a number of units, or 'all'."
    refused(db, ValidationError, message, withdraw(db, manager, pool.id, investor.id))
    refused(db, ValidationError, message, withdraw(db, manager, pool.id, investor.id, amount="10", units="1"))
    refused(db, ValidationError, message, withdraw(db, manager, pool.id, investor.id, units="1", all_units=True))


def test_unknown_pool(world):
    db, manager, investor, _, _ = world
    admin = make_user(db, "admin")
    refused(db, NotFound, "No pool with id 999999.", contribute(db, admin, 999999, investor.id, "10"))
    refused(db, NotFound, "No pool with id 999999.", withdraw(db, admin, 999999, investor.id, units="1"))
    refused(db, NotFound, "No pool with id 999999.", value(db, admin, 999999, "10"))
    refused(db, NotFound, "No pool with id 999999.", distribute(db, admin, 999999, "10"))


def test_unknown_investor(world):
    db, manager, _, pool, _ = world
    refused(db, NotFound, "No investor with id 999999.", contribute(db, manager, pool.id, 999999, "10"))
    refused(db, NotFound, "No investor with id 999999.", withdraw(db, manager, pool.id, 999999, units="1"))
    # a user who is not an investor is no investor either
    refused(db, NotFound, f"No investor with id {manager.id}.", contribute(db, manager, pool.id, manager.id, "10"))


def test_withdrawal_of_more_units_than_held(world):
    db, manager, investor, pool, _ = world
    refused(db, ValidationError,
            "The withdrawal needs 100.000001 units but the investor holds 100.000000 available units.",
            withdraw(db, manager, pool.id, investor.id, units="100.000001"))
    # by amount: 1000.01 at 10.00 needs 100.001 units
    refused(db, ValidationError,
            "The withdrawal needs 100.001000 units but the investor holds 100.000000 available units.",
            withdraw(db, manager, pool.id, investor.id, amount="1000.01"))
    stranger = make_user(db, "investor")
    refused(db, ValidationError, "The investor holds no units in this pool to withdraw.",
            withdraw(db, manager, pool.id, stranger.id, all_units=True))


def test_flows_on_a_draft_pool(world):
    db, manager, investor, _, _ = world
    draft = pools.create_pool(db, actor=manager, code="DRAFTY", settings=pools.PoolSettings(name="Draft"),
                              inception_date=date(2024, 1, 1), draft=True)
    refused(db, ValidationError, "Pool DRAFTY is draft: it takes no contributions or withdrawals.",
            contribute(db, manager, draft.id, investor.id, "10"))
    refused(db, ValidationError, "Pool DRAFTY is draft: it takes no contributions or withdrawals.",
            withdraw(db, manager, draft.id, investor.id, units="1"))
    refused(db, ValidationError, "Pool DRAFTY is a draft: open it before valuing it.",
            value(db, manager, draft.id, "10"))
    refused(db, ValidationError, "Pool DRAFTY is a draft.", distribute(db, manager, draft.id, "10"))


def test_flows_on_a_closed_pool(world):
    db, manager, investor, pool, _ = world
    pools.set_pool_status(db, actor=manager, pool_id=pool.id, status="closed",
                          expected_version=pools.get_pool(db, actor=manager, pool_id=pool.id).version)
    refused(db, ValidationError, "Pool USDPOOL is closed: it takes no contributions or withdrawals.",
            contribute(db, manager, pool.id, investor.id, "10"))
    refused(db, ValidationError, "Pool USDPOOL is closed: it takes no contributions or withdrawals.",
            withdraw(db, manager, pool.id, investor.id, all_units=True))


def test_valuation_with_no_units_and_no_initial_price(world):
    db, manager, _, _, _ = world
    empty = make_pool(db, manager, code="EMPTY")
    # The schema keeps an initial price on every pool, so take it away behind the services' back.
    with db.transaction() as session:
        session.execute(text("UPDATE pools SET initial_unit_price = 0 WHERE id = :id"), {"id": empty.id})
    refused(db, ValidationError, "The pool has no units outstanding and no initial unit price to price them at.",
            value(db, manager, empty.id, "0"))


def test_second_valuation_on_the_same_date(world):
    db, manager, _, pool, _ = world
    refused(db, ValidationError, "Pool USDPOOL already has a valuation on 2024-02-01.",
            value(db, manager, pool.id, "1100.00", day=date(2024, 2, 1)))


def test_valuation_before_the_latest_one_or_in_the_future(world):
    db, manager, _, pool, _ = world
    refused(db, ValidationError,
            "The latest valuation is dated 2024-02-01; a valuation cannot be inserted before it.",
            value(db, manager, pool.id, "1100.00", day=date(2024, 1, 15)))
    tomorrow = date.today() + timedelta(days=1)
    refused(db, ValidationError, f"The valuation date {tomorrow} is in the future (today is {date.today()}).",
            value(db, manager, pool.id, "1100.00", day=tomorrow))


def test_dates_before_inception(world):
    db, manager, investor, pool, _ = world
    early = date(2023, 12, 31)
    message = "The date 2023-12-31 is before the pool's inception (2024-01-01)."
    error = refused(db, ValidationError, message, contribute(db, manager, pool.id, investor.id, "10", day=early))
    assert error.field == "effective_date"
    refused(db, ValidationError, message, withdraw(db, manager, pool.id, investor.id, units="1", day=early))
    fresh = make_pool(db, manager, code="FRESH")
    refused(db, ValidationError, message, value(db, manager, fresh.id, "0", day=early))
    refused(db, ValidationError, "The record date 2023-12-31 is before the pool's inception (2024-01-01).",
            distribute(db, manager, pool.id, "10", day=early))


def test_flows_in_the_future(world):
    db, manager, investor, pool, _ = world
    tomorrow = date.today() + timedelta(days=1)
    refused(db, ValidationError, f"The date {tomorrow} is in the future (today is {date.today()}).",
            contribute(db, manager, pool.id, investor.id, "10", day=tomorrow))


def test_below_the_minimum_contribution(world):
    db, manager, investor, _, _ = world
    pool = make_pool(db, manager, code="MINPOOL", minimum_contribution="500")
    refused(db, ValidationError, "The minimum contribution to MINPOOL is 500.00 USD.",
            contribute(db, manager, pool.id, investor.id, "499.99"))


def test_fees_larger_than_the_assets(world):
    db, manager, investor, _, _ = world
    pool = make_pool(db, manager, code="FEEPOOL", performance_fee_pct="50")
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                               key=None, effective_date=DAY, payment="received")
    valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 2, 1),
                                total_assets="300.00", key=None)  # fee 50.00 owed
    refused(db, ValidationError,
            "Total assets must exceed the fees owed: the pool's net asset value would not be positive.",
            value(db, manager, pool.id, "50.00"))


def test_duplicate_key_with_different_parameters(world):
    db, manager, investor, pool, _ = world
    message = "This idempotency key was already used for a different request; use a new key for a new request."
    refused(db, IdempotencyError, message, contribute(db, manager, pool.id, investor.id, "999.00", day=DAY,
                                                      key="first"))
    refused(db, IdempotencyError, message, value(db, manager, pool.id, "1000.00", key="first"))
    refused(db, ValidationError, "The idempotency key must be 1 to 200 characters.",
            contribute(db, manager, pool.id, investor.id, "10", key="x" * 201))


def test_nothing_was_broken_by_all_of_that(world):
    db, *_ = world
    assert reconcile(db) == []


def test_reinvestment_choice_for_an_unknown_investor(world):
    db, manager, _, pool, _ = world
    refused(db, NotFound, "No investor with id 999999.",
            lambda: ledger.set_reinvestment(db, actor=manager, pool_id=pool.id, investor_id=999999, reinvest=True))
    refused(db, NotFound, f"No investor with id {manager.id}.",
            lambda: ledger.set_reinvestment(db, actor=manager, pool_id=pool.id, investor_id=manager.id, reinvest=True))
    admin = make_user(db, "admin")
    refused(db, NotFound, "No pool with id 999999.",
            lambda: ledger.set_reinvestment(db, actor=admin, pool_id=999999, investor_id=manager.id, reinvest=True))
