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
"""
from __future__ import annotations

import os
import random
import tempfile
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


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--investors", type=int, default=10_000)
    args = p.parse_args()
    url = fresh_database(args.database_url)

    from sqlalchemy import text

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
        server_before = _server_cpu(url)
        client_before = time.process_time()
        started = time.perf_counter()
        with open(path, newline="") as handle:
            result = import_csv(db, actor=actor, pool_code=pool.code, source=handle)
        seconds = time.perf_counter() - started
        client_cpu = time.process_time() - client_before
        server_after = _server_cpu(url)
    problems = reconcile(db)
    emit({"benchmark": "importer", "database": db.engine.dialect.name, "rows": rows, "bytes": size,
          "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds), "contributions": result.contributions,
          "withdrawals": result.withdrawals, "valuations": result.valuations, "reconciled": not problems,
          "client_cpu_s": round(client_cpu, 2),
          "server_cpu_s": None if server_before is None or server_after is None
          else round(server_after - server_before, 2),
          "reference_s": None if reference is None else round(reference, 3), "target_rows_per_s": 100_000})


if __name__ == "__main__":
    main()
