"""The read models behind the pages: exact figures and who may see them."""
from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from core.domain.errors import PermissionDenied
from core.domain.returns import xirr
from core.services import dashboard, ledger, valuations
from tests.factories import make_pool, make_user


@pytest.fixture
def book(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager, code="BOOK", inception=date.today() - timedelta(days=10))
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="1000.00",
                               key="c1", payment="received", effective_date=date.today() - timedelta(days=5))
    valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date.today() - timedelta(days=2),
                                total_assets="1100.00", key="v1")
    ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="110.00",
                             key="w1", payment="received")
    return manager, investor, pool


def test_portfolio_value_and_gain(db, book):
    manager, investor, pool = book
    mine = dashboard.portfolio(db, actor=investor)
    (holding,) = mine.holdings
    # 100 units bought at 10.00; p = 11.00; 10 units redeemed for 110.00
    assert (holding.units, holding.value, holding.withdrawn) == (Decimal("90"), Decimal("990.00"), Decimal("110.00"))
    assert holding.gain == Decimal("100.00")
    assert mine.totals["USD"]["value"] == Decimal("990.00")
    with pytest.raises(PermissionDenied):
        dashboard.portfolio(db, actor=make_user(db, "investor"), investor_id=investor.id)
    with pytest.raises(PermissionDenied):
        dashboard.portfolio(db, actor=manager, investor_id=investor.id)


def test_portfolio_returns_are_the_investors_own_with_their_math(db, book):
    manager, investor, pool = book
    mine = dashboard.portfolio_returns(db, actor=investor)
    (row,) = mine.positions
    # 1,000.00 in five days ago, 110.00 out today, 990.00 held today; the pool went from 10.00 to 11.00
    assert (row["cost_basis"], row["gain"]) == (Decimal("890.00"), Decimal("100.00"))
    assert mine.pool_flows[pool.id] == [(date.today() - timedelta(days=5), Decimal("-1000.00"),
                                         "contribution / withdrawal"),
                                        (date.today(), Decimal("1100.00"), "closing value, contribution / withdrawal")]
    assert row["xirr"] == xirr([(date.today() - timedelta(days=5), Decimal("-1000.00")),
                                (date.today(), Decimal("1100.00"))])  # 10% in five days, a year of that
    assert mine.currency_flows["USD"] == mine.pool_flows[pool.id]
    assert [t["xirr"] for t in mine.totals] == [row["xirr"]]
    assert mine.pool_twr[pool.id].twr == Decimal("0.1")
    assert dashboard.portfolio_returns(db, actor=make_user(db, "admin"), investor_id=investor.id).positions == [row]
    for someone in (make_user(db, "investor"), manager, make_user(db, "analyst")):
        with pytest.raises(PermissionDenied):
            dashboard.portfolio_returns(db, actor=someone, investor_id=investor.id)


def test_holding_history_follows_units_and_unit_value(db, book):
    manager, investor, pool = book
    points = dashboard.holding_history(db, actor=investor, pool_id=pool.id)
    assert [(p["units"], p["value"]) for p in points] == [(Decimal("100"), Decimal("1100.00")),
                                                          (Decimal("90"), Decimal("990.00"))]


def test_statement_lists_every_flow_oldest_first(db, book):
    manager, investor, pool = book
    lines = dashboard.statement_csv(db, actor=investor).strip().splitlines()
    assert lines[0] == "date,pool,currency,type,status,amount,units,unit_price,reference"
    assert [line.split(",")[3:7] for line in lines[1:]] == [
        ["contribution", "settled", "1000.00", "100.000000"], ["withdrawal", "settled", "110.00", "10.000000"]]


def test_manager_overview_flows_and_access(db, book):
    manager, investor, pool = book
    overview = dashboard.manager_overview(db, actor=manager)
    assert overview.assets_under_management == {"USD": Decimal("990.00")}
    (month,) = overview.flows_month
    assert (month.contributions, month.withdrawals, month.net) in {
        (Decimal("1000.00"), Decimal("110.00"), Decimal("890.00")),  # the contribution fell in this month
        (Decimal("0"), Decimal("110.00"), Decimal("-110.00")),  # ...or in the last one
    }
    other = make_user(db, "manager")
    assert dashboard.manager_overview(db, actor=other).pools == []
    with pytest.raises(PermissionDenied):
        dashboard.pool_holders(db, actor=other, pool_id=pool.id)
    with pytest.raises(PermissionDenied):
        dashboard.manager_overview(db, actor=investor)


def test_change_marker_moves_with_every_write(db, book):
    manager, investor, pool = book
    before = dashboard.change_marker(db)
    ledger.record_contribution(db, actor=investor, pool_id=pool.id, investor_id=investor.id, amount="5", key="r")
    assert dashboard.change_marker(db) > before
