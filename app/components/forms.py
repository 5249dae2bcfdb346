"""Form helpers: one idempotency key per submission, and errors shown next to their field.

A form gets a key (a uuid) when it is first drawn; the key goes to the service with
the submission and is renewed only after a success, so a double click or a rerun
sends the same key again and the service replays the first result instead of
recording twice.
"""
from __future__ import annotations

import uuid

import streamlit as st

from app.components.format import md
from core.domain.errors import PooldeskError


def submission_key(form: str) -> str:
    name = f"idem:{form}"
    if name not in st.session_state:
        st.session_state[name] = uuid.uuid4().hex
    return st.session_state[name]


def renew_key(form: str) -> None:
    st.session_state[f"idem:{form}"] = uuid.uuid4().hex


class FieldErrors:
    """Placeholders under each input; ``show`` writes a service error under the field it names."""

    def __init__(self) -> None:
        self._slots: dict[str, st.delta_generator.DeltaGenerator] = {}

    def slot(self, field: str) -> None:
        self._slots[field] = st.empty()

    def general(self) -> None:
        self._slots["__general__"] = st.empty()

    def show(self, error: PooldeskError) -> None:
        """The message may quote what was typed, so it is shown as literal text."""
        target = self._slots.get(error.field or "") or self._slots.get("__general__")
        if target is None:
            st.error(md(error.message))
        else:
            target.error(md(error.message))


def flash(message: str, icon: str = "✅") -> None:
    """A toast that survives the rerun that follows a successful form. ``message`` is plain text (it often
    names a person or a pool): it is shown literally, never as Markdown."""
    st.session_state.setdefault("_flash", []).append((message, icon))


def show_flashes() -> None:
    for message, icon in st.session_state.pop("_flash", []):
        st.toast(md(message), icon=icon)
