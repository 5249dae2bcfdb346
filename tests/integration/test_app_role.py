"""The least-privilege database role (migration 0009c): the app, signed in as a member of
``pooldesk_app``, posts as usual but can neither rewrite nor delete the audit log or the journal."""
from __future__ import annotations

from datetime import date

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from core.db.session import Database
from core.services import audit, ledger, valuations
from core.services.importer import import_csv
from core.services.reconcile import reconcile
from tests.factories import make_pool, make_user

DAY = date(2024, 1, 2)


@pytest.fixture
def app_db(pg_db, monkeypatch):
    """The same database through a login role that is a member of pooldesk_app (and nothing more)."""
    login = f"{make_url(pg_db.url).database}_app"
    with pg_db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'DROP ROLE IF EXISTS "{login}"'))
        conn.execute(text(f'CREATE ROLE "{login}" LOGIN PASSWORD \'app-password\' IN ROLE pooldesk_app'))
    url = make_url(pg_db.url).set(username=login, password="app-password").render_as_string(hide_password=False)
    monkeypatch.setenv("POOLDESK_DATABASE_URL", url)
    from core.config import reset_settings_cache

    reset_settings_cache()
    database = Database(url)
    yield database
    database.dispose()
    pg_db.dispose()
    with pg_db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'DROP ROLE IF EXISTS "{login}"'))


def test_the_app_role_posts_but_cannot_rewrite_history(app_db):
    manager = make_user(app_db, "manager")
    investor = make_user(app_db, "investor", email="holder@example.com")
    pool = make_pool(app_db, manager, code="LEASTPRIV")
    ledger.record_contribution(app_db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="1000.00",
                               key="first", effective_date=DAY, payment="received")
    ledger.record_contribution(app_db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="500.00",
                               key="one-trip", effective_date=DAY, payment="received")
    valuations.record_valuation(app_db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 2, 1),
                                total_assets="1650.00", key=None)
    make_pool(app_db, manager, code="LPIMPORT")
    import_csv(app_db, actor=manager, pool_code="LPIMPORT",
               source="date,type,investor,amount,units,note\n2024-01-02,contribution,holder@example.com,100.00,,\n")
    assert reconcile(app_db) == []
    with app_db.read() as session:
        assert audit.verify(session).ok

    engine = create_engine(app_db.url)
    for statement in ("UPDATE audit_log SET action = 'forged'", "DELETE FROM audit_log",
                      "UPDATE journal_entries SET amount = 0", "DELETE FROM journal_entries",
                      "TRUNCATE audit_log", "UPDATE alembic_version SET version_num = 'x'"):
        with engine.connect() as conn, pytest.raises(Exception) as refused:
            conn.execute(text(statement))
        assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege), statement
    with engine.begin() as conn:  # what the app does need: other tables stay writable
        conn.execute(text("UPDATE pools SET name = 'Renamed' WHERE code = 'LEASTPRIV'"))
    engine.dispose()
    with app_db.read() as session:
        assert audit.verify(session).ok


@pytest.mark.parametrize("as_owner", [False, True])
def test_a_bulk_import_as_the_app_role_goes_row_by_row(request, monkeypatch, as_owner):
    """Taking the journal's keys and indexes off needs the owner: as pooldesk_app the import finds it
    may not, and writes the same rows without them (the owner, for comparison, loads in bulk)."""
    from core.services import import_writer

    app_db = request.getfixturevalue("pg_db" if as_owner else "app_db")
    monkeypatch.setattr(import_writer, "BULK_MIN_ROWS", 1)  # a "first large load", whatever its size
    entered: list[bool] = []
    finish = import_writer.PostingWriter.finish

    def spy(writer, *args, **kwargs):
        entered.append(writer.bulk)
        return finish(writer, *args, **kwargs)

    monkeypatch.setattr(import_writer.PostingWriter, "finish", spy)
    manager = make_user(app_db, "manager")
    make_user(app_db, "investor", email="bulk@example.com")
    make_pool(app_db, manager, code="BULKAPP")
    result = import_csv(app_db, actor=manager, pool_code="BULKAPP", source=(
        "date,type,investor,amount,units,note\n"
        "2024-01-02,contribution,bulk@example.com,100.00,,\n"
        "2024-01-09,valuation,,110.00,,\n"))
    assert (result.contributions, result.valuations, entered) == (1, 1, [as_owner])
    assert reconcile(app_db) == []
