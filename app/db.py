"""The app's database handle and cached read models.

One ``Database`` (engine + connection pool) per process and URL, shared by every
session through ``st.cache_resource``. Read models from ``core.services.dashboard``
are cached with ``st.cache_data`` under the audit log's newest id: every write is
audited, so a cached figure is reused exactly until something changes.
"""
from __future__ import annotations

from dataclasses import astuple, replace
from typing import Any

import streamlit as st

from core.config import get_settings
from core.db.session import Database
from core.services import dashboard
from core.services.context import Actor


@st.cache_resource(show_spinner=False)
def _database_for(url: str) -> Database:
    return Database(url)


def get_db() -> Database:
    return _database_for(get_settings().effective_database_url)


@st.cache_data(ttl=600, max_entries=1000, show_spinner=False)
def _cached_read(url: str, name: str, marker: int, actor: tuple, kwargs: tuple) -> Any:
    return getattr(dashboard, name)(_database_for(url), actor=Actor(*actor), **dict(kwargs))


def read_model(name: str, actor: Actor, **kwargs: Any) -> Any:
    """``core.services.dashboard.<name>(db, actor=actor, **kwargs)``, cached until the next audited write."""
    db = get_db()
    return _cached_read(db.url, name, dashboard.change_marker(db), astuple(replace(actor, session_id=None)), tuple(sorted(kwargs.items())))
