"""Tuning of the background work (retries, leases, batch sizes, sandbox behaviour).

Read from ``POOLDESK_*`` environment variables like the main settings, kept apart
so that the job machinery can be tuned (tests shorten every delay) without
touching the application's settings class.
"""
from __future__ import annotations

import functools
import time

from pydantic_settings import BaseSettings, SettingsConfigDict

# In a worker's order of preference: a worker takes from the first queue that has work, so bulk
# distribution payouts ("payouts") wait behind single payments, notices and webhooks.
QUEUES = ("payments", "notifications", "webhooks", "payouts")


class JobSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POOLDESK_", env_file=".env", extra="ignore")

    job_max_attempts: int = 5            # first try included
    job_backoff_seconds: float = 2.0     # delay before retry n is backoff * 2**(n-1)
    job_backoff_max_seconds: float = 600.0
    # A running job's lease: its worker extends it every quarter of it while the job runs, so a job whose
    # worker died (kill -9, lost machine) is run again once the lease ends and the sweeper next looks.
    job_lease_seconds: float = 20.0
    job_timeout_seconds: float = 120.0   # RQ stops a job running longer than this (it is then retried)
    worker_heartbeat_seconds: float = 5.0  # `pooldesk worker` writes its heartbeat key this often (TTL 3x)
    worker_reconnect_max_seconds: float = 30.0  # longest wait between tries to reach Redis again
    worker_ttl_seconds: int = 60         # RQ's own worker registration TTL (its idle heartbeat is TTL - 15 s)
    job_queued_grace_seconds: float = 60.0  # how long a queued job may wait before the sweeper checks on it
    relay_interval_seconds: float = 0.5
    sweep_interval_seconds: float = 5.0
    relay_batch: int = 500
    notify_batch_size: int = 200
    payout_batch_size: int = 50          # distribution parts per payout job
    payout_connections: int = 8          # gateway calls a payout job makes at once
    sandbox_latency_ms: int = 30
    sandbox_pause_seconds: float = 30.0
    webhook_timeout_seconds: float = 10.0
    smtp_timeout_seconds: float = 30.0
    payment_check_seconds: float = 900.0   # a payment the gateway reports as processing is asked about this often
    payment_confirm_hours: float = 72.0    # after this, an unconfirmed payment is cancelled where the gateway allows
    monthly_statements: bool = False       # the workers send last month's statements from the 1st, without cron

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, capped."""
        return min(self.job_backoff_max_seconds, self.job_backoff_seconds * (2 ** (attempt - 1)))


@functools.lru_cache(maxsize=1)
def job_settings() -> JobSettings:
    return JobSettings()


def reset_job_settings() -> None:
    job_settings.cache_clear()


class Throttle:
    """At most one run per interval in this process: the sweeper calls its tasks every few seconds,
    and some need to look far less often. ``reset()`` makes the next call due (tests)."""

    def __init__(self) -> None:
        self._last = float("-inf")

    def due(self, seconds: float) -> bool:
        now = time.monotonic()
        if now - self._last < seconds:
            return False
        self._last = now
        return True

    def reset(self) -> None:
        self._last = float("-inf")
