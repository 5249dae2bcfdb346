"""Running one job: claim it, do it, record the outcome, retry or give up.

Every job the relay dispatches runs through ``execute(outbox_id, job_id)``, on
RQ workers and in the embedded dispatcher alike. The claim and the outcome are
written to ``job_runs`` so that what a killed worker or a lost Redis dropped is
found and run again (see ``jobs.outbox.sweep_once``), and a job that already
finished is never started twice. Transient errors retry with exponential
backoff; after the last attempt the job's give-up hook runs (a payment is
failed and the manager told) and the error is kept for the Operations page.
"""
from __future__ import annotations

import contextvars
import hashlib
import importlib
import json
import logging
import os
import threading
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

from sqlalchemy import select, update

from core.db.models import JobRun, OutboxMessage, utcnow
from core.db.session import Database
from jobs.errors import is_transient
from jobs.settings import job_settings

log = logging.getLogger("pooldesk.jobs")


@dataclass(frozen=True)
class JobSpec:
    path: str
    fn: Callable[..., Any]
    on_give_up: Callable[..., Any] | None


_REGISTRY: dict[str, JobSpec] = {}
# The outbox row of the job running in this context: jobs derive their idempotency keys from it.
current_outbox_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("current_outbox_id", default=None)


def run_key(*parts: object) -> str:
    """A key that is the same each time this job runs with these parts (from its outbox id when it has one)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]
    outbox_id = current_outbox_id.get()
    return f"outbox:{outbox_id}:{digest}" if outbox_id is not None else f"direct:{digest}"


def job(fn: Callable | None = None, *, on_give_up: Callable | None = None):
    """Register a function as a job that outbox rows may name (nothing else can be run)."""
    def register(f: Callable) -> Callable:
        path = f"{f.__module__}.{f.__name__}"
        _REGISTRY[path] = JobSpec(path, f, on_give_up)
        return f

    return register(fn) if fn is not None else register


def resolve(path: str) -> JobSpec:
    if not path.startswith("jobs.") or path.count(".") < 2:
        raise LookupError(f"{path!r} is not a Pooldesk job")
    if path not in _REGISTRY:
        importlib.import_module(path.rsplit(".", 1)[0])
    try:
        return _REGISTRY[path]
    except KeyError:
        raise LookupError(f"{path!r} is not a registered job") from None


_databases: dict[tuple[int, str], Database] = {}
_db_lock = threading.Lock()


def database() -> Database:
    """The worker's database, created in the process that uses it (never inherited across a fork).

    Each process gets its own connection pool (a job opens many short sessions: a pool
    makes a payout batch about twice as fast as a connection per session). A forked
    child forgets the pools it inherited without closing their sockets (see
    ``_forget_inherited``), so the parent's connections are never shared.
    """
    from core.config import get_settings

    key = (os.getpid(), get_settings().effective_database_url)
    with _db_lock:
        db = _databases.get(key)
        if db is None:
            db = _databases[key] = Database(key[1])
        return db


def _forget_inherited() -> None:
    """In a forked child: drop the parent's pools without touching their connections."""
    global _db_lock
    _db_lock = threading.Lock()  # another thread of the parent may have held it at the fork
    for db in list(_databases.values()):
        db.engine.dispose(close=False)
    _databases.clear()


os.register_at_fork(after_in_child=_forget_inherited)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text[:2000]


def execute(outbox_id: int, job_id: str) -> str:
    """Run the job of outbox row ``outbox_id`` once; returns what happened (for logs and tests)."""
    from jobs.backend import get_backend

    settings = job_settings()
    db = database()
    now = utcnow()
    with db.transaction() as session:
        # The relay holds this row locked until it has committed the job_runs row.
        message = session.execute(select(OutboxMessage).where(OutboxMessage.id == outbox_id)
                                  .with_for_update()).scalar_one_or_none()
        run = session.execute(select(JobRun).where(JobRun.outbox_id == outbox_id).with_for_update()).scalar_one_or_none()
        if message is None or run is None:
            return "unknown"
        if run.status in ("done", "failed"):
            return "already " + run.status
        if run.status == "running" and run.lease_until > now and run.backend_job_id != job_id:
            return "running elsewhere"
        run.status = "running"
        run.attempts += 1
        run.backend_job_id = job_id
        run.started_at = now
        run.lease_until = now + timedelta(seconds=settings.job_lease_seconds)
        attempt, path, queue, payload = run.attempts, message.job, message.queue, dict(message.payload or {})
    token = current_outbox_id.set(outbox_id)
    keeper = LeaseKeeper(db, outbox_id, job_id, settings.job_lease_seconds)
    try:
        spec = resolve(path)
        with keeper:
            spec.fn(**payload)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, none is lost
        error = _error_text(exc)
        transient = is_transient(exc)
        if transient and attempt < settings.job_max_attempts:
            delay = settings.backoff(attempt)
            next_id = f"outbox-{outbox_id}-{attempt + 1}"
            _finish(db, outbox_id, "retrying", error, next_id, lease=delay + settings.job_queued_grace_seconds)
            log.warning("job %s (%s) attempt %s failed, retry in %.1fs: %s", outbox_id, path, attempt, delay, error)
            try:
                get_backend().enqueue(queue, next_id, outbox_id, delay=delay)
            except Exception:  # noqa: BLE001 - the sweeper re-dispatches it when the queue is back
                log.exception("could not schedule the retry of job %s", outbox_id)
            return "retrying"
        log.error("job %s (%s) failed for good after %s attempt(s): %s", outbox_id, path, attempt, error)
        if not transient:
            log.debug("%s", traceback.format_exc())
        spec = _REGISTRY.get(path)
        if spec is not None and spec.on_give_up is not None:
            try:
                spec.on_give_up(error=error, **payload)
            except Exception:  # noqa: BLE001
                log.exception("the give-up hook of job %s failed; it will be run again", outbox_id)
                _finish(db, outbox_id, "retrying", error, f"outbox-{outbox_id}-{attempt + 1}",
                        lease=settings.job_queued_grace_seconds)
                return "retrying"
        _finish(db, outbox_id, "failed", error, None)
        return "failed"
    finally:
        current_outbox_id.reset(token)
    _finish(db, outbox_id, "done", None, None)
    return "done"


class LeaseKeeper:
    """Extends a running job's lease while it runs, every quarter of the lease, from a thread.

    The lease is short (``JOB_LEASE_SECONDS``, 20 s): a job whose worker died (kill -9, a lost
    machine) stops being extended and the sweeper runs it again soon after, while a long job on a
    live worker keeps its lease for as long as it runs (RQ's job timeout bounds it).
    """

    def __init__(self, db: Database, outbox_id: int, job_id: str, lease_seconds: float):
        self.db, self.outbox_id, self.job_id, self.lease = db, outbox_id, job_id, lease_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.extended = 0

    def __enter__(self) -> "LeaseKeeper":
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.outbox_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.lease)

    def _run(self) -> None:
        interval = max(0.2, self.lease / 4)
        while not self._stop.wait(interval):
            try:
                with self.db.transaction() as session:
                    session.execute(update(JobRun).where(JobRun.outbox_id == self.outbox_id,
                                                         JobRun.backend_job_id == self.job_id,
                                                         JobRun.status == "running")
                                    .values(lease_until=utcnow() + timedelta(seconds=self.lease)))
                self.extended += 1
            except Exception as exc:  # noqa: BLE001 - the next beat tries again; the job goes on
                log.warning("could not extend the lease of job %s: %s", self.outbox_id, exc)


def _finish(db: Database, outbox_id: int, status: str, error: str | None, next_job_id: str | None,
            lease: float = 0.0) -> None:
    now = utcnow()
    with db.transaction() as session:
        run = session.execute(select(JobRun).where(JobRun.outbox_id == outbox_id).with_for_update()).scalar_one()
        if run.status == "done" and status != "done":
            return  # a twin finished it meanwhile
        run.status = status
        run.last_error = error if error is not None else (run.last_error if status != "done" else None)
        if next_job_id is not None:
            run.backend_job_id = next_job_id
        run.lease_until = now + timedelta(seconds=lease)
        if status in ("done", "failed"):
            run.finished_at = now
