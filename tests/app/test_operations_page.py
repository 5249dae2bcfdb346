"""The Operations page: admins see the background work; everyone else is turned away."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.services import ledger, operations
from tests.factories import make_pool, make_user, system

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "operations.py")


@pytest.fixture(autouse=True)
def _clear_caches():
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


def _run(actor):
    at = AppTest.from_file(PAGE, default_timeout=30)
    if actor is not None:
        at.session_state["actor"] = actor
    return at.run()


@pytest.mark.parametrize("role", ["investor", "manager", "analyst", None])
def test_non_admins_are_refused(db, role):
    actor = make_user(db, role) if role else None
    at = _run(actor)
    assert [e.value for e in at.error] == ["Only administrators can open the Operations page."]
    assert not at.title


def test_admin_sees_backlog_queues_and_can_add_a_webhook(db):
    admin = make_user(db, "admin")
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager)
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="10.00", key="o-1")
    at = _run(admin)
    assert not at.exception
    assert at.title[0].value == "Operations"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Outbox backlog"] == "1"
    assert metrics["Failed jobs"] == "0"
    assert "No worker is running" in at.warning[0].value
    at.text_input[0].input("https://example.com/hooks")
    at.multiselect[0].select("contribution_settled")
    at.button[0].click()
    at.run()
    assert at.success[0].value.startswith("Endpoint added.")
    assert at.code[0].value.startswith("whsec_")
    [endpoint] = operations.list_endpoints(db, actor=system(db))
    assert (endpoint.url, endpoint.events) == ("https://example.com/hooks", ("contribution_settled",))


def test_admin_sees_failed_payouts_and_pays_them_again(db, monkeypatch):
    from datetime import date

    from core.services import users, valuations
    from jobs.backend import embedded_backend
    from jobs.gateways import sandbox
    from jobs.settings import reset_job_settings

    monkeypatch.setenv("POOLDESK_SANDBOX_LATENCY_MS", "0")
    reset_job_settings()
    admin = make_user(db, "admin")
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    users.update_profile(db, actor=investor, user_id=investor.id, expected_version=1, name=investor.name,
                         bank_account=sandbox.DECLINE)
    pool = make_pool(db, manager)
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                               key="o-2", payment="received")
    declared = valuations.declare_distribution(db, actor=manager, pool_id=pool.id, record_date=date.today(),
                                               total="7.50", key="o-d")
    embedded_backend().run_until_idle(db)
    at = _run(admin)
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Failed payouts"] == "1"
    summary = at.dataframe[1].value  # queues, then payouts
    assert list(summary["failed amount"]) == ["USD 7.50"] and list(summary["paid"]) == [0]
    [expander] = [e for e in at.expander if e.label.startswith(f"Distribution #{declared.distribution_id}")]
    assert list(expander.dataframe[0].value["error"]) == ["Your card was declined."]
    [repay] = [b for b in at.button if b.label == "Pay the failed parts again"]
    repay.click()
    at.run()
    assert "1 payout(s) queued again." in [s.value for s in at.success]
    [part] = operations.distribution_payouts(db, actor=admin, distribution_id=declared.distribution_id)
    assert (part.status, part.round) == ("pending", 1)


def test_admin_retries_a_failed_job_from_the_page(db):
    from sqlalchemy import select

    from core.db.models import JobRun
    from core.services.common import enqueue
    from jobs.backend import embedded_backend

    admin = make_user(db, "admin")
    with db.transaction() as session:  # a job that fails for good: its template does not exist
        enqueue(session, "notifications", "jobs.notify.send_direct", to_email="x@example.com", to_name="X",
                template="no_such_template", context={})
    embedded_backend().run_until_idle(db)
    at = _run(admin)
    assert {m.label: m.value for m in at.metric}["Failed jobs"] == "1"
    [job] = operations.failed_jobs(db, actor=admin)
    assert "no message template called 'no_such_template'" in job.error
    at.button(key=f"retry-{job.outbox_id}").click().run()
    assert f"Job #{job.outbox_id} queued again." in [s.value for s in at.success]
    with db.read() as session:
        run = session.scalar(select(JobRun).where(JobRun.outbox_id == job.outbox_id))
    assert (run.status, run.attempts) == ("queued", 0)
