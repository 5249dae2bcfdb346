"""Account: my sessions, my password, sign out everywhere."""
from __future__ import annotations

import streamlit as st

from app import auth
from app.components import format as fmt
from app.components.forms import FieldErrors, flash
from app.components.tables import show_table
from app.db import get_db
from app.guard import require_roles
from core.domain.errors import PooldeskError
from core.services import auth as auth_service

actor = require_roles("admin", "manager", "investor", "analyst")
db = get_db()
st.title("Account")
st.write(f"**{fmt.md(actor.name)}** · {fmt.md(actor.email)} · {actor.role}")

st.subheader("Where you are signed in")
sessions = auth_service.list_sessions(db, actor=actor, user_id=actor.id)
show_table(sessions, {
    "Since": lambda s: fmt.day(s.created_at), "Last seen": lambda s: fmt.day(s.last_seen_at),
    "Ends at the latest": lambda s: fmt.day(s.expires_at), "Browser": lambda s: (s.user_agent or "")[:60],
}, empty="No open sessions.")
if st.button("Sign out everywhere", icon=":material/logout:", key="sign_out_everywhere"):
    auth.sign_out(db, everywhere=True)

st.subheader("Change password")
errors = FieldErrors()
with st.form("change_password", clear_on_submit=True):
    current = st.text_input("Current password", type="password")
    errors.slot("current_password")
    new = st.text_input("New password", type="password", help=auth_service.PASSWORD_HELP)
    errors.slot("password")
    errors.general()
    changed = st.form_submit_button("Change password", type="primary")
if changed:
    try:
        auth_service.change_password(db, actor=actor, current_password=current, new_password=new,
                                     keep_token=st.session_state.get(auth.TOKEN_KEY))
    except PooldeskError as exc:
        errors.show(exc)
    else:
        flash("Password changed; your other sessions were signed out.")
        st.rerun()
