"""A keyed settled flow on PostgreSQL goes in one round trip once its pool's currency is known
(migration 0007): the database runs the checks, and every refusal still comes back in the words
of the other paths, with nothing written and the key still free."""
from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text

from core.db.models import AuditEvent, IdempotencyKey, JournalEntry, OutboxMessage, Position, Transaction
from core.domain.errors import NotFound, PermissionDenied, ValidationError
from core.services import ledger, pools, users
from core.services.reconcile import reconcile
from tests.factories import make_pool, make_user

DAY = date(2024, 1, 2)
TABLES = (Transaction, JournalEntry, AuditEvent, OutboxMessage, Position, IdempotencyKey)


def counts(db) -> dict[str, int]:
    with db.read() as session:
        return {m.__tablename__: session.scalar(select(func.count()).select_from(m)) for m in TABLES}


def contribute(db, actor, pool_id, investor_id, amount, key, day=DAY):
    return ledger.record_contribution(db, actor=actor, pool_id=pool_id, investor_id=investor_id, amount=amount,
                                      key=key, effective_date=day, payment="received")


@pytest.fixture
def world(pg_db):
    """A USD pool (minimum 50) and a JPY pool, each with one holder, both already posted to."""
    manager = make_user(pg_db, "manager")
    investor = make_user(pg_db, "investor")
    usd = make_pool(pg_db, manager, code="ONETRIP", minimum_contribution="50")
    yen = make_pool(pg_db, manager, code="ONEYEN", currency="JPY", initial_unit_price="1000")
    contribute(pg_db, manager, usd.id, investor.id, "1000.00", "prime-usd")
    contribute(pg_db, manager, yen.id, investor.id, "100000", "prime-yen")
    return pg_db, manager, investor, usd, yen


@pytest.fixture
def one_trip(monkeypatch):
    """Fails the test if a posting reads the pool before posting (the two-trip way)."""
    monkeypatch.setattr(ledger, "_FLOW_CONTEXT", "SELECT 1/0 AS read_before_posting")


@pytest.fixture
def statements(monkeypatch):
    """The statements the posting path sends, in order."""
    sent: list[str] = []
    call = ledger._call

    def spy(conn, raw, query, **kw):
        sent.append(query)
        return call(conn, raw, query, **kw)

    monkeypatch.setattr(ledger, "_call", spy)
    return sent


def refused_with_key(db, statements, error, message, call, key, *, by_posting=False):
    """The database's checks refuse the call first (or, ``by_posting``, the posting itself); it is
    refused with exactly ``message``, writes nothing, and leaves ``key`` unused."""
    before = counts(db)
    statements.clear()
    with pytest.raises(error) as err:
        call(key)
    assert err.value.message == message
    assert statements == ([ledger._POST_CHECKED_FLOW] if by_posting
                          else [ledger._POST_CHECKED_FLOW, ledger._FLOW_CONTEXT])
    assert counts(db) == before
    with db.read() as session:
        assert session.get(IdempotencyKey, key) is None


def test_a_known_pool_takes_a_keyed_flow_in_one_statement(world, one_trip):
    db, manager, investor, usd, _ = world
    view = contribute(db, manager, usd.id, investor.id, "250.00", "one-trip")
    assert (view.status, view.units, view.price) == ("settled", Decimal("25.000000"), Decimal("10.000000"))
    out = ledger.record_withdrawal(db, actor=manager, pool_id=usd.id, investor_id=investor.id, units="5",
                                   key="one-trip-out", effective_date=DAY, payment="received")
    assert (out.amount, out.units) == (Decimal("50.00"), Decimal("5.000000"))
    # the same key again is the same transaction, nothing new
    assert contribute(db, manager, usd.id, investor.id, "250.00", "one-trip").id == view.id
    with db.read() as session:
        assert session.get(Position, (usd.id, investor.id)).units == Decimal("120.000000")
    assert reconcile(db) == []


def test_refusals_on_the_one_trip_path_say_what_the_other_paths_say(world, statements):
    db, manager, investor, usd, yen = world
    refused_with_key(db, statements, ValidationError, "The date 2023-12-31 is before the pool's inception (2024-01-01).",
                     lambda k: contribute(db, manager, usd.id, investor.id, "100", k, day=date(2023, 12, 31)),
                     "early")
    refused_with_key(db, statements, ValidationError,
                     f"The date {date.today() + timedelta(days=1)} is in the future (today is {date.today()}).",
                     lambda k: contribute(db, manager, usd.id, investor.id, "100", k,
                                          day=date.today() + timedelta(days=1)), "future")
    refused_with_key(db, statements, ValidationError, "The minimum contribution to ONETRIP is 50.00 USD.",
                     lambda k: contribute(db, manager, usd.id, investor.id, "49.99", k), "small")
    refused_with_key(db, statements, ValidationError, "amount: JPY has 0 decimal places; 1000.5 has more.",
                     lambda k: contribute(db, manager, yen.id, investor.id, "1000.5", k), "decimals")
    refused_with_key(db, statements, NotFound, f"No investor with id {manager.id}.",
                     lambda k: contribute(db, manager, usd.id, manager.id, "100", k), "not-an-investor")
    refused_with_key(db, statements, NotFound, "No investor with id 999999.",
                     lambda k: contribute(db, manager, usd.id, 999999, "100", k), "nobody")
    stranger = make_user(db, "manager")
    before = counts(db)
    with pytest.raises(PermissionDenied):
        contribute(db, stranger, usd.id, investor.id, "100", "not-my-pool")
    assert counts(db) == before
    refused_with_key(db, statements, ValidationError,
                     "The withdrawal needs 100.000001 units but the investor holds 100.000000 available units.",
                     lambda k: ledger.record_withdrawal(db, actor=manager, pool_id=usd.id, investor_id=investor.id,
                                                        units="100.000001", key=k, effective_date=DAY,
                                                        payment="received"), "too-many-units", by_posting=True)
    admin = make_user(db, "admin")
    users.set_status(db, actor=admin, user_id=investor.id, status="deactivated")
    refused_with_key(db, statements, ValidationError, f"{investor.email} is deactivated and cannot transact.",
                     lambda k: contribute(db, manager, usd.id, investor.id, "100", k), "deactivated")
    users.set_status(db, actor=admin, user_id=investor.id, status="active")
    pools.set_pool_status(db, actor=manager, pool_id=usd.id, status="closed",
                          expected_version=pools.get_pool(db, actor=manager, pool_id=usd.id).version)
    refused_with_key(db, statements, ValidationError, "Pool ONETRIP is closed: it takes no contributions or withdrawals.",
                     lambda k: contribute(db, manager, usd.id, investor.id, "100", k), "closed")
    # a refused request did not use up its key
    assert contribute(db, manager, yen.id, investor.id, "1000", "decimals").status == "settled"
    assert reconcile(db) == []


def test_a_pool_whose_currency_changed_is_checked_in_its_new_currency(world, statements):
    db, manager, investor, usd, _ = world
    with db.transaction() as session:  # behind the services' back: the cached currency is now wrong
        session.execute(text("UPDATE pools SET currency = 'JPY' WHERE id = :id"), {"id": usd.id})
    refused_with_key(db, statements, ValidationError, "amount: JPY has 0 decimal places; 100.50 has more.",
                     lambda k: contribute(db, manager, usd.id, investor.id, "100.50", k), "yen-now")


def test_a_pool_now_priced_forward_waits_for_the_next_valuation(world, statements):
    db, manager, investor, usd, _ = world
    with db.transaction() as session:  # the pool's currency is remembered from its last flow
        session.execute(text("UPDATE pools SET pricing_policy = 'forward' WHERE id = :id"), {"id": usd.id})
    statements.clear()
    view = contribute(db, manager, usd.id, investor.id, "100.00", "fwd")
    assert statements == [ledger._POST_CHECKED_FLOW]  # answered "general": the ORM path took it from there
    assert (view.status, view.units) == ("pending", None)


def test_a_database_without_the_one_trip_function_still_posts(world):
    db, manager, investor, usd, _ = world
    with db.transaction() as session:
        session.execute(text("DROP FUNCTION pooldesk_post_checked_flow"))
    db.dispose()
    view = contribute(db, manager, usd.id, investor.id, "100.00", "old-schema")
    assert (view.status, view.units) == ("settled", Decimal("10.000000"))
    assert reconcile(db) == []
