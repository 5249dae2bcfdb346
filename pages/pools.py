"""Pools: find, create, edit, open and close."""
from __future__ import annotations


import streamlit as st

from app.components import format as fmt
from app.components.forms import FieldErrors, flash
from app.components.tables import show_table
from app.db import get_db
from app.guard import require_roles
from core.domain.errors import ConflictError, PooldeskError
from core.services import pools as pool_service
from core.services import users

actor = require_roles("admin", "manager", "analyst")
db = get_db()
can_edit = actor.role in ("admin", "manager")
st.title("Pools")

search_col, status_col = st.columns([3, 1])
search = search_col.text_input("Search by code or name", key="pool_search")
status = status_col.selectbox("Status", ["all", "open", "draft", "closed"], key="pool_status_filter")
with st.spinner("Loading pools..."):
    found = pool_service.list_pools(db, actor=actor, search=search, status=None if status == "all" else status)
show_table(found, {
    "Code": lambda p: p.code, "Name": lambda p: p.name, "Status": lambda p: p.status, "Currency": lambda p: p.currency,
    "NAV": lambda p: fmt.money(p.nav, p.currency), "NAV per unit": lambda p: fmt.price(p.nav_per_unit),
    "Pricing": lambda p: p.pricing_policy, "Min. contribution": lambda p: fmt.money(p.minimum_contribution, p.currency),
    "Mgmt fee (bps)": lambda p: p.management_fee_bps,
    "Perf. fee": lambda p: fmt.percent(p.performance_fee_rate),
}, empty=("No pool matches. Clear the search, or create a pool below." if (search or status != "all")
          else "No pools yet." + (" Create the first one below." if can_edit else "")))

if not can_edit:
    st.stop()

manager_choices = {}
former_managers = {}  # still assigned to a pool, but deactivated or no longer a manager
if actor.role == "admin":
    for u in users.list_users(db, actor=actor):
        if u.role in ("manager", "admin") and u.status == "active":
            manager_choices[u.id] = f"{u.name} <{u.email}>"
        else:
            former_managers[u.id] = f"{u.name} <{u.email}> ({u.status} {u.role}: remove)"


def settings_inputs(prefix: str, errors: FieldErrors, pool=None) -> pool_service.PoolSettings:
    name = st.text_input("Name", value=pool.name if pool else "", key=f"{prefix}_name")
    errors.slot("name")
    c1, c2, c3 = st.columns(3)
    currency = c1.text_input("Currency (ISO code)", value=pool.currency if pool else "USD", key=f"{prefix}_currency")
    unit_price = c2.text_input("Initial unit price", value=str(pool.initial_unit_price) if pool else "10.00",
                               key=f"{prefix}_price")
    policies = ["latest", "forward"]
    policy = c3.selectbox("Pricing policy", policies, index=policies.index(pool.pricing_policy) if pool else 0,
                          key=f"{prefix}_policy",
                          help="latest: flows are priced at the latest unit value; forward: at the next valuation.")
    errors.slot("currency")
    errors.slot("initial unit price")
    d1, d2, d3 = st.columns(3)
    minimum = d1.text_input("Minimum contribution", value=str(pool.minimum_contribution) if pool else "0",
                            key=f"{prefix}_minimum")
    bps = d2.text_input("Management fee (bps a year)", value=str(pool.management_fee_bps) if pool else "0",
                        key=f"{prefix}_bps")
    perf = d3.text_input("Performance fee (%)",
                         value=str((pool.performance_fee_rate * 100).normalize()) if pool else "0",
                         key=f"{prefix}_perf")
    for field in ("minimum contribution", "management_fee_bps", "management fee (bps)", "performance_fee_pct",
                  "performance fee (%)"):
        errors.slot(field)
    strategy = st.text_area("Strategy", value=pool.strategy if pool else "", key=f"{prefix}_strategy")
    return pool_service.PoolSettings(name=name, currency=currency, initial_unit_price=unit_price,
                                     pricing_policy=policy, minimum_contribution=minimum,
                                     management_fee_bps=bps, performance_fee_pct=perf, strategy=strategy)


create_tab, edit_tab = st.tabs(["Create a pool", "Edit, open or close"])

with create_tab:
    errors = FieldErrors()
    with st.form("create_pool"):
        code = st.text_input("Code", help="2 to 32 letters, digits, '-' or '_', e.g. GROWTH-1.", key="new_code")
        errors.slot("code")
        settings = settings_inputs("new", errors)
        draft = st.checkbox("Keep as draft (not yet open to contributions)", key="new_draft")
        managers = []
        if actor.role == "admin":
            managers = st.multiselect("Managers", list(manager_choices), format_func=manager_choices.get,
                                      key="new_managers")
            errors.slot("managers")
        errors.general()
        submitted = st.form_submit_button("Create pool", type="primary")
    if submitted:
        try:
            with st.spinner("Creating..."):
                created = pool_service.create_pool(db, actor=actor, code=code, settings=settings, draft=draft,
                                                   manager_ids=managers or None)
        except PooldeskError as exc:
            errors.show(exc)
        else:
            flash(f"Pool {created.code} created.")
            for key in [k for k in st.session_state if str(k).startswith("new_")]:
                del st.session_state[key]
            st.rerun()

with edit_tab:
    editable = [p for p in found if actor.role == "admin" or actor.id in p.manager_ids]
    if not editable:
        st.info("No pool you manage matches the filter above.")
        st.stop()
    chosen = st.selectbox("Pool", editable, format_func=lambda p: f"{p.code} · {p.name} ({p.status})",
                          key="edit_pool_choice")
    version_key = f"edit_version:{chosen.id}"
    if version_key not in st.session_state:
        st.session_state[version_key] = chosen.version  # the version the user started editing from
    base = pool_service.get_pool(db, actor=actor, pool_id=chosen.id)
    prefix = f"edit{chosen.id}"
    errors = FieldErrors()
    with st.form(f"edit_pool_{chosen.id}"):
        settings = settings_inputs(prefix, errors, base)
        manager_ids = None
        if actor.role == "admin":
            options = list(manager_choices) + [i for i in base.manager_ids if i not in manager_choices]
            manager_ids = st.multiselect("Managers", options, default=list(base.manager_ids),
                                         format_func=lambda i: manager_choices.get(i) or former_managers.get(
                                             i, f"user {i}"),
                                         key=f"{prefix}_managers")
            errors.slot("managers")
        errors.general()
        saved = st.form_submit_button("Save changes", type="primary")
    if saved:
        try:
            pool_service.update_pool(db, actor=actor, pool_id=chosen.id, expected_version=st.session_state[version_key],
                                     settings=settings, manager_ids=manager_ids)
        except ConflictError as exc:
            st.error(fmt.md(exc.message + " Your input is kept below the latest values; "
                                          "press 'Load the latest version' to start again from them."))
        except PooldeskError as exc:
            errors.show(exc)
        else:
            del st.session_state[version_key]
            flash(f"Pool {chosen.code} saved.")
            st.rerun()
    if st.session_state[version_key] != base.version:
        if st.button("Load the latest version", key=f"{prefix}_reload"):
            del st.session_state[version_key]
            for key in [k for k in st.session_state if str(k).startswith(prefix + "_")]:
                del st.session_state[key]
            st.rerun()

    st.divider()
    st.write(f"**Status:** {base.status}")
    next_status = {"draft": ("open", "Open the pool"), "open": ("closed", "Close the pool")}.get(base.status)
    if next_status:
        target, label = next_status
        confirm = st.checkbox(f"Yes, {label.lower()} {fmt.md(base.code)}", key=f"{prefix}_confirm_status")
        if st.button(label, disabled=not confirm, key=f"{prefix}_status_button"):
            try:
                pool_service.set_pool_status(db, actor=actor, pool_id=base.id, status=target,
                                             expected_version=base.version)
            except PooldeskError as exc:
                st.error(fmt.md(exc.message))
            else:
                st.session_state.pop(version_key, None)
                flash(f"Pool {base.code} is now {target}.")
                st.rerun()
    else:
        st.caption("A closed pool cannot be reopened.")
