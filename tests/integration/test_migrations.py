"""Migrations build the schema the models describe, on SQLite and PostgreSQL alike."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from core.db.models import Base


def test_migrated_schema_matches_models(db):
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    tables = set(inspect(db.engine).get_table_names())
    assert {"users", "pools", "positions", "transactions", "journal_entries", "valuations", "fee_accruals",
            "distributions", "audit_log", "outbox", "notifications"} <= tables


def test_migrate_twice_is_harmless(db):
    from core.db.migrate import migrate

    migrate(db.url)
    migrate(db.url)


def test_the_hot_path_migration_goes_down_and_up_with_the_books_intact(pg_db):
    """0006 and 0007 replace the settled-flow path; going back to 0002's and forward again keeps posting right."""
    from alembic import command

    from core.db.migrate import alembic_config
    from core.services import audit, ledger
    from core.services.reconcile import reconcile
    from tests.factories import make_pool, make_user

    manager = make_user(pg_db, "manager")
    investor = make_user(pg_db, "investor")
    pool = make_pool(pg_db, manager)
    config = alembic_config(pg_db.url)

    def post(key: str, amount: str):
        pg_db.dispose()  # the function is cached per connection: start from new ones
        return ledger.record_contribution(pg_db, actor=manager, pool_id=pool.id, investor_id=investor.id,
                                          amount=amount, key=key, effective_date=date(2024, 1, 2),
                                          payment="received")

    assert post("before", "100.00").units == Decimal("10.000000")
    command.downgrade(config, "0002_hot_paths")
    assert post("downgraded", "50.00").units == Decimal("5.000000")
    command.upgrade(config, "heads")
    assert post("upgraded", "25.00").units == Decimal("2.500000")
    assert reconcile(pg_db) == []
    with pg_db.read() as session:
        report = audit.verify(session)
        assert report.ok, report.problem
        assert session.execute(text("SELECT version_num FROM alembic_version ORDER BY 1")).scalars().all() == [
            "0005_jobs_payouts", "0009b_import_files"]
