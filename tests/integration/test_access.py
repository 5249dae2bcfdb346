"""Who may call what: every service function against every role.

Roles: admin, the pool's manager, a manager of another pool, the investor the
call is about, another investor, and an analyst. Each cell of the table says
allowed or denied; a denied call raises PermissionDenied and writes nothing.
Listing functions are allowed to everyone but filtered, which is checked apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Callable

import pytest
from sqlalchemy import func, select

from core.db import models
from core.domain.errors import IdempotencyError, PermissionDenied
from core.services import ledger, pools, users, valuations
from core.services.context import Actor
from tests.factories import make_pool, make_user, system

DAY = date(2024, 1, 2)
ROLES = ("admin", "manager", "other_manager", "investor", "other_investor", "analyst")
TABLES = (models.User, models.Pool, models.PoolManager, models.Position, models.Transaction, models.JournalEntry,
          models.Valuation, models.Distribution, models.FeeAccrual, models.IdempotencyKey, models.AuditEvent,
          models.OutboxMessage)


@dataclass
class World:
    db: object
    actors: dict[str, Actor]
    pool: pools.PoolView
    investor: Actor
    sys: Actor
    n: int = 0

    def key(self) -> str:
        self.n += 1
        return f"k{self.n}"

    # targets made fresh for each call, by the system user
    def requested(self):
        return ledger.record_contribution(self.db, actor=self.investor, pool_id=self.pool.id,
                                          investor_id=self.investor.id, amount="100.00", key=None, effective_date=DAY)

    def pending(self):
        return ledger.record_contribution(self.db, actor=self.sys, pool_id=self.pool.id, investor_id=self.investor.id,
                                          amount="100.00", key=None, effective_date=DAY)

    def settled(self):
        return ledger.record_contribution(self.db, actor=self.sys, pool_id=self.pool.id, investor_id=self.investor.id,
                                          amount="100.00", key=None, effective_date=DAY, payment="received")


def build(db) -> World:
    admin = make_user(db, "admin")
    manager, other_manager = make_user(db, "manager"), make_user(db, "manager")
    investor, other_investor = make_user(db, "investor"), make_user(db, "investor")
    analyst = make_user(db, "analyst")
    pool = make_pool(db, manager)
    make_pool(db, other_manager)
    world = World(db, dict(admin=admin, manager=manager, other_manager=other_manager, investor=investor,
                           other_investor=other_investor, analyst=analyst), pool, investor, system(db))
    world.settled()  # the investor holds 10 units
    return world


def _valuation_day(w: World) -> date:
    w.n += 1
    return date(2024, 1, 2 + w.n)


# function name -> (call(world, actor, prepared), prepare(world) or None, roles allowed)
MANAGERS = {"admin", "manager"}
CASES: dict[str, tuple[Callable, Callable | None, set[str]]] = {
    "users.create_user": (
        lambda w, a, _: users.create_user(w.db, actor=a, email=f"new{w.key()}@example.com", name="New",
                                          role="investor"),
        None, {"admin", "manager", "other_manager"}),
    "users.get_user": (lambda w, a, _: users.get_user(w.db, actor=a, user_id=w.investor.id), None,
                       {"admin", "investor"}),
    "users.list_users": (lambda w, a, _: users.list_users(w.db, actor=a), None, {"admin"}),
    "users.update_profile": (
        lambda w, a, _: users.update_profile(
            w.db, actor=a, user_id=w.investor.id, name="Renamed",
            expected_version=users.get_user(w.db, actor=w.sys, user_id=w.investor.id).version),
        None, {"admin", "investor"}),
    "users.change_role": (
        lambda w, a, target: users.change_role(w.db, actor=a, user_id=target.id, role="analyst",
                                               expected_version=target.version),
        lambda w: users.create_user(w.db, actor=w.sys, email=f"r{w.key()}@example.com", name="R", role="investor"),
        {"admin"}),
    "users.set_status": (
        lambda w, a, target: users.set_status(w.db, actor=a, user_id=target.id, status="deactivated"),
        lambda w: users.create_user(w.db, actor=w.sys, email=f"s{w.key()}@example.com", name="S", role="investor"),
        {"admin"}),
    "users.unlock": (lambda w, a, _: users.unlock(w.db, actor=a, user_id=w.investor.id), None, {"admin"}),
    "users.set_password": (
        lambda w, a, _: users.set_password(w.db, actor=a, user_id=w.investor.id, password="another-good-password"),
        None, {"admin", "investor"}),
    "pools.create_pool": (
        lambda w, a, _: pools.create_pool(w.db, actor=a, code=f"NEW{w.key()}", settings=pools.PoolSettings(name="N")),
        None, {"admin", "manager", "other_manager"}),
    "pools.update_pool": (
        lambda w, a, _: pools.update_pool(
            w.db, actor=a, pool_id=w.pool.id, settings=pools.PoolSettings(name="Edited"),
            expected_version=pools.get_pool(w.db, actor=w.sys, pool_id=w.pool.id).version),
        None, MANAGERS),
    "pools.set_pool_status": (
        lambda w, a, target: pools.set_pool_status(w.db, actor=a, pool_id=target.id, status="open",
                                                   expected_version=target.version),
        lambda w: pools.create_pool(w.db, actor=w.sys, code=f"DR{w.key()}", settings=pools.PoolSettings(name="D"),
                                    draft=True, manager_ids=[w.actors["manager"].id]),
        MANAGERS),
    "pools.get_pool": (lambda w, a, _: pools.get_pool(w.db, actor=a, pool_id=w.pool.id), None,
                       {"admin", "manager", "investor", "other_investor", "analyst"}),
    "pools.list_pools": (lambda w, a, _: pools.list_pools(w.db, actor=a), None, set(ROLES)),
    "ledger.record_contribution": (
        lambda w, a, _: ledger.record_contribution(w.db, actor=a, pool_id=w.pool.id, investor_id=w.investor.id,
                                                   amount="50.00", key=w.key(), effective_date=DAY),
        None, {"admin", "manager", "investor"}),
    "ledger.record_withdrawal": (
        lambda w, a, _: ledger.record_withdrawal(w.db, actor=a, pool_id=w.pool.id, investor_id=w.investor.id,
                                                 units="0.1", key=w.key(), effective_date=DAY),
        None, {"admin", "manager", "investor"}),
    "ledger.approve_request": (
        lambda w, a, tx: ledger.approve_request(w.db, actor=a, transaction_id=tx.id, expected_version=tx.version),
        World.requested, MANAGERS),
    "ledger.cancel_transaction": (
        lambda w, a, tx: ledger.cancel_transaction(w.db, actor=a, transaction_id=tx.id, reason="no"),
        World.requested, {"admin", "manager", "investor"}),
    "ledger.cancel_transaction(pending)": (
        lambda w, a, tx: ledger.cancel_transaction(w.db, actor=a, transaction_id=tx.id, reason="no"),
        World.pending, MANAGERS),
    "ledger.confirm_payment": (
        lambda w, a, tx: ledger.confirm_payment(w.db, actor=a, transaction_id=tx.id), World.pending, MANAGERS),
    "ledger.fail_transaction": (
        lambda w, a, tx: ledger.fail_transaction(w.db, actor=a, transaction_id=tx.id, reason="declined"),
        World.pending, MANAGERS),
    "ledger.reverse_transaction": (
        lambda w, a, tx: ledger.reverse_transaction(w.db, actor=a, transaction_id=tx.id, reason="mistake"),
        World.settled, MANAGERS),
    "ledger.get_transaction": (
        lambda w, a, tx: ledger.get_transaction(w.db, actor=a, transaction_id=tx.id), World.settled,
        {"admin", "manager", "investor", "analyst"}),
    "ledger.list_transactions": (
        lambda w, a, _: ledger.list_transactions(w.db, actor=a, pool_id=w.pool.id), None, set(ROLES)),
    "ledger.set_reinvestment": (
        lambda w, a, _: ledger.set_reinvestment(w.db, actor=a, pool_id=w.pool.id, investor_id=w.investor.id,
                                                reinvest=True),
        None, {"admin", "manager", "investor"}),
    "valuations.record_valuation(preview)": (
        lambda w, a, _: valuations.record_valuation(w.db, actor=a, pool_id=w.pool.id, valuation_date=date(2024, 2, 1),
                                                    total_assets="110.00", key=None, preview=True),
        None, MANAGERS),
    "valuations.record_valuation": (
        lambda w, a, _: valuations.record_valuation(w.db, actor=a, pool_id=w.pool.id,
                                                    valuation_date=_valuation_day(w), total_assets="100.00", key=None),
        None, MANAGERS),
    "valuations.declare_distribution(preview)": (
        lambda w, a, _: valuations.declare_distribution(w.db, actor=a, pool_id=w.pool.id, record_date=DAY,
                                                        total="1.00", key=None, preview=True),
        None, MANAGERS),
    "valuations.declare_distribution": (
        lambda w, a, _: valuations.declare_distribution(w.db, actor=a, pool_id=w.pool.id, record_date=DAY,
                                                        total="1.00", key=w.key()),
        None, MANAGERS),
    "valuations.get_valuations": (
        lambda w, a, _: valuations.get_valuations(w.db, actor=a, pool_id=w.pool.id), None,
        {"admin", "manager", "analyst"}),
}


def counts(db) -> dict[str, int]:
    with db.read() as session:
        return {m.__tablename__: session.scalar(select(func.count()).select_from(m)) for m in TABLES}


@pytest.mark.parametrize("name", list(CASES))
def test_every_role(db, name):
    call, prepare, allowed = CASES[name]
    world = build(db)
    table: dict[str, str] = {}
    for role in ROLES:
        target = prepare(world) if prepare else None
        before = counts(db)
        try:
            call(world, world.actors[role], target)
            table[role] = "allowed"
        except PermissionDenied as exc:
            table[role] = "denied"
            assert exc.message, role
            assert counts(db) == before, f"{name} denied to {role} but wrote something"
    assert table == {role: "allowed" if role in allowed else "denied" for role in ROLES}


def test_listings_are_filtered(db):
    world = build(db)
    a = world.actors
    mine = ledger.list_transactions(db, actor=a["investor"], pool_id=world.pool.id)
    assert mine and all(t.investor_id == world.investor.id for t in mine)
    assert ledger.list_transactions(db, actor=a["other_investor"], pool_id=world.pool.id) == []
    assert ledger.list_transactions(db, actor=a["other_manager"], pool_id=world.pool.id) == []
    assert len(ledger.list_transactions(db, actor=a["analyst"], pool_id=world.pool.id)) == len(mine)
    codes = {role: {p.code for p in pools.list_pools(db, actor=a[role])} for role in ROLES}
    assert world.pool.code in codes["manager"] and world.pool.code not in codes["other_manager"]
    assert len(codes["admin"]) == len(codes["analyst"]) == 2
    # investors see open pools and the pools they hold, never drafts of others
    draft = pools.create_pool(db, actor=a["admin"], code="SECRET", settings=pools.PoolSettings(name="Draft"), draft=True)
    assert "SECRET" not in {p.code for p in pools.list_pools(db, actor=a["investor"])}
    with pytest.raises(PermissionDenied, match="You do not hold units in this pool."):
        pools.get_pool(db, actor=a["investor"], pool_id=draft.id)


def test_investors_cannot_record_money_already_received(db):
    world = build(db)
    before = counts(db)
    with pytest.raises(PermissionDenied, match="Only a manager can record money already received."):
        ledger.record_contribution(db, actor=world.investor, pool_id=world.pool.id, investor_id=world.investor.id,
                                   amount="10.00", key=None, effective_date=DAY, payment="received")
    with pytest.raises(PermissionDenied, match="Investors may only make requests for themselves."):
        ledger.record_contribution(db, actor=world.actors["other_investor"], pool_id=world.pool.id,
                                   investor_id=world.investor.id, amount="10.00", key=None, effective_date=DAY)
    with pytest.raises(PermissionDenied, match="A manager may only add investors."):
        users.create_user(db, actor=world.actors["manager"], email="boss@example.com", name="Boss", role="admin")
    with pytest.raises(PermissionDenied, match="An analyst may not record transactions in this pool."):
        ledger.record_contribution(db, actor=world.actors["analyst"], pool_id=world.pool.id,
                                   investor_id=world.investor.id, amount="10.00", key=None, effective_date=DAY)
    with pytest.raises(PermissionDenied, match="An investor may not list users."):
        users.list_users(db, actor=world.investor)
    # a pool's manager may edit it but not choose who manages it
    with pytest.raises(PermissionDenied, match="A manager may not change a pool's managers."):
        pools.update_pool(db, actor=world.actors["manager"], pool_id=world.pool.id, expected_version=world.pool.version,
                          settings=pools.PoolSettings(name="Mine now"), manager_ids=[world.actors["manager"].id])
    assert counts(db) == before
    assert pools.get_pool(db, actor=world.sys, pool_id=world.pool.id).name == "Test pool"


def test_an_idempotency_key_cannot_replay_someone_elses_result(db):
    world = build(db)
    mine = ledger.record_contribution(db, actor=world.investor, pool_id=world.pool.id, investor_id=world.investor.id,
                                      amount="10.00", key="my-key", effective_date=DAY)
    before = counts(db)
    # the same key and the very same parameters, sent by someone who may not see that request
    for intruder in ("other_investor", "analyst", "other_manager"):
        with pytest.raises((PermissionDenied, IdempotencyError)):
            ledger.record_contribution(db, actor=world.actors[intruder], pool_id=world.pool.id,
                                       investor_id=world.investor.id, amount="10.00", key="my-key",
                                       effective_date=DAY)
    assert counts(db) == before
    again = ledger.record_contribution(db, actor=world.investor, pool_id=world.pool.id,
                                       investor_id=world.investor.id, amount="10.00", key="my-key",
                                       effective_date=DAY)
    assert (again.id, again.replayed) == (mine.id, True)


FIGURES = ("units_outstanding", "total_assets", "fees_payable", "nav_per_unit", "high_water_mark", "manager_ids")


def test_what_each_role_sees_of_a_pool(db):
    """An investor sees a pool's figures only where they hold units or were invited; of any other open
    pool only its terms. Managers of other pools see nothing of it."""
    from core.services import auth

    world = build(db)  # the investor holds 10 units of world.pool (100.00 in)
    a = world.actors
    invited = auth.invite_user(db, actor=a["manager"], email="invited@example.com", name="Ina", role="investor",
                               pool_id=world.pool.id)
    a["invited_investor"] = auth.accept_invitation(db, token=invited.link.split("invite=")[1],
                                                   password="a-long-password")
    seen: dict[str, object] = {}
    for role, actor in a.items():
        try:
            seen[role] = pools.get_pool(db, actor=actor, pool_id=world.pool.id)
        except PermissionDenied:
            seen[role] = "denied"
        listed = {p.code: p for p in pools.list_pools(db, actor=actor)}
        if seen[role] == "denied":
            assert world.pool.code not in listed, role
        else:  # the list shows what get_pool shows
            assert listed[world.pool.code] == seen[role], role

    for role in ("admin", "manager", "analyst"):
        assert seen[role].total_assets == Decimal("100.00"), role
        assert seen[role].units_outstanding == Decimal("10.000000"), role
        assert seen[role].manager_ids == (a["manager"].id,), role
    assert seen["other_manager"] == "denied"
    for role in ("investor", "invited_investor"):  # their pool: the figures, but not who manages it
        view = seen[role]
        assert (view.total_assets, view.units_outstanding, view.nav_per_unit) == (
            Decimal("100.00"), Decimal("10.000000"), Decimal("10.000000")), role
        assert view.manager_ids == (), role
    public = seen["other_investor"]  # an open pool they have nothing to do with: the terms only
    assert isinstance(public, pools.PoolSummary)
    assert (public.code, public.name, public.currency, public.open_for_contributions) == (
        world.pool.code, "Test pool", "USD", True)
    assert (public.minimum_contribution, public.management_fee_bps, public.performance_fee_rate) == (
        Decimal("0"), 0, Decimal("0"))
    for name in FIGURES:
        assert not hasattr(public, name), name
    # once they hold units, the figures are theirs to see
    ledger.record_contribution(db, actor=world.sys, pool_id=world.pool.id, investor_id=a["other_investor"].id,
                               amount="50.00", key=None, effective_date=DAY, payment="received")
    assert pools.get_pool(db, actor=a["other_investor"], pool_id=world.pool.id).total_assets == Decimal("150.00")
    # a closed pool is gone for outsiders, kept for its holders
    closed = pools.set_pool_status(db, actor=a["admin"], pool_id=world.pool.id, status="closed",
                                   expected_version=pools.get_pool(db, actor=a["admin"], pool_id=world.pool.id).version)
    outsider = make_user(db, "investor")
    with pytest.raises(PermissionDenied, match="You do not hold units in this pool."):
        pools.get_pool(db, actor=outsider, pool_id=closed.id)
    assert closed.code not in {p.code for p in pools.list_pools(db, actor=outsider)}
    assert pools.get_pool(db, actor=a["investor"], pool_id=closed.id).units_outstanding == Decimal("15.000000")
