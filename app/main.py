"""The Streamlit entry point: sign-in gate, then the pages of the signed-in role.

Run with ``streamlit run app/main.py``. Every run checks the server-side session;
without one only the sign-in screen exists. With one, ``st.navigation`` lists the
role's pages from ``app.navigation``; the other pages are registered hidden, so their
URLs reach the page's own refusal (each page checks the role again).
"""
from __future__ import annotations

import os
from datetime import timedelta

import streamlit as st

from app import auth
from app.components.format import md
from app.components.forms import show_flashes
from app.db import get_db
from app.navigation import PAGES_DIR, existing_pages, pages_for
from core.config import ConfigurationError, get_settings
from core.services import notifications

st.set_page_config(page_title="Pooldesk", page_icon=":material/savings:", layout="wide")


@st.cache_resource(show_spinner=False)
def _start_background_jobs(url: str) -> str:
    """Once per process: without Redis, the embedded dispatcher runs the jobs in a thread."""
    if get_settings().redis_enabled:
        return "redis"
    if os.environ.get("POOLDESK_APP_JOBS", "on").lower() == "off":
        return "off"  # page tests drive the jobs themselves
    try:
        from jobs.backend import start_embedded_dispatcher
    except ImportError:
        return "none"
    start_embedded_dispatcher()
    return "embedded"


@st.fragment(run_every=timedelta(seconds=4))
def notification_bell(actor) -> None:
    """Unread count in the sidebar, and a toast for each new notification while the app is open."""
    db = get_db()
    if not auth.session_is_live(db):
        st.caption(auth.ENDED)
        return
    latest = notifications.latest_id(db, actor=actor)
    seen = st.session_state.setdefault("toast_seen_id", latest)
    if latest > seen:
        for item in reversed(notifications.inbox(db, actor=actor, unread_only=True, limit=5)):
            if item.id > seen:
                st.toast(md(item.title), icon=":material/notifications:")
        st.session_state["toast_seen_id"] = latest
    unread = notifications.unread_count(db, actor=actor)
    st.caption(f":material/notifications: {unread} unread notification{'s' if unread != 1 else ''}")


def main() -> None:
    try:
        get_settings()
    except ConfigurationError as exc:  # production refuses unsafe settings: say which, one line each
        for line in str(exc).splitlines():
            st.error(line)
        st.stop()
    db = get_db()
    _start_background_jobs(db.url)
    actor = auth.current_actor(db) or auth.actor_from_cookie(db) or auth.sign_in_with_sso(db)
    if actor is None:
        st.navigation([st.Page(PAGES_DIR / "sign_in.py", title="Sign in", icon=":material/login:",
                               url_path="sign-in", default=True)], position="hidden").run()
        return
    auth.store_cookie(db)
    specs = pages_for(actor.role)
    pages = [st.Page(spec.path, title=spec.title, icon=spec.icon, url_path=spec.url_path, default=(i == 0))
             for i, spec in enumerate(specs)]
    # Other roles' pages are registered but not listed: opening one's URL runs the page, which refuses
    # (instead of Streamlit's "page not found" and a silent redirect).
    pages += [st.Page(spec.path, title=spec.title, icon=spec.icon, url_path=spec.url_path, visibility="hidden")
              for spec in existing_pages() if spec not in specs]
    page = st.navigation(pages)
    with st.sidebar:
        st.markdown(f"**{md(actor.name or actor.email)}**  \n{md(actor.email)} · {actor.role}")
        notification_bell(actor)
        if st.button("Sign out", icon=":material/logout:", key="sign_out_button"):
            auth.sign_out(db)
    show_flashes()
    page.run()


main()
