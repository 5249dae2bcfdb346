"""Admin: people (invite, role, deactivate, unlock, reset two-step sign-in), sessions, and the audit log."""
from __future__ import annotations

from datetime import date, timedelta

import streamlit as st

from app import auth
from app.components import format as fmt
from app.components.forms import FieldErrors, flash
from app.components.tables import show_table
from app.db import get_db
from app.guard import require_roles
from core.domain.errors import PooldeskError, ReauthenticationRequired
from core.services import audit, auth as auth_service, dashboard, mfa, users
from core.services import pools as pool_service
from core.services.context import ROLES

actor = require_roles("admin")
db = get_db()
st.title("Admin")


def act(action, done) -> None:
    """Run an admin action: its refusal is shown, its success flashed (``done`` text, or made from the result)."""
    try:
        result = action()
    except PooldeskError as exc:
        st.error(fmt.md(exc.message))
        return
    flash(done(result) if callable(done) else done)
    st.rerun()


users_tab, invite_tab, sessions_tab, audit_tab = st.tabs(["Users", "Invite", "Sessions", "Audit log"])

with users_tab:
    c1, c2 = st.columns([3, 1])
    search = c1.text_input("Search by name or email", key="user_search")
    role_filter = c2.selectbox("Role", ["all", *ROLES], key="user_role_filter")
    people = users.list_users(db, actor=actor, role=None if role_filter == "all" else role_filter, search=search)
    show_table(people, {
        "Id": lambda u: u.id, "Email": lambda u: u.email, "Name": lambda u: u.name, "Role": lambda u: u.role,
        "Status": lambda u: u.status, "Locked until": lambda u: fmt.day(u.locked_until),
        "Last sign-in": lambda u: fmt.day(u.last_login_at),
    }, empty="Nobody matches. Invite people in the Invite tab.")
    others = [u for u in people if u.id != actor.id]
    if others:
        person = st.selectbox("Change a user", others, format_func=lambda u: f"{u.name} <{u.email}> ({u.role}, {u.status})",
                              key="user_pick")
        a, b, c, d = st.columns(4)
        new_role = a.selectbox("Role", ROLES, index=ROLES.index(person.role), key=f"role_{person.id}")
        if a.button("Change role", key=f"change_role_{person.id}", disabled=new_role == person.role):
            try:
                users.change_role(db, actor=actor, user_id=person.id, role=new_role, expected_version=person.version)
            except ReauthenticationRequired as exc:
                auth.ask_reauth(exc.message, "admin")
            except PooldeskError as exc:
                st.error(fmt.md(exc.message))
            else:
                flash(f"{person.email} is now {new_role}.")
                st.rerun()
        if person.status == "active":
            if b.button("Deactivate", key=f"deactivate_{person.id}"):
                try:
                    users.set_status(db, actor=actor, user_id=person.id, status="deactivated")
                except PooldeskError as exc:
                    st.error(fmt.md(exc.message))
                else:
                    flash(f"{person.email} deactivated and signed out.")
                    st.rerun()
        elif person.status == "deactivated" and b.button("Reactivate", key=f"activate_{person.id}"):
            act(lambda: users.set_status(db, actor=actor, user_id=person.id, status="active"),
                f"{person.email} reactivated.")
        if c.button("Unlock", key=f"unlock_{person.id}", disabled=person.locked_until is None):
            act(lambda: users.unlock(db, actor=actor, user_id=person.id), f"{person.email} unlocked.")
        if person.status == "active" and d.button("Password reset link", key=f"reset_{person.id}"):
            try:
                st.session_state["admin_reset_link"] = (
                    person.email, auth_service.issue_reset_link(db, actor=actor, user_id=person.id))
            except PooldeskError as exc:
                st.error(fmt.md(exc.message))
        if st.button("Reset two-step sign-in", key=f"mfa_reset_{person.id}",
                     help="For a lost phone: their authenticator secret and recovery codes are deleted and "
                          "they are signed out; they set it up again at their next sign-in."):
            act(lambda: mfa.reset(db, actor=actor, user_id=person.id),
                f"Two-step sign-in of {person.email} reset; they were signed out.")
        auth.reauth_prompt(db, actor, "admin")
        if shown := st.session_state.get("admin_reset_link"):
            st.info(f"One-time reset link for {fmt.md(shown[0])} (valid for an hour); hand it over privately:")
            st.code(shown[1], language=None)

with invite_tab:
    errors = FieldErrors()
    pools = pool_service.list_pools(db, actor=actor)
    with st.form("invite_user"):
        name = st.text_input("Name", key="invite_name")
        errors.slot("name")
        email = st.text_input("Email", key="invite_email")
        errors.slot("email")
        role = st.selectbox("Role", ["manager", "analyst", "investor", "admin"], key="invite_role")
        errors.slot("role")
        pool = st.selectbox("Pool (for investors)", [None, *pools],
                            format_func=lambda p: "—" if p is None else f"{p.code} · {p.name}", key="invite_pool")
        errors.slot("pool")
        errors.general()
        sent = st.form_submit_button("Send invitation", type="primary")
    if sent:
        try:
            result = auth_service.invite_user(db, actor=actor, email=email, name=name, role=role,
                                              pool_id=pool.id if pool is not None else None)
        except PooldeskError as exc:
            errors.show(exc)
        else:
            if result.link:
                st.success(f"Invitation created for {fmt.md(result.email)}. Email is not configured: "
                           "give them this link "
                           f"(valid until {fmt.day(result.expires_at)}, works once):")
                st.code(result.link, language=None)
            else:
                st.success(f"Invitation emailed to {fmt.md(result.email)}.")
    st.markdown("**Recent invitations**")
    show_table(auth_service.list_invitations(db, actor=actor), {
        "Email": lambda i: i["email"], "Role": lambda i: i["role"], "Sent": lambda i: fmt.day(i["created_at"]),
        "Expires": lambda i: fmt.day(i["expires_at"]), "State": lambda i: i["state"],
    }, empty="No invitations sent yet.")

with sessions_tab:
    open_sessions = auth_service.list_sessions(db, actor=actor)
    show_table(open_sessions, {
        "Session": lambda s: s.short_id, "User": lambda s: s.user_email, "Since": lambda s: fmt.day(s.created_at),
        "Last seen": lambda s: fmt.day(s.last_seen_at), "Browser": lambda s: (s.user_agent or "")[:50],
    }, empty="Nobody is signed in.")
    if open_sessions:
        target = st.selectbox("Session", open_sessions, format_func=lambda s: f"{s.short_id} · {s.user_email}",
                              key="revoke_pick")
        left, right = st.columns(2)
        if left.button("Revoke this session", key="revoke_one"):
            act(lambda: auth_service.revoke_session(db, actor=actor, session_id=target.id),
                f"Session {target.short_id} revoked.")
        if right.button(f"Sign {fmt.md(target.user_email)} out everywhere", key="revoke_all"):
            act(lambda: auth_service.revoke_all_sessions(db, actor=actor, user_id=target.user_id),
                lambda count: f"{count} session(s) of {target.user_email} revoked.")

with audit_tab:
    f1, f2, f3, f4 = st.columns(4)
    action = f1.text_input("Action contains", key="audit_action")
    entity = f2.selectbox("Entity", ["", "user", "pool", "transaction", "valuation", "distribution", "position"],
                          key="audit_entity")
    who = f3.text_input("Who (email contains)", key="audit_who")
    since = f4.date_input("Since", value=date.today() - timedelta(days=30), key="audit_since")
    events = dashboard.audit_events(db, actor=actor, action=action, entity=entity, actor_email=who, since=since)
    show_table(events, {
        "Id": lambda e: e.id, "When": lambda e: fmt.day(e.at), "Who": lambda e: e.actor_email or "system",
        "Action": lambda e: e.action, "Entity": lambda e: f"{e.entity} {e.entity_id}",
        "Before": lambda e: "" if e.before is None else str(e.before),
        "After": lambda e: "" if e.after is None else str(e.after),
    }, empty="No audit events match these filters.")
    if st.button("Verify chain", icon=":material/verified:", key="verify_chain"):
        with st.spinner("Checking every audit row..."):
            with db.read() as session:
                report = audit.verify(session)
        if report.ok:
            st.success(f"The audit chain is intact: {report.checked} rows checked.")
        else:
            st.error(f"The audit chain is broken: {report.problem}.")
