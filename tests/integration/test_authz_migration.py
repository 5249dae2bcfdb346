"""Migration 0009f_authz cleans up what was written before the access and payment-data fixes."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import text

from core.services import pools
from tests.factories import make_pool, make_user, system


def test_full_numbers_are_masked_and_stale_manager_assignments_removed(db):
    from alembic import command

    from core.db.migrate import alembic_config

    manager = make_user(db, "manager")
    demoted = make_user(db, "manager")
    pool = make_pool(db, manager)
    pool = pools.update_pool(db, actor=system(db), pool_id=pool.id, expected_version=pool.version,
                             settings=pools.PoolSettings(name="Test pool"), manager_ids=[manager.id, demoted.id])
    config = alembic_config(db.url)
    command.downgrade(config, "0008_journal_indexes")
    now = datetime(2024, 1, 2, tzinfo=timezone.utc)
    with db.transaction() as session:  # as the code before the fixes left things
        session.execute(text("UPDATE users SET role = 'analyst' WHERE id = :id"), {"id": demoted.id})
        for n, account in enumerate(("4242424242424242", "GB33BUKB20201555555555", "visa ending 0002", "")):
            session.execute(text("INSERT INTO sandbox_charges (idempotency_key, kind, account, amount, currency, "
                                 "status, calls, created_at) VALUES (:k, 'charge', :a, 10000, 'USD', 'succeeded', "
                                 "1, :at)"), {"k": f"k{n}", "a": account, "at": now})
    db.dispose()
    command.upgrade(config, "heads")
    with db.read() as session:
        accounts = session.execute(text("SELECT account FROM sandbox_charges ORDER BY idempotency_key")).scalars().all()
        assert accounts == ["visa ending 4242", "account ending 5555", "visa ending 0002", ""]
    assert pools.get_pool(db, actor=system(db), pool_id=pool.id).manager_ids == (manager.id,)
