"""Engines and units of work.

``Database`` wraps one engine. ``db.transaction()`` is the unit of work: one
database transaction, committed on success and rolled back on any error. On
SQLite every write transaction starts with BEGIN IMMEDIATE so writers queue
instead of failing; on PostgreSQL services lock the rows they change.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

T = TypeVar("T")


def _make_engine(url: str, *, for_worker: bool = False) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):
            # Let SQLAlchemy, not pysqlite, decide when transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs: dict = {"pool_pre_ping": True}
    if for_worker:
        kwargs["poolclass"] = NullPool  # forked RQ work horses must not share pooled sockets
    else:
        kwargs.update(pool_size=10, max_overflow=20)
    return create_engine(url, **kwargs)


class Database:
    def __init__(self, url: str, *, for_worker: bool = False):
        self.url = url
        self._for_worker = for_worker
        self.engine = _make_engine(url, for_worker=for_worker)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @functools.cached_property
    def autocommit_engine(self) -> Engine:
        """For single-statement writes (the PostgreSQL posting function): autocommit and no pre-ping, so
        a posting costs its own round trips only. Callers retry a connection found dead on the first
        statement, which is a read."""
        kwargs: dict = {"isolation_level": "AUTOCOMMIT", "pool_pre_ping": False}
        kwargs.update({"poolclass": NullPool} if self._for_worker else {"pool_size": 10, "max_overflow": 20})
        return create_engine(self.url, **kwargs)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            with session.begin():
                yield session
        finally:
            session.close()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading. Closing (not rolling back) keeps loaded objects readable afterwards."""
        session = self._sessions()
        try:
            yield session
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
        if "autocommit_engine" in self.__dict__:
            self.autocommit_engine.dispose()


@functools.lru_cache(maxsize=8)
def database_for(url: str, for_worker: bool = False) -> Database:
    return Database(url, for_worker=for_worker)


def get_database(for_worker: bool = False) -> Database:
    from core.config import get_settings

    return database_for(get_settings().effective_database_url, for_worker)
