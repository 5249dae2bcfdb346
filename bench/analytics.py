"""Analytics benchmark: every pool's and investor's figures on a million transactions.

    python -m bench.analytics [--database-url URL]

Builds (once; reused when present) a PostgreSQL book of 100 pools, 10,000
investors, five years of daily valuations per pool and 1,000,000 transactions
(bench/analytics_data.py, COPY), then times the engine cold (from the database,
cache empty) and warm (cached), times the pandas reference (bench/pandas_reference.py)
on the same book, checks that both give the same numbers to the last digit, and
prints a JSON object as its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import date
from decimal import Decimal

from sqlalchemy import create_engine, text

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/pooldesk_bench_analytics"
AS_OF = date(2025, 12, 31)


def prepare(url: str, transactions: int, pools: int, investors: int) -> dict:
    from bench.analytics_data import generate
    from core.db.migrate import migrate

    name = url.rsplit("/", 1)[1]
    admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    migrate(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        have = conn.execute(text("SELECT count(*) FROM transactions")).scalar()
    if have >= transactions:
        engine.dispose()
        return {"reused": True, "transactions": have}
    with engine.begin() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"))]
        conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
        conn.execute(text("INSERT INTO audit_chain (id, last_id, head_hash) VALUES (1, 0, :h)"), {"h": "0" * 64})
    engine.dispose()
    started = time.perf_counter()
    made = generate(url.replace("postgresql+psycopg://", "postgresql://"), transactions=transactions,
                    pools=pools, investors=investors)
    made["generate_s"] = round(time.perf_counter() - started, 1)
    return {"reused": False, **made}


def compare(engine_results, reference: dict) -> list[str]:
    """Every figure both sides compute; returns the differences (empty when equal)."""
    diffs: list[str] = []

    def check(where: str, a, b) -> None:
        if a != b or type(a) is not type(b):
            diffs.append(f"{where}: engine {a!r} != reference {b!r}")

    for pool_id, ref in reference["pools"].items():
        got = engine_results.pools[pool_id]
        for period, (value, annualised) in ref["returns"].items():
            check(f"pool {pool_id} {period}", got["returns"][period]["return"], value)
            check(f"pool {pool_id} {period} annualised", got["returns"][period]["annualised"], annualised)
        for name in ("volatility", "sharpe", "units_outstanding", "nav", "nav_per_unit", "top10_concentration"):
            check(f"pool {pool_id} {name}", got[name], ref[name])
        check(f"pool {pool_id} fees", (got["fees"]["management"], got["fees"]["performance"]), ref["fees"])
        mdd = got["max_drawdown"]
        check(f"pool {pool_id} drawdown", None if mdd is None else
              (mdd["depth"], mdd["peak_date"], mdd["trough_date"], mdd["recovery_date"]), ref["max_drawdown"])
    positions = {(r["pool_id"], r["investor_id"]): r for r in engine_results.positions.to_pylist()}
    check("position count", len(positions), len(reference["positions"]))
    for key, ref in reference["positions"].items():
        got = positions.get(key)
        if got is None:
            diffs.append(f"position {key} missing")
            continue
        for name in ("units", "value", "contributed", "withdrawn", "distributions", "cost_basis", "gain"):
            check(f"position {key} {name}", got[name], ref[name])
        check(f"position {key} xirr", Decimal(got["xirr"]) if got["xirr"] else None, ref["xirr"])
    investors = {(r["investor_id"], r["currency"]): r for r in engine_results.investors.to_pylist()}
    check("investor count", len(investors), len(reference["investors"]))
    for key, ref in reference["investors"].items():
        got = investors[key]
        for name in ("value", "contributed", "withdrawn", "distributions"):
            check(f"investor {key} {name}", got[name], ref[name])
        check(f"investor {key} xirr", Decimal(got["xirr"]) if got["xirr"] else None, ref["xirr"])
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None, help="default: the configured database if it is "
                        f"PostgreSQL, else {DEFAULT_URL}")
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--investors", type=int, default=10_000)
    parser.add_argument("--warm-runs", type=int, default=5)
    parser.add_argument("--cold-runs", type=int, default=3, help="cold runs (cache emptied each time); median")
    parser.add_argument("--skip-pandas", action="store_true")
    args = parser.parse_args(argv)

    from core.config import get_settings

    url = args.database_url or (get_settings().database_url if get_settings().database_url.startswith("postgresql")
                                else DEFAULT_URL)
    setup = prepare(url, args.transactions, args.pools, args.investors)
    print(json.dumps({"setup": setup}), file=sys.stderr)

    from core.analytics import cache, metrics
    from core.db.session import Database
    from core.services.context import Actor

    db = Database(url)
    analyst = Actor(id=0, role="analyst", email="bench@pooldesk.invalid")
    cold_times = []
    for _ in range(max(1, args.cold_runs)):
        cache.get_cache().clear()
        started = time.perf_counter()
        cold = metrics.all_metrics(db, actor=analyst, as_of=AS_OF)
        cold_times.append(time.perf_counter() - started)
    cold_s = statistics.median(cold_times)
    warm_times = []
    for _ in range(args.warm_runs):
        started = time.perf_counter()
        warm = metrics.all_metrics(db, actor=analyst, as_of=AS_OF)
        warm_times.append(time.perf_counter() - started)
    assert warm is cold or get_settings().redis_url, "the warm call must come from the cache"
    warm_s = statistics.median(warm_times)

    pandas_s, equal, diffs = None, None, []
    if not args.skip_pandas:
        from bench.pandas_reference import compute as reference

        started = time.perf_counter()
        ref = reference(url, AS_OF, get_settings().risk_free_rate)
        pandas_s = time.perf_counter() - started
        diffs = compare(cold, ref)
        equal = not diffs
        for line in diffs[:20]:
            print(line, file=sys.stderr)
    db.dispose()
    result = {
        "cold_s": round(cold_s, 3), "warm_s": round(warm_s, 4),
        "pandas_s": round(pandas_s, 3) if pandas_s is not None else None,
        "ratio": round(pandas_s / cold_s, 1) if pandas_s is not None else None,
        "equal": equal, "differences": len(diffs),
        "pools": len(cold.pools), "positions": cold.positions.num_rows, "investor_rows": cold.investors.num_rows,
        "transactions": setup.get("transactions"),
        "cold_runs_s": [round(t, 3) for t in cold_times], "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(), "targets": {"cold_s": 5, "warm_s": 0.2, "ratio": 10},
    }
    print(json.dumps(result))
    return 0 if equal in (True, None) else 1


if __name__ == "__main__":
    raise SystemExit(main())
