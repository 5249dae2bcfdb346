"""Import you can trust: the same file is not imported twice, identical rows are flagged, a file of
bad rows gets a short list, and a NUL byte or a giant field is a row's error, not a traceback."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from app.cli import cli
from core.db.models import ImportFile, Position, Transaction
from core.services.importer import DuplicateFile, ImportRejected, import_csv
from core.services.reconcile import reconcile
from tests.factories import make_pool, make_user

HEADER = "date,type,investor,amount,units,note\n"
OPENING = HEADER + (
    "2024-01-02,contribution,a@example.com,1000.00,,opening balance\n"
    "2024-01-02,contribution,b@example.com,500.00,,opening balance\n"
)


def units_held(db, pool_id: int) -> dict[str, Decimal]:
    from core.db.models import User

    with db.read() as s:
        return dict(s.execute(select(User.email, Position.units).join(User, User.id == Position.investor_id)
                              .where(Position.pool_id == pool_id)).all())


def transactions(db, pool_id: int) -> int:
    with db.read() as s:
        return s.scalar(select(func.count()).select_from(Transaction).where(Transaction.pool_id == pool_id))


@pytest.fixture
def club(db):
    manager = make_user(db, "manager", email="ann@example.com")
    make_user(db, "investor", email="a@example.com")
    make_user(db, "investor", email="b@example.com")
    pool = make_pool(db, manager, code="CLUB", initial_unit_price="10.00")
    return db, manager, pool


# --- the same file twice -----------------------------------------------------------------

def test_the_same_file_twice_is_refused_naming_the_first_import(club):
    db, manager, pool = club
    import_csv(db, actor=manager, pool_code="CLUB", source=OPENING)
    with pytest.raises(DuplicateFile) as caught:
        import_csv(db, actor=manager, pool_code="CLUB", source=OPENING)
    message = caught.value.message
    assert message.startswith(f"This file was already imported into CLUB on {date.today().isoformat()} ")
    assert "by ann@example.com (2 rows); nothing was imported." in message
    assert "--allow-duplicate-file" in message
    assert transactions(db, pool.id) == 2
    assert units_held(db, pool.id) == {"a@example.com": Decimal("100.000000"), "b@example.com": Decimal("50.000000")}
    assert reconcile(db) == []


def test_other_line_endings_and_a_byte_order_mark_are_the_same_file(club):
    db, manager, pool = club
    import_csv(db, actor=manager, pool_code="CLUB", source=OPENING)
    for variant in (OPENING.replace("\n", "\r\n"), "\ufeff" + OPENING.rstrip("\n"), OPENING + "\n\n"):
        with pytest.raises(DuplicateFile):
            import_csv(db, actor=manager, pool_code="CLUB", source=variant)
    assert transactions(db, pool.id) == 2


def test_allow_duplicate_file_imports_it_again_and_records_both(club):
    db, manager, pool = club
    import_csv(db, actor=manager, pool_code="CLUB", source=OPENING)
    result = import_csv(db, actor=manager, pool_code="CLUB", source=OPENING, allow_duplicate_file=True)
    assert result.contributions == 2
    assert units_held(db, pool.id) == {"a@example.com": Decimal("200.000000"), "b@example.com": Decimal("100.000000")}
    with db.read() as s:
        files = s.execute(select(ImportFile.sha256, ImportFile.rows, ImportFile.duplicate_allowed)
                          .where(ImportFile.pool_id == pool.id).order_by(ImportFile.id)).all()
    assert [(rows, allowed) for _, rows, allowed in files] == [(2, False), (2, True)]
    assert files[0][0] == files[1][0] and len(files[0][0]) == 64


def test_the_same_file_may_go_into_another_pool(club):
    db, manager, pool = club
    make_pool(db, manager, code="OTHER", initial_unit_price="10.00")
    import_csv(db, actor=manager, pool_code="CLUB", source=OPENING)
    assert import_csv(db, actor=manager, pool_code="OTHER", source=OPENING).contributions == 2


def test_a_refused_file_is_not_remembered(club):
    db, manager, pool = club
    bad = OPENING + "2024-01-02,contribution,nobody@example.com,5.00,,\n"
    with pytest.raises(ImportRejected):
        import_csv(db, actor=manager, pool_code="CLUB", source=bad)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(ImportFile)) == 0


# --- identical rows ----------------------------------------------------------------------

TWICE = HEADER + (
    "2024-01-02,contribution,a@example.com,100.00,,monthly\n"     # row 2
    "2024-01-02,contribution,b@example.com,100.00,,monthly\n"     # row 3
    "2024-01-02,contribution,A@example.com ,100,, monthly\n"      # row 4: row 2 again, written otherwise
    "2024-01-03,contribution,a@example.com,100.00,,monthly\n"     # row 5: another day
    "2024-01-02,contribution,b@example.com,100.00,,monthly\n"     # row 6: row 3 again
)


@pytest.mark.parametrize("pricing", ["latest", "forward"])  # the columnar path, the row-by-row replay
def test_identical_rows_are_imported_with_a_warning_naming_them(db, pricing):
    manager = make_user(db, "manager")
    make_user(db, "investor", email="a@example.com")
    make_user(db, "investor", email="b@example.com")
    pool = make_pool(db, manager, code="TWICE", initial_unit_price="10.00", pricing_policy=pricing)
    result = import_csv(db, actor=manager, pool_code="TWICE", source=TWICE)
    assert result.contributions + result.pending == 5
    assert result.warnings == [
        "2 row(s) repeat an earlier row of the file in every field: row 4 (as row 2), row 6 (as row 3). "
        "They were imported as written; if the file holds a row twice by mistake, reverse the copies."]
    assert transactions(db, pool.id) == 5


def test_a_file_without_identical_rows_has_no_warning(club):
    db, manager, pool = club
    assert import_csv(db, actor=manager, pool_code="CLUB", source=OPENING).warnings == []


@pytest.mark.parametrize("pricing", ["latest", "forward"])
def test_identical_rows_can_be_refused(db, pricing):
    manager = make_user(db, "manager")
    make_user(db, "investor", email="a@example.com")
    make_user(db, "investor", email="b@example.com")
    pool = make_pool(db, manager, code="TWICE", initial_unit_price="10.00", pricing_policy=pricing)
    with pytest.raises(ImportRejected) as caught:
        import_csv(db, actor=manager, pool_code="TWICE", source=TWICE, refuse_identical_rows=True)
    assert caught.value.errors == ["Row 4: repeats row 2 in every field (identical rows are refused).",
                                   "Row 6: repeats row 3 in every field (identical rows are refused)."]
    assert transactions(db, pool.id) == 0


# --- many bad rows -----------------------------------------------------------------------

def test_a_file_of_many_bad_rows_lists_the_first_fifty_and_counts_the_rest(club):
    db, manager, pool = club
    lines = [f"2024-01-02,contribution,nobody{i}@example.com,10.00,," for i in range(1500)]  # rows 2..1501
    lines += ["2024-01-02,contribution,a@example.com,ten,," for _ in range(1500)]            # rows 1502..3001
    with pytest.raises(ImportRejected) as caught:
        import_csv(db, actor=manager, pool_code="CLUB", source=HEADER + "\n".join(lines) + "\n")
    errors = caught.value.errors
    assert caught.value.total == 3000
    assert len(errors) == 51
    assert errors[0] == "Row 2: nobody0@example.com is not a known investor (use --create-investors to add)."
    assert errors[49].startswith("Row 51: nobody49@example.com")
    assert errors[50] == "... and 2,950 more errors."
    assert caught.value.message == "The file was not imported: 3,000 error(s)."
    assert transactions(db, pool.id) == 0


def test_the_command_prints_a_short_list_for_many_bad_rows(club, tmp_path):
    db, manager, pool = club
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "".join(f"2024-01-02,contribution,a@example.com,x{i},,\n" for i in range(5000)))
    result = CliRunner().invoke(cli, ["import", "--pool", "CLUB", str(path)], catch_exceptions=False)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == 52
    assert lines[0] == "Row 2: amount: 'x0' is not a number."
    assert lines[50] == "... and 4,950 more errors."
    assert lines[51] == "Nothing was imported: 5,000 error(s)."


# --- bytes that are not CSV text ---------------------------------------------------------

def test_a_nul_byte_is_the_rows_error(club):
    db, manager, pool = club
    text = OPENING + "2024-01-03,contribution,a@example.com,10.00,,a note with \x00 inside\n"
    with pytest.raises(ImportRejected) as caught:
        import_csv(db, actor=manager, pool_code="CLUB", source=text)
    assert caught.value.errors == [
        "Row 4: the row holds a NUL character (a zero byte): this is not a CSV text file."]
    assert transactions(db, pool.id) == 0


def test_a_field_over_the_limit_is_the_rows_error(club):
    db, manager, pool = club
    text = OPENING + "2024-01-03,contribution,a@example.com,10.00,," + "n" * 300_000 + "\n"
    with pytest.raises(ImportRejected) as caught:
        import_csv(db, actor=manager, pool_code="CLUB", source=text)
    assert caught.value.errors == ["Row 4: a field is longer than 131,072 characters."]
    assert transactions(db, pool.id) == 0


def test_the_command_reports_nul_and_huge_fields_without_a_traceback(club, tmp_path):
    db, manager, pool = club
    path = tmp_path / "odd.csv"
    path.write_bytes((OPENING + "2024-01-03,contribution,a@example.com,1\x0000,,\n"
                      "2024-01-04,contribution,b@example.com,10.00,," + "n" * 200_000 + "\n").encode())
    result = CliRunner().invoke(cli, ["import", "--pool", "CLUB", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 1
    assert "Row 4: the row holds a NUL character" in result.output
    assert "Row 5: a field is longer than 131,072 characters." in result.output
    assert "Traceback" not in result.output


def test_the_command_refuses_a_second_import_and_allows_it_on_request(club, tmp_path):
    db, manager, pool = club
    path = tmp_path / "opening.csv"
    path.write_text(OPENING)
    runner = CliRunner()
    assert runner.invoke(cli, ["import", "--pool", "CLUB", str(path)]).exit_code == 0
    again = runner.invoke(cli, ["import", "--pool", "CLUB", str(path)])
    assert again.exit_code == 1
    assert "Error: This file was already imported into CLUB on " in again.output
    forced = runner.invoke(cli, ["import", "--pool", "CLUB", str(path), "--allow-duplicate-file"])
    assert forced.exit_code == 0, forced.output
    assert transactions(db, pool.id) == 4


@pytest.mark.parametrize("pricing", ["latest", "forward"])
def test_rows_already_recorded_on_the_last_date_are_named(db, pricing):
    """The same opening balances in another order are another file, but the rows are on record."""
    manager = make_user(db, "manager")
    make_user(db, "investor", email="a@example.com")
    make_user(db, "investor", email="b@example.com")
    pool = make_pool(db, manager, code="AGAIN", initial_unit_price="10.00", pricing_policy=pricing)
    import_csv(db, actor=manager, pool_code="AGAIN", source=OPENING)
    reordered = HEADER + (
        "2024-01-02,contribution,b@example.com,500.00,,opening balance\n"
        "2024-01-02,contribution,a@example.com,1000,,opening balance\n"
        "2024-01-02,contribution,a@example.com,1000.00,,a second saving\n"
    )
    with pytest.raises(ImportRejected) as caught:
        import_csv(db, actor=manager, pool_code="AGAIN", source=reordered, refuse_identical_rows=True)
    assert caught.value.errors == [
        "Row 2: equals a transaction the pool already has on 2024-01-02 (identical rows are refused).",
        "Row 3: equals a transaction the pool already has on 2024-01-02 (identical rows are refused)."]
    result = import_csv(db, actor=manager, pool_code="AGAIN", source=reordered)
    assert result.warnings == [
        "2 row(s) equal in every field a transaction the pool already has on 2024-01-02: row 2, row 3. "
        "They were imported as written; if this history was imported before, reverse them."]
    assert transactions(db, pool.id) == 5


# --- files read from disk ----------------------------------------------------------------

def test_the_command_takes_a_file_saved_on_windows_as_the_same_file(club, tmp_path):
    db, manager, pool = club
    unix, windows = tmp_path / "unix.csv", tmp_path / "windows.csv"
    unix.write_bytes(OPENING.encode())
    windows.write_bytes(b"\xef\xbb\xbf" + OPENING.replace("\n", "\r\n").encode())
    runner = CliRunner()
    assert runner.invoke(cli, ["import", "--pool", "CLUB", str(windows)]).exit_code == 0
    again = runner.invoke(cli, ["import", "--pool", "CLUB", str(unix)])
    assert again.exit_code == 1 and "This file was already imported into CLUB" in again.output
    assert units_held(db, pool.id) == {"a@example.com": Decimal("100.000000"), "b@example.com": Decimal("50.000000")}


def test_the_command_refuses_a_file_that_is_not_utf8_in_one_line(club, tmp_path):
    db, manager, pool = club
    path = tmp_path / "latin1.csv"
    path.write_bytes(OPENING.encode() + "2024-01-02,contribution,a@example.com,5.00,,caf\u00e9\n".encode("latin-1"))
    result = CliRunner().invoke(cli, ["import", "--pool", "CLUB", str(path)])
    assert result.exit_code == 1
    assert result.output == "Error: The file is not UTF-8 text.\n"
    assert transactions(db, pool.id) == 0


def test_an_open_file_is_read_from_disk_and_left_open(club, tmp_path):
    db, manager, pool = club
    path = tmp_path / "opening.csv"
    path.write_text(OPENING + "2024-01-02,contribution,a@example.com,1000.00,,opening balance\n")
    with open(path, newline="", encoding="utf-8") as handle:
        result = import_csv(db, actor=manager, pool_code="CLUB", source=handle)
        assert not handle.closed
    assert result.contributions == 3
    assert result.warnings[0].startswith("1 row(s) repeat an earlier row of the file in every field: row 4 (as row 2)")


def test_a_bulk_load_is_announced_before_it_starts(pg_db, monkeypatch):
    from core.services import import_writer

    monkeypatch.setattr(import_writer, "BULK_MIN_ROWS", 1000)
    manager = make_user(pg_db, "manager")
    make_user(pg_db, "investor", email="a@example.com")
    make_pool(pg_db, manager, code="BIG", initial_unit_price="10.00")
    text = HEADER + "".join(f"2024-01-{2 + i % 20:02d},contribution,a@example.com,{10 + i}.00,,\n" for i in range(1500))
    heard = []

    result = import_csv(pg_db, actor=manager, pool_code="BIG", source=text, notify=heard.append)
    assert result.bulk and result.contributions == 1500
    assert heard == ["Loading 1,500 rows in bulk: until this import commits, postings, pages and sign-ins of every "
                     "pool wait for it, about 1 s (measured for a million rows: 5.4 s on a quiet 2-core machine, "
                     "14.2 s on a busy one)."]
