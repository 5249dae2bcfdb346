"""AppTest: the Reports page per role."""
from datetime import date
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.analytics import cache
from tests.factories import make_user, make_valued_pool

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "reports.py")


@pytest.fixture
def seeded(db):
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    cache.get_cache().clear()
    mgr, inv, pool = make_valued_pool(db, "REP1")
    return db, mgr, inv, pool


def run(actor):
    at = AppTest.from_file(PAGE, default_timeout=60)
    if actor is not None:
        at.session_state["actor"] = actor
    return at.run()


def headings(at):
    return [h.value for h in at.subheader]


def test_investor_builds_their_own_statement_and_sees_no_factsheet(seeded):
    db, mgr, inv, pool = seeded
    at = run(inv)
    assert headings(at) == ["Investor statement (PDF)", "Exports"]
    at.button(key="rp_build_statement").click().run()
    assert not at.exception and not at.error
    assert at.session_state["rp_statement"][:5] == b"%PDF-"


def test_manager_builds_a_factsheet(seeded):
    db, mgr, inv, pool = seeded
    at = run(mgr)
    assert headings(at) == ["Investor statement (PDF)", "Pool factsheet (PDF)", "Exports"]
    at.button(key="rp_build_factsheet").click().run()
    assert not at.exception
    data, code = at.session_state["rp_factsheet"]
    assert code == "REP1" and data[:5] == b"%PDF-"


def test_analyst_gets_no_statements(seeded):
    db, *_ = seeded
    at = run(make_user(db, "analyst"))
    assert headings(at) == ["Pool factsheet (PDF)", "Exports"]


def test_admin_can_email_monthly_statements(seeded):
    db, *_ = seeded
    at = run(make_user(db, "admin"))
    assert "Monthly statements by email" in headings(at)
    at.date_input(key="rp_month").set_value(date(2024, 6, 15))
    at.button(key="rp_schedule").click().run()
    assert not at.exception
    assert at.success[0].value == "1 statement(s) queued for June 2024."


def test_visitors_are_refused(seeded):
    at = run(None)
    assert at.error and not at.button
