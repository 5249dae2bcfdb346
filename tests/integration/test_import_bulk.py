"""A first large import on PostgreSQL is written without the foreign keys of ``transactions`` and the
secondary indexes, which are put back, exactly as they were and checked, in the same transaction."""
from __future__ import annotations

import threading
from datetime import date, timedelta

import pytest
from sqlalchemy import create_engine, func, select, text

from bench.importer import write_csv
from core.analytics.loader import BALANCE_ACCOUNTS
from core.db.models import JournalEntry, Transaction
from core.services import import_writer
from core.services.importer import import_csv
from core.services.reconcile import reconcile
from tests.factories import make_pool, make_user

START = date.today() - timedelta(days=400)

SCHEMA = """
SELECT 'fk ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
 WHERE conrelid IN ('transactions'::regclass, 'journal_entries'::regclass, 'positions'::regclass)
    OR confrelid = 'transactions'::regclass
UNION ALL
SELECT 'ix ' || indexname || ' ' || indexdef FROM pg_indexes WHERE tablename IN ('transactions', 'journal_entries')
UNION ALL
SELECT 'df ' || a.attrelid::regclass || '.' || a.attname || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
  FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid IN ('transactions'::regclass, 'journal_entries'::regclass) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY 1
"""


def schema(db) -> list[str]:
    with db.read() as session:
        return list(session.execute(text(SCHEMA)).scalars())


@pytest.fixture
def history(pg_db, tmp_path, monkeypatch):
    """A pool, 40 investors and a 3,000-row history; bulk loading starts at 1,000 rows here."""
    monkeypatch.setattr(import_writer, "BULK_MIN_ROWS", 1000)
    manager = make_user(pg_db, "manager")
    emails = [make_user(pg_db, "investor").email for _ in range(40)]
    pool = make_pool(pg_db, manager, code="BULK", inception=START)
    path = tmp_path / "history.csv"
    rows = write_csv(str(path), 3000, emails, START)
    return pg_db, manager, pool, path.read_text(), rows


@pytest.fixture
def bulk_steps(monkeypatch):
    """The statements a bulk load ran to put the constraints and indexes back."""
    restored: list[list[str]] = []
    leave = import_writer.PostingWriter._leave_bulk

    def spy(self):
        restored.append(list(self._restore))
        return leave(self)

    monkeypatch.setattr(import_writer.PostingWriter, "_leave_bulk", spy)
    return restored


def test_a_first_large_import_is_bulk_loaded_and_ends_with_every_constraint_and_index(history, bulk_steps):
    db, manager, pool, csv_text, rows = history
    before = schema(db)
    assert any(line.startswith("fk fk_transactions_investor_id_users") for line in before)
    result = import_csv(db, actor=manager, pool_code="BULK", source=csv_text)
    assert result.rows == rows
    steps = bulk_steps[0]
    assert any("ADD CONSTRAINT fk_transactions_investor_id_users FOREIGN KEY (investor_id) REFERENCES users(id)" in s
               for s in steps)
    assert any(s.startswith("CREATE INDEX ix_journal_investor") for s in steps)
    assert "ALTER TABLE journal_entries ADD CONSTRAINT pk_journal_entries PRIMARY KEY (id)" in steps
    assert schema(db) == before  # the same constraints and indexes, defined the same way
    assert reconcile(db) == []
    with db.read() as session:  # the indexes are whole: a query through each finds every row
        session.execute(text("SET LOCAL enable_seqscan = off"))
        assert session.scalar(select(func.count()).select_from(Transaction).where(
            Transaction.pool_id == pool.id)) == result.contributions + result.withdrawals
        assert session.scalar(select(func.count()).select_from(JournalEntry).where(
            JournalEntry.pool_id == pool.id, JournalEntry.investor_id.isnot(None))) == (
            result.contributions + result.withdrawals)
        plan = "\n".join(session.execute(text(
            "EXPLAIN SELECT count(*) FROM journal_entries WHERE pool_id = :p AND investor_id = :i"),
            {"p": pool.id, "i": manager.id}).scalars())
        assert "ix_journal_investor" in plan
        accounts = ", ".join(f"'{a}'" for a in BALANCE_ACCOUNTS)  # the balances the pages read
        plan = "\n".join(session.execute(text(
            f"EXPLAIN SELECT pool_id, account, sum(amount) FROM journal_entries WHERE account IN ({accounts}) "
            "AND pool_id = :p GROUP BY pool_id, account"), {"p": pool.id}).scalars())
        assert "ix_journal_balances" in plan
    # the foreign keys are enforced again
    with pytest.raises(Exception, match="fk_transactions_investor_id_users"):
        with db.transaction() as session:
            session.execute(text(
                "INSERT INTO transactions (pool_id, investor_id, kind, status, effective_date, source, note, "
                "created_by, created_at, version) VALUES (:p, 999999, 'contribution', 'settled', CURRENT_DATE, "
                "'import', '', 1, now(), 1)"), {"p": pool.id})
    # and so is the journal's primary key
    with pytest.raises(Exception, match="pk_journal_entries"):
        with db.transaction() as session:
            session.execute(text(
                "INSERT INTO journal_entries (id, pool_id, account, amount, units, effective_date, created_at) "
                "SELECT id, pool_id, account, amount, units, effective_date, created_at FROM journal_entries LIMIT 1"))


def test_an_import_that_fails_after_dropping_them_puts_nothing_in_and_takes_nothing_away(history, monkeypatch):
    db, manager, _, csv_text, _ = history
    before = schema(db)

    copy = import_writer.PostingWriter._copy_binary

    def broken(self, table, columns, parts):  # the server refuses the journal's legs, in the stream
        if table == "journal_entries":
            raise RuntimeError("disk full")
        return copy(self, table, columns, parts)

    monkeypatch.setattr(import_writer.PostingWriter, "_copy_binary", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        import_csv(db, actor=manager, pool_code="BULK", source=csv_text)
    assert schema(db) == before
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Transaction)) == 0


def test_when_the_ledger_is_busy_the_import_goes_row_by_row(history, bulk_steps, monkeypatch):
    db, manager, _, csv_text, rows = history
    monkeypatch.setattr(import_writer, "BULK_LOCK_TIMEOUT", "200ms")
    reader = create_engine(db.url)
    holding, release = threading.Event(), threading.Event()

    def read_and_wait():  # someone with an open transaction that has read the ledger
        with reader.connect() as conn, conn.begin():
            conn.execute(text("SELECT count(*) FROM transactions")).scalar()
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=read_and_wait)
    thread.start()
    try:
        assert holding.wait(10)
        result = import_csv(db, actor=manager, pool_code="BULK", source=csv_text)
    finally:
        release.set()
        thread.join()
        reader.dispose()
    assert result.rows == rows
    assert bulk_steps == [[]]  # nothing was taken off, so nothing had to be put back
    assert reconcile(db) == []


def test_an_import_smaller_than_the_ledger_keeps_the_indexes_up_to_date(history, bulk_steps, monkeypatch):
    db, manager, _, csv_text, _ = history
    monkeypatch.setattr(import_writer, "BULK_MIN_ROWS", 10)
    small = "date,type,investor,amount,units,note\n" + "".join(
        f"{START.isoformat()},contribution,{email},100.00,,\n" for email in _emails(db, 20))
    import_csv(db, actor=manager, pool_code="BULK", source=csv_text)  # the first load: bulk
    make_pool(db, manager, code="SECOND", inception=START)
    import_csv(db, actor=manager, pool_code="SECOND", source=small)  # 20 rows against 3,000 held
    assert [bool(steps) for steps in bulk_steps] == [True, False]


POSTED = """
SELECT t.kind, t.status, t.investor_id, t.amount, t.units, t.price, t.effective_date, t.note, t.source,
       t.created_by, t.version, t.payment_received_at = t.created_at, t.settled_at = t.created_at,
       t.created_at > now() - interval '1 hour',
       j.account, j.investor_id, j.amount, j.units, j.effective_date, j.created_at = t.created_at
  FROM journal_entries j JOIN transactions t ON t.id = j.transaction_id JOIN pools p ON p.id = t.pool_id
 WHERE p.code = :code AND j.pool_id = p.id
 ORDER BY t.id, j.account
"""


@pytest.mark.parametrize("pricing, blocks", [
    ("latest", "one"),  # the columnar replay
    ("forward", "one"),  # the reference replay
    ("latest", "many"),  # ids run out again and again, and more are taken
])
def test_a_bulk_load_posts_exactly_what_a_row_by_row_load_posts(history, bulk_steps, monkeypatch, pricing, blocks):
    """In bulk the journal legs stream behind their transactions under ids taken in blocks; each leg
    must still name its own transaction."""
    db, manager, pool, csv_text, _ = history
    if blocks == "many":
        monkeypatch.setattr(import_writer.PostingWriter, "_expected_ids",
                            staticmethod(lambda rows: {"transactions": 100, "journal_entries": 100}))
        monkeypatch.setattr(import_writer, "ID_BLOCK", 500)
    if pricing == "forward":  # flows wait for the next valuation: keep it to contributions, which always can
        pool = make_pool(db, manager, code="FORWARD", inception=START, pricing_policy="forward")
        csv_text = "".join(line for line in csv_text.splitlines(keepends=True) if ",withdrawal," not in line)
    result = import_csv(db, actor=manager, pool_code=pool.code, source=csv_text)
    monkeypatch.setattr(import_writer, "BULK_MIN_ROWS", 10**9)
    make_pool(db, manager, code="SECOND", inception=START, pricing_policy=pricing)
    import_csv(db, actor=manager, pool_code="SECOND", source=csv_text)
    assert [bool(steps) for steps in bulk_steps] == [True, False]
    with db.read() as session:
        bulk = session.execute(text(POSTED), {"code": pool.code}).all()
        row_by_row = session.execute(text(POSTED), {"code": "SECOND"}).all()
        every = [session.execute(text(
            "SELECT t.kind, t.status, t.investor_id, t.amount, t.units, t.price, t.effective_date, t.source, "
            "t.payment_received_at IS NULL, t.settled_at IS NULL FROM transactions t JOIN pools p ON p.id = t.pool_id "
            "WHERE p.code = :code ORDER BY t.id"), {"code": code}).all() for code in (pool.code, "SECOND")]
        ids = session.execute(text("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM journal_entries")).one()
    assert len(bulk) == 2 * (result.contributions + result.withdrawals) and bulk == row_by_row
    assert len(every[0]) == result.contributions + result.withdrawals + result.pending and every[0] == every[1]
    assert ids[0] == ids[1]  # no id taken twice
    with db.transaction() as session:  # and the ids a bulk load did not use went back to the sequences
        for table in ("transactions", "journal_entries"):
            assert session.scalar(text(f"SELECT nextval('{table}_id_seq') = (SELECT max(id) + 1 FROM {table})"))
    assert reconcile(db) == []


def _emails(db, n: int) -> list[str]:
    with db.read() as session:
        return list(session.execute(text(
            "SELECT email FROM users WHERE role = 'investor' ORDER BY id LIMIT :n"), {"n": n}).scalars())


def test_a_database_user_that_does_not_own_the_tables_imports_row_by_row(history, bulk_steps):
    """Deployments often run the app as a user with rights on the tables but not their owner."""
    from sqlalchemy.engine import make_url

    from core.db.session import Database

    db, manager, _, csv_text, rows = history
    with db.transaction() as session:
        session.execute(text(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pooldesk_app_user') THEN "
            "CREATE ROLE pooldesk_app_user LOGIN; END IF; END $$"))
        session.execute(text("GRANT USAGE ON SCHEMA public TO pooldesk_app_user"))
        session.execute(text("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO pooldesk_app_user"))
        session.execute(text("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO pooldesk_app_user"))
    app_db = Database(make_url(db.url).set(username="pooldesk_app_user", password=None).render_as_string(
        hide_password=False))
    try:
        with app_db.read() as session:
            assert session.scalar(text("SELECT current_user")) == "pooldesk_app_user"
        result = import_csv(app_db, actor=manager, pool_code="BULK", source=csv_text)
    finally:
        app_db.dispose()
    assert result.rows == rows
    assert bulk_steps == [[]]
    assert reconcile(db) == []


def test_the_lock_timeout_of_the_bulk_step_does_not_outlive_it(pg_db):
    import psycopg

    with pg_db.transaction() as session:
        raw = session.connection().connection.driver_connection
        show = lambda: raw.execute("SHOW lock_timeout").fetchone()[0]  # noqa: E731
        raw.execute("SET LOCAL lock_timeout = '7s'")
        with import_writer._local_setting(raw, "lock_timeout", "200ms"):
            assert show() == "200ms"
        assert show() == "7s"
        with pytest.raises(psycopg.errors.DivisionByZero):
            with raw.transaction(), import_writer._local_setting(raw, "lock_timeout", "200ms"):
                raw.execute("SELECT 1/0")
        assert show() == "7s"
