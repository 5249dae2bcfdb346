"""Shared fixtures.

``db`` runs a test on SQLite and on PostgreSQL. Each PostgreSQL test starts from
empty tables (TRUNCATE) in a database migrated once per run; each SQLite test gets
a copy of a migrated file. Outside CI a missing PostgreSQL or Redis skips those
tests with a one-line reason; under CI=true it fails them.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("POOLDESK_BCRYPT_ROUNDS", "4")
os.environ.setdefault("POOLDESK_ENV", "test")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("POOLDESK_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
PG_DB = os.environ.get("POOLDESK_TEST_PG_DB", "pooldesk_test")
REDIS_URL = os.environ.get("POOLDESK_TEST_REDIS_URL", "redis://127.0.0.1:6379/" + os.environ.get("POOLDESK_TEST_REDIS_DB", "9"))


def missing(reason: str):
    """Skip outside CI, fail under CI: CI has every service."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must have it)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    from core.config import reset_settings_cache

    monkeypatch.setenv("POOLDESK_DATA_DIR", str(tmp_path / "data"))
    for name in ("POOLDESK_DATABASE_URL", "POOLDESK_REDIS_URL", "POOLDESK_SMTP_HOST"):
        monkeypatch.delenv(name, raising=False)
    reset_settings_cache()
    yield
    reset_settings_cache()


def pg_url(database: str = PG_DB) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


_pg_state: dict = {}


def _recreate_database(name: str) -> str | None:
    """Drop and create the database ``name``; what went wrong, if it could not be done."""
    from sqlalchemy import create_engine, text

    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:  # noqa: BLE001 - any connection problem means "no PostgreSQL"
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}"
    return None


def new_postgres_database(name: str) -> str:
    """A new, migrated database ``name`` (the browser tests' apps each have one); its URL."""
    from core.db.migrate import migrate

    if problem := _recreate_database(name):
        missing(problem)
    migrate(pg_url(name))
    return pg_url(name)


def _prepare_postgres() -> str:
    if "url" in _pg_state:
        return _pg_state["url"]
    if "error" in _pg_state:
        missing(_pg_state["error"])
    if problem := _recreate_database(PG_DB):
        _pg_state["error"] = problem  # later tests skip (or fail) at once
        missing(problem)
    from core.db.migrate import migrate

    migrate(pg_url())
    _pg_state["url"] = pg_url()
    return _pg_state["url"]


_sqlite_template: dict = {}


def _sqlite_copy(tmp_path: Path) -> str:
    if "path" not in _sqlite_template:
        from core.db.migrate import migrate

        template = Path(os.environ.get("PYTEST_TMPDIR_TEMPLATE", "/tmp")) / f"pooldesk-template-{uuid.uuid4().hex}.db"
        migrate(f"sqlite:///{template}")
        _sqlite_template["path"] = template
    target = tmp_path / "pooldesk.db"
    shutil.copy(_sqlite_template["path"], target)
    return f"sqlite:///{target}"


def reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname='public' AND tablename <> 'alembic_version'"))]
        conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
        conn.execute(text("INSERT INTO audit_chain (id, last_id, head_hash) VALUES (1, 0, :h)"), {"h": "0" * 64})
    engine.dispose()


def make_database(kind: str, tmp_path: Path):
    from core.db.session import Database

    if kind == "postgres":
        url = _prepare_postgres()
        reset_postgres(url)
    else:
        url = _sqlite_copy(tmp_path)
    return Database(url)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path, monkeypatch):
    """A fresh, migrated database: each test runs once on SQLite and once on PostgreSQL."""
    database = make_database(request.param, tmp_path)
    monkeypatch.setenv("POOLDESK_DATABASE_URL", database.url)
    from core.config import reset_settings_cache

    reset_settings_cache()
    yield database
    database.dispose()


@pytest.fixture
def pg_db(tmp_path, monkeypatch):
    """PostgreSQL only (concurrency, COPY, benchmarks)."""
    database = make_database("postgres", tmp_path)
    monkeypatch.setenv("POOLDESK_DATABASE_URL", database.url)
    from core.config import reset_settings_cache

    reset_settings_cache()
    yield database
    database.dispose()


@pytest.fixture
def redis_url():
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        missing(f"Redis not reachable at {REDIS_URL}: {type(exc).__name__}")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


def pytest_sessionfinish(session, exitstatus):
    path = _sqlite_template.get("path")
    if path and Path(path).exists():
        Path(path).unlink()
