"""The one-trip settled flow on PostgreSQL asks the users table who the actor is now.

A manager made analyst whose assignment to the pool is still there (a stale ``pool_managers`` row)
is refused on the one-trip path in the words of the ORM path, and nothing is written, whether the
caller's actor already says analyst or still says manager.
"""
from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import func, select, text

from core.db.models import AuditEvent, IdempotencyKey, JournalEntry, OutboxMessage, Position, Transaction
from core.domain.errors import PermissionDenied
from core.services import ledger, users
from core.services.context import Actor
from core.services.reconcile import reconcile
from tests.factories import make_pool, make_user

DAY = date(2024, 1, 2)
TABLES = (Transaction, JournalEntry, AuditEvent, OutboxMessage, Position, IdempotencyKey)
REFUSAL = "An analyst may not record transactions in this pool."


def counts(db) -> dict[str, int]:
    with db.read() as session:
        return {m.__tablename__: session.scalar(select(func.count()).select_from(m)) for m in TABLES}


@pytest.fixture
def demoted(pg_db):
    """A manager who posted to the pool (so the next keyed flow goes in one trip), then was made analyst
    with the pool_managers row left in place."""
    admin = make_user(pg_db, "admin")
    manager = make_user(pg_db, "manager")
    investor = make_user(pg_db, "investor")
    pool = make_pool(pg_db, manager, code="DEMOTED")
    ledger.record_contribution(pg_db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                               key="before-demotion", effective_date=DAY, payment="received")
    view = users.get_user(pg_db, actor=admin, user_id=manager.id)
    users.change_role(pg_db, actor=admin, user_id=manager.id, role="analyst", expected_version=view.version)
    with pg_db.engine.begin() as conn:  # the assignment survives (as it did before change_role dropped it)
        conn.execute(text("INSERT INTO pool_managers (pool_id, user_id) VALUES (:p, :u) ON CONFLICT DO NOTHING"),
                     {"p": pool.id, "u": manager.id})
    return pg_db, manager, investor, pool


def flow(db, actor, pool, investor, key, payment="received"):
    return ledger.record_contribution(db, actor=actor, pool_id=pool.id, investor_id=investor.id, amount="50.00",
                                      key=key, effective_date=DAY, payment=payment)


def test_the_orm_path_refuses_a_demoted_manager(demoted):
    db, manager, investor, pool = demoted
    analyst = Actor(manager.id, "analyst", manager.email)
    with pytest.raises(PermissionDenied) as err:
        flow(db, analyst, pool, investor, "orm-path", payment="gateway")  # not a settled flow: the ORM path
    assert err.value.message == REFUSAL


@pytest.mark.parametrize("role_in_hand", ["analyst", "manager"])
def test_a_demoted_manager_is_refused_on_the_one_trip_path(demoted, role_in_hand):
    """``role_in_hand``: what the caller's actor says (a session read after the change, or before it)."""
    db, manager, investor, pool = demoted
    actor = Actor(manager.id, role_in_hand, manager.email)
    before = counts(db)
    with pytest.raises(PermissionDenied) as err:
        flow(db, actor, pool, investor, f"after-demotion-{role_in_hand}")
    assert err.value.message == REFUSAL
    assert counts(db) == before
    assert reconcile(db) == []


def test_a_deactivated_manager_is_refused_on_the_one_trip_path(pg_db):
    admin = make_user(pg_db, "admin")
    manager = make_user(pg_db, "manager")
    investor = make_user(pg_db, "investor")
    pool = make_pool(pg_db, manager, code="GONE")
    flow(pg_db, manager, pool, investor, "while-active")
    users.set_status(pg_db, actor=admin, user_id=manager.id, status="deactivated")
    before = counts(pg_db)
    with pytest.raises(PermissionDenied) as err:
        flow(pg_db, manager, pool, investor, "after-deactivation")
    assert err.value.message == "Your account is not active, so you may not record transactions in this pool."
    assert counts(pg_db) == before


def test_an_admin_and_an_assigned_manager_still_post_in_one_trip(demoted):
    db, _, investor, pool = demoted
    admin = make_user(db, "admin")
    other = make_user(db, "manager")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO pool_managers (pool_id, user_id) VALUES (:p, :u)"), {"p": pool.id, "u": other.id})
    assert flow(db, admin, pool, investor, "admin-posts").status == "settled"
    assert flow(db, users.system_actor(db), pool, investor, "system-posts").status == "settled"  # the command
    assert flow(db, other, pool, investor, "manager-posts").status == "settled"
    assert reconcile(db) == []
