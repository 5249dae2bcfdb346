"""Shared by the benchmarks: pick the database, create and migrate it, print JSON."""
from __future__ import annotations

import argparse
import json
import os
import sys

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--database-url", default=None,
                   help="SQLAlchemy URL (default: the configured database, POOLDESK_DATABASE_URL)")
    return p


def fresh_database(url: str | None, *, reset: bool = True) -> str:
    """Create (or empty) the database behind ``url`` and migrate it; returns the URL used."""
    from core.config import get_settings
    from core.db.migrate import migrate

    os.environ.setdefault("POOLDESK_BCRYPT_ROUNDS", "4")
    url = url or get_settings().effective_database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname=:n"), {"n": parsed.database}).scalar()
            if exists and reset:
                conn.execute(text(f'DROP DATABASE "{parsed.database}" WITH (FORCE)'))
                exists = False
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
        admin.dispose()
    elif reset and parsed.database and os.path.exists(parsed.database):
        os.remove(parsed.database)
    migrate(url)
    os.environ["POOLDESK_DATABASE_URL"] = url
    from core.config import reset_settings_cache

    reset_settings_cache()
    return url


def emit(result: dict) -> None:
    """The last line of every benchmark is one JSON object."""
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
