"""Distribution payouts through the sandbox gateway, on RQ worker processes and on the embedded dispatcher.

A manager declares a distribution through the valuations service; the background
machinery plans the cash parts, pays them in batches, tells each investor and
alerts the managers about what failed. The tests check what people notice: the
payout state per part, the money at the gateway (counted in its own books), the
emails in a real SMTP server and the in-app notifications.
"""
from __future__ import annotations

import time
from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from core.db.models import AuditEvent, DistributionPayout, JobRun, Notification, OutboxMessage, SandboxCharge
from core.domain.errors import NotFound, PermissionDenied, ValidationError
from core.services import ledger, operations, users, valuations
from jobs.backend import embedded_backend
from jobs.gateways import sandbox
from tests.factories import make_pool, make_user, system
from tests.integration.test_jobs_support import (  # noqa: F401 - fixtures
    fast_jobs, jobs_running, make_investor, smtp_server, wait_for,
)


@pytest.fixture
def small_batches(monkeypatch, fast_jobs):
    monkeypatch.setenv("POOLDESK_PAYOUT_BATCH_SIZE", "2")
    from jobs.settings import reset_job_settings

    reset_job_settings()


def _pool_with_holders(db, accounts_and_amounts, reinvest=()):
    """A pool whose investors contributed (money received) the given amounts at 10.00 a unit."""
    manager = make_user(db, "manager")
    pool = make_pool(db, manager)
    investors = []
    for n, (account, amount) in enumerate(accounts_and_amounts):
        investor = make_investor(db, account)
        ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount=amount,
                                   key=f"seed-{pool.id}-{n}", payment="received")
        if n in reinvest:
            ledger.set_reinvestment(db, actor=investor, pool_id=pool.id, investor_id=investor.id, reinvest=True)
        investors.append(investor)
    return manager, pool, investors


def _declare(db, manager, pool, total):
    return valuations.declare_distribution(db, actor=manager, pool_id=pool.id, record_date=date.today(), total=total,
                                           key=f"dist-{pool.id}-{total}")


def _payouts(db, distribution_id):
    with db.read() as session:
        return {p.investor_id: p for p in session.scalars(
            select(DistributionPayout).where(DistributionPayout.distribution_id == distribution_id))}


def _settled(db, distribution_id, expected_parts, timeout=60):
    def done():
        rows = _payouts(db, distribution_id)
        return len(rows) == expected_parts and all(p.status != "pending" for p in rows.values()) and rows

    return wait_for(done, timeout, what=f"{expected_parts} payouts of distribution {distribution_id} to finish")


def _payout_charges(db):
    with db.read() as session:
        return {c.idempotency_key: c for c in session.scalars(select(SandboxCharge)
                                                              .where(SandboxCharge.kind == "payout"))}


def _tx_ids(db, distribution_id):
    with db.read() as session:
        return {p.investor_id: p.transaction_id for p in session.scalars(
            select(DistributionPayout).where(DistributionPayout.distribution_id == distribution_id))}


def test_cash_parts_are_paid_once_reinvested_parts_are_not_and_a_decline_alerts_the_manager(
        db, jobs_running, smtp_server, small_batches):
    manager, pool, (paid_a, reinvests, declined, paid_b) = _pool_with_holders(
        db, [(sandbox.SUCCESS, "100.00"), (sandbox.SUCCESS, "200.00"), (sandbox.DECLINE, "300.00"),
             (sandbox.SUCCESS, "400.00")], reinvest=(1,))
    jobs_running.start()
    distribution = _declare(db, manager, pool, "100.00")
    rows = _settled(db, distribution.distribution_id, 3)

    assert reinvests.id not in rows  # reinvested in units, not paid out
    assert {inv.email: (rows[inv.id].status, rows[inv.id].amount, rows[inv.id].error)
            for inv in (paid_a, declined, paid_b)} == {
        paid_a.email: ("paid", Decimal("10.00"), None),
        declined.email: ("failed", Decimal("30.00"), "Your card was declined."),
        paid_b.email: ("paid", Decimal("40.00"), None),
    }
    charges = _payout_charges(db)
    assert sorted(charges) == sorted(f"pooldesk-tx-{rows[i.id].transaction_id}" for i in (paid_a, declined, paid_b))
    assert sorted((c.status, c.amount, c.calls) for c in charges.values()) == [
        ("declined", Decimal("30.00"), 1), ("succeeded", Decimal("10.00"), 1), ("succeeded", Decimal("40.00"), 1)]
    assert rows[paid_a.id].reference == f"sb_payout_{charges[f'pooldesk-tx-{rows[paid_a.id].transaction_id}'].id}"

    mail = wait_for(lambda: [m for m in smtp_server.to(paid_a.email) if m["Subject"].endswith("is paid")],
                    what="the payout email")
    assert [m["Subject"] for m in mail] == ["Your distribution of USD 10.00 from Test pool is paid"]
    assert "We paid you USD 10.00, your share of the distribution of Test pool" in \
        mail[0].get_body(("plain",)).get_content()
    wait_for(lambda: [m for m in smtp_server.to(paid_b.email) if m["Subject"].endswith("is paid")])
    alert = wait_for(lambda: [m for m in smtp_server.to(manager.email) if "payout" in m["Subject"]],
                     what="the manager's payout alert")
    assert [m["Subject"] for m in alert] == ["1 distribution payout failed in Test pool"]
    body = alert[0].get_body(("plain",)).get_content()
    assert (f"- {declined.name}: USD 30.00 (transaction #{rows[declined.id].transaction_id}). "
            "Reason: Your card was declined.") in body
    time.sleep(1.5)  # give any duplicate time to arrive, then count every message once more
    for person in (reinvests, declined):
        assert [m for m in smtp_server.to(person.email) if m["Subject"].endswith("is paid")] == []
    assert len([m for m in smtp_server.to(paid_a.email) if m["Subject"].endswith("is paid")]) == 1
    assert len([m for m in smtp_server.to(manager.email) if "payout" in m["Subject"]]) == 1
    told = wait_for(lambda: [m for m in smtp_server.to(declined.email) if m["Subject"].endswith("could not be paid")],
                    what="the investor's payout failure email")
    assert [m["Subject"] for m in told] == ["Your distribution of USD 30.00 from Test pool could not be paid"]
    assert "Reason: Your card was declined." in told[0].get_body(("plain",)).get_content()
    with db.read() as session:
        titles = session.scalars(select(Notification.title).where(Notification.user_id == paid_a.id,
                                                                  Notification.event == "distribution_paid")).all()
        batches = session.scalar(select(func.count()).select_from(OutboxMessage)
                                 .where(OutboxMessage.job == "jobs.payouts.pay_distribution_batch"))
    assert titles == ["Your distribution of USD 10.00 from Test pool is paid"]
    assert batches == 2  # 3 cash parts in batches of 2

    # The batch jobs run again (a redelivered job): nothing more is paid.
    from jobs.payouts import pay_distribution_batch

    assert pay_distribution_batch(distribution.distribution_id, list(_tx_ids(db, distribution.distribution_id)
                                                                     .values())) == {"paid": 0, "failed": 0,
                                                                                     "waiting": 0}
    assert {k: c.calls for k, c in _payout_charges(db).items()} == {k: 1 for k in charges}


def test_worker_killed_mid_payout_pays_each_part_exactly_once(db, jobs_running):
    """kill -9 while the gateway holds a payout call (money sent, answer not back); a new worker finishes."""
    manager, pool, (paused, other) = _pool_with_holders(db, [(sandbox.PAUSE, "100.00"), (sandbox.SUCCESS, "100.00")])
    distribution = _declare(db, manager, pool, "50.00")
    first = jobs_running.start_worker(POOLDESK_SANDBOX_PAUSE_SECONDS="60", POOLDESK_JOB_LEASE_SECONDS="3")
    wait_for(lambda: len([c for c in _payout_charges(db).values() if c.status == "succeeded"]) == 2, 30,
             what="the gateway to send both payouts")
    first.kill9()
    rows = _payouts(db, distribution.distribution_id)
    assert [p.status for p in rows.values()] == ["pending", "pending"]  # killed before we wrote it down
    jobs_running.start_worker(POOLDESK_SANDBOX_PAUSE_SECONDS="60", POOLDESK_JOB_LEASE_SECONDS="3")
    rows = _settled(db, distribution.distribution_id, 2)
    assert {inv.id: (rows[inv.id].status, rows[inv.id].amount) for inv in (paused, other)} == {
        paused.id: ("paid", Decimal("25.00")), other.id: ("paid", Decimal("25.00"))}
    charges = _payout_charges(db)
    assert sorted((c.idempotency_key, c.status, c.calls) for c in charges.values()) == sorted(
        (f"pooldesk-tx-{rows[i.id].transaction_id}", "succeeded", 1) for i in (paused, other))

    def batch_run():  # the job's record ends just after the parts it wrote down
        with db.read() as session:
            run = session.scalar(select(JobRun).where(JobRun.job == "jobs.payouts.pay_distribution_batch"))
        return run if run.status in ("done", "failed") else None

    run = wait_for(batch_run, 15, what="the payout batch job to end")
    assert (run.status, run.attempts) == ("done", 2)


def test_a_part_paid_at_the_gateway_but_not_written_down_is_found_not_paid_again(db, fast_jobs, smtp_server):
    from jobs.payouts import pay_distribution_batch

    manager, pool, (investor,) = _pool_with_holders(db, [(sandbox.SUCCESS, "100.00")])
    distribution = _declare(db, manager, pool, "12.34")
    embedded_backend().run_until_idle(db)
    [row] = _payouts(db, distribution.distribution_id).values()
    assert (row.status, row.amount) == ("paid", Decimal("12.34"))
    with db.transaction() as session:  # as if the worker died between the gateway's answer and our write
        session.get(DistributionPayout, row.id).status = "pending"
    assert pay_distribution_batch(distribution.distribution_id, [row.transaction_id])["paid"] == 1
    embedded_backend().run_until_idle(db)
    [(key, charge)] = _payout_charges(db).items()
    assert (key, charge.calls, charge.amount) == (f"pooldesk-tx-{row.transaction_id}", 1, Decimal("12.34"))
    assert [m["Subject"] for m in smtp_server.to(investor.email) if m["Subject"].endswith("is paid")] == [
        "Your distribution of USD 12.34 from Test pool is paid"]


def test_a_payout_that_keeps_failing_is_kept_as_failed_and_can_be_paid_again_once_fixed(db, fast_jobs, smtp_server):
    manager, pool, (broken, fine) = _pool_with_holders(db, [(sandbox.TRANSIENT_ALWAYS, "100.00"),
                                                            (sandbox.SUCCESS, "300.00")])
    distribution = _declare(db, manager, pool, "8.00")
    embedded_backend().run_until_idle(db)
    rows = _payouts(db, distribution.distribution_id)
    assert (rows[fine.id].status, rows[fine.id].amount, rows[fine.id].attempts) == ("paid", Decimal("6.00"), 1)
    failed = rows[broken.id]
    assert (failed.status, failed.amount, failed.attempts) == ("failed", Decimal("2.00"), 4)
    assert failed.error == ("The payment gateway could not complete the payout after several attempts "
                            "(The payment processor had a temporary error (sandbox); try again.).")
    key = f"pooldesk-tx-{failed.transaction_id}"
    assert _payout_charges(db)[key].calls == 4  # POOLDESK_JOB_MAX_ATTEMPTS, then given up
    alert = [m for m in smtp_server.to(manager.email) if "payout" in m["Subject"]]
    assert [m["Subject"] for m in alert] == ["1 distribution payout failed in Test pool"]
    assert "USD 2.00" in alert[0].get_body(("plain",)).get_content()

    admin = system(db)
    summary = operations.payout_summary(db, actor=manager, distribution_id=distribution.distribution_id)
    assert (summary.parts, summary.paid, summary.failed, summary.pending, summary.paid_amount,
            summary.failed_amount) == (2, 1, 1, 0, Decimal("6.00"), Decimal("2.00"))
    assert [s.distribution_id for s in operations.payout_summaries(db, actor=admin)] == [distribution.distribution_id]
    [view] = operations.distribution_payouts(db, actor=admin, distribution_id=distribution.distribution_id,
                                             status="failed")
    assert (view.investor_name, view.amount, view.error) == (broken.name, Decimal("2.00"), failed.error)
    assert operations.overview(db, actor=admin).payouts_failed == 1

    # The investor fixes the account; an administrator pays the failed part again.
    users.update_profile(db, actor=broken, user_id=broken.id, expected_version=2, name=broken.name,
                         bank_account=sandbox.SUCCESS)
    assert operations.retry_failed_payouts(db, actor=admin, distribution_id=distribution.distribution_id) == 1
    embedded_backend().run_until_idle(db)
    again = _payouts(db, distribution.distribution_id)[broken.id]
    assert (again.status, again.round, again.error) == ("paid", 1, None)
    charges = _payout_charges(db)
    assert (charges[key].status, charges[f"{key}-r1"].status) == ("error", "succeeded")
    assert [m["Subject"] for m in smtp_server.to(broken.email) if m["Subject"].endswith("is paid")] == [
        "Your distribution of USD 2.00 from Test pool is paid"]
    with pytest.raises(ValidationError, match="no failed payouts"):
        operations.retry_failed_payouts(db, actor=admin, distribution_id=distribution.distribution_id)
    with db.read() as session:
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.action.like("distribution.payout%"))
                                  .order_by(AuditEvent.id)).all()
    assert actions == ["distribution.payouts_planned", "distribution.payout_paid", "distribution.payout_failed",
                       "distribution.payouts_retry", "distribution.payout_paid"]


def test_payout_views_are_for_admins_and_the_pools_managers_only(db, fast_jobs):
    manager, pool, (investor,) = _pool_with_holders(db, [(sandbox.SUCCESS, "100.00")])
    distribution = _declare(db, manager, pool, "1.00")
    embedded_backend().run_until_idle(db)
    outsider = make_user(db, "manager")
    for who in (investor, outsider):
        with pytest.raises(PermissionDenied):
            operations.distribution_payouts(db, actor=who, distribution_id=distribution.distribution_id)
    with pytest.raises(PermissionDenied):
        operations.retry_failed_payouts(db, actor=manager, distribution_id=distribution.distribution_id)
    with pytest.raises(NotFound):
        operations.distribution_payouts(db, actor=manager, distribution_id=999999)
    with pytest.raises(ValidationError, match="pending, paid or failed"):
        operations.distribution_payouts(db, actor=manager, distribution_id=distribution.distribution_id,
                                        status="lost")
    [view] = operations.distribution_payouts(db, actor=manager, distribution_id=distribution.distribution_id)
    assert (view.status, view.amount, view.currency) == ("paid", Decimal("1.00"), "USD")
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)
                              .where(AuditEvent.action == "distribution.payouts_retry")) == 0


def test_everyone_reinvesting_means_no_payouts_and_planning_twice_plans_once(db, fast_jobs):
    from jobs.notify import dispatch_event

    manager, pool, investors = _pool_with_holders(db, [(sandbox.SUCCESS, "100.00"), (sandbox.SUCCESS, "100.00")],
                                                  reinvest=(0, 1))
    distribution = _declare(db, manager, pool, "10.00")
    embedded_backend().run_until_idle(db)
    assert _payouts(db, distribution.distribution_id) == {}
    assert _payout_charges(db) == {}

    manager2, pool2, _ = _pool_with_holders(db, [(sandbox.SUCCESS, "100.00")])
    second = _declare(db, manager2, pool2, "5.00")
    embedded_backend().run_until_idle(db)
    dispatch_event("distribution_declared", pool2.id, distribution_id=second.distribution_id)  # redelivered
    embedded_backend().run_until_idle(db)
    assert len(_payouts(db, second.distribution_id)) == 1
    assert len(_payout_charges(db)) == 1
