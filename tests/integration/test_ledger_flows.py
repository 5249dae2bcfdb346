"""Contributions and withdrawals through their whole life, on SQLite and PostgreSQL.

requested -> pending -> settled | failed | cancelled; reversals; reinvested
distributions; forward pricing; idempotency keys; optimistic concurrency.
After every scenario the journal must reconcile with the positions.
"""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from core.db.models import AuditEvent, JournalEntry, OutboxMessage, Position, Transaction
from core.domain.errors import ConflictError, IdempotencyError, ValidationError
from core.services import ledger, pools, users, valuations
from core.services.reconcile import reconcile
from tests.factories import make_pool, make_user

D = Decimal
DAY = date(2024, 1, 2)


def counts(db) -> dict[str, int]:
    with db.read() as session:
        return {model.__tablename__: session.scalar(select(func.count()).select_from(model))
                for model in (Transaction, JournalEntry, AuditEvent, OutboxMessage)}


def holding(db, pool_id, investor_id) -> Decimal:
    with db.read() as session:
        position = session.get(Position, (pool_id, investor_id))
        return position.units if position else D(0)


def jobs(db, job: str) -> list[dict]:
    with db.read() as session:
        return [m.payload for m in session.scalars(select(OutboxMessage).where(OutboxMessage.job == job)
                                                   .order_by(OutboxMessage.id))]


@pytest.fixture
def setup(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager)
    return db, manager, investor, pool


def contribute(db, actor, pool, investor, amount="1000.00", key=None, payment="received", day=DAY):
    return ledger.record_contribution(db, actor=actor, pool_id=pool.id, investor_id=investor.id, amount=amount,
                                      key=key, effective_date=day, payment=payment)


# --- lifecycle ------------------------------------------------------------------------

def test_request_approve_collect_settle(setup):
    db, manager, investor, pool = setup
    request = contribute(db, investor, pool, investor, payment="gateway")
    assert (request.status, request.source, request.units) == ("requested", "investor", None)
    assert jobs(db, "jobs.notify.dispatch_event")[-1]["event"] == "contribution_requested"
    assert jobs(db, "jobs.payments.collect_contribution") == []

    approved = ledger.approve_request(db, actor=manager, transaction_id=request.id, expected_version=request.version)
    assert approved.status == "pending"
    assert approved.units is None and holding(db, pool.id, investor.id) == 0
    assert jobs(db, "jobs.payments.collect_contribution") == [{"transaction_id": request.id}]

    settled = ledger.confirm_payment(db, actor=manager, transaction_id=request.id)
    assert (settled.status, settled.units, settled.price) == ("settled", D("100.000000"), D("10.000000"))
    assert settled.settled_at is not None
    assert holding(db, pool.id, investor.id) == D("100.000000")
    # a second confirmation from the gateway changes nothing
    before = counts(db)
    again = ledger.confirm_payment(db, actor=manager, transaction_id=request.id)
    assert (again.status, again.units) == ("settled", D("100.000000"))
    assert counts(db)["journal_entries"] == before["journal_entries"]
    assert holding(db, pool.id, investor.id) == D("100.000000")
    assert reconcile(db) == []


def test_failed_payment_changes_no_holding(setup):
    db, manager, investor, pool = setup
    contribute(db, manager, pool, investor, "500.00")
    pending = contribute(db, manager, pool, investor, "1000.00", payment="gateway")
    assert pending.status == "pending"
    journal_before = counts(db)["journal_entries"]
    failed = ledger.fail_transaction(db, actor=manager, transaction_id=pending.id, reason="card declined")
    assert (failed.status, failed.failure_reason, failed.units) == ("failed", "card declined", None)
    assert holding(db, pool.id, investor.id) == D("50.000000")
    assert counts(db)["journal_entries"] == journal_before
    assert pools.get_pool(db, actor=manager, pool_id=pool.id).total_assets == D("500.00")
    # a late confirmation of a failed payment issues nothing
    assert ledger.confirm_payment(db, actor=manager, transaction_id=pending.id).status == "failed"
    assert holding(db, pool.id, investor.id) == D("50.000000")
    assert jobs(db, "jobs.notify.dispatch_event")[-1]["event"] == "contribution_failed"
    assert reconcile(db) == []


def test_failed_withdrawal_releases_the_reserved_units(setup):
    db, manager, investor, pool = setup
    contribute(db, manager, pool, investor, "1000.00")
    pending = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, all_units=True,
                                       key=None, effective_date=DAY)
    assert (pending.status, pending.units, pending.amount) == ("pending", D("100.000000"), D("1000.00"))
    assert jobs(db, "jobs.payments.pay_withdrawal") == [{"transaction_id": pending.id}]
    # the quoted units are promised: nothing more can be withdrawn meanwhile
    with pytest.raises(ValidationError, match="holds no units in this pool to withdraw"):
        ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, units="1", key=None,
                                 effective_date=DAY)
    ledger.fail_transaction(db, actor=manager, transaction_id=pending.id, reason="bank rejected")
    assert holding(db, pool.id, investor.id) == D("100.000000")
    again = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, units="1",
                                     key=None, effective_date=DAY, payment="received")
    assert (again.status, again.amount) == ("settled", D("10.00"))
    assert reconcile(db) == []


def test_cancel_request_and_pending(setup):
    db, manager, investor, pool = setup
    request = contribute(db, investor, pool, investor, payment="gateway")
    cancelled = ledger.cancel_transaction(db, actor=investor, transaction_id=request.id, reason="changed my mind")
    assert (cancelled.status, cancelled.failure_reason) == ("cancelled", "changed my mind")
    pending = contribute(db, manager, pool, investor, payment="gateway")
    assert ledger.cancel_transaction(db, actor=manager, transaction_id=pending.id, reason="duplicate").status == "cancelled"
    with pytest.raises(ValidationError, match="This transaction is cancelled and can no longer be cancelled."):
        ledger.cancel_transaction(db, actor=manager, transaction_id=pending.id, reason="again")
    settled = contribute(db, manager, pool, investor)
    with pytest.raises(ValidationError, match="This transaction is settled and can no longer be cancelled."):
        ledger.cancel_transaction(db, actor=manager, transaction_id=settled.id, reason="oops")
    assert holding(db, pool.id, investor.id) == D("100.000000")
    events = [p["event"] for p in jobs(db, "jobs.notify.dispatch_event")]
    assert events.count("contribution_cancelled") == 2
    assert reconcile(db) == []


def test_approving_twice_or_a_stale_version_is_refused(setup):
    db, manager, investor, pool = setup
    request = contribute(db, investor, pool, investor, payment="gateway")
    ledger.approve_request(db, actor=manager, transaction_id=request.id, expected_version=request.version)
    with pytest.raises(ConflictError, match="This request was changed by someone else"):
        ledger.approve_request(db, actor=manager, transaction_id=request.id, expected_version=request.version)


# --- reversals ------------------------------------------------------------------------

def test_reversing_a_contribution_takes_the_units_back(setup):
    db, manager, investor, pool = setup
    original = contribute(db, manager, pool, investor, "1000.00")
    reversal = ledger.reverse_transaction(db, actor=manager, transaction_id=original.id, reason="entered twice")
    assert (reversal.kind, reversal.status, reversal.units, reversal.amount, reversal.price) == (
        "reversal", "settled", D("100.000000"), D("1000.00"), D("10.000000"))
    assert holding(db, pool.id, investor.id) == 0
    state = pools.get_pool(db, actor=manager, pool_id=pool.id)
    assert (state.units_outstanding, state.total_assets) == (0, 0)
    # the original stays as it was: settled entries are never edited
    assert ledger.get_transaction(db, actor=manager, transaction_id=original.id).status == "settled"
    with db.read() as session:
        legs = session.execute(select(JournalEntry.account, JournalEntry.amount, JournalEntry.units)
                               .where(JournalEntry.transaction_id == reversal.id).order_by(JournalEntry.id)).all()
    assert legs == [("pool", D("-1000.00"), D("100.000000")), ("investor", D("1000.00"), D("-100.000000"))]
    with pytest.raises(ValidationError, match="This transaction has already been reversed."):
        ledger.reverse_transaction(db, actor=manager, transaction_id=original.id, reason="again")
    # the reversal is dated today, so the books cannot be valued at an earlier date any more
    assert reversal.effective_date == date.today()
    with pytest.raises(ValidationError) as err:
        valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 2, 1),
                                    total_assets="0", key=None)
    assert err.value.message == (f"Flows are already recorded up to {date.today()}; "
                                 "a valuation cannot be dated before them.")
    assert reconcile(db) == []


def test_reversing_a_withdrawal_gives_the_units_back(setup):
    db, manager, investor, pool = setup
    contribute(db, manager, pool, investor, "1000.00")
    out = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="250.00",
                                   key=None, effective_date=DAY, payment="received")
    assert holding(db, pool.id, investor.id) == D("75.000000")
    ledger.reverse_transaction(db, actor=manager, transaction_id=out.id, reason="paid to the wrong account")
    assert holding(db, pool.id, investor.id) == D("100.000000")
    assert pools.get_pool(db, actor=manager, pool_id=pool.id).total_assets == D("1000.00")
    assert reconcile(db) == []


def test_a_contribution_whose_units_are_gone_cannot_be_reversed(setup):
    db, manager, investor, pool = setup
    original = contribute(db, manager, pool, investor, "1000.00")
    ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="500.00",
                             key=None, effective_date=DAY, payment="received")
    with pytest.raises(ValidationError, match="no longer holds the units"):
        ledger.reverse_transaction(db, actor=manager, transaction_id=original.id, reason="mistake")
    pending = contribute(db, manager, pool, investor, payment="gateway")
    with pytest.raises(ValidationError, match="Only settled contributions and withdrawals can be reversed."):
        ledger.reverse_transaction(db, actor=manager, transaction_id=pending.id, reason="mistake")
    with pytest.raises(ValidationError, match="Say why the transaction is reversed."):
        ledger.reverse_transaction(db, actor=manager, transaction_id=original.id, reason="  ")


# --- distributions with reinvestment -------------------------------------------------------

def test_reinvested_and_cash_distributions(setup):
    db, manager, investor, pool = setup
    cash_taker = make_user(db, "investor")
    contribute(db, manager, pool, investor, "1000.00")
    contribute(db, manager, pool, cash_taker, "3000.00")
    valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 2, 1),
                                total_assets="4400.00", key=None)  # p 11.00
    ledger.set_reinvestment(db, actor=investor, pool_id=pool.id, investor_id=investor.id, reinvest=True)
    result = valuations.declare_distribution(db, actor=manager, pool_id=pool.id, record_date=date(2024, 2, 1),
                                             total="400.00", key="d1")
    assert [(p.investor_id, p.units, p.amount, p.reinvest) for p in result.parts] == [
        (investor.id, D("100.000000"), D("100.00"), True), (cash_taker.id, D("300.000000"), D("300.00"), False)]
    assert (result.nav_per_unit_before, result.nav_per_unit_after) == (D("11.000000"), D("10.000000"))
    assert (result.total, result.per_unit, result.units_outstanding) == (D("400.00"), D("1.000000"), D("400.000000"))
    # 100.00 reinvested at 10.00: ten more units; the cash taker keeps 300 units
    assert holding(db, pool.id, investor.id) == D("110.000000")
    assert holding(db, pool.id, cash_taker.id) == D("300.000000")
    state = pools.get_pool(db, actor=manager, pool_id=pool.id)
    assert (state.units_outstanding, state.total_assets, state.nav_per_unit) == (
        D("410.000000"), D("4100.00"), D("10.000000"))
    with db.read() as session:
        position = session.get(Position, (pool.id, investor.id))
        assert (position.distributions, position.contributed) == (D("100.00"), D("1100.00"))
    # a replay of the same key pays nothing twice
    replay = valuations.declare_distribution(db, actor=manager, pool_id=pool.id, record_date=date(2024, 2, 1),
                                             total="400.00", key="d1")
    assert replay.replayed and replay.distribution_id == result.distribution_id
    assert (replay.parts, replay.nav_per_unit_before) == (result.parts, result.nav_per_unit_before)
    assert holding(db, pool.id, investor.id) == D("110.000000")
    assert reconcile(db) == []


# --- forward pricing ----------------------------------------------------------------------

@pytest.fixture
def forward(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager, pricing_policy="forward")
    first = contribute(db, manager, pool, investor, "1000.00", day=date(2024, 1, 2))
    valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 1, 3),
                                total_assets="0", key=None)
    assert ledger.get_transaction(db, actor=manager, transaction_id=first.id).units == D("100.000000")
    return db, manager, investor, pool


def test_forward_flows_settle_at_the_next_valuation(forward):
    db, manager, investor, pool = forward
    gateway = contribute(db, manager, pool, investor, "550.00", payment="gateway", day=date(2024, 1, 4))
    ledger.confirm_payment(db, actor=manager, transaction_id=gateway.id)
    waiting = ledger.get_transaction(db, actor=manager, transaction_id=gateway.id)
    assert (waiting.status, waiting.units, waiting.payment_received_at is not None) == ("pending", None, True)
    unpaid = contribute(db, manager, pool, investor, "100.00", payment="gateway", day=date(2024, 1, 4))
    by_units = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, units="10",
                                        key=None, effective_date=date(2024, 1, 4), payment="received")
    assert (by_units.status, by_units.amount, by_units.price) == ("pending", None, None)
    same_day = contribute(db, manager, pool, investor, "110.00", day=date(2024, 1, 10))
    assert holding(db, pool.id, investor.id) == D("100.000000")

    valuation = valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 1, 10),
                                            total_assets="1100.00", key=None)
    assert valuation.nav_per_unit == D("11.000000")
    got = {t.id: t for t in ledger.list_transactions(db, actor=manager, pool_id=pool.id)}
    assert (got[gateway.id].status, got[gateway.id].units, got[gateway.id].price) == (
        "settled", D("50.000000"), D("11.000000"))
    assert (got[by_units.id].status, got[by_units.id].amount, got[by_units.id].price) == (
        "settled", D("110.00"), D("11.000000"))
    assert got[unpaid.id].status == "pending"  # its money never came
    assert got[same_day.id].status == "pending"  # dated on the valuation day: waits for the next one
    assert holding(db, pool.id, investor.id) == D("140.000000")
    state = pools.get_pool(db, actor=manager, pool_id=pool.id)
    assert (state.units_outstanding, state.total_assets) == (D("140.000000"), D("1540.00"))

    valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 1, 20),
                                total_assets="1540.00", key=None)
    assert ledger.get_transaction(db, actor=manager, transaction_id=same_day.id).units == D("10.000000")
    assert reconcile(db) == []


def test_forward_gateway_withdrawal_is_priced_then_paid(forward):
    db, manager, investor, pool = forward
    out = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="220.00",
                                   key=None, effective_date=date(2024, 1, 4))
    assert (out.status, out.units, out.price) == ("pending", None, None)
    assert jobs(db, "jobs.payments.pay_withdrawal") == []
    valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 1, 10),
                                total_assets="1100.00", key=None)
    quoted = ledger.get_transaction(db, actor=manager, transaction_id=out.id)
    assert (quoted.status, quoted.units, quoted.amount, quoted.price) == (
        "pending", D("20.000000"), D("220.00"), D("11.000000"))
    assert jobs(db, "jobs.payments.pay_withdrawal") == [{"transaction_id": out.id}]
    assert holding(db, pool.id, investor.id) == D("100.000000")
    paid = ledger.confirm_payment(db, actor=manager, transaction_id=out.id)
    assert (paid.status, paid.units) == ("settled", D("20.000000"))
    assert holding(db, pool.id, investor.id) == D("80.000000")
    assert reconcile(db) == []


def test_forward_withdrawals_cannot_promise_the_same_units_twice(forward):
    db, manager, investor, pool = forward
    # Two requests for every unit, both waiting for the next valuation: only one can be priced and paid.
    first = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, units="100",
                                     key=None, effective_date=date(2024, 1, 4))
    second = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, units="100",
                                      key=None, effective_date=date(2024, 1, 5))
    valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 1, 10),
                                total_assets="1100.00", key=None)
    got = {t.id: t for t in ledger.list_transactions(db, actor=manager, pool_id=pool.id)}
    assert (got[first.id].status, got[first.id].units) == ("pending", D("100.000000"))
    assert got[second.id].status == "failed"
    assert "available units" in got[second.id].failure_reason
    assert jobs(db, "jobs.payments.pay_withdrawal") == [{"transaction_id": first.id}]
    ledger.confirm_payment(db, actor=manager, transaction_id=first.id)
    assert holding(db, pool.id, investor.id) == 0
    assert reconcile(db) == []


# --- idempotency -----------------------------------------------------------------------------

def test_same_key_same_request_returns_the_first_result_and_posts_nothing(setup):
    db, manager, investor, pool = setup
    first = contribute(db, manager, pool, investor, "1000.00", key="k-1")
    assert first.replayed is False
    before = counts(db)
    second = contribute(db, manager, pool, investor, "1000.00", key="k-1")
    assert second.replayed is True
    assert (second.id, second.units, second.status) == (first.id, first.units, first.status)
    assert counts(db) == before
    assert holding(db, pool.id, investor.id) == D("100.000000")
    # the same holds for withdrawals and valuations
    out = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, units="5",
                                   key="w-1", effective_date=DAY, payment="received")
    again = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, units="5",
                                     key="w-1", effective_date=DAY, payment="received")
    assert (again.id, again.replayed) == (out.id, True)
    v1 = valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 2, 1),
                                     total_assets="1000.00", key="v-1")
    v2 = valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 2, 1),
                                     total_assets="1000.00", key="v-1")
    assert (v2.valuation_id, v2.replayed, v2.nav_per_unit) == (v1.valuation_id, True, v1.nav_per_unit)
    assert holding(db, pool.id, investor.id) == D("95.000000")
    assert reconcile(db) == []


def test_same_key_different_request_is_refused(setup):
    db, manager, investor, pool = setup
    contribute(db, manager, pool, investor, "1000.00", key="k-1")
    before = counts(db)
    message = "This idempotency key was already used for a different request; use a new key for a new request."
    with pytest.raises(IdempotencyError) as err:
        contribute(db, manager, pool, investor, "1000.01", key="k-1")
    assert err.value.message == message
    with pytest.raises(IdempotencyError):
        ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, units="1",
                                 key="k-1", effective_date=DAY, payment="received")
    assert counts(db) == before


def test_a_refused_request_does_not_burn_its_key(setup):
    db, manager, investor, pool = setup
    with pytest.raises(ValidationError):
        ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, units="1",
                                 key="k-2", effective_date=DAY, payment="received")
    contribute(db, manager, pool, investor, "1000.00")
    out = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, units="1",
                                   key="k-2", effective_date=DAY, payment="received")
    assert (out.status, out.replayed) == ("settled", False)


# --- optimistic concurrency ----------------------------------------------------------------------

def test_stale_pool_edit_is_a_conflict(setup):
    db, manager, investor, pool = setup
    other_tab = pools.get_pool(db, actor=manager, pool_id=pool.id)
    edited = pools.update_pool(db, actor=manager, pool_id=pool.id, expected_version=pool.version,
                               settings=pools.PoolSettings(name="Renamed", management_fee_bps=50))
    assert (edited.name, edited.version) == ("Renamed", pool.version + 1)
    before = counts(db)
    with pytest.raises(ConflictError) as err:
        pools.update_pool(db, actor=manager, pool_id=pool.id, expected_version=other_tab.version,
                          settings=pools.PoolSettings(name="Other name"))
    assert "changed by someone else" in err.value.message
    assert err.value.message == "This pool was changed by someone else since you opened it. Reload and try again."
    assert counts(db) == before
    assert pools.get_pool(db, actor=manager, pool_id=pool.id).name == "Renamed"
    with pytest.raises(ConflictError, match="changed by someone else"):
        pools.set_pool_status(db, actor=manager, pool_id=pool.id, status="closed", expected_version=other_tab.version)


def test_stale_profile_edit_is_a_conflict(setup):
    db, manager, investor, pool = setup
    me = users.get_user(db, actor=investor, user_id=investor.id)
    users.update_profile(db, actor=investor, user_id=investor.id, expected_version=me.version, name="New name")
    with pytest.raises(ConflictError, match="This profile was changed by someone else"):
        users.update_profile(db, actor=investor, user_id=investor.id, expected_version=me.version, name="Stale")
    assert users.get_user(db, actor=investor, user_id=investor.id).name == "New name"


def test_stale_cancel_of_a_pending_transaction_is_a_conflict(setup):
    db, manager, investor, pool = setup
    request = contribute(db, investor, pool, investor, payment="gateway")
    ledger.approve_request(db, actor=manager, transaction_id=request.id, expected_version=request.version)
    with pytest.raises(ConflictError, match="This transaction was changed by someone else"):
        ledger.cancel_transaction(db, actor=manager, transaction_id=request.id, reason="x",
                                  expected_version=request.version)
    assert ledger.get_transaction(db, actor=manager, transaction_id=request.id).status == "pending"


def test_a_pool_that_emptied_starts_again_at_the_initial_price(setup):
    db, manager, investor, pool = setup
    contribute(db, manager, pool, investor, "1000.00")
    valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 2, 1),
                                total_assets="1050.00", key=None)  # p 10.50
    out = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, all_units=True,
                                   key=None, effective_date=date(2024, 2, 2), payment="received")
    assert out.amount == D("1050.00")
    newcomer, second = make_user(db, "investor"), make_user(db, "investor")
    # rule 1: with no units outstanding, p is the initial unit price, for this flow and the ones after it
    first = contribute(db, manager, pool, newcomer, "100.00", day=date(2024, 2, 3))
    assert (first.price, first.units) == (D("10.000000"), D("10.000000"))
    assert pools.get_pool(db, actor=manager, pool_id=pool.id).nav_per_unit == D("10.000000")
    after = contribute(db, manager, pool, second, "100.00", day=date(2024, 2, 3))
    assert (after.price, after.units) == (D("10.000000"), D("10.000000"))
    assert reconcile(db) == []


def test_pricing_policy_cannot_change_while_flows_wait(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager, pricing_policy="forward")
    waiting = contribute(db, manager, pool, investor, "100.00")
    assert waiting.status == "pending"
    before = counts(db)
    with pytest.raises(ValidationError) as err:
        pools.update_pool(db, actor=manager, pool_id=pool.id, expected_version=pool.version,
                          settings=pools.PoolSettings(name="Test pool", pricing_policy="latest"))
    assert err.value.message == ("The pricing policy cannot change while 1 transaction is pending; "
                                 "let it settle, or fail or cancel it first.")
    assert counts(db) == before
    # the waiting flow is still priced by the policy it arrived under
    valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 1, 3),
                                total_assets="0", key=None)
    assert ledger.get_transaction(db, actor=manager, transaction_id=waiting.id).status == "settled"
    edited = pools.update_pool(db, actor=manager, pool_id=pool.id, expected_version=pool.version,
                               settings=pools.PoolSettings(name="Test pool", pricing_policy="latest"))
    assert edited.pricing_policy == "latest"
