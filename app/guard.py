"""The check at the top of every page: who is signed in, and may their role see this page.

st.navigation lists only the pages of the signed-in role (the others are registered
hidden, so a URL typed or bookmarked still reaches them): a page must refuse on its
own, with a message and no data.
"""
from __future__ import annotations

import streamlit as st

from core.services.context import Actor


def require_roles(*roles: str) -> Actor:
    actor = st.session_state.get("actor")
    if not isinstance(actor, Actor):
        st.error("Please sign in to see this page.")
        st.stop()
    if actor.role not in roles:
        st.error(f"This page is not available to your role ({actor.role}).")
        st.stop()
    return actor
