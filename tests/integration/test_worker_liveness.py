"""Workers outlive a Redis blip, say whether they are alive, and a killed worker's job is run again soon.

Redis outages use a private redis-server on a free port started here (never the shared one).
"""
from __future__ import annotations

import subprocess
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from core.db.models import JobRun, Transaction
from core.services import ledger
from jobs.gateways import sandbox
from tests.factories import make_pool, make_user
from tests.integration.test_jobs_support import (  # noqa: F401 - fixtures
    child_env, fast_jobs, free_port, jobs_running, make_investor, wait_for, WorkerProcess,
)


class PrivateRedis:
    """A redis-server of this test's own, stopped and started again on the same port."""

    def __init__(self, tmp_path):
        self.port, self.dir = free_port(), tmp_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        import redis

        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)

        def answers():
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        wait_for(answers, 10, what="the private redis-server")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path).start()
    yield server
    server.stop()


def _status(*args) -> tuple[int, str]:
    from app.cli import cli

    result = CliRunner().invoke(cli, ["worker", "status", *args])
    return result.exit_code, result.output


def _settled(db, tx_id):
    with db.read() as session:
        return session.get(Transaction, tx_id).status == "settled"


def _job_run(db, job):
    """The job run of a payment job (by job name, or by the transaction it collects)."""
    with db.read() as session:
        if isinstance(job, int):
            runs = session.scalars(select(JobRun).where(JobRun.job == "jobs.payments.collect_contribution")).all()
            from core.db.models import OutboxMessage

            return next((r for r in runs
                         if (session.get(OutboxMessage, r.outbox_id).payload or {}).get("transaction_id") == job), None)
        return session.scalar(select(JobRun).where(JobRun.job == job))


def test_a_worker_outlives_a_redis_outage_and_runs_jobs_once_redis_is_back(db, fast_jobs, private_redis, tmp_path,
                                                                           monkeypatch):
    """Redis goes away while a payment is half-way (the job ends during the outage) and comes back empty."""
    from core.config import reset_settings_cache

    monkeypatch.setenv("POOLDESK_REDIS_URL", private_redis.url)
    monkeypatch.setenv("POOLDESK_WORKER_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("POOLDESK_SANDBOX_PAUSE_SECONDS", "3")
    reset_settings_cache()
    manager = make_user(db, "manager")
    pool = make_pool(db, manager)
    investor, slow = make_investor(db), make_investor(db, sandbox.PAUSE)
    worker = WorkerProcess(child_env(), log_path=tmp_path / "worker.log").start()
    log = tmp_path / "worker.log"
    try:
        first = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id,
                                           amount="100.00", key="before")
        wait_for(lambda: _settled(db, first.id), 30, what="a payment before the outage")
        during = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=slow.id,
                                            amount="150.00", key="during")
        wait_for(lambda: (_job_run(db, during.id) or JobRun()).status == "running", 30, what="the slow payment")

        private_redis.stop()  # the job finishes while Redis is away; RQ cannot report it
        time.sleep(8)
        assert worker.proc.poll() is None, log.read_text()

        private_redis.start()  # same port, empty: the worker must register again
        after = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id,
                                           amount="200.00", key="after")
        wait_for(lambda: _settled(db, after.id), 60, what="a payment after Redis came back")
        assert _settled(db, during.id)
        assert worker.proc.poll() is None, log.read_text()
        code, out = wait_for(lambda: (r := _status())[0] == 0 and r, 10, what="a heartbeat after the outage")
        assert ": working," in out and "reconnected 0 time(s)" not in out
        private_redis.stop()
        code, out = _status()
        assert code == 2 and "not reachable" in out
        private_redis.start()
    finally:
        worker.stop()
    assert _status()[0] == 1  # no heartbeat: nothing is alive


def test_status_says_when_no_worker_is_alive_and_when_redis_cannot_be_asked(private_redis, monkeypatch):
    from core.config import reset_settings_cache

    monkeypatch.setenv("POOLDESK_REDIS_URL", private_redis.url)
    reset_settings_cache()
    code, out = _status("--name", "nobody")
    assert code == 1 and "No live worker named nobody" in out
    private_redis.stop()
    code, out = _status()
    assert code == 2 and "not reachable" in out


def test_a_killed_workers_payment_is_run_again_within_30_seconds(db, redis_url, fast_jobs, tmp_path, monkeypatch):
    """kill -9 mid-job with the lease and sweep interval at their defaults: recovered well before 120 s."""
    for name in ("POOLDESK_JOB_LEASE_SECONDS", "POOLDESK_SWEEP_INTERVAL_SECONDS"):
        monkeypatch.delenv(name)
    manager = make_user(db, "manager")
    investor = make_investor(db, sandbox.PAUSE)
    pool = make_pool(db, manager)
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="700.00",
                                    key="k-1")
    env = child_env(POOLDESK_REDIS_URL=redis_url, POOLDESK_SANDBOX_PAUSE_SECONDS="600")
    first = WorkerProcess(env, log_path=tmp_path / "worker0.log").start()
    second = None
    try:
        wait_for(lambda: (_job_run(db, "jobs.payments.collect_contribution") or JobRun()).status == "running", 30,
                 what="the payment job to start")
        time.sleep(1)
        first.kill9()
        killed = time.monotonic()
        second = WorkerProcess(env, log_path=tmp_path / "worker1.log").start()
        wait_for(lambda: _settled(db, tx.id), 40, interval=0.2, what="the payment to be run again")
        recovered = time.monotonic() - killed
        print(f"recovered {recovered:.1f} s after kill -9")
        assert recovered < 30
    finally:
        first.kill9()
        if second:
            second.stop()
    run = wait_for(lambda: (r := _job_run(db, "jobs.payments.collect_contribution")).status == "done" and r, 15)
    assert run.attempts == 2


def test_a_long_job_on_a_live_worker_keeps_its_lease_and_runs_once(db, jobs_running, monkeypatch):
    """A job longer than the lease is not presumed dead while its worker lives (the worker extends the lease)."""
    from core.config import reset_settings_cache
    from jobs.settings import reset_job_settings

    monkeypatch.setenv("POOLDESK_JOB_LEASE_SECONDS", "2")
    monkeypatch.setenv("POOLDESK_SANDBOX_PAUSE_SECONDS", "6")
    reset_settings_cache()
    reset_job_settings()
    manager = make_user(db, "manager")
    investor = make_investor(db, sandbox.PAUSE)
    pool = make_pool(db, manager)
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="700.00",
                                    key="long")
    jobs_running.start()
    wait_for(lambda: _settled(db, tx.id), 40, what="the slow payment to settle")
    run = wait_for(lambda: (r := _job_run(db, "jobs.payments.collect_contribution")).status == "done" and r, 15)
    assert run.attempts == 1, jobs_running.logs()
    assert "was lost" not in jobs_running.logs()
