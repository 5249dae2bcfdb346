"""Role changes and who may post money: the role matrix on every posting path.

A settled flow (money already received) goes one of three ways: the general ORM path
(SQLite, or anything the PostgreSQL paths hand back), the two-trip PostgreSQL path (the pool
read and checked in Python, then ``pooldesk_post_flow``) and the one-trip PostgreSQL path
(``pooldesk_post_checked_flow``, which checks the manager's assignment in the database).
Each row below changes someone's role and then asks every path whether that person may
record a contribution in the pool; the answer must be the same on all of them.

The actor is read back from the database after the change, as the app does on every run
(``auth.validate_session``); the actor object held from before the change is tried too
(a worker or a CLI run that started before the change).
"""
from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import func, select

from core.db import models
from core.domain.errors import PermissionDenied
from core.services import audit, ledger, pools, users
from core.services.context import Actor, actor_from_user
from tests.factories import make_pool, make_user, system

DAY = date(2024, 1, 2)
TABLES = (models.Transaction, models.JournalEntry, models.Position, models.IdempotencyKey, models.OutboxMessage)


def counts(db) -> dict[str, int]:
    with db.read() as session:
        return {m.__tablename__: session.scalar(select(func.count()).select_from(m)) for m in TABLES}


def fresh(db, user: Actor) -> Actor:
    """The actor as the app builds it on the next run: from the user row as it is now."""
    with db.read() as session:
        return actor_from_user(session.get(models.User, user.id))


class Poster:
    """Records a settled contribution by ``actor`` on one path, and says which statements it sent."""

    def __init__(self, db, path: str, monkeypatch):
        self.db, self.path, self.n = db, path, 0
        self.sent: list[str] = []
        if path == "orm":  # PostgreSQL hands the flow to the general path, as it does for forward pricing
            monkeypatch.setattr(ledger, "_settle_now_on_postgres", lambda *a, **kw: None)
        call = ledger._call

        def spy(conn, raw, query, **kw):
            self.sent.append(query)
            return call(conn, raw, query, **kw)

        monkeypatch.setattr(ledger, "_call", spy)

    def prime(self, pool_id: int, investor_id: int) -> None:
        """A first keyed flow by the system user: the pool's currency is known from now on."""
        self.n += 1
        ledger.record_contribution(self.db, actor=system(self.db), pool_id=pool_id, investor_id=investor_id,
                                   amount="10.00", key=f"prime-{pool_id}-{self.n}", effective_date=DAY,
                                   payment="received")

    def post(self, actor: Actor, pool_id: int, investor_id: int) -> str:
        self.n += 1
        key = None if self.path == "two-trip" else f"{self.path}-{self.n}"
        if self.path == "one-trip":  # the currency remembered from the priming flow (other tests share the cache)
            ledger._POOL_CURRENCY[(self.db.url, pool_id)] = "USD"
        before = counts(self.db)
        self.sent.clear()
        try:
            view = ledger.record_contribution(self.db, actor=actor, pool_id=pool_id, investor_id=investor_id,
                                              amount="100.00", key=key, effective_date=DAY, payment="received")
        except PermissionDenied as exc:
            assert exc.message
            assert counts(self.db) == before, "refused, but something was written"
            outcome = "denied"
        else:
            assert view.status == "settled"
            outcome = "allowed"
        first = {"orm": None, "two-trip": ledger._FLOW_CONTEXT, "one-trip": ledger._POST_CHECKED_FLOW}[self.path]
        if actor.role != "investor":  # an investor's request never takes the PostgreSQL posting paths
            assert (self.sent[0] if self.sent else None) == first, f"{self.path} path not taken"
        return outcome


@pytest.fixture(params=["orm-sqlite", "orm-postgres", "two-trip", "one-trip"])
def poster(request, tmp_path, monkeypatch):
    from core.config import reset_settings_cache
    from tests.conftest import make_database

    database = make_database("sqlite" if request.param == "orm-sqlite" else "postgres", tmp_path)
    monkeypatch.setenv("POOLDESK_DATABASE_URL", database.url)
    reset_settings_cache()
    yield Poster(database, request.param.split("-")[0] if request.param.startswith("orm") else request.param,
                 monkeypatch)
    database.dispose()


def change(db, admin: Actor, user: Actor, role: str) -> None:
    current = users.get_user(db, actor=admin, user_id=user.id)
    users.change_role(db, actor=admin, user_id=user.id, role=role, expected_version=current.version)


def test_role_changes_on_every_posting_path(poster):
    db = poster.db
    admin = make_user(db, "admin")
    manager = make_user(db, "manager")              # manages the pool, then becomes an analyst
    manager_to_investor = make_user(db, "manager")  # manages the pool, then becomes an investor
    manager_stays = make_user(db, "manager")        # manages the pool throughout
    other_manager = make_user(db, "manager")        # manages another pool only
    promoted = make_user(db, "investor")            # becomes a manager, later assigned to the pool
    promoted_admin = make_user(db, "investor")      # becomes an admin
    demoted_admin = make_user(db, "admin")          # listed as a manager of the pool, becomes an analyst
    admin_to_manager = make_user(db, "admin")       # becomes a manager of the pools it is listed for
    analyst = make_user(db, "analyst")
    investor = make_user(db, "investor")
    pool = make_pool(db, code="ROLES")
    pool = pools.update_pool(db, actor=admin, pool_id=pool.id, expected_version=pool.version,
                             settings=pools.PoolSettings(name="Test pool"),
                             manager_ids=[manager.id, manager_to_investor.id, manager_stays.id, demoted_admin.id,
                                          admin_to_manager.id])
    other = make_pool(db, other_manager, code="OTHER")
    poster.prime(pool.id, investor.id)
    poster.prime(other.id, investor.id)

    change(db, admin, manager, "analyst")
    change(db, admin, manager_to_investor, "investor")
    change(db, admin, promoted, "manager")
    change(db, admin, promoted_admin, "admin")
    change(db, admin, demoted_admin, "analyst")
    change(db, admin, admin_to_manager, "manager")

    def may_post(user: Actor, pool_id: int = pool.id) -> str:
        return poster.post(fresh(db, user), pool_id, investor.id)

    table = {
        "admin": may_post(admin),
        "manager kept": may_post(manager_stays),
        "manager of another pool": may_post(other_manager),
        "manager demoted to analyst": may_post(manager),
        "manager demoted to analyst (actor from before)": poster.post(manager, pool.id, investor.id),
        "manager demoted to investor": may_post(manager_to_investor),
        "manager demoted to investor (actor from before)": poster.post(manager_to_investor, pool.id, investor.id),
        "investor promoted to manager, not assigned": may_post(promoted),
        "investor promoted to admin": may_post(promoted_admin),
        "admin demoted to analyst": may_post(demoted_admin),
        "admin demoted to manager, in a pool it was listed for": may_post(admin_to_manager),
        "admin demoted to manager, in another pool": may_post(admin_to_manager, other.id),
        "analyst": may_post(analyst),
    }
    assert table == {
        "admin": "allowed",
        "manager kept": "allowed",
        "manager of another pool": "denied",
        "manager demoted to analyst": "denied",
        "manager demoted to analyst (actor from before)": "denied",
        "manager demoted to investor": "denied",
        "manager demoted to investor (actor from before)": "denied",
        "investor promoted to manager, not assigned": "denied",
        "investor promoted to admin": "allowed",
        "admin demoted to analyst": "denied",
        "admin demoted to manager, in a pool it was listed for": "allowed",
        "admin demoted to manager, in another pool": "denied",
        "analyst": "denied",
    }
    # once assigned, the promoted investor posts like any manager of the pool
    current = pools.get_pool(db, actor=admin, pool_id=pool.id)
    pools.update_pool(db, actor=admin, pool_id=pool.id, expected_version=current.version,
                      settings=pools.PoolSettings(name="Test pool"), manager_ids=[*current.manager_ids, promoted.id])
    assert may_post(promoted) == "allowed"


def test_a_role_change_ends_the_pool_assignments_and_says_so_in_the_audit_log(db):
    admin = make_user(db, "admin")
    manager = make_user(db, "manager")
    first = make_pool(db, manager, code="FIRST")
    second = make_pool(db, manager, code="SECOND")
    change(db, admin, manager, "manager")  # a change to the same role keeps everything
    assert manager.id in pools.get_pool(db, actor=admin, pool_id=first.id).manager_ids
    change(db, admin, manager, "analyst")
    for pool in (first, second):
        assert manager.id not in pools.get_pool(db, actor=admin, pool_id=pool.id).manager_ids
    # the former manager is no longer offered the pools as theirs
    assert {p.code for p in pools.list_pools(db, actor=fresh(db, manager))} == {"FIRST", "SECOND"}  # analyst: all
    with pytest.raises(PermissionDenied, match="An analyst may not edit this pool."):
        pools.update_pool(db, actor=fresh(db, manager), pool_id=first.id, expected_version=first.version,
                          settings=pools.PoolSettings(name="Mine"))
    with db.read() as session:
        event = session.scalars(select(models.AuditEvent).where(models.AuditEvent.action == "user.change_role")
                                .order_by(models.AuditEvent.id.desc())).first()
        assert (event.before, event.after) == ({"role": "manager"},
                                               {"role": "analyst", "removed_as_manager_of_pools": [first.id, second.id]})
        assert audit.verify(session).ok
