"""`pooldesk reconcile` against edits made behind the services' back that keep every total balanced.

Each posting's audit row carries the digest of the legs it wrote; reconcile reads the legs back and
names the posting whose legs are no longer those. Runs on SQLite (digests built in Python) and on
PostgreSQL (the one-trip flow and the import build them in SQL): the same books reconcile on both.
"""
from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import text

from core.services import ledger, valuations
from core.services.importer import import_csv
from core.services.reconcile import reconcile
from tests.factories import make_pool, make_user

DAY = date(2024, 1, 2)
MONEY, UNITS = 10_000, 1_000_000  # the journal's integer scales


def received(db, manager, pool, investor, amount, key=None):
    return ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount=amount,
                                      key=key, effective_date=DAY, payment="received")


@pytest.fixture
def books(db):
    """Every kind of posting: flows (keyed one-trip and not), a valuation, a distribution with a
    reinvestment, a reversal, a forward-priced settlement, and an import into a second pool."""
    manager = make_user(db, "manager")
    ann = make_user(db, "investor", email="ann@example.com")
    bob = make_user(db, "investor", email="bob@example.com")
    pool = make_pool(db, manager, code="BOOKS")
    first = received(db, manager, pool, ann, "1000.00")
    second = received(db, manager, pool, bob, "1000.00", key="bob-1")
    received(db, manager, pool, bob, "500.00", key="bob-2")  # one trip on PostgreSQL: the pool is known
    ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=ann.id, units="5", key=None,
                             effective_date=DAY, payment="received")
    ledger.set_reinvestment(db, actor=ann, pool_id=pool.id, investor_id=ann.id, reinvest=True)
    valuation = valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 2, 1),
                                            total_assets="2700.00", key=None)
    distribution = valuations.declare_distribution(db, actor=manager, pool_id=pool.id, record_date=date(2024, 2, 1),
                                                   total="100.00", key=None)
    late = received(db, manager, pool, ann, "50.00")
    reversal = ledger.reverse_transaction(db, actor=manager, transaction_id=late.id, reason="entered twice")
    forward = make_pool(db, manager, code="FWD", pricing_policy="forward")
    waiting = received(db, manager, forward, ann, "100.00")
    valuations.record_valuation(db, actor=manager, pool_id=forward.id, valuation_date=date(2024, 1, 3),
                                total_assets="0", key=None)
    make_pool(db, manager, code="IMPORTED")
    import_csv(db, actor=manager, pool_code="IMPORTED", source=(
        "date,type,investor,amount,units,note\n"
        "2024-01-02,contribution,ann@example.com,300.00,,\n"
        "2024-01-02,contribution,bob@example.com,700.00,,\n"
        "2024-01-10,valuation,,1100.00,,\n"))
    assert reconcile(db) == []
    return dict(db=db, pool=pool, ann=ann, bob=bob, first=first, second=second, valuation=valuation,
                distribution=distribution, reversal=reversal, waiting=waiting)


def sql(db, statement: str, **params) -> None:
    with db.engine.begin() as conn:
        assert conn.execute(text(statement), params).rowcount >= 1


def changed(what: str) -> str:
    return f"{what}: its journal legs are not the ones the audit log recorded"


def test_money_and_units_moved_between_two_investors_are_reported(books):
    """100.00 and 10 units move from Bob's contribution to Ann's, legs and positions alike: every
    transaction still balances and every position matches the journal, so only the digests can tell."""
    db, first, second = books["db"], books["first"], books["second"]
    for tx, sign in ((first.id, -1), (second.id, 1)):
        sql(db, "UPDATE journal_entries SET amount = amount + :m, units = units - :u "
                "WHERE transaction_id = :tx AND account = 'investor'", m=sign * 100 * MONEY, u=sign * 10 * UNITS, tx=tx)
        sql(db, "UPDATE journal_entries SET amount = amount - :m, units = units + :u "
                "WHERE transaction_id = :tx AND account = 'pool'", m=sign * 100 * MONEY, u=sign * 10 * UNITS, tx=tx)
    sql(db, "UPDATE positions SET units = units + :u WHERE investor_id = :ann AND pool_id = :pool",
        u=10 * UNITS, ann=books["ann"].id, pool=books["pool"].id)
    sql(db, "UPDATE positions SET units = units - :u WHERE investor_id = :bob AND pool_id = :pool",
        u=10 * UNITS, bob=books["bob"].id, pool=books["pool"].id)
    problems = reconcile(db)
    assert [p.split(" (audit row")[0] for p in problems] == [
        changed(f"transaction {first.id}"), changed(f"transaction {second.id}")]


def test_a_position_edited_by_sql_is_reported(books):
    db, ann, pool = books["db"], books["ann"], books["pool"]
    sql(db, "UPDATE positions SET units = units + :u WHERE investor_id = :ann AND pool_id = :pool",
        u=1 * UNITS, ann=ann.id, pool=pool.id)
    assert f"pool BOOKS, investor {ann.id}: position " in reconcile(db)[0]


@pytest.mark.parametrize("posting", ["valuation", "distribution", "reversal", "waiting", "import"])
def test_a_balanced_edit_of_any_posting_names_it(books, posting):
    db = books["db"]
    if posting == "valuation":
        where, what = f"valuation_id = {books['valuation'].valuation_id}", f"valuation {books['valuation'].valuation_id}"
        sql(db, f"UPDATE journal_entries SET amount = amount + 1 WHERE {where} AND account = 'pool'")
        sql(db, f"UPDATE journal_entries SET amount = amount - 1 WHERE {where} AND account = 'gain'")
        sql(db, "UPDATE pools SET total_assets = total_assets + 1 WHERE code = 'BOOKS'")
    elif posting == "distribution":  # Bob's share goes to Ann: the distribution and the books still balance
        where = f"distribution_id = {books['distribution'].distribution_id} AND account = 'distribution'"
        what = f"distribution {books['distribution'].distribution_id}"
        sql(db, f"UPDATE journal_entries SET amount = amount + 1 WHERE {where} AND investor_id = {books['ann'].id}")
        sql(db, f"UPDATE journal_entries SET amount = amount - 1 WHERE {where} AND investor_id = {books['bob'].id}")
    elif posting in ("reversal", "waiting"):
        tx = books[posting].id
        what = f"transaction {tx}"
        hidden_flow_edit(db, tx)
    else:  # two imported legs of the same transaction
        with db.engine.connect() as conn:
            tx = conn.execute(text("SELECT min(j.transaction_id) FROM journal_entries j JOIN pools p ON p.id = j.pool_id "
                                   "WHERE p.code = 'IMPORTED'")).scalar()
            audit_row = conn.execute(text("SELECT max(id) FROM audit_log WHERE action = 'import.apply'")).scalar()
        what = f"the import of audit row {audit_row}"
        hidden_flow_edit(db, tx)
    problems = reconcile(db)
    assert len(problems) == 1 and problems[0].startswith(changed(what)), problems


def hidden_flow_edit(db, tx: int) -> None:
    """0.0001 more for the pool, 0.0001 less on the investor's leg, and the pool's total to match."""
    sql(db, f"UPDATE journal_entries SET amount = amount + 1 WHERE transaction_id = {tx} AND account = 'pool'")
    sql(db, f"UPDATE journal_entries SET amount = amount - 1 WHERE transaction_id = {tx} AND account = 'investor'")
    sql(db, f"UPDATE pools SET total_assets = total_assets + 1 WHERE id = (SELECT pool_id FROM transactions "
            f"WHERE id = {tx})")


def test_deleted_legs_are_reported(books):
    db, first = books["db"], books["first"]
    sql(db, f"DELETE FROM journal_entries WHERE transaction_id = {first.id}")
    assert any(p.startswith(changed(f"transaction {first.id}")) for p in reconcile(db))
