"""The audit log: every write leaves a row, and tampering with the rows is detected.

Each service write is checked for the row it must add (actor, action, entity,
before/after). Then rows are edited and deleted behind the services' back, and
``audit.verify`` must name the row where the chain breaks.
"""
from __future__ import annotations

from datetime import date
from decimal import Decimal as D

import pytest
from sqlalchemy import Text, cast, delete, func, select, text, update

from core.db.models import AuditEvent
from core.domain.errors import AuthenticationError
from core.services import audit, ledger, pools, users, valuations
from tests.factories import PASSWORD, make_pool, make_user, system

DAY = date(2024, 1, 2)


def rows(db) -> list[AuditEvent]:
    with db.read() as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
        session.expunge_all()
        return events


def verify(db) -> audit.ChainReport:
    with db.read() as session:
        return audit.verify(session)


def wrote(db, call) -> list[AuditEvent]:
    """Run ``call`` and return the audit rows it added."""
    before = len(rows(db))
    call()
    return rows(db)[before:]


def test_every_write_leaves_an_audit_row(db):
    admin = make_user(db, "admin")
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    steps = []

    def step(expected_actions, call, actor):
        added = wrote(db, call)
        assert [e.action for e in added] == expected_actions, expected_actions
        for event in added:
            assert event.actor_id == actor.id
            assert event.at is not None and event.at.tzinfo is not None
            assert event.entity and event.entity_id
        steps.append(added)
        return added

    created = step(["user.create"], lambda: users.create_user(db, actor=admin, email="x@example.com", name="X",
                                                              role="investor"), admin)[0]
    assert (created.entity, created.before) == ("user", None)
    assert created.after == {"email": "x@example.com", "name": "X", "role": "investor", "status": "active"}
    x = users.find_user_by_email(db, "x@example.com")
    changed = step(["user.change_role"], lambda: users.change_role(db, actor=admin, user_id=x.id, role="analyst",
                                                                   expected_version=x.version), admin)[0]
    assert (changed.entity_id, changed.before, changed.after) == (str(x.id), {"role": "investor"}, {"role": "analyst"})
    step(["user.set_status"], lambda: users.set_status(db, actor=admin, user_id=x.id, status="deactivated"), admin)
    step(["user.unlock"], lambda: users.unlock(db, actor=admin, user_id=x.id), admin)
    step(["user.set_password"], lambda: users.set_password(db, actor=admin, user_id=x.id, password="a-new-password-1"),
         admin)
    me = users.get_user(db, actor=investor, user_id=investor.id)
    profile = step(["user.update_profile"], lambda: users.update_profile(
        db, actor=investor, user_id=investor.id, expected_version=me.version, name="Ivy", phone="+447700900123"),
        investor)[0]
    # personal data is never copied into the log in clear
    assert "+447700900123" not in str(profile.before) + str(profile.after)
    assert profile.after["phone_set"] is True

    pool_row = step(["pool.create"], lambda: make_pool(db, manager, code="AUDITED"), manager)[0]
    pool = pools.get_pool(db, actor=manager, code="AUDITED")
    assert (pool_row.entity, pool_row.entity_id, pool_row.after["code"]) == ("pool", str(pool.id), "AUDITED")
    edit = step(["pool.update"], lambda: pools.update_pool(db, actor=manager, pool_id=pool.id,
                                                           expected_version=pool.version,
                                                           settings=pools.PoolSettings(name="Audited pool")),
                manager)[0]
    assert (edit.before["name"], edit.after["name"]) == ("Test pool", "Audited pool")

    request = ledger.record_contribution(db, actor=investor, pool_id=pool.id, investor_id=investor.id,
                                         amount="1000.00", key=None, effective_date=DAY)
    assert rows(db)[-1].action == "transaction.create" and rows(db)[-1].actor_id == investor.id
    step(["transaction.approve"], lambda: ledger.approve_request(db, actor=manager, transaction_id=request.id,
                                                                 expected_version=request.version), manager)
    settle = step(["transaction.settle"], lambda: ledger.confirm_payment(db, actor=manager, transaction_id=request.id),
                  manager)[0]
    assert settle.before == {"status": "pending"}
    assert (settle.after["status"], D(settle.after["units"]), D(settle.after["amount"]), D(settle.after["price"])) == (
        "settled", D("100"), D("1000"), D("10"))
    step(["transaction.create", "transaction.settle"], lambda: ledger.record_withdrawal(
        db, actor=manager, pool_id=pool.id, investor_id=investor.id, units="1", key=None, effective_date=DAY,
        payment="received"), manager)
    withdrawal = ledger.list_transactions(db, actor=manager, pool_id=pool.id)[0]
    pending = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="5.00",
                                         key=None, effective_date=DAY)
    step(["transaction.fail"], lambda: ledger.fail_transaction(db, actor=manager, transaction_id=pending.id,
                                                               reason="declined"), manager)
    pending = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="5.00",
                                         key=None, effective_date=DAY)
    step(["transaction.cancel"], lambda: ledger.cancel_transaction(db, actor=manager, transaction_id=pending.id,
                                                                   reason="duplicate"), manager)
    step(["position.reinvest"], lambda: ledger.set_reinvestment(db, actor=investor, pool_id=pool.id,
                                                                investor_id=investor.id, reinvest=True), investor)
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                               key=None, effective_date=DAY, payment="received")
    value = step(["valuation.record"], lambda: valuations.record_valuation(
        db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 2, 1), total_assets="1199.00", key=None),
        manager)[0]  # 109 units
    assert value.after["nav_per_unit"] == "11.000000"
    step(["distribution.declare"], lambda: valuations.declare_distribution(
        db, actor=manager, pool_id=pool.id, record_date=date(2024, 2, 1), total="11.00", key=None), manager)
    step(["transaction.reverse"], lambda: ledger.reverse_transaction(db, actor=manager, transaction_id=withdrawal.id,
                                                                     reason="paid twice"), manager)
    step(["pool.set_status"], lambda: pools.set_pool_status(
        db, actor=manager, pool_id=pool.id, status="closed",
        expected_version=pools.get_pool(db, actor=manager, pool_id=pool.id).version), manager)
    assert verify(db) == audit.ChainReport(True, len(rows(db)))


def test_forward_pricing_steps_are_audited(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager, pricing_policy="forward")
    pending = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id,
                                         amount="100.00", key=None, effective_date=DAY)
    # the gateway's confirmation changes the transaction (money received) even though units wait
    added = wrote(db, lambda: ledger.confirm_payment(db, actor=manager, transaction_id=pending.id))
    assert [e.action for e in added] == ["transaction.payment_received"]
    assert (added[0].entity_id, added[0].after) == (str(pending.id), {"status": "pending", "payment_received": True})
    # a repeat confirmation writes nothing at all
    assert wrote(db, lambda: ledger.confirm_payment(db, actor=manager, transaction_id=pending.id)) == []
    added = wrote(db, lambda: valuations.record_valuation(db, actor=manager, pool_id=pool.id,
                                                          valuation_date=date(2024, 1, 3), total_assets="0", key=None))
    assert [e.action for e in added] == ["transaction.settle", "valuation.record"]
    after = added[0].after
    assert (after["status"], D(after["units"]), D(after["amount"]), D(after["price"])) == ("settled", 10, 100, 10)
    assert added[1].after["flows_priced"] == 1


def test_a_lockout_is_audited_without_an_actor(db):
    investor = make_user(db, "investor", email="ivy@example.com")
    from core.config import get_settings

    for _ in range(get_settings().lockout_attempts):
        with pytest.raises(AuthenticationError):
            users.authenticate(db, email="ivy@example.com", password="wrong password!")
    last = rows(db)[-1]
    assert (last.action, last.actor_id, last.entity_id) == ("user.locked", None, str(investor.id))
    with pytest.raises(AuthenticationError):
        users.authenticate(db, email="ivy@example.com", password=PASSWORD)
    assert verify(db).ok


# --- tampering ---------------------------------------------------------------------------------

@pytest.fixture
def history(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager)
    for n in range(3):
        ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                                   key=None, effective_date=DAY, payment="received")
    events = rows(db)
    assert len(events) >= 8
    assert verify(db) == audit.ChainReport(True, len(events))
    return db, events


def test_an_edited_after_is_detected(history):
    db, events = history
    target = events[4]
    with db.transaction() as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == target.id)
                        .values(after=dict(target.after or {}, amount="1.00")))
    report = verify(db)
    assert (report.ok, report.event_id, report.checked) == (False, target.id, 4)
    assert report.problem == f"row {target.id} was edited after it was written"


@pytest.mark.parametrize("column, value", [("action", "user.create"), ("actor_id", 1), ("entity_id", "999"),
                                           ("at", "2020-01-01 00:00:00")])
def test_an_edited_column_is_detected(history, column, value):
    db, events = history
    target = events[2]
    with db.transaction() as session:
        session.execute(text(f"UPDATE audit_log SET {column} = :v WHERE id = :id"), {"v": value, "id": target.id})
    report = verify(db)
    assert (report.ok, report.event_id) == (False, target.id)
    assert report.problem == f"row {target.id} was edited after it was written"


def test_an_edit_that_recomputes_its_own_hash_breaks_the_next_row(history):
    db, events = history
    target, following = events[3], events[4]
    forged_after = {"forged": True}
    with db.read() as session:  # the before-text exactly as stored, which the hash covers
        before_text = session.scalar(select(cast(AuditEvent.before, Text)).where(AuditEvent.id == target.id))
    forged_hash = audit.chain_hash(target.prev_hash, target.at, target.actor_id, target.action, target.entity,
                                   target.entity_id, before_text, audit.to_json_text(forged_after))
    with db.transaction() as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == target.id).values(after=forged_after,
                                                                                    hash=forged_hash))
    report = verify(db)
    assert (report.ok, report.event_id) == (False, following.id)
    assert report.problem == f"row {following.id} does not follow row {target.id}: a row before it was deleted or changed"


def test_a_deleted_row_is_detected(history):
    db, events = history
    gone = events[5]
    with db.transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.id == gone.id))
    report = verify(db)
    assert (report.ok, report.event_id) == (False, events[6].id)
    assert report.problem == (f"row {events[6].id} does not follow row {events[4].id}: "
                              "a row before it was deleted or changed")


def test_deleting_the_newest_rows_is_detected(history):
    db, events = history
    with db.transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.id >= events[-2].id))
    report = verify(db)
    assert report.ok is False
    assert report.problem == "the newest rows were deleted (the chain head does not match the last row)"
    assert report.event_id == events[-3].id


def test_verify_keeps_working_after_more_writes(history):
    db, events = history
    system_actor = system(db)
    users.create_user(db, actor=system_actor, email="late@example.com", name="Late", role="analyst")
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == len(events) + 1
    assert verify(db).ok


# --- the key -------------------------------------------------------------------------------------

def _stored(db) -> list[tuple]:
    """Every row as the hash covers it: the JSON exactly as stored."""
    with db.read() as session:
        return session.execute(select(AuditEvent.id, AuditEvent.at, AuditEvent.actor_id, AuditEvent.action,
                                      AuditEvent.entity, AuditEvent.entity_id, cast(AuditEvent.before, Text),
                                      cast(AuditEvent.after, Text)).order_by(AuditEvent.id)).all()


def _unkeyed(prev, at, actor_id, action, entity, entity_id, before_text, after_text) -> str:
    """SHA-256 over the length-prefixed fields: what anyone can compute without a key."""
    import hashlib

    fields = (prev, str(audit.epoch_micros(at)), "" if actor_id is None else str(actor_id), action, entity,
              entity_id, before_text or "", after_text or "")
    return hashlib.sha256("".join(f"{len(f)}:{f}|" for f in fields).encode()).hexdigest()


def _rewrite_history(db, target_id: int, forged_after: dict, hasher) -> None:
    """Edit one row, then recompute its hash, every later row's links and hashes, and the head."""
    from core.db.models import AuditChain

    prev = audit.GENESIS
    with db.transaction() as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == target_id).values(after=forged_after))
    for row_id, at, actor_id, action, entity, entity_id, before_text, after_text in _stored(db):
        digest = hasher(prev, at, actor_id, action, entity, entity_id, before_text, after_text)
        with db.transaction() as session:
            session.execute(update(AuditEvent).where(AuditEvent.id == row_id).values(prev_hash=prev, hash=digest))
        prev, last = digest, row_id
    with db.transaction() as session:
        session.execute(update(AuditChain).where(AuditChain.id == 1).values(head_hash=prev, last_id=last))


def test_rewriting_a_row_and_recomputing_the_chain_without_the_key_is_detected(history):
    db, events = history
    target = events[4]
    _rewrite_history(db, target.id, dict(target.after or {}, amount="1.00"), _unkeyed)
    report = verify(db)
    assert (report.ok, report.event_id) == (False, events[0].id)  # not one row keeps a valid hash
    assert report.problem == f"row {events[0].id} was edited after it was written"


def test_recomputing_the_chain_with_a_guessed_key_is_detected(history):
    db, events = history
    guessed = b"k" * 32
    _rewrite_history(db, events[4].id, {"forged": True},
                     lambda *fields: audit.chain_hash(*fields, key=guessed))
    report = verify(db)
    assert (report.ok, report.event_id, report.problem) == (
        False, events[0].id, f"row {events[0].id} was edited after it was written")


def test_the_key_is_held_outside_the_database(db, monkeypatch):
    """POOLDESK_AUDIT_KEY (else a key derived from the secret) keys the chain: the rows written with one
    key verify with it and with no other, and no table holds it."""
    from core.config import reset_settings_cache

    monkeypatch.setenv("POOLDESK_AUDIT_KEY", "an audit key kept in the vault, 2026")
    reset_settings_cache()
    manager = make_user(db, "manager")
    make_pool(db, manager, code="KEYED")
    written = len(rows(db))
    assert verify(db) == audit.ChainReport(True, written)
    monkeypatch.setenv("POOLDESK_AUDIT_KEY", "another key")
    reset_settings_cache()
    first = rows(db)[0].id
    assert verify(db) == audit.ChainReport(False, 0, f"row {first} was edited after it was written", first)
    monkeypatch.delenv("POOLDESK_AUDIT_KEY")
    reset_settings_cache()
    assert verify(db).ok is False  # nor the secret's own derived key


def test_an_anchored_head_catches_a_rewrite_made_with_the_key(history):
    """Someone holding the key can rebuild a consistent chain; a head written down earlier is then missing."""
    db, events = history
    with db.read() as session:
        anchored = audit.head(session)
    assert (anchored.last_id, anchored.rows, anchored.hash) == (events[-1].id, len(events), events[-1].hash)
    assert verify_with(db, anchored.hash).ok
    _rewrite_history(db, events[2].id, {"forged": True}, audit.chain_hash)
    assert verify(db).ok  # consistent, and keyed with the right key
    report = verify_with(db, anchored.hash)
    assert (report.ok, report.problem) == (False, f"the anchored head {anchored.hash} is not the hash of any row: "
                                                  "the rows up to it were rewritten or deleted")


def verify_with(db, head_hash: str) -> audit.ChainReport:
    with db.read() as session:
        return audit.verify(session, expect_head=head_hash)


def test_python_and_postgresql_compute_the_same_keyed_hash(pg_db):
    """The SQLite path (Python's hmac) and the PostgreSQL functions (built-in sha256 over the key's
    pads) produce the same HMAC-SHA256, byte for byte."""
    import hashlib
    import hmac

    key = audit.chain_key()
    message = "7:payload|ünïcode ✓|" * 10
    with pg_db.read() as session:
        in_database = session.scalar(text("SELECT pooldesk_hmac(:pads, :message)"),
                                     {"pads": audit.key_pads(key), "message": message})
    assert in_database == hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
    # a row appended by the database function hashes, in Python, to what the function stored
    manager = make_user(pg_db, "manager")
    make_pool(pg_db, manager, code="SAMEHASH", strategy="Ünïcode ✓ strategy")
    for row_id, at, actor_id, action, entity, entity_id, before_text, after_text in _stored(pg_db):
        stored = next(e for e in rows(pg_db) if e.id == row_id)
        assert audit.chain_hash(stored.prev_hash, at, actor_id, action, entity, entity_id, before_text,
                                after_text) == stored.hash
