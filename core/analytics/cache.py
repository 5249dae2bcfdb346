"""Caching analytics results under the ledger version.

Every settled posting and every valuation bumps its pool's ``ledger_version``
(core.services.ledger.post_legs), and rows written in bulk (import, COPY) move
the tables' highest ids; together they make the cache version. A key contains
the version, so a change is seen on the next call and an unchanged book is never
recomputed; stale entries are simply never asked for again (Redis expires them,
the in-process cache evicts the least recently used).
"""
from __future__ import annotations

import hashlib
import logging
import pickle
import threading
from collections import OrderedDict
from typing import Any, Callable

from sqlalchemy import text

from core.config import get_settings
from core.db.session import Database

log = logging.getLogger(__name__)
TTL_SECONDS = 24 * 3600
_MEMORY_ENTRIES = 32


class MemoryCache:
    def __init__(self, entries: int = _MEMORY_ENTRIES):
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._entries = entries

    def get(self, key: str) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._entries:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class RedisCache:
    """Shared by every app process and worker. While Redis cannot be reached the figures are still
    computed and served, cached in this process meanwhile: a cache being down never fails a page."""

    def __init__(self, url: str):
        import redis

        self._client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        self._errors = (redis.exceptions.RedisError, OSError)
        self._fallback = MemoryCache()
        self._down = False

    def _unavailable(self, exc: BaseException) -> None:
        if not self._down:
            log.warning("the analytics cache in Redis is unavailable, caching in this process: %s", exc)
        self._down = True

    def get(self, key: str) -> Any | None:
        try:
            blob = self._client.get("pooldesk:analytics:" + key)
        except self._errors as exc:
            self._unavailable(exc)
            return self._fallback.get(key)
        self._down = False
        return None if blob is None else pickle.loads(blob)

    def set(self, key: str, value: Any) -> None:
        try:
            self._client.set("pooldesk:analytics:" + key, pickle.dumps(value, protocol=5), ex=TTL_SECONDS)
        except self._errors as exc:
            self._unavailable(exc)
            self._fallback.set(key, value)

    def clear(self) -> None:
        self._fallback.clear()
        try:
            for key in self._client.scan_iter("pooldesk:analytics:*"):
                self._client.delete(key)
        except self._errors as exc:
            self._unavailable(exc)


_memory = MemoryCache()
_redis: dict[str, RedisCache] = {}
stats = {"hits": 0, "misses": 0}


def get_cache() -> MemoryCache | RedisCache:
    url = get_settings().redis_url
    if not url:
        return _memory
    if url not in _redis:
        _redis[url] = RedisCache(url)
    return _redis[url]


def book_version(db: Database, pool_ids: list[int] | None = None) -> str:
    """A digest of every pool's ledger version and the newest journal, valuation and distribution ids."""
    where = "" if pool_ids is None else f" WHERE id IN ({', '.join(str(int(i)) for i in pool_ids) or 'NULL'})"
    with db.engine.connect() as conn:
        pools = conn.execute(text(f"SELECT id, ledger_version FROM pools{where} ORDER BY id")).fetchall()
        tops = conn.execute(text(
            "SELECT (SELECT max(id) FROM journal_entries), (SELECT max(id) FROM valuations), "
            "(SELECT max(id) FROM distributions), (SELECT count(*) FROM pools)")).one()
    digest = hashlib.sha256(repr((tuple(map(tuple, pools)), tuple(tops))).encode())
    return digest.hexdigest()[:32]


def cached(db: Database, parts: tuple, version: str, compute: Callable[[], Any]) -> Any:
    key = hashlib.sha256(repr((db.url, version, parts)).encode()).hexdigest()
    store = get_cache()
    value = store.get(key)
    if value is not None:
        stats["hits"] += 1
        return value
    stats["misses"] += 1
    value = compute()
    store.set(key, value)
    return value
