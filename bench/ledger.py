"""Posting throughput on one hot pool: `python -m bench.ledger --writers 8 --seconds 10`.

Each writer is a separate process (as app replicas and workers would be) that posts
settled contributions and withdrawals to the SAME pool through the ledger services,
each with its own idempotency key. Deadlock/serialization retries are counted. At
the end the books are reconciled. For scale, pgbench's tpcb-like script runs on the
same server with the same client count (scale 1: one branch row every client
updates, the same single-hot-row shape) and the ratio is printed. Both rates leave out
connecting: the writers connect, wait for each other, and the clock runs from the
first posting to the last.

A shared two-core machine is noisy: one run of each can differ by a third from the
next. So the two alternate for ``--rounds`` rounds (default 3), each round's ratio is
taken from its own pair of runs, and the printed figures are the medians; every round
is printed too (``rounds``). The invariants are checked once all rounds are done.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import re
import statistics
import subprocess
import time
import uuid
from datetime import date, timedelta

from sqlalchemy.engine import make_url

from bench.common import emit, fresh_database, parser


def _writer(url: str, pool_id: int, investor_ids: list[int], manager: tuple, seconds: float, seed: int, out,
            start) -> None:
    os.environ["POOLDESK_DATABASE_URL"] = url
    from core.db.session import Database
    from core.domain.errors import ValidationError
    from core.services import ledger
    from core.services.context import Actor

    db = Database(url)
    with db.autocommit_engine.connect():  # connected before the clock starts, as pgbench's clients are
        pass
    actor = Actor(*manager)
    rng = random.Random(seed)
    done = refused = 0
    start.wait()
    began = time.monotonic()
    deadline = began + seconds
    while time.monotonic() < deadline:
        investor = rng.choice(investor_ids)
        key = uuid.uuid4().hex
        try:
            if rng.random() < 0.75:
                ledger.record_contribution(db, actor=actor, pool_id=pool_id, investor_id=investor,
                                           amount=str(rng.randint(10, 500)), key=key, payment="received")
            else:
                ledger.record_withdrawal(db, actor=actor, pool_id=pool_id, investor_id=investor,
                                         amount=str(rng.randint(1, 50)), key=key, payment="received")
            done += 1
        except ValidationError:
            refused += 1  # e.g. a withdrawal larger than the holding: refused, nothing written
    ended = time.monotonic()
    db.dispose()
    from core.services.common import retry_stats

    out.put((done, refused, retry_stats["retries"], began, ended))


def _writers_round(url: str, pool_id: int, investor_ids: list[int], manager: tuple, args, seed: int):
    """One timed round of ``args.writers`` writer processes: (postings, refused, retries, seconds)."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start = ctx.Barrier(args.writers)
    workers = [ctx.Process(target=_writer, args=(url, pool_id, investor_ids, manager, args.seconds, seed + i, out,
                                                 start))
               for i in range(args.writers)]
    for w in workers:
        w.start()
    results = [out.get() for _ in workers]
    for w in workers:
        w.join()
    # From the first writer's first posting to the last writer's last one (pgbench, too, leaves out connecting).
    elapsed = max(r[4] for r in results) - min(r[3] for r in results)
    return sum(r[0] for r in results), sum(r[1] for r in results), sum(r[2] for r in results), elapsed


def run_pgbench(url: str, clients: int, seconds: int) -> float | None:
    """tpcb-like, scale 1, in its own database on the same server."""
    parsed = make_url(url)
    env = dict(os.environ, PGHOST=parsed.host or "127.0.0.1", PGPORT=str(parsed.port or 5432),
               PGUSER=parsed.username or "postgres")
    if parsed.password:
        env["PGPASSWORD"] = parsed.password
    database = "pooldesk_pgbench"
    subprocess.run(["dropdb", "--if-exists", database], env=env, check=False, capture_output=True)
    subprocess.run(["createdb", database], env=env, check=True, capture_output=True)
    subprocess.run(["pgbench", "-i", "-s", "1", "-q", database], env=env, check=True, capture_output=True)
    result = subprocess.run(["pgbench", "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), database],
                            env=env, check=True, capture_output=True, text=True)
    match = re.search(r"tps = ([0-9.]+)", result.stdout)
    subprocess.run(["dropdb", "--if-exists", database], env=env, check=False, capture_output=True)
    return float(match.group(1)) if match else None


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--investors", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3, help="alternate the two this many times; medians are printed")
    args = p.parse_args()
    url = fresh_database(args.database_url)

    from core.db.models import User
    from core.db.session import Database
    from core.services import ledger, pools
    from core.services.reconcile import reconcile
    from core.services.users import system_actor

    db = Database(url)
    admin = system_actor(db)
    with db.transaction() as session:
        manager = User(email="manager@bench.pooldesk.org", name="Bench manager", role="manager", status="active")
        session.add(manager)
        investors = [User(email=f"investor{i}@bench.pooldesk.org", name=f"Investor {i}", role="investor",
                          status="active") for i in range(args.investors)]
        session.add_all(investors)
        session.flush()
        manager_actor = (manager.id, "manager", manager.email, manager.name)
        investor_ids = [u.id for u in investors]
    pool = pools.create_pool(db, actor=admin, code="HOT", settings=pools.PoolSettings(name="Hot pool"),
                             inception_date=date.today() - timedelta(days=30), manager_ids=[manager_actor[0]])
    for investor in investor_ids:  # everyone starts with a holding so withdrawals mostly succeed
        ledger.record_contribution(db, actor=admin, pool_id=pool.id, investor_id=investor, amount="1000",
                                   key=f"seed-{investor}", payment="received")
    db.dispose()

    rounds = []
    for _ in range(max(1, args.rounds)):
        postings, refused, retries, elapsed = _writers_round(url, pool.id, investor_ids, manager_actor, args,
                                                             seed=len(rounds) * args.writers)
        pgbench_tps = run_pgbench(url, args.writers, int(args.seconds)) if db.is_postgres else None
        per_s = postings / elapsed
        rounds.append({"postings": postings, "refused": refused, "retries": retries, "seconds": round(elapsed, 2),
                       "postings_per_s": round(per_s, 1), "pgbench_tps": pgbench_tps,
                       "ratio": round(per_s / pgbench_tps, 3) if pgbench_tps else None})
    postings = sum(r["postings"] for r in rounds)

    db = Database(url)
    problems = reconcile(db)
    from sqlalchemy import func, select

    from core.db.models import IdempotencyKey, Position, Transaction
    with db.read() as session:
        settled = session.scalar(select(func.count()).select_from(Transaction).where(
            Transaction.status == "settled", Transaction.pool_id == pool.id)) - len(investor_ids)
        negative = session.scalar(select(func.count()).select_from(Position).where(Position.units < 0))
        keys = session.scalar(select(func.count()).select_from(IdempotencyKey))
    invariants_ok = not problems and negative == 0 and settled == postings and keys == postings + len(investor_ids)

    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
    pgbench = [r["pgbench_tps"] for r in rounds if r["pgbench_tps"] is not None]
    emit({"benchmark": "ledger", "database": db.engine.dialect.name, "writers": args.writers,
          "seconds": args.seconds, "postings": postings, "refused": sum(r["refused"] for r in rounds),
          "retries": sum(r["retries"] for r in rounds),
          "postings_per_s": statistics.median(r["postings_per_s"] for r in rounds),
          "pgbench_tps": statistics.median(pgbench) if pgbench else None,
          "ratio": statistics.median(ratios) if ratios else None, "rounds": rounds,
          "invariants_ok": invariants_ok, "reconcile_problems": problems[:5]})


if __name__ == "__main__":
    main()
