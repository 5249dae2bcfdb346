"""Form helpers: one idempotency key per submission, and errors shown next to their field.

A form gets a key (a uuid) when it is first drawn; the key goes to the service with
the submission and is renewed only after a success, so a double click or a rerun
sends the same key again and the service replays the first result instead of
recording twice.
"""
from __future__ import annotations

import uuid
from datetime import date

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


# Every date a person can type: st.date_input puts a date outside its range back to the default
# (today) without a word, so the range is left wide open and the service refuses, with a message
# naming the date and the bound, what the books cannot take (the future, before the pool's inception).
ANY_DAY_FROM, ANY_DAY_TO = date(1000, 1, 1), date(9999, 12, 31)


def date_field(label: str, *, key: str, value: date | None = None, help: str | None = None) -> date:
    """A date input that hands the service the date as typed (default today), never a replaced one."""
    return st.date_input(label, value=value or date.today(), min_value=ANY_DAY_FROM, max_value=ANY_DAY_TO,
                         key=key, help=help, format="YYYY-MM-DD")


def flash(message: str, icon: str = "✅") -> None:
    """A toast that survives the rerun that follows a successful form. ``message`` is plain text (it often
    names a person or a pool): it is shown literally, never as Markdown."""
    st.session_state.setdefault("_flash", []).append((message, icon))


def show_flashes() -> None:
    for message, icon in st.session_state.pop("_flash", []):
        st.toast(md(message), icon=icon)
