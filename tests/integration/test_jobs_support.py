"""Shared pieces of the background-job tests: a real SMTP server, worker processes, waiting.

(Named like a test module so it lives in the jobs area; it defines no tests.)
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import pytest

from jobs.settings import QUEUES

ROOT = Path(__file__).resolve().parents[2]
FAST = {
    "POOLDESK_SANDBOX_LATENCY_MS": "0",
    "POOLDESK_JOB_BACKOFF_SECONDS": "0.2",
    "POOLDESK_JOB_MAX_ATTEMPTS": "4",
    "POOLDESK_RELAY_INTERVAL_SECONDS": "0.1",
    "POOLDESK_SWEEP_INTERVAL_SECONDS": "0.5",
    "POOLDESK_JOB_QUEUED_GRACE_SECONDS": "2",
    "POOLDESK_JOB_LEASE_SECONDS": "30",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Inbox:
    """Messages received by the local SMTP server."""

    def __init__(self):
        self.messages: list = []
        self.lock = threading.Lock()
        self.refuse: bool | str = False  # True: 451 (try later); a text: that reply

    async def handle_DATA(self, server, session, envelope):
        if self.refuse:
            return self.refuse if isinstance(self.refuse, str) else "451 Try again later"
        msg = message_from_bytes(envelope.content, policy=default_policy)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 OK"

    def to(self, address: str) -> list:
        with self.lock:
            return [m for rcpts, m in self.messages if address in rcpts]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


@pytest.fixture
def smtp_server(monkeypatch):
    """A real SMTP server (aiosmtpd) on a free port; settings point at it."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("POOLDESK_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("POOLDESK_SMTP_PORT", str(port))
    monkeypatch.setenv("POOLDESK_SMTP_TLS", "none")
    monkeypatch.setenv("POOLDESK_SMTP_FROM", "pooldesk@example.com")
    _reset()
    inbox.port = port
    yield inbox
    controller.stop()


def _reset() -> None:
    from core.config import reset_settings_cache
    from jobs.settings import reset_job_settings

    reset_settings_cache()
    reset_job_settings()


@pytest.fixture
def fast_jobs(monkeypatch):
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    _reset()
    yield
    _reset()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class WorkerProcess:
    """`python -m jobs.worker` in its own process group, so kill -9 takes the relay with it."""

    def __init__(self, env: dict, queues: str = ",".join(QUEUES), log_path: Path | None = None):
        self.env, self.queues, self.log_path = env, queues, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "jobs.worker", "--queues", self.queues],
                                     cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def kill9(self) -> None:
        """SIGKILL the worker and every process it started (RQ puts its work horse in a session of its own)."""
        if self.proc and self.proc.poll() is None:
            for pid in [self.proc.pid, *descendants(self.proc.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            for pid in descendants(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k.startswith(("POOLDESK_", "PATH", "HOME", "LANG", "PYTHON"))}
    env.update(extra)
    return env


class Jobs:
    """Runs background work the way a deployment would, for one backend."""

    def __init__(self, kind: str, db, tmp_path: Path, redis_url: str | None):
        self.kind, self.db, self.tmp_path, self.redis_url = kind, db, tmp_path, redis_url
        self.workers: list[WorkerProcess] = []

    def start(self) -> "Jobs":
        if self.kind == "embedded":
            from jobs.backend import embedded_backend, start_embedded_dispatcher

            embedded_backend().clear()
            assert start_embedded_dispatcher() is not None
        else:
            self.start_worker()
        return self

    def start_worker(self, **extra_env) -> WorkerProcess:
        env = child_env(**extra_env)
        if self.kind == "rq":
            env["POOLDESK_REDIS_URL"] = self.redis_url
        else:
            env.pop("POOLDESK_REDIS_URL", None)
        worker = WorkerProcess(env, log_path=self.tmp_path / f"worker{len(self.workers)}.log").start()
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        from jobs.backend import embedded_backend, stop_embedded_dispatcher

        stop_embedded_dispatcher()
        embedded_backend().clear()
        for worker in self.workers:
            worker.stop()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp_path.glob("worker*.log")))


@pytest.fixture(params=["rq", "embedded"])
def jobs_running(request, db, tmp_path, fast_jobs, monkeypatch):
    """Background work running for real: RQ worker processes on Redis, or the embedded dispatcher thread."""
    redis_url = None
    if request.param == "rq":
        redis_url = request.getfixturevalue("redis_url")
    harness = Jobs(request.param, db, tmp_path, redis_url)
    yield harness
    harness.stop()
    if request.node.rep_call_failed if hasattr(request.node, "rep_call_failed") else False:
        print(harness.logs())


def make_investor(db, account: str = "4242424242424242", **kw):
    from core.services import users
    from tests.factories import make_user

    investor = make_user(db, "investor", **kw)
    users.update_profile(db, actor=investor, user_id=investor.id, expected_version=1, name=investor.name,
                         bank_account=account, phone=kw.get("phone"))
    return investor
