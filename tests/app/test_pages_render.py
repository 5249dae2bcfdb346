"""Every page renders for every role that may open it; every other role gets a refusal and no data."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from app.navigation import REGISTRY, pages_for
from core.domain.returns import xirr
from core.services import ledger
from tests.app.conftest import errors, open_app, open_page_alone, table_text
from tests.factories import make_pool, make_user, make_valued_pool

OWN_PAGES = [spec for spec in REGISTRY if not spec.optional]
HEADINGS = {"overview": "Overview", "portfolio": "My portfolio", "pools": "Pools", "pool_detail": "Pool detail",
            "transactions": "Transactions", "notifications": "Notifications", "admin": "Admin", "account": "Account"}
CASES = [(spec.file[:-3], role) for spec in OWN_PAGES for role in spec.roles]
REFUSALS = [(spec.file[:-3], role) for spec in OWN_PAGES
            for role in ("admin", "manager", "investor", "analyst") if role not in spec.roles]


@pytest.fixture
def world(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor", email="secret.investor@example.com")
    pool = make_pool(db, manager, code="GROWTH")
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="1000.00",
                               key="seed", payment="received")
    return {"manager": manager, "investor": investor, "admin": make_user(db, "admin"),
            "analyst": make_user(db, "analyst"), "pool": pool}


@pytest.mark.parametrize("page,role", CASES)
def test_page_renders_for_its_roles(db, world, page, role):
    at = open_app(db, world[role], page)
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == [HEADINGS[page]]
    assert errors(at) == []


@pytest.mark.parametrize("page,role", REFUSALS)
def test_wrong_role_gets_a_refusal_and_no_data(db, world, page, role):
    at = open_page_alone(page, world[role])
    assert not at.exception
    assert errors(at) == [f"This page is not available to your role ({role})."]
    assert not at.dataframe and not at.metric and not at.title


@pytest.mark.parametrize("page,role", [("admin", "manager"), ("transactions", "investor"), ("portfolio", "analyst"),
                                       ("pool_detail", "investor")])
def test_opening_another_roles_page_through_the_app_shows_the_refusal(db, world, page, role):
    """As a typed or bookmarked URL would: through the app's own navigation, not the page file alone."""
    at = open_app(db, world[role], page)
    assert not at.exception
    assert errors(at) == [f"This page is not available to your role ({role})."]
    assert not at.dataframe and not at.title
    assert HEADINGS[page] not in [p.title for p in pages_for(role)]  # and it is not in the menu


def test_signed_out_visitor_sees_only_sign_in(db, world):
    at = open_app(db)
    assert [t.value for t in at.title] == ["Pooldesk"]
    assert [t.label for t in at.text_input][:2] == ["Email", "Password"]
    at = open_page_alone("portfolio", None)
    assert errors(at) == ["Please sign in to see this page."]


def test_navigation_lists_the_pages_of_the_role():
    def own(role):
        return [p.title for p in pages_for(role) if not p.optional]

    assert own("investor") == ["Overview", "My portfolio", "Notifications", "Account"]
    assert own("analyst") == ["Overview", "Pools", "Pool detail", "Notifications", "Account"]
    assert "Admin" in own("admin") and "Admin" not in own("manager")
    assert "Transactions" not in own("analyst")


def test_pages_of_other_parts_are_listed_only_once_their_file_exists(tmp_path, monkeypatch):
    import app.navigation as navigation

    monkeypatch.setattr(navigation, "PAGES_DIR", tmp_path)
    assert [p.title for p in pages_for("admin")] == ["Overview", "Pools", "Pool detail", "Transactions",
                                                     "Notifications", "Admin", "Account"]
    (tmp_path / "reports.py").write_text("")
    (tmp_path / "operations.py").write_text("")
    assert [p.title for p in pages_for("admin")] == ["Overview", "Pools", "Pool detail", "Transactions", "Reports",
                                                     "Notifications", "Operations", "Admin", "Account"]
    assert "Operations" not in [p.title for p in pages_for("manager")]
    assert "Reports" in [p.title for p in pages_for("investor")]


def test_manager_overview_shows_figures_with_currency(db, world):
    at = open_app(db, world["manager"])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Assets under management (USD)"] == "USD 1,000.00"
    assert metrics["Net flows today (USD)"] == "USD 1,000.00"
    assert metrics["Pending approvals"] == "0"
    assert metrics["Failed payments (30 days)"] == "0"
    assert "GROWTH" in table_text(at)


def test_overview_keeps_currencies_apart(db, world):
    from datetime import date as _date

    from core.services import pools as pool_service

    eur = pool_service.create_pool(db, actor=world["manager"], code="EUROS",
                                   settings=pool_service.PoolSettings(name="Euro pool", currency="EUR"),
                                   inception_date=_date(2024, 1, 1))
    ledger.record_contribution(db, actor=world["manager"], pool_id=eur.id, investor_id=world["investor"].id,
                               amount="2500.00", key="eur-1", payment="received")
    for who in ("manager", "analyst"):
        at = open_app(db, world[who])
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Assets under management (USD)"] == "USD 1,000.00"
        assert metrics["Assets under management (EUR)"] == "EUR 2,500.00"


def test_investor_overview_shows_value_and_gain(db, world):
    at = open_app(db, world["investor"])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Total value (USD)"] == "USD 1,000.00"
    assert metrics["Gain"] == "USD 0.00"


def test_investor_never_sees_other_investors(db, world):
    other = make_user(db, "investor", email="other.investor@example.com")
    ledger.record_contribution(db, actor=world["manager"], pool_id=world["pool"].id, investor_id=other.id,
                               amount="5000.00", key="other", payment="received")
    for page in ("overview", "portfolio"):
        at = open_app(db, other, page)
        shown = table_text(at) + "".join(str(m.value) for m in at.metric)
        assert "secret.investor" not in shown and "Investor" not in table_text(at).split("\n")[0]
        assert "USD 5,000.00" in shown and "USD 1,000.00" not in shown


def test_analyst_sees_investor_ids_only(db, world):
    at = open_app(db, world["analyst"], "pool_detail")
    holders = table_text(at)
    assert f"Investor #{world['investor'].id}" in holders
    assert "secret.investor" not in holders


def test_manager_sees_holders_with_value_and_share(db, world):
    at = open_app(db, world["manager"], "pool_detail")
    holders = at.dataframe[0].value
    row = holders.iloc[0]
    assert row["Investor"].endswith("<secret.investor@example.com>")
    assert (row["Units"], row["Value"], row["Share"]) == ("100.000000", "USD 1,000.00", "100.00%")


def test_my_portfolio_shows_holdings_and_money_in_and_out(db, world):
    ledger.record_withdrawal(db, actor=world["manager"], pool_id=world["pool"].id, investor_id=world["investor"].id,
                             amount="250.00", key="out", payment="received")
    at = open_app(db, world["investor"], "portfolio")
    holdings, money = (df.value for df in at.dataframe[:2])
    assert list(holdings.columns) == ["Pool", "Units", "Unit value", "As of", "Value", "Gain"]
    assert (holdings.iloc[0]["Units"], holdings.iloc[0]["Value"]) == ("75.000000", "USD 750.00")
    assert holdings.iloc[0]["As of"] == "no valuation yet"  # the unit value is still the initial price
    assert list(money.columns) == ["Pool", "Contributed", "Withdrawn", "Distributions"]
    assert (money.iloc[0]["Contributed"], money.iloc[0]["Withdrawn"]) == ("USD 1,000.00", "USD 250.00")


def test_my_portfolio_shows_the_investors_returns_and_how_they_were_computed(db):
    # 1,000.00 in on 2024-01-01 at 10.00; valued 1,100.00 on 2024-06-30, so p = 11.00 and the holding is 1,100.00.
    _, investor, _ = make_valued_pool(db, "RET")
    at = open_app(db, investor, "portfolio")
    expected = xirr([(date(2024, 1, 1), Decimal("-1000.00")), (date.today(), Decimal("1100.00"))])
    shown = f"{expected * 100:,.2f}%"
    assert {m.label: m.value for m in at.metric}["Your return overall (USD, XIRR a year)"] == shown
    returns = [df.value for df in at.dataframe if "Pool since inception (TWR)" in df.value.columns][0]
    assert returns.iloc[0].to_dict() == {"Pool": "RET · Test pool", "Cost basis": "USD 1,000.00",
                                         "Gain": "USD 100.00", "Your return (XIRR a year)": shown,
                                         "Pool since inception (TWR)": "10.00%"}
    math = {e.label: e for e in at.expander}
    flows = math["Show the math: your return in RET"].dataframe[0].value
    assert flows.values.tolist() == [["2024-01-01", "USD -1,000.00", "contribution / withdrawal"],
                                     [date.today().isoformat(), "USD 1,100.00", "closing value"]]
    steps = math["Show the math: your return in RET"].dataframe[1].value
    assert steps.values.tolist() == [["2024-01-01", "2024-06-30", "10.00", "11.00", "0.00", "10.0000%"]]
    overall = math["Show the math: your overall return (USD)"].dataframe[0].value
    assert overall.values.tolist() == flows.values.tolist()


def test_my_portfolio_says_not_available_when_there_is_no_return_yet(db, world):
    at = open_app(db, world["investor"], "portfolio")  # contributed today, valued at cost: no rate to solve
    assert {m.label: m.value for m in at.metric}["Your return overall (USD, XIRR a year)"] == "n/a"
    returns = [df.value for df in at.dataframe if "Pool since inception (TWR)" in df.value.columns][0]
    assert returns.iloc[0]["Your return (XIRR a year)"] == "n/a"
