"""CSV import rate: `python -m bench.importer --rows 1000000 [--database-url URL]`.

Writes a CSV of contributions, withdrawals, weekly valuations and a few
distributions for one pool and 10,000 investors, imports it with the same code as
`pooldesk import`, checks the books reconcile, and prints rows per second.
On a local PostgreSQL it also prints the CPU seconds the import cost this process
(``client_cpu_s``, every thread) and the database server (``server_cpu_s``, the
backends of this database, read from /proc; null when not readable): the import is
server-bound. The database is new, so the import is a first large load and goes in bulk
(docs/import.md).

The same work costs this machine's CPUs up to half as much again from one hour to the
next, so ``reference_s`` times a fixed piece of server work (a fixed query, best of
three) just before the import: compare runs by it.

Memory: ``rss_before_mb`` is this process's resident memory just before the import,
``peak_rss_mb`` its peak (the CSV is written a line at a time, so the peak is the
import's), ``import_bytes_per_row`` the difference per row.

``--reference`` takes the row-by-row reference replay instead of the columnar path (as a file
the columnar path does not take would: forward pricing, quoted fields).
``--probe`` posts a contribution to another pool every 0.2 s while the import runs and
prints the longest such posting took (``other_pool_max_wait_s``): how long a bulk load
holds up everyone else.
"""
from __future__ import annotations

import os
import random
import resource
import tempfile
import threading
import time
from datetime import date, timedelta

from bench.common import emit, fresh_database, parser


def write_csv(path: str, rows: int, investors: list[str], start: date, seed: int = 11) -> int:
    rng = random.Random(seed)
    days = (date.today() - start).days
    per_day = max(1, rows // days)
    written = 0
    holdings: dict[str, int] = {}
    assets = 0
    with open(path, "w", newline="") as out:
        out.write("date,type,investor,amount,units,note\n")
        day = start
        while written < rows and day <= date.today():
            if day.weekday() == 4 and assets > 0:
                assets = int(assets * rng.uniform(0.98, 1.025))
                out.write(f"{day.isoformat()},valuation,,{assets}.00,,\n")
                written += 1
            for _ in range(per_day):
                if written >= rows:
                    break
                email = investors[rng.randrange(len(investors))]
                if holdings.get(email, 0) > 2000 and rng.random() < 0.2:
                    amount = rng.randint(1, 500)
                    holdings[email] -= amount * 2
                    assets -= amount
                    out.write(f"{day.isoformat()},withdrawal,{email},{amount}.00,,\n")
                else:
                    amount = rng.choice([100, 250, 500, 1000, 2500])
                    holdings[email] = holdings.get(email, 0) + amount
                    assets += amount
                    out.write(f"{day.isoformat()},contribution,{email},{amount}.00,,monthly saving\n")
                written += 1
            day += timedelta(days=1)
    return written


def _server_cpu(url: str) -> float | None:
    """CPU seconds used so far by the live backends of this database (same machine only)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return None
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            pids = list(conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :d "
                                          "AND pid <> pg_backend_pid()"), {"d": parsed.database}).scalars())
        total = 0.0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total
    except OSError:
        return None
    finally:
        engine.dispose()


REFERENCE_QUERY = "SELECT count(*) FROM (SELECT g % 7 AS k FROM generate_series(1, 3000000) AS g ORDER BY k) AS s"


def _reference_seconds(db) -> float:
    """Best of three runs of a fixed sort on the server: how fast the machine is just now."""
    from sqlalchemy import text

    best = float("inf")
    with db.engine.connect() as conn:
        for _ in range(3):
            started = time.perf_counter()
            conn.execute(text(REFERENCE_QUERY)).scalar()
            best = min(best, time.perf_counter() - started)
    return best


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Probe(threading.Thread):
    """Posts a contribution to another pool every 0.2 s and keeps how long each took."""

    def __init__(self, db, actor, pool_id: int, investor_id: int, day: date):
        super().__init__(daemon=True)
        self.db, self.actor, self.pool_id, self.investor_id, self.day = db, actor, pool_id, investor_id, day
        self.stop = threading.Event()
        self.waits: list[float] = []

    def run(self) -> None:
        from core.services import ledger

        while not self.stop.is_set():
            started = time.perf_counter()
            ledger.record_contribution(self.db, actor=self.actor, pool_id=self.pool_id, investor_id=self.investor_id,
                                       amount="10.00", key=None, effective_date=self.day, payment="received")
            self.waits.append(time.perf_counter() - started)
            self.stop.wait(0.2)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--investors", type=int, default=10_000)
    p.add_argument("--reference", action="store_true", help="the row-by-row reference replay only")
    p.add_argument("--probe", action="store_true", help="time postings to another pool during the import")
    args = p.parse_args()
    url = fresh_database(args.database_url)

    from sqlalchemy import select, text

    from core.db.models import User
    from core.db.session import Database
    from core.services import pools
    from core.services.importer import import_csv
    from core.services.reconcile import reconcile
    from core.services.users import system_actor

    db = Database(url)
    actor = system_actor(db)
    start = date.today() - timedelta(days=5 * 365)
    pool = pools.create_pool(db, actor=actor, code="BENCH", settings=pools.PoolSettings(name="Import benchmark"),
                             inception_date=start)
    if args.reference:
        from core.services import import_columns

        import_columns.import_columns = lambda *args, **kwargs: None  # the fast path steps aside
    emails = [f"investor{i}@bench.pooldesk.org" for i in range(args.investors)]
    with db.transaction() as session:
        session.add_all(User(email=e, name=f"Investor {i}", role="investor", status="active") for i, e in enumerate(emails))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "history.csv")
        rows = write_csv(path, args.rows, emails, start)
        size = os.path.getsize(path)
        reference = _reference_seconds(db) if db.engine.dialect.name == "postgresql" else None
        with db.read() as session:
            session.execute(text("SELECT 1"))  # the import's pooled connection is open before we count
        probe = None
        if args.probe:
            other = pools.create_pool(db, actor=actor, code="OTHER", settings=pools.PoolSettings(name="Another pool"),
                                      inception_date=start)
            with db.read() as session:
                investor_id = session.scalar(select(User.id).where(User.email == emails[0]))
            probe = _Probe(db, actor, other.id, investor_id, date.today())
            probe.start()
            time.sleep(1.0)  # a few unhindered postings first
        server_before = _server_cpu(url)
        client_before = time.process_time()
        rss_before = _rss_mb()
        started = time.perf_counter()
        with open(path, newline="") as handle:
            result = import_csv(db, actor=actor, pool_code=pool.code, source=handle)
        seconds = time.perf_counter() - started
        client_cpu = time.process_time() - client_before
        server_after = _server_cpu(url)
        peak_rss = _peak_rss_mb()
        if probe is not None:
            time.sleep(0.5)
            probe.stop.set()
            probe.join()
    problems = reconcile(db)
    emit({"benchmark": "importer", "database": db.engine.dialect.name, "rows": rows, "bytes": size,
          "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds), "contributions": result.contributions,
          "withdrawals": result.withdrawals, "valuations": result.valuations, "reconciled": not problems,
          "client_cpu_s": round(client_cpu, 2),
          "server_cpu_s": None if server_before is None or server_after is None
          else round(server_after - server_before, 2),
          "reference_s": None if reference is None else round(reference, 3), "target_rows_per_s": 100_000,
          "path": "reference" if args.reference else "columnar", "bulk": getattr(result, "bulk", None),
          "rss_before_mb": round(rss_before),
          "peak_rss_mb": round(peak_rss), "import_bytes_per_row": round((peak_rss - rss_before) * 2**20 / rows),
          "other_pool_max_wait_s": round(max(probe.waits), 2) if probe and probe.waits else None,
          "other_pool_postings": len(probe.waits) if probe else None})


if __name__ == "__main__":
    main()
