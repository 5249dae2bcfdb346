"""AppTest: the Analytics page per role."""
from decimal import Decimal
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.analytics import cache
from tests.factories import make_user, make_valued_pool

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "analytics.py")


@pytest.fixture
def seeded(db):
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    cache.get_cache().clear()
    mgr, inv, pool = make_valued_pool(db, "PAGE1", investor_email="page-holder@example.com")
    return db, mgr, inv, pool


def run(actor):
    at = AppTest.from_file(PAGE, default_timeout=60)
    if actor is not None:
        at.session_state["actor"] = actor
    return at.run()


@pytest.mark.parametrize("role", ["admin", "analyst", "manager"])
def test_pool_readers_see_comparison_charts_and_the_math(seeded, role):
    db, mgr, inv, pool = seeded
    actor = mgr if role == "manager" else make_user(db, role)
    at = run(actor)
    assert not at.exception and not at.error
    assert at.title[0].value == "Analytics"
    comparison = at.dataframe[0].value
    # Exact numbers (so the columns sort as numbers), shown as percentages by the column's format
    assert list(comparison["Pool"]) == ["PAGE1"] and list(comparison["Since inception"]) == [Decimal("10.00")]
    assert list(comparison["NAV"]) == [Decimal("1100.00")]
    labels = [e.label for e in at.expander]
    assert "Show the math: TWR of PAGE1" in labels and "Holders of PAGE1 (by investor id)" in labels
    shown = [df.value for df in at.dataframe]
    assert any("NAV per unit" in df.columns and list(df["NAV per unit"]) == ["10.000000", "11.000000"] for df in shown)
    assert any("flow" in df.columns and "closing value" in list(df["flow"]) for df in shown)
    assert "page-holder@example.com" not in str([df.to_dict() for df in shown])


def test_export_shows_progress_and_offers_the_download(seeded):
    db, mgr, inv, pool = seeded
    at = run(make_user(db, "analyst"))
    at.selectbox(key="an_dataset").set_value("transactions")
    at.selectbox(key="an_format").set_value("parquet")
    at.button(key="an_prepare").click().run()
    assert not at.exception
    name, data, mime = at.session_state["an_file"][1], at.session_state["an_file"][0], at.session_state["an_file"][2]
    assert name.endswith(".parquet") and data[:4] == b"PAR1" and mime == "application/vnd.apache.parquet"


@pytest.mark.parametrize("role", ["investor", None])
def test_investors_and_visitors_are_refused(seeded, role):
    db, *_ = seeded
    at = run(make_user(db, role) if role else None)
    assert at.error and not at.dataframe


def test_the_math_is_shown_for_each_period_of_the_returns_table(seeded):
    db, mgr, inv, pool = seeded
    at = run(mgr)
    periods = at.selectbox(key=f"an_math_period_{pool.id}")
    assert periods.value == "mtd" and "since_inception" in periods.options
    periods.set_value("since_inception").run()
    expander = {e.label: e for e in at.expander}["Show the math: TWR of PAGE1"]
    assert "Over these points: 10.00%." in expander.markdown[0].value
    steps = expander.dataframe[1].value
    assert steps[["from", "to", "p start", "p end"]].values.tolist() == [["2024-01-01", "2024-06-30", "10.000000",
                                                                         "11.000000"]]


def test_the_pool_filter_applies_to_the_totals_and_the_comparison(seeded):
    db, mgr, inv, pool = seeded
    make_valued_pool(db, "PAGE2", valued_at="2200.00")
    at = run(make_user(db, "analyst"))
    assert list(at.dataframe[0].value["Pool"]) == ["PAGE1", "PAGE2"]
    assert {m.label: m.value for m in at.metric}["Total AUM (USD)"] == "3,300.00"
    at.multiselect(key="an_pools").unselect("PAGE1").run()
    assert list(at.dataframe[0].value["Pool"]) == ["PAGE2"]
    assert {m.label: m.value for m in at.metric}["Total AUM (USD)"] == "2,200.00"
    assert "Showing 1 of 2 pools." in [c.value for c in at.caption]
