"""The worker process: `pooldesk worker` (or `python -m jobs.worker`).

With Redis configured it runs an RQ worker (with the scheduler, which runs the
delayed retries) on the chosen queues, and the outbox relay in a separate
spawned process, so no thread and no database connection is inherited by the
forked work horses. The job modules are imported once, before forking; each job
opens its own connection (``jobs.runner.database``). Without Redis it runs the
embedded loop in the foreground: the same relay, jobs and retries as the app's
dispatcher thread.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

from jobs.settings import QUEUES

log = logging.getLogger("pooldesk.jobs")


def _preload() -> None:
    import jobs.notify  # noqa: F401
    import jobs.payments  # noqa: F401
    import jobs.payouts  # noqa: F401
    import jobs.webhooks  # noqa: F401


def _relay_process(parent_pid: int) -> None:
    """Relay and sweep until the worker that started this process is gone."""
    from jobs.backend import get_backend
    from jobs.outbox import relay_once, sweep_once
    from jobs.runner import database
    from jobs.settings import job_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    settings = job_settings()
    db, backend = database(), get_backend()
    last_sweep = 0.0
    while os.getppid() == parent_pid:
        moved = relay_once(db, backend)
        if time.monotonic() - last_sweep >= settings.sweep_interval_seconds:
            sweep_once(db, backend)
            last_sweep = time.monotonic()
        if not moved:
            time.sleep(settings.relay_interval_seconds)


def _queues_idle(backend, queues: list[str]) -> bool:
    depths = backend.depths()
    return all(depths[q]["queued"] == 0 and depths[q]["scheduled"] == 0 and depths[q]["running"] == 0
               for q in queues if q in depths)


def run_worker(queues: list[str] | None = None, *, burst: bool = False, name: str | None = None) -> int:
    """Run until stopped (or, with ``burst``, until there is nothing left to do). Returns an exit code."""
    from core.config import get_settings
    from jobs.backend import embedded_backend, get_backend
    from jobs.outbox import relay_once, sweep_once
    from jobs.runner import database

    queues = queues or list(QUEUES)
    unknown = [q for q in queues if q not in QUEUES]
    if unknown:
        raise SystemExit(f"Unknown queue(s): {', '.join(unknown)}; choose from {', '.join(QUEUES)}.")
    _preload()
    settings = get_settings()
    if not settings.redis_url:
        log.info("no POOLDESK_REDIS_URL: running the embedded dispatcher in the foreground")
        backend, db = embedded_backend(), database()
        if burst:
            backend.run_until_idle(db, timeout=24 * 3600)
            return 0
        from jobs.backend import _dispatch_forever

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            _dispatch_forever(stop)
        except KeyboardInterrupt:
            pass
        return 0

    from rq import Queue, Worker

    backend = get_backend()
    backend.redis.ping()
    rq_queues = [Queue(q, connection=backend.redis) for q in queues]
    worker = Worker(rq_queues, connection=backend.redis, name=name)
    if burst:
        db = database()
        while True:
            moved = relay_once(db, backend) + sweep_once(db, backend, force=True)
            worker.work(burst=True, with_scheduler=True, logging_level="WARNING")
            if not moved and _queues_idle(backend, queues) and not relay_once(db, backend):
                return 0
            time.sleep(0.2)
    relay = multiprocessing.get_context("spawn").Process(target=_relay_process, args=(os.getpid(),),
                                                         name="pooldesk-relay", daemon=True)
    relay.start()
    try:
        worker.work(with_scheduler=True, logging_level="INFO")
    finally:
        relay.terminate()
        relay.join(5)
    return 0


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m jobs.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--queues", default=",".join(QUEUES), help="comma-separated queues to work on")
    parser.add_argument("--burst", action="store_true", help="stop when there is nothing left to do")
    parser.add_argument("--name", default=None, help="worker name (shown on the Operations page)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    sys.exit(run_worker(queues, burst=args.burst, name=args.name))


if __name__ == "__main__":
    main()
