"""Page benchmark: time to a fully rendered Overview, Pool detail and My portfolio.

    python -m bench.pages [--database-url URL] [--transactions 1000000] [--reuse]

Loads the demo book (``core.services.demo.seed_demo``, as ``pooldesk seed-demo``
does: 5 pools, 200 investors, 3 years) into the database unless --reuse finds it
there, then renders each page through Streamlit's AppTest (the whole script run:
session check, queries, formatting, elements). "cold" is a new browser session
with Streamlit's caches empty; "warm" is the same session rerun with the caches
filled (median of 5). Overview and Pool detail are timed for the demo manager,
My portfolio for the investor with the most transactions. Last line: JSON.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/pooldesk_bench_pages"
MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
TARGET_COLD_S, TARGET_WARM_S = 1.5, 0.3


def prepare(url: str, transactions: int, reuse: bool) -> dict:
    from bench.common import fresh_database

    if reuse:
        try:
            engine = create_engine(url)
            with engine.connect() as conn:
                have = conn.execute(text("SELECT count(*) FROM transactions")).scalar()
            engine.dispose()
            if have and have >= transactions * 0.9:
                return {"seeded": False, "transactions": int(have), "seed_s": None}
        except Exception:  # noqa: BLE001 - no database yet
            pass
    fresh_database(url)
    os.environ["POOLDESK_DATABASE_URL"] = url
    from core.config import reset_settings_cache
    from core.db.session import Database
    from core.services.demo import seed_demo
    from core.services.users import system_actor

    reset_settings_cache()
    db = Database(url)
    started = time.perf_counter()
    summary = seed_demo(db, actor=system_actor(db), pools=5, investors=200, transactions=transactions, years=3,
                        demo_logins=True)
    db.dispose()
    return {"seeded": True, "transactions": summary.transactions, "seed_s": round(time.perf_counter() - started, 1)}


def _people(url: str):
    from core.db.session import Database
    from core.services.context import Actor

    db = Database(url)
    with db.engine.connect() as conn:
        manager = conn.execute(text(
            "SELECT u.id, u.role, u.email, u.name FROM users u JOIN pool_managers m ON m.user_id = u.id "
            "WHERE u.role = 'manager' AND u.status = 'active' GROUP BY u.id ORDER BY count(*) DESC, u.id LIMIT 1")).one()
        investor = conn.execute(text(
            "SELECT u.id, u.role, u.email, u.name FROM users u JOIN transactions t ON t.investor_id = u.id "
            "WHERE u.role = 'investor' AND u.status = 'active' GROUP BY u.id ORDER BY count(*) DESC LIMIT 1")).one()
        investor_tx = conn.execute(text("SELECT count(*) FROM transactions WHERE investor_id = :i"),
                                   {"i": investor.id}).scalar()
    return db, Actor(*manager), Actor(*investor), int(investor_tx)


def _clear_caches() -> None:
    import streamlit as st

    from core.analytics import cache

    st.cache_data.clear()
    st.cache_resource.clear()
    cache.get_cache().clear()  # the analytics engine's results too (My portfolio's returns)


def time_page(db, actor, page: str | None, warm_runs: int = 5) -> dict:
    from streamlit.testing.v1 import AppTest

    from core.services import auth

    def session() -> AppTest:
        at = AppTest.from_file(MAIN, default_timeout=120)
        at.session_state["session_token"] = auth.create_session(db, actor=actor)
        return at

    if page is None:
        _clear_caches()
        at = session()
        started = time.perf_counter()
        at.run()
        cold = time.perf_counter() - started
    else:
        at = session()
        at.run()  # lands on Overview; the timed run is the switch to the page
        _clear_caches()
        at.switch_page(f"../pages/{page}.py")
        started = time.perf_counter()
        at.run()
        cold = time.perf_counter() - started
    if at.exception:
        raise RuntimeError(f"{page or 'overview'} failed: {at.exception[0].value}")
    title = [t.value for t in at.title]
    warm = []
    for _ in range(warm_runs):
        started = time.perf_counter()
        at.run()
        warm.append(time.perf_counter() - started)
    return {"cold_s": round(cold, 3), "warm_s": round(statistics.median(warm), 3), "title": title[0] if title else None}


def main(argv: list[str] | None = None) -> int:
    from bench.common import parser

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--transactions", type=int, default=20000)
    p.add_argument("--reuse", action="store_true", help="keep an already seeded database of about that size")
    args = p.parse_args(argv)
    url = args.database_url or DEFAULT_URL
    os.environ.setdefault("POOLDESK_BCRYPT_ROUNDS", "4")
    os.environ["POOLDESK_APP_JOBS"] = "off"  # measure the pages, not the job dispatcher
    os.environ["POOLDESK_DATABASE_URL"] = url
    from core.config import reset_settings_cache

    reset_settings_cache()
    data = prepare(url, args.transactions, args.reuse)
    reset_settings_cache()
    db, manager, investor, investor_tx = _people(url)
    import plotly.graph_objects  # noqa: F401 - imported once per server process, not per page view
    import streamlit.testing.v1  # noqa: F401

    time_page(db, manager, None, warm_runs=1)  # first script compile, outside the measurements
    pages = {
        "overview": time_page(db, manager, None),
        "pool_detail": time_page(db, manager, "pool_detail"),
        "portfolio": time_page(db, investor, "portfolio"),
    }
    for name, figures in pages.items():
        ok = figures["cold_s"] < TARGET_COLD_S and figures["warm_s"] < TARGET_WARM_S
        print(f"{name:<12} cold {figures['cold_s']:.3f} s  warm {figures['warm_s']:.3f} s  "
              f"({'within' if ok else 'OVER'} target {TARGET_COLD_S} / {TARGET_WARM_S} s)", file=sys.stderr)
        figures.pop("title")
    result = {"pages": pages, "data": {**data, "database": "postgresql" if url.startswith("postgresql") else "sqlite",
                                       "investor_transactions": investor_tx},
              "target": {"cold_s": TARGET_COLD_S, "warm_s": TARGET_WARM_S}}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
