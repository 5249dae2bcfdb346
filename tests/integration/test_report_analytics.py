"""Pool report and analytics from the real ledger (services), on SQLite and PostgreSQL."""
from datetime import date
from decimal import Decimal

import pytest

from core.analytics import cache, metrics
from core.analytics.report import pool_report, pool_report_csv
from core.domain import returns
from core.domain.errors import PermissionDenied
from core.services import ledger, valuations
from tests.factories import make_pool, make_user

D = Decimal


def contribute(db, mgr, pool, investor, amount, day):
    ledger.record_contribution(db, actor=mgr, pool_id=pool.id, investor_id=investor.id, amount=amount, key=None,
                               effective_date=day, payment="received")


def value(db, mgr, pool, day, assets):
    valuations.record_valuation(db, actor=mgr, pool_id=pool.id, valuation_date=day, total_assets=assets, key=None)


@pytest.fixture
def example_4(db):
    """ACCOUNTING worked example 4: 1,000 units at 10.00; V 11,000 -> p 11; 5,500 buys 500; V 15,000 -> p 10."""
    cache.get_cache().clear()
    mgr = make_user(db, "manager")
    first, second = make_user(db, "investor", email="a@example.com"), make_user(db, "investor", email="b@example.com")
    pool = make_pool(db, mgr, code="EX4", inception=date(2024, 1, 1))
    contribute(db, mgr, pool, first, "10000.00", date(2024, 1, 1))
    value(db, mgr, pool, date(2024, 7, 1), "11000.00")
    contribute(db, mgr, pool, second, "5500.00", date(2024, 7, 1))
    value(db, mgr, pool, date(2024, 12, 31), "15000.00")
    return db, mgr, pool, first, second


def test_report_of_example_4_flows_do_not_move_twr(example_4):
    db, mgr, pool, first, second = example_4
    report = pool_report(db, actor=mgr, pool_code="EX4", as_of=date(2024, 12, 31))
    assert report["pool"] == {"code": "EX4", "currency": "USD", "as_of": "2024-12-31",
                              "units_outstanding": "1500.000000", "nav": "15000.00", "nav_per_unit": "10.000000",
                              "twr_since_inception": "0.0000000000"}
    a, b = report["investors"]
    assert (a["email"], a["units"], a["value"], a["contributed"], a["withdrawn"], a["distributions"]) == (
        "a@example.com", "1000.000000", "10000.00", "10000.00", "0.00", "0.00")
    assert a["xirr"] == "0.0000000000"  # a real zero: money back exactly, not "not available"
    assert (b["units"], b["value"]) == ("500.000000", "5000.00")
    assert b["xirr"] == format(returns.xirr([(date(2024, 7, 1), D("-5500")), (date(2024, 12, 31), D("5000"))]), "f")


def test_report_as_of_a_date_uses_only_what_happened_by_then(example_4):
    db, mgr, pool, first, second = example_4
    report = pool_report(db, actor=mgr, pool_code="EX4", as_of=date(2024, 7, 1))
    assert report["pool"]["twr_since_inception"] == "0.1000000000"
    assert report["pool"]["nav"] == "16500.00" and report["pool"]["units_outstanding"] == "1500.000000"
    early = pool_report(db, actor=mgr, pool_code="EX4", as_of=date(2024, 3, 1))
    assert early["pool"]["twr_since_inception"] is None
    assert [i["email"] for i in early["investors"]] == ["a@example.com"]
    assert early["investors"][0]["xirr"] == "0.0000000000"  # paid 10,000, worth 10,000 two months later


def test_analysts_get_investor_ids_and_other_roles_are_refused(example_4):
    db, mgr, pool, first, second = example_4
    analyst = make_user(db, "analyst")
    report = pool_report(db, actor=analyst, pool_code="EX4", as_of=date(2024, 12, 31))
    assert [set(i) for i in report["investors"]] == [{"investor_id", "units", "value", "contributed", "withdrawn",
                                                      "distributions", "xirr"}] * 2
    assert "a@example.com" not in pool_report_csv(db, actor=analyst, pool_code="EX4", as_of=date(2024, 12, 31))
    for role in ("investor", "manager"):
        with pytest.raises(PermissionDenied):
            pool_report(db, actor=make_user(db, role), pool_code="EX4")
    with pytest.raises(PermissionDenied):
        metrics.investor_summary(db, actor=second, investor_id=first.id)


def test_report_csv(example_4):
    db, mgr, *_ = example_4
    text = pool_report_csv(db, actor=mgr, pool_code="EX4", as_of=date(2024, 12, 31))
    assert text.splitlines()[:4] == [
        "code,currency,as_of,units_outstanding,nav,nav_per_unit,twr_since_inception",
        "EX4,USD,2024-12-31,1500.000000,15000.00,10.000000,0.0000000000", "",
        "email,units,value,contributed,withdrawn,distributions,xirr"]


def test_edge_cases_mid_period_join_near_full_withdrawal_and_distribution_after_leaving(db):
    cache.get_cache().clear()
    mgr = make_user(db, "manager")
    stayer, leaver, late = (make_user(db, "investor") for _ in range(3))
    pool = make_pool(db, mgr, code="EDGE", inception=date(2024, 1, 1))
    contribute(db, mgr, pool, stayer, "1000.00", date(2024, 1, 1))
    contribute(db, mgr, pool, leaver, "1000.00", date(2024, 1, 1))
    value(db, mgr, pool, date(2024, 3, 31), "2200.00")  # p 11
    contribute(db, mgr, pool, late, "1100.00", date(2024, 3, 31))  # joins mid-period: 100 units
    ledger.record_withdrawal(db, actor=mgr, pool_id=pool.id, investor_id=leaver.id, key=None, all_units=True,
                             effective_date=date(2024, 4, 2), payment="received")
    value(db, mgr, pool, date(2024, 6, 30), "2420.00")  # 200 units -> p 12.10
    valuations.declare_distribution(db, actor=mgr, pool_id=pool.id, record_date=date(2024, 7, 1), total="20.00",
                                    key=None)
    summary = {r["investor_id"]: r for r in metrics.positions(db, actor=mgr, pool_id=pool.id, as_of=date(2024, 7, 1))}
    assert summary[leaver.id]["units"] == D("0.000000") and summary[leaver.id]["distributions"] == D("0.00")
    assert summary[leaver.id]["withdrawn"] == D("1100.00") and summary[leaver.id]["value"] == D("0.00")
    assert summary[leaver.id]["xirr"] == returns.xirr([(date(2024, 1, 1), D(-1000)), (date(2024, 4, 2), D(1100))])
    assert summary[late.id]["distributions"] == D("10.00")
    assert summary[late.id]["xirr"] == returns.xirr([(date(2024, 3, 31), D(-1100)), (date(2024, 7, 1), D(10)),
                                                     (date(2024, 7, 1), D("1200.00"))])
    figures = metrics.pool_metrics(db, actor=mgr, pool_id=pool.id, as_of=date(2024, 7, 1))
    assert figures["nav_per_unit"] == D("12.000000")  # after the 0.10 distribution
    assert figures["top10_concentration"] == D("1.0000000000") and figures["holders"] == 2
    # TWR from the prices alone: 10 -> 11 -> 12.10, whoever came and went.
    assert figures["returns"]["since_inception"]["return"] == D("0.2100000000")


def test_a_new_valuation_changes_the_figures_on_the_next_call_and_an_unchanged_book_hits_the_cache(example_4,
                                                                                                     monkeypatch):
    db, mgr, pool, *_ = example_4
    from core.analytics import engine

    calls = []
    real = engine.compute
    monkeypatch.setattr(metrics, "compute", lambda *a, **k: calls.append(1) or real(*a, **k))
    as_of = date.today()
    before = metrics.pool_metrics(db, actor=mgr, pool_id=pool.id, as_of=as_of)
    again = metrics.pool_metrics(db, actor=mgr, pool_id=pool.id, as_of=as_of)
    assert again == before and len(calls) == 1
    value(db, mgr, pool, date(2025, 1, 31), "16500.00")
    after = metrics.pool_metrics(db, actor=mgr, pool_id=pool.id, as_of=as_of)
    assert len(calls) == 2
    assert after["nav_per_unit"] == D("11.000000") and before["nav_per_unit"] == D("10.000000")
    assert after["returns"]["since_inception"]["return"] == D("0.1000000000")


def test_the_cache_lives_in_redis_when_configured(example_4, redis_url, monkeypatch):
    db, mgr, pool, *_ = example_4
    import redis

    from core.config import reset_settings_cache

    monkeypatch.setenv("POOLDESK_REDIS_URL", redis_url)
    reset_settings_cache()
    metrics.pool_metrics(db, actor=mgr, pool_id=pool.id)
    keys = redis.Redis.from_url(redis_url).keys("pooldesk:analytics:*")
    assert len(keys) == 1
    hits = cache.stats["hits"]
    metrics.pool_metrics(db, actor=mgr, pool_id=pool.id)
    assert cache.stats["hits"] == hits + 1


def test_with_redis_down_the_figures_are_still_computed_and_cached_in_process(example_4, monkeypatch):
    db, mgr, pool, *_ = example_4
    from core.config import reset_settings_cache

    monkeypatch.setenv("POOLDESK_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    reset_settings_cache()
    first = metrics.pool_metrics(db, actor=mgr, pool_id=pool.id, as_of=date(2024, 12, 31))
    assert first["nav_per_unit"] == D("10.000000")
    hits = cache.stats["hits"]
    assert metrics.pool_metrics(db, actor=mgr, pool_id=pool.id, as_of=date(2024, 12, 31)) == first
    assert cache.stats["hits"] == hits + 1


def test_investor_summary_is_the_investors_own_subset(example_4):
    db, mgr, pool, first, second = example_4
    mine = metrics.investor_summary(db, actor=first, investor_id=first.id, as_of=date(2024, 12, 31))
    assert [p["code"] for p in mine["positions"]] == ["EX4"]
    assert mine["positions"][0]["value"] == D("10000.00") and mine["positions"][0]["gain"] == D("0.00")
    assert mine["totals"][0]["currency"] == "USD" and mine["totals"][0]["cost_basis"] == D("10000.00")
    with pytest.raises(PermissionDenied):
        metrics.compare_pools(db, actor=first)


def test_the_flows_shown_behind_each_xirr_are_the_ones_it_solves(db):
    """Show the math on My portfolio: per pool and overall per currency, exact, and the engine's XIRR of them."""
    cache.get_cache().clear()
    mgr = make_user(db, "manager")
    investor = make_user(db, "investor")
    usd_a = make_pool(db, mgr, code="FA", inception=date(2024, 1, 1))
    usd_b = make_pool(db, mgr, code="FB", inception=date(2024, 1, 1))
    eur = make_pool(db, mgr, code="FE", inception=date(2024, 1, 1), currency="EUR")
    contribute(db, mgr, usd_a, investor, "1000.00", date(2024, 1, 1))
    contribute(db, mgr, usd_b, investor, "500.00", date(2024, 1, 1))  # same date: netted with FA overall
    contribute(db, mgr, eur, investor, "2000.00", date(2024, 2, 1))
    value(db, mgr, usd_a, date(2024, 6, 30), "1200.00")  # p 12
    ledger.record_withdrawal(db, actor=mgr, pool_id=usd_a.id, investor_id=investor.id, key=None, amount="240.00",
                             effective_date=date(2024, 7, 1), payment="received")  # 20 units; 80 left = 960.00
    as_of = date(2024, 12, 31)
    per_pool, per_currency = metrics.investor_flows(db, actor=investor, investor_id=investor.id, as_of=as_of)
    assert per_pool[usd_a.id] == [(date(2024, 1, 1), D("-1000.00"), "contribution / withdrawal"),
                                  (date(2024, 7, 1), D("240.00"), "contribution / withdrawal"),
                                  (as_of, D("960.00"), "closing value")]
    assert per_pool[usd_b.id] == [(date(2024, 1, 1), D("-500.00"), "contribution / withdrawal"),
                                  (as_of, D("500.00"), "closing value")]
    assert per_currency["USD"] == [(date(2024, 1, 1), D("-1500.00"), "contribution / withdrawal"),
                                   (date(2024, 7, 1), D("240.00"), "contribution / withdrawal"),
                                   (as_of, D("1460.00"), "closing value")]
    assert per_currency["EUR"] == [(date(2024, 2, 1), D("-2000.00"), "contribution / withdrawal"),
                                   (as_of, D("2000.00"), "closing value")]
    for pool_id, flows in per_pool.items():  # the single-scope path shows the same
        assert metrics.xirr_flows(db, actor=investor, investor_id=investor.id, pool_id=pool_id, as_of=as_of) == flows
    assert metrics.xirr_flows(db, actor=investor, investor_id=investor.id, currency="USD", as_of=as_of) == \
        per_currency["USD"]
    summary = metrics.investor_summary(db, actor=investor, investor_id=investor.id, as_of=as_of)
    xirr_of = {r["pool_id"]: r["xirr"] for r in summary["positions"]}
    assert xirr_of[usd_a.id] == returns.xirr([(d, a) for d, a, _ in per_pool[usd_a.id]])
    assert xirr_of[usd_b.id] == D(0)  # the same money back: a rate of exactly 0, which is a solution
    assert {t["currency"]: t["xirr"] for t in summary["totals"]}["USD"] == \
        returns.xirr([(d, a) for d, a, _ in per_currency["USD"]])
    with pytest.raises(PermissionDenied):
        metrics.investor_flows(db, actor=make_user(db, "investor"), investor_id=investor.id)
    other_manager = make_user(db, "manager")
    with pytest.raises(PermissionDenied):
        metrics.investor_flows(db, actor=other_manager, investor_id=investor.id)
