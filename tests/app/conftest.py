"""AppTest helpers: open the app signed in as someone, on a given page, with clean Streamlit caches."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.factories import signed_in

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "app" / "main.py")


@pytest.fixture(autouse=True)
def _clean_streamlit(monkeypatch):
    monkeypatch.setenv("POOLDESK_APP_JOBS", "off")  # tests run the jobs themselves when they need them
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def open_app(db, actor=None, page: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    if actor is not None:  # signed in with both factors where the role needs two
        at.session_state["session_token"] = signed_in(db, actor)[1]
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(f"../pages/{page}.py")
        at.run()
    return at


def open_page_alone(page: str, actor) -> AppTest:
    """Run one page file directly (as a URL opened by the wrong role would), with the actor in session_state."""
    at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=60)
    at.session_state["actor"] = actor
    at.run()
    return at


_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")


def shown(markdown: str) -> str:
    """What a reader sees of Markdown written with app.components.format.md: the backslash escapes and the
    invisible word joiners gone."""
    return _ESCAPED.sub(r"\1", str(markdown)).replace("\u2060", "")


def button(at: AppTest, label: str):
    for candidate in at.button:
        if shown(candidate.label) == label:
            return candidate
    raise AssertionError(f"no button {label!r}; have {[shown(b.label) for b in at.button]}")


def texts(at: AppTest) -> str:
    parts = [e.value for e in at.markdown] + [e.value for e in at.caption] + [e.value for e in at.info]
    parts += [e.value for e in at.success] + [e.value for e in at.error] + [e.value for e in at.warning]
    parts += [str(m.value) for m in at.metric] + [m.label for m in at.metric]
    return "\n".join(shown(p) for p in parts)


def errors(at: AppTest) -> list[str]:
    return [shown(e.value) for e in at.error]


def toasts(at: AppTest) -> list[str]:
    return [shown(t.value) for t in at.toast]


def table_text(at: AppTest) -> str:
    return "\n".join(df.value.to_csv(index=False) for df in at.dataframe)
