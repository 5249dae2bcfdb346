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

import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone

from jobs.settings import QUEUES, job_settings

log = logging.getLogger("pooldesk.jobs")


def _preload() -> None:
    import jobs.notify  # noqa: F401
    import jobs.payments  # noqa: F401
    import jobs.payouts  # noqa: F401
    import jobs.webhooks  # noqa: F401


def _relay_process(parent_pid: int) -> None:
    """Relay and sweep until the worker that started this process is gone; an outage only pauses it."""
    from jobs.backend import get_backend
    from jobs.outbox import relay_once, sweep_once
    from jobs.runner import database
    from jobs.settings import job_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    settings = job_settings()
    db, backend = database(), get_backend()
    last_sweep = 0.0
    pause = 1.0
    while os.getppid() == parent_pid:
        try:
            moved = relay_once(db, backend)
            if time.monotonic() - last_sweep >= settings.sweep_interval_seconds:
                sweep_once(db, backend)
                last_sweep = time.monotonic()
            pause = 1.0
        except Exception as exc:  # noqa: BLE001 - e.g. the database is down: wait and try again
            log.warning("relay pass failed, trying again in %.0f s: %s", pause, exc)
            time.sleep(pause)
            pause = min(pause * 2, 30.0)
            continue
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

    from rq import Queue

    backend = get_backend()
    if burst:
        backend.redis.ping()
        worker = _worker_class()([Queue(q, connection=backend.redis) for q in queues], connection=backend.redis,
                                 name=name)
        db = database()
        while True:
            moved = relay_once(db, backend) + sweep_once(db, backend, force=True)
            worker.work(burst=True, with_scheduler=True, logging_level="WARNING")
            if not moved and _queues_idle(backend, queues) and not relay_once(db, backend):
                return 0
            time.sleep(0.2)
    return _serve(backend, queues, name or f"{socket.gethostname()}.{os.getpid()}")


def _worker_class():
    """RQ's worker, noting a stop request (SIGTERM, Ctrl+C) where the supervising loop sees it."""
    from rq import Worker

    class PooldeskWorker(Worker):
        stop_event: threading.Event | None = None

        def request_stop(self, signum, frame):
            if self.stop_event is not None:
                self.stop_event.set()
            super().request_stop(signum, frame)

    return PooldeskWorker


class _Supervisor:
    """What keeps `pooldesk worker` alive: the RQ loop again after a Redis outage, the relay process again
    after it died, and a heartbeat key in Redis that `pooldesk worker status` reads."""

    def __init__(self, backend, queues: list[str], name: str):
        from redis import Redis

        self.backend, self.queues, self.name = backend, queues, name
        self.stop = threading.Event()
        self.state = "starting"
        self.restarts = 0
        # Its own connection: the forked work horses never inherit a socket this thread may be using.
        self.redis = Redis.from_url(backend.url, socket_connect_timeout=2, socket_timeout=5)
        self.relay: multiprocessing.process.BaseProcess | None = None

    def start_relay(self) -> None:
        self.relay = multiprocessing.get_context("spawn").Process(target=_relay_process, args=(os.getpid(),),
                                                                  name="pooldesk-relay", daemon=True)
        self.relay.start()

    def beat_forever(self) -> None:
        settings = job_settings()
        while not self.stop.wait(settings.worker_heartbeat_seconds):
            self.beat()
            if self.relay is not None and not self.relay.is_alive() and not self.stop.is_set():
                log.warning("the relay process ended (exit code %s); starting it again", self.relay.exitcode)
                self.start_relay()

    def beat(self) -> bool:
        settings = job_settings()
        record = {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(), "state": self.state,
                  "queues": self.queues, "restarts": self.restarts,
                  "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            self.redis.set(heartbeat_key(self.name), json.dumps(record),
                           ex=max(1, math.ceil(settings.worker_heartbeat_seconds * 3)))
            return True
        except Exception:  # noqa: BLE001 - Redis is down: no heartbeat, and status says so
            return False

    def handle_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop.set())

    def wait_for_redis(self) -> bool:
        """Back off until Redis answers again; False if asked to stop meanwhile."""
        pause = 1.0
        while not self.stop.is_set():
            try:
                self.backend.redis.ping()
                return True
            except Exception as exc:  # noqa: BLE001
                log.error("Redis unreachable (%s); trying again in %.0f s", exc, pause)
            self.stop.wait(pause)
            pause = min(pause * 2, job_settings().worker_reconnect_max_seconds)
        return False


def heartbeat_key(name: str) -> str:
    return f"pooldesk:worker:{name}"


def _serve(backend, queues: list[str], name: str) -> int:
    """Run the RQ worker until SIGTERM/SIGINT; a Redis outage pauses it, never ends it."""
    from rq import Queue

    settings = job_settings()
    supervisor = _Supervisor(backend, queues, name)
    supervisor.handle_signals()
    supervisor.start_relay()
    beats = threading.Thread(target=supervisor.beat_forever, name="pooldesk-heartbeat", daemon=True)
    beats.start()
    pause = 1.0
    try:
        while not supervisor.stop.is_set():
            if not supervisor.wait_for_redis():
                break
            started = time.monotonic()
            worker = _worker_class()([Queue(q, connection=backend.redis) for q in queues],
                                     connection=backend.redis, name=name,
                                     worker_ttl=settings.worker_ttl_seconds)
            worker.stop_event = supervisor.stop
            try:
                _forget_previous_life(worker)
                supervisor.state = "working"
                supervisor.beat()
                worker.work(with_scheduler=True, logging_level="INFO")
            except Exception as exc:  # noqa: BLE001 - RQ gives up on a lost connection; we do not
                log.error("the RQ worker stopped: %s: %s", type(exc).__name__, exc)
            supervisor.handle_signals()  # RQ's handlers belong to the worker that just ended
            if supervisor.stop.is_set():
                break
            supervisor.state = "reconnecting"
            supervisor.restarts += 1
            # A loop that keeps ending at once (not an outage: something else) is retried ever more slowly.
            pause = 1.0 if time.monotonic() - started > 60 else min(pause * 2, settings.worker_reconnect_max_seconds)
            log.error("worker %s lost its connection to Redis; it reconnects and goes on in %.0f s (restart %s)",
                      name, pause, supervisor.restarts)
            supervisor.stop.wait(pause)
    finally:
        supervisor.stop.set()
        try:
            supervisor.redis.delete(heartbeat_key(name))
        except Exception:  # noqa: BLE001
            pass
        if supervisor.relay is not None:
            supervisor.relay.terminate()
            supervisor.relay.join(5)
    return 0


def _forget_previous_life(worker) -> None:
    """After a blip Redis may still hold this worker's registration without a death date: RQ would refuse
    a worker of the same name, so the earlier life is marked dead first."""
    if worker.connection.exists(worker.key) and not worker.connection.hexists(worker.key, "death"):
        worker.register_death()


def worker_status(name: str | None = None) -> tuple[int, list[dict]]:
    """(exit code, heartbeats): 0 when the named worker (or any) has a fresh heartbeat, 1 when not,
    2 when Redis cannot be asked (or is not configured)."""
    from redis import Redis

    from core.config import get_settings

    url = get_settings().redis_url
    if not url:
        return 2, []
    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        keys = [heartbeat_key(name)] if name else sorted(client.scan_iter(match=heartbeat_key("*"), count=500))
        found = [json.loads(raw) for raw in (client.mget(keys) if keys else []) if raw]
    except Exception:  # noqa: BLE001
        return 2, []
    finally:
        client.close()
    alive = [record for record in found if record.get("state") == "working"]
    return (0 if alive else 1), found


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
