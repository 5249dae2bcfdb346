"""Where dispatched jobs wait to run: Redis + RQ workers, or a thread in the app.

Both backends carry the same thing, a call of ``jobs.runner.execute(outbox_id,
job_id)``, so the job code, its retries and its bookkeeping are one code path.
With ``POOLDESK_REDIS_URL`` set, jobs go to RQ queues (payments, notifications,
webhooks) and ``pooldesk worker`` processes run them; delayed retries use RQ's
scheduler. Without it (the embedded default) ``start_embedded_dispatcher()``
starts one daemon thread per process that relays the outbox and runs the jobs,
delays included, from an in-memory queue; what is in memory when the process
stops is found again in ``job_runs`` by the sweeper.
"""
from __future__ import annotations

import functools
import heapq
import itertools
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Protocol

from jobs.settings import QUEUES, job_settings

log = logging.getLogger("pooldesk.jobs")
EXECUTE = "jobs.runner.execute"


class Backend(Protocol):
    name: str

    def enqueue(self, queue: str, job_id: str, outbox_id: int, delay: float = 0.0) -> bool:
        """Queue a run of the job; False if a job with this id is already queued (nothing added)."""

    def is_pending(self, job_id: str) -> bool:
        """Whether the job with this id is still waiting (queued or scheduled)."""

    def depths(self) -> dict[str, dict[str, int]]:
        ...

    def workers(self) -> list[dict]:
        ...


class RQBackend:
    name = "rq"

    def __init__(self, url: str):
        from redis import Redis

        self.url = url
        self.redis = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30)

    def queue(self, name: str):
        from rq import Queue

        return Queue(name, connection=self.redis)

    def enqueue(self, queue: str, job_id: str, outbox_id: int, delay: float = 0.0) -> bool:
        from rq.exceptions import DuplicateJobError

        settings = job_settings()
        options = dict(job_id=job_id, job_timeout=max(1, int(settings.job_timeout_seconds)), result_ttl=86400,
                       failure_ttl=7 * 86400, description=f"outbox {outbox_id}")
        q = self.queue(queue)
        try:
            if delay > 0:
                # A job id used before (a twin) must not be scheduled again.
                if self.redis.exists(f"rq:job:{job_id}"):
                    return False
                q.enqueue_in(timedelta(seconds=delay), EXECUTE, kwargs={"outbox_id": outbox_id, "job_id": job_id},
                             **options)
            else:
                q.enqueue_call(EXECUTE, kwargs={"outbox_id": outbox_id, "job_id": job_id}, unique=True,
                               timeout=options["job_timeout"], job_id=job_id, result_ttl=options["result_ttl"],
                               failure_ttl=options["failure_ttl"], description=options["description"])
        except DuplicateJobError:
            return False
        return True

    def is_pending(self, job_id: str) -> bool:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            return False
        return job.get_status() in ("queued", "scheduled", "deferred")

    def depths(self) -> dict[str, dict[str, int]]:
        from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

        out = {}
        for name in QUEUES:
            q = self.queue(name)
            out[name] = {
                "queued": q.count,
                "scheduled": ScheduledJobRegistry(queue=q).count,
                "running": StartedJobRegistry(queue=q).count,
                "failed": FailedJobRegistry(queue=q).count,
            }
        return out

    def workers(self) -> list[dict]:
        from rq import Worker

        rows = []
        for w in Worker.all(connection=self.redis):
            job = w.get_current_job_id()
            rows.append({"name": w.name, "state": str(getattr(w.get_state(), "value", w.get_state())),
                         "queues": ", ".join(w.queue_names()), "last_heartbeat": w.last_heartbeat,
                         "current_job": job or ""})
        return rows


class EmbeddedBackend:
    """An in-memory, delay-aware queue run by a thread of this process."""

    name = "embedded"

    def __init__(self):
        self._heap: list[tuple[float, int, str, str, int]] = []
        self._pending: set[str] = set()
        self._running: str | None = None
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self.last_beat: datetime | None = None

    def enqueue(self, queue: str, job_id: str, outbox_id: int, delay: float = 0.0) -> bool:
        with self._cond:
            if job_id in self._pending:
                return False
            self._pending.add(job_id)
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._seq), queue, job_id, outbox_id))
            self._cond.notify_all()
        return True

    def is_pending(self, job_id: str) -> bool:
        with self._cond:
            return job_id in self._pending

    def depths(self) -> dict[str, dict[str, int]]:
        now = time.monotonic()
        with self._cond:
            out = {name: {"queued": 0, "scheduled": 0, "running": 0, "failed": 0} for name in QUEUES}
            for due, _, queue, job_id, _ in self._heap:
                out.setdefault(queue, {"queued": 0, "scheduled": 0, "running": 0, "failed": 0})
                out[queue]["scheduled" if due > now else "queued"] += 1
            return out

    def workers(self) -> list[dict]:
        thread = _dispatcher["thread"]
        if thread is None or not thread.is_alive():
            return []
        return [{"name": f"embedded dispatcher ({thread.name})", "state": "busy" if self._running else "idle",
                 "queues": ", ".join(QUEUES), "last_heartbeat": self.last_beat, "current_job": self._running or ""}]

    def next_due(self) -> float | None:
        with self._cond:
            return self._heap[0][0] if self._heap else None

    def run_due(self, limit: int = 1000) -> int:
        """Run the jobs whose time has come (in this thread); returns how many ran."""
        from jobs.runner import execute

        ran = 0
        while ran < limit:
            with self._cond:
                if not self._heap or self._heap[0][0] > time.monotonic():
                    return ran
                _, _, _queue, job_id, outbox_id = heapq.heappop(self._heap)
                self._pending.discard(job_id)
                self._running = job_id
            try:
                execute(outbox_id, job_id)
            except Exception:  # noqa: BLE001 - the dispatcher must outlive any job
                log.exception("embedded job %s crashed", job_id)
            finally:
                self._running = None
            ran += 1
        return ran

    def wait(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait(timeout=max(0.0, seconds))

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()
            self._pending.clear()

    def run_until_idle(self, db, timeout: float = 30.0) -> None:
        """Relay and run until nothing is left to do, delayed retries included (tests, `worker --burst`)."""
        from jobs.outbox import relay_once, sweep_once

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            relayed = relay_once(db, self)
            ran = self.run_due()
            if relayed or ran:
                continue
            if sweep_once(db, self, force=True):
                continue
            due = self.next_due()
            if due is None:
                return
            self.wait(min(due - time.monotonic(), deadline - time.monotonic()))
        raise TimeoutError(f"background work still pending after {timeout}s")


@functools.lru_cache(maxsize=4)
def _rq_backend(url: str) -> RQBackend:
    return RQBackend(url)


_embedded = EmbeddedBackend()
_dispatcher: dict = {"thread": None, "stop": None}
_dispatcher_lock = threading.Lock()


def get_backend() -> Backend:
    from core.config import get_settings

    url = get_settings().redis_url
    return _rq_backend(url) if url else _embedded


def embedded_backend() -> EmbeddedBackend:
    return _embedded


def _dispatch_forever(stop: threading.Event) -> None:
    from jobs.outbox import relay_once, sweep_once
    from jobs.runner import database

    settings = job_settings()
    last_sweep = 0.0
    while not stop.is_set():
        try:
            db = database()
            relay_once(db, _embedded)
            if time.monotonic() - last_sweep >= settings.sweep_interval_seconds:
                sweep_once(db, _embedded)
                last_sweep = time.monotonic()
            _embedded.run_due()
            _embedded.last_beat = datetime.now(timezone.utc)
        except Exception:  # noqa: BLE001 - e.g. the database is briefly unavailable
            log.exception("embedded dispatcher loop failed; retrying")
            stop.wait(1.0)
        due = _embedded.next_due()
        wait = settings.relay_interval_seconds if due is None else min(settings.relay_interval_seconds,
                                                                         due - time.monotonic())
        if wait > 0:
            _embedded.wait(wait)


def start_embedded_dispatcher() -> threading.Thread | None:
    """Start the in-process dispatcher once per process (safe to call on every Streamlit rerun).

    Returns the thread, or None when Redis is configured (then `pooldesk worker` does the work).
    """
    from core.config import get_settings

    if get_settings().redis_url:
        return None
    with _dispatcher_lock:
        thread = _dispatcher["thread"]
        if thread is not None and thread.is_alive():
            return thread
        stop = threading.Event()
        thread = threading.Thread(target=_dispatch_forever, args=(stop,), name="pooldesk-dispatcher", daemon=True)
        _dispatcher.update(thread=thread, stop=stop)
        thread.start()
        return thread


def stop_embedded_dispatcher(timeout: float = 10.0) -> None:
    with _dispatcher_lock:
        thread, stop = _dispatcher["thread"], _dispatcher["stop"]
        _dispatcher.update(thread=None, stop=None)
    if thread is not None:
        stop.set()
        with _embedded._cond:
            _embedded._cond.notify_all()
        thread.join(timeout)
