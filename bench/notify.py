"""Benchmark: a distribution notice fanned out to N investors by email through 2 RQ workers.

    python -m bench.notify --investors 10000 --database-url postgresql+psycopg://postgres@127.0.0.1/pooldesk_bench_notify

Seeds one pool with N holders (bulk inserts, consistent journal), starts a local
SMTP server (aiosmtpd) and worker processes (`python -m jobs.worker`), declares a
distribution through the service and times until every investor's "declared"
email has arrived. The same declaration pays each holder's part through the
sandbox gateway (POOLDESK_SANDBOX_LATENCY_MS a call) in payout batches on the
same workers, each followed by a "paid" email: those are timed too. The last
line is JSON: delivered, duplicates, seconds, per_s (the declared notices), and
payouts_paid, payouts_twice, payout_seconds, paid_emails, paid_email_duplicates.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class CountingInbox:
    """Counts messages per recipient, the "declared" notices apart from the "paid" ones."""

    def __init__(self):
        self.per_recipient: collections.Counter = collections.Counter()
        self.paid_per_recipient: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        from email.parser import BytesHeaderParser

        subject = BytesHeaderParser().parsebytes(envelope.content).get("Subject", "")
        counter = self.paid_per_recipient if subject.endswith(" is paid") else self.per_recipient
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                counter[rcpt] += 1
        return "250 OK"

    def totals(self, paid: bool = False) -> tuple[int, int]:
        with self.lock:
            counter = self.paid_per_recipient if paid else self.per_recipient
            unique = len(counter)
            return unique, sum(counter.values()) - unique


def _seed(db, investors: int):
    """A pool with ``investors`` holders of 1.000000 unit each at 10.00, written in bulk."""
    from sqlalchemy import insert

    from core.db.models import JournalEntry, Pool, Position, User
    from core.services import pools
    from core.services.users import system_actor
    from tests.factories import make_pool, make_user

    manager = make_user(db, "manager", email="bench-manager@example.com")
    inception = date.today() - timedelta(days=30)
    pool = make_pool(db, manager, code="BENCH", inception=inception, name="Benchmark pool")
    system_actor(db)
    with db.transaction() as session:
        first = session.execute(insert(User).returning(User.id), [
            {"email": f"investor{n}@bench.example.com", "name": f"Investor {n}", "role": "investor", "status": "active",
             "failed_logins": 0, "version": 1} for n in range(investors)]).scalars().all()
        ids = list(first)
        session.execute(insert(Position), [
            {"pool_id": pool.id, "investor_id": uid, "units": Decimal(1), "contributed": Decimal(10),
             "withdrawn": Decimal(0), "distributions": Decimal(0), "reinvest_distributions": False,
             "opened_seq": n + 1, "version": 1} for n, uid in enumerate(ids)])
        legs = []
        for uid in ids:
            legs.append({"pool_id": pool.id, "account": "pool", "investor_id": None, "amount": Decimal(10),
                         "units": Decimal(-1), "effective_date": inception})
            legs.append({"pool_id": pool.id, "account": "investor", "investor_id": uid, "amount": Decimal(-10),
                         "units": Decimal(1), "effective_date": inception})
        session.execute(insert(JournalEntry), legs)
        row = session.get(Pool, pool.id)
        row.units_outstanding = Decimal(investors)
        row.total_assets = Decimal(10 * investors)
        row.nav_per_unit = Decimal(10)
        row.last_flow_date = inception
    del pools
    return manager, pool


def _unpaid(db) -> int:
    """Cash parts not paid yet (or not planned yet: -1)."""
    from sqlalchemy import func, select

    from core.db.models import DistributionPayout

    with db.read() as session:
        planned = session.scalar(select(func.count()).select_from(DistributionPayout))
        if not planned:
            return -1
        return session.scalar(select(func.count()).select_from(DistributionPayout)
                              .where(DistributionPayout.status != "paid"))


def _payouts(db) -> tuple[int, int, int]:
    """(parts paid, payouts the sandbox made beyond one per paid part, payout keys the gateway was asked for twice)."""
    from sqlalchemy import func, select

    from core.db.models import DistributionPayout, SandboxCharge

    with db.read() as session:
        paid = session.scalar(select(func.count()).select_from(DistributionPayout)
                              .where(DistributionPayout.status == "paid"))
        twice = session.scalar(select(func.count()).select_from(SandboxCharge)
                               .where(SandboxCharge.kind == "payout", SandboxCharge.calls > 1))
        keys = session.scalar(select(func.count()).select_from(SandboxCharge)
                              .where(SandboxCharge.kind == "payout", SandboxCharge.status == "succeeded"))
    return paid, max(0, keys - paid), twice


def main() -> None:
    from bench.common import fresh_database, parser

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--investors", type=int, default=10000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--redis-url", default=os.environ.get("POOLDESK_REDIS_URL") or "redis://127.0.0.1:6379/14")
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args()

    os.environ.setdefault("POOLDESK_BCRYPT_ROUNDS", "4")
    url = fresh_database(args.database_url)
    import redis
    from aiosmtpd.controller import Controller

    from core.config import reset_settings_cache
    from core.db.session import Database
    from core.services import valuations
    from tests.integration.test_jobs_support import free_port

    redis.Redis.from_url(args.redis_url).flushdb()
    inbox = CountingInbox()
    port = free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    env = dict(os.environ, POOLDESK_DATABASE_URL=url, POOLDESK_REDIS_URL=args.redis_url,
               POOLDESK_SMTP_HOST="127.0.0.1", POOLDESK_SMTP_PORT=str(port), POOLDESK_SMTP_TLS="none",
               POOLDESK_NOTIFY_BATCH_SIZE=str(args.batch_size), POOLDESK_RELAY_INTERVAL_SECONDS="0.1")
    os.environ.update({k: v for k, v in env.items() if k.startswith("POOLDESK_")})
    reset_settings_cache()
    db = Database(url)
    started = time.perf_counter()
    manager, pool = _seed(db, args.investors)
    seed_seconds = time.perf_counter() - started
    workers = [subprocess.Popen([sys.executable, "-m", "jobs.worker", "--name", f"bench-{n}"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
               for n in range(args.workers)]
    try:
        time.sleep(2.0)  # workers up and listening
        declare_started = time.perf_counter()
        valuations.declare_distribution(db, actor=manager, pool_id=pool.id, record_date=date.today(),
                                        total=Decimal(args.investors), key="bench-distribution")
        # The clock starts when the declaration (and its outbox row) is committed: from there on it is ours.
        started = time.perf_counter()
        declared = started - declare_started
        deadline = time.monotonic() + args.timeout
        seconds = payout_seconds = paid_mail_seconds = None
        while time.monotonic() < deadline:
            now = time.perf_counter() - started
            if seconds is None and inbox.totals()[0] >= args.investors:
                seconds = now
            if payout_seconds is None and _unpaid(db) == 0:
                payout_seconds = now
            if paid_mail_seconds is None and inbox.totals(paid=True)[0] >= args.investors:
                paid_mail_seconds = now
            if None not in (seconds, payout_seconds, paid_mail_seconds):
                break
            time.sleep(0.05)
        seconds = seconds if seconds is not None else time.perf_counter() - started
        time.sleep(2.0)  # let any duplicate arrive before counting
        delivered, duplicates = inbox.totals()
        paid_emails, paid_duplicates = inbox.totals(paid=True)
        payouts_paid, payouts_twice, repeat_calls = _payouts(db)
    finally:
        for proc in workers:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        smtp.stop()
        db.dispose()
    print(f"seeded {args.investors} holders in {seed_seconds:.1f}s; distribution declared in {declared:.2f}s; "
          f"database {url.split('@')[-1]}", file=sys.stderr)
    print(json.dumps({"investors": args.investors, "workers": args.workers, "batch_size": args.batch_size,
                      "delivered": delivered, "duplicates": duplicates, "seconds": round(seconds, 2),
                      "per_s": round(delivered / seconds, 1) if seconds else None,
                      "declare_seconds": round(declared, 2),
                      "seconds_including_declare": round(seconds + declared, 2),
                      "payouts_paid": payouts_paid, "payouts_twice": payouts_twice,
                      "payout_repeat_calls": repeat_calls,
                      "payout_seconds": round(payout_seconds, 2) if payout_seconds is not None else None,
                      "payouts_per_s": round(payouts_paid / payout_seconds, 1) if payout_seconds else None,
                      "paid_emails": paid_emails, "paid_email_duplicates": paid_duplicates,
                      "paid_email_seconds": round(paid_mail_seconds, 2) if paid_mail_seconds is not None else None,
                      "sandbox_latency_ms": int(os.environ.get("POOLDESK_SANDBOX_LATENCY_MS", "30"))}))


if __name__ == "__main__":
    main()
