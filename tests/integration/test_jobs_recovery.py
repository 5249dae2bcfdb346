"""Nothing lost, nothing done twice: a worker killed mid-payment, Redis down, relays racing."""
from __future__ import annotations

import threading
import time
from decimal import Decimal

from sqlalchemy import func, select

from core.db.models import JobRun, OutboxMessage, SandboxCharge, Transaction
from core.services import ledger
from jobs.gateways import sandbox
from tests.factories import make_pool, make_user
from tests.integration.test_jobs_support import (  # noqa: F401 - fixtures
    fast_jobs, free_port, jobs_running, make_investor, smtp_server, wait_for,
)


def _charge_count(db, key):
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(SandboxCharge)
                              .where(SandboxCharge.idempotency_key == key, SandboxCharge.status == "succeeded"))


def test_worker_killed_mid_payment_never_charges_twice_and_the_payment_settles(db, jobs_running):
    """kill -9 while the gateway holds the call (charge made, answer not yet back); a new worker finishes it."""
    manager = make_user(db, "manager")
    investor = make_investor(db, sandbox.PAUSE)
    pool = make_pool(db, manager)
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="700.00",
                                    key="k-1")
    key = f"pooldesk-tx-{tx.id}"
    # Both backends run in a worker process here (the embedded one with `python -m jobs.worker` without Redis).
    first = jobs_running.start_worker(POOLDESK_SANDBOX_PAUSE_SECONDS="60", POOLDESK_JOB_LEASE_SECONDS="3")
    wait_for(lambda: _charge_count(db, key) == 1, 30, what="the gateway to take the money")
    time.sleep(0.3)
    first.kill9()
    with db.read() as session:
        assert session.get(Transaction, tx.id).status == "pending"  # killed before the ledger heard of it
    jobs_running.start_worker(POOLDESK_SANDBOX_PAUSE_SECONDS="60", POOLDESK_JOB_LEASE_SECONDS="3")

    def settled():
        with db.read() as session:
            return session.get(Transaction, tx.id).status == "settled"

    wait_for(settled, 40, what="the new worker to settle the payment")
    assert _charge_count(db, key) == 1
    with db.read() as session:
        assert session.get(Transaction, tx.id).units == Decimal("70.000000")

    def job_ended():  # the job's record ends just after the settlement it wrote
        with db.read() as session:
            run = session.scalar(select(JobRun).where(JobRun.job == "jobs.payments.collect_contribution"))
        return run if run.status in ("done", "failed") else None

    run = wait_for(job_ended, 15, what="the payment job to end")
    assert (run.status, run.attempts) == ("done", 2)


def test_redis_down_loses_nothing_and_each_row_is_dispatched_once_when_it_is_back(db, redis_url, fast_jobs):
    from rq import Queue

    from jobs.backend import RQBackend
    from jobs.outbox import relay_once

    manager = make_user(db, "manager")
    investor = make_investor(db)
    pool = make_pool(db, manager)
    down = RQBackend(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    ids = []
    for n in range(5):
        ids.append(ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id,
                                              amount="100.00", key=f"r-{n}").id)
        assert relay_once(db, down) == 0
    with db.read() as session:
        rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    assert len(rows) == 5 and all(r.dispatched_at is None for r in rows)
    assert "ConnectionError" in rows[0].last_error and rows[0].attempts == 5

    up = RQBackend(redis_url)
    assert relay_once(db, up) == 5
    assert relay_once(db, up) == 0
    queue = Queue("payments", connection=up.redis)
    assert sorted(queue.job_ids) == sorted(f"outbox-{r.id}-1" for r in rows)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(JobRun)) == 5
        assert all(r.dispatched_at is not None for r in session.scalars(select(OutboxMessage)))


def test_two_relays_at_once_enqueue_each_row_once(db, redis_url, fast_jobs):
    from rq import Queue

    from jobs.backend import RQBackend
    from jobs.outbox import relay_once

    manager = make_user(db, "manager")
    investor = make_investor(db)
    pool = make_pool(db, manager)
    for n in range(40):
        ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="10.00",
                                   key=f"t-{n}")
    backends = [RQBackend(redis_url), RQBackend(redis_url)]
    counts = []
    barrier = threading.Barrier(2)

    def relay(backend):
        barrier.wait()
        total = 0
        while True:
            moved = relay_once(db, backend)
            if not moved:
                break
            total += moved
        counts.append(total)

    threads = [threading.Thread(target=relay, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 40
    assert Queue("payments", connection=backends[0].redis).count == 40


def test_a_job_lost_from_the_queue_is_found_and_run(db, redis_url, fast_jobs, tmp_path):
    """Redis flushed after dispatch (or the app restarted): the sweeper dispatches the job again."""
    import redis as redis_lib

    from jobs.backend import RQBackend
    from jobs.outbox import relay_once, sweep_once

    manager = make_user(db, "manager")
    investor = make_investor(db)
    pool = make_pool(db, manager)
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="20.00",
                                    key="lost")
    backend = RQBackend(redis_url)
    assert relay_once(db, backend) == 1
    redis_lib.Redis.from_url(redis_url).flushdb()
    assert sweep_once(db, backend) == 0  # still inside its grace period
    time.sleep(2.2)
    assert sweep_once(db, backend) == 1
    from jobs.runner import execute

    job_id = backend.queue("payments").job_ids[0]
    with db.read() as session:
        outbox_id = session.scalar(select(JobRun.outbox_id))
    assert execute(outbox_id, job_id) == "done"
    with db.read() as session:
        assert session.get(Transaction, tx.id).status == "settled"
    assert execute(outbox_id, job_id) == "already done"
