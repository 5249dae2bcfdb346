"""Account: my sessions, my password, sign out everywhere, my bank account, two-step sign-in and recovery codes."""
from __future__ import annotations

import streamlit as st

from app import auth
from app.components import format as fmt
from app.components.forms import FieldErrors, flash
from app.components.tables import show_table
from app.db import get_db
from app.guard import require_roles
from core.domain.errors import PooldeskError, ReauthenticationRequired
from core.services import auth as auth_service
from core.services import mfa, users

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


st.subheader("Bank account")
st.caption("Where withdrawals and distributions are paid. Changing it asks for your password or a code first.")
bank_errors = FieldErrors()
with st.form("bank_account", clear_on_submit=False):
    bank_account = st.text_input("New bank account (IBAN or account number)", key="bank_account_value")
    bank_errors.general()
    save_bank = st.form_submit_button("Save bank account")
if save_bank:
    me = users.get_user(db, actor=actor, user_id=actor.id)
    try:
        users.update_profile(db, actor=actor, user_id=actor.id, expected_version=me.version, name=me.name,
                             bank_account=bank_account.strip())
    except ReauthenticationRequired as exc:
        auth.ask_reauth(exc.message, "bank")
    except PooldeskError as exc:
        bank_errors.show(exc)
    else:
        st.session_state.pop("bank_account_value", None)
        flash("Bank account saved.")
        st.rerun()
auth.reauth_prompt(db, actor, "bank")

st.subheader("Two-step sign-in")
mfa_state = mfa.status(db, actor=actor)
if shown_codes := st.session_state.get("account_recovery_codes"):
    st.warning("Your new recovery codes: save them now, they are not shown again. Each signs you in once.",
               icon=":material/key:")
    st.code("\n".join(shown_codes), language=None)
    if st.button("I have saved them", key="recovery_codes_saved"):
        st.session_state.pop("account_recovery_codes")
        st.rerun()
elif mfa_state.enabled:
    st.write(f"On: sign-in asks for a code from your authenticator app. "
             f"{mfa_state.recovery_codes_left} of {mfa.RECOVERY_CODE_COUNT} recovery codes left.")
    if st.button("Make new recovery codes", key="regenerate_recovery_codes",
                 help="The old codes stop working. Asks for your password or a code first."):
        try:
            st.session_state["account_recovery_codes"] = mfa.regenerate_recovery_codes(db, actor=actor)
        except ReauthenticationRequired as exc:
            auth.ask_reauth(exc.message, "account")
        except PooldeskError as exc:
            st.error(exc.message)
        else:
            st.rerun()
    auth.reauth_prompt(db, actor, "account")
else:
    st.write("Off. Add a code from an authenticator app to your sign-in"
             + (" (required for your role)." if mfa_state.required else "."))
    enrolment = st.session_state.get("account_enrolment")
    if enrolment is None:
        if st.button("Set up two-step sign-in", key="start_mfa"):
            st.session_state["account_enrolment"] = mfa.start_enrolment(db, actor=actor)
            st.rerun()
    else:
        st.image(enrolment.qr_png(), width=220)
        st.text_input("Key", value=enrolment.secret, disabled=True, key="account_mfa_secret")
        mfa_errors = FieldErrors()
        with st.form("confirm_mfa", clear_on_submit=True):
            code = st.text_input("Code from the app", key="account_mfa_code", max_chars=10)
            mfa_errors.slot("code")
            mfa_errors.general()
            confirmed = st.form_submit_button("Turn on two-step sign-in", type="primary")
        if confirmed:
            try:
                done = mfa.confirm_enrolment(db, actor=actor, code=code)
            except PooldeskError as exc:
                mfa_errors.show(exc)
            else:
                st.session_state.pop("account_enrolment", None)
                st.session_state["account_recovery_codes"] = done.recovery_codes
                flash("Two-step sign-in is on.")
                st.rerun()
