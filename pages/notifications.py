"""Notifications: the inbox, and which events reach me on which channel."""
from __future__ import annotations

import streamlit as st

from app.components import format as fmt
from app.components.forms import FieldErrors, flash
from app.db import get_db
from app.guard import require_roles
from core.domain.errors import PooldeskError
from core.services import notifications, users

actor = require_roles("admin", "manager", "investor", "analyst")
db = get_db()
st.title("Notifications")

inbox_tab, prefs_tab = st.tabs(["Inbox", "Preferences"])
with inbox_tab:
    unread_only = st.toggle("Unread only", key="inbox_unread_only")
    items = notifications.inbox(db, actor=actor, unread_only=unread_only)
    unread = [n.id for n in items if n.read_at is None]
    if unread and st.button(f"Mark all {len(unread)} read", key="mark_all_read"):
        notifications.mark_read(db, actor=actor)
        flash("All notifications marked read.")
        st.rerun()
    if not items:
        st.info("Nothing here yet. You will be told here when money moves, valuations are published "
                "and distributions are declared.")
    for item in items:
        with st.container(border=True):
            left, right = st.columns([5, 1])
            left.markdown(("**🔵 " if item.read_at is None else "**") + fmt.md(item.title) + "**")
            left.caption(f"{fmt.day(item.created_at)} · {notifications.EVENTS.get(item.event, item.event)}")
            if item.body:
                left.markdown(fmt.md(item.body))
            if item.read_at is None and right.button("Mark read", key=f"read_{item.id}"):
                notifications.mark_read(db, actor=actor, notification_ids=[item.id])
                st.rerun()

with prefs_tab:
    profile = users.get_user(db, actor=actor, user_id=actor.id)
    current = notifications.preferences(db, actor=actor)
    errors = FieldErrors()
    with st.form("preferences"):
        phone = st.text_input("Phone number for SMS", value=profile.phone or "", placeholder="+447700900123",
                              key="pref_phone")
        errors.slot("phone")
        header = st.columns([3, 1, 1, 1])
        for col, title in zip(header, ["Event", "In-app", "Email", "SMS"]):
            col.markdown(f"**{title}**")
        choices: dict[str, dict[str, bool]] = {}
        for event, channels in current.items():
            row = st.columns([3, 1, 1, 1])
            row[0].write(notifications.EVENTS[event])
            choices[event] = {ch: row[i + 1].checkbox(ch, value=channels[ch], key=f"pref_{event}_{ch}",
                                                      label_visibility="collapsed")
                              for i, ch in enumerate(notifications.CHANNELS)}
        errors.general()
        saved = st.form_submit_button("Save preferences", type="primary")
    if saved:
        try:
            notifications.set_preferences(db, actor=actor, choices=choices, phone=phone)
        except PooldeskError as exc:
            errors.show(exc)
        else:
            flash("Preferences saved.")
            st.rerun()
