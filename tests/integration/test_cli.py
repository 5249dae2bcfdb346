"""The `pooldesk` command end to end, in-process through click, on both databases."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from app.cli import cli


@pytest.fixture
def run(db):
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke


def test_user_and_pool_creation(run, db):
    assert run("migrate").exit_code == 0
    result = run("user", "create", "--email", "Boss@Example.com", "--name", "Boss", "--role", "admin",
                 input="a-long-password\n")
    assert result.exit_code == 0, result.output
    assert "Created admin boss@example.com" in result.output
    short = run("user", "create", "--email", "x@example.com", "--name", "X", "--role", "manager", input="short\n")
    assert short.exit_code == 1
    assert "at least 10 characters" in short.output
    created = run("--as", "boss@example.com", "pool", "create", "--code", "club-1", "--name", "Club", "--currency",
                  "EUR", "--unit-price", "100", "--pricing", "forward", "--inception", "2024-01-01",
                  "--mgmt-fee-bps", "100", "--perf-fee-pct", "20")
    assert created.exit_code == 0, created.output
    assert "Created pool CLUB-1 (open, EUR, unit price 100.000000)" in created.output
    draft = run("pool", "create", "--code", "D1", "--name", "Draft", "--draft")
    assert "(draft," in draft.output
    bad = run("pool", "create", "--code", "X2", "--name", "Bad", "--currency", "XYZ")
    assert bad.exit_code == 1 and "Unknown currency 'XYZ'" in bad.output


def test_import_report_reconcile_and_audit(run, db, tmp_path):
    run("pool", "create", "--code", "EX", "--name", "Example", "--unit-price", "10", "--inception", "2024-01-01")
    csv_path = tmp_path / "history.csv"
    csv_path.write_text(
        "date,type,investor,amount,units,note\n"
        "2024-01-02,contribution,ann@example.com,10000.00,,\n"
        "2024-02-01,valuation,,11000.00,,\n"
        "2024-02-01,contribution,bob@example.com,5500.00,,\n"
        "2024-03-01,valuation,,15000.00,,\n")
    refused = run("import", "--pool", "EX", str(csv_path))
    assert refused.exit_code == 1
    assert "Row 2: ann@example.com is not a known investor" in refused.output
    assert "Nothing was imported: 2 error(s)." in refused.output
    done = run("import", "--pool", "EX", str(csv_path), "--create-investors")
    assert done.exit_code == 0, done.output
    assert "Imported 4 rows into EX: 2 contributions, 0 withdrawals, 0 distributions, 2 valuations" in done.output

    report = run("report", "--pool", "EX", "--format", "json")
    assert report.exit_code == 0, report.output
    data = json.loads(report.output)
    assert data["pool"]["code"] == "EX"
    assert data["pool"]["units_outstanding"] == "1500.000000"
    assert data["pool"]["nav"] == "15000.00"
    assert data["pool"]["nav_per_unit"] == "10.000000"
    assert Decimal(data["pool"]["twr_since_inception"]) == Decimal(0)
    by_email = {row["email"]: row for row in data["investors"]}
    assert by_email["bob@example.com"]["units"] == "500.000000"
    assert by_email["bob@example.com"]["value"] == "5000.00"
    assert by_email["bob@example.com"]["contributed"] == "5500.00"
    assert by_email["ann@example.com"]["value"] == "10000.00"
    as_of = json.loads(run("report", "--pool", "EX", "--as-of", "2024-02-01", "--format", "json").output)
    assert as_of["pool"]["nav_per_unit"] == "11.000000"
    assert as_of["pool"]["units_outstanding"] == "1500.000000"
    csv_out = run("report", "--pool", "EX", "--format", "csv").output
    assert "bob@example.com" in csv_out

    ok = run("reconcile")
    assert ok.exit_code == 0 and "agree with the journal" in ok.output
    assert run("audit", "verify").exit_code == 0

    with db.engine.begin() as conn:  # someone edits a holding behind the ledger's back
        conn.execute(text("UPDATE positions SET units = units + 1000000"))
    broken = run("reconcile")
    assert broken.exit_code == 1
    assert "but the journal says" in broken.output

    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET action = 'pool.delete' WHERE id = 1"))
    tampered = run("audit", "verify")
    assert tampered.exit_code == 1
    assert "row 1 was edited after it was written" in tampered.output


def test_unknown_admin_is_refused(run, db):
    result = run("--as", "nobody@example.com", "pool", "create", "--code", "P9", "--name", "x")
    assert result.exit_code == 1
    assert "nobody@example.com is not an active admin" in result.output


def test_seed_demo_books_reconcile(run, db):
    result = run("seed-demo", "--pools", "2", "--investors", "20", "--transactions", "400", "--years", "1",
                 "--demo-logins")
    assert result.exit_code == 0, result.output
    assert "manager@demo.pooldesk.org" in result.output
    assert run("reconcile").exit_code == 0
    again = run("seed-demo", "--pools", "1", "--investors", "5", "--transactions", "50", "--years", "1")
    assert again.exit_code == 0, again.output  # a second run adds pools next to the first



def test_monthly_statements_are_queued_once_per_month(run, db, tmp_path):
    run("pool", "create", "--code", "ST", "--name", "Statements", "--inception", "2024-01-01")
    csv_path = tmp_path / "h.csv"
    csv_path.write_text("date,type,investor,amount,units,note\n"
                        "2024-01-02,contribution,ann@example.com,100.00,,\n"
                        "2024-01-02,contribution,bob@example.com,100.00,,\n")
    assert run("import", "--pool", "ST", str(csv_path), "--create-investors").exit_code == 0
    first = run("statements", "--month", "2024-01")
    assert first.exit_code == 0 and "Queued 2 statement(s)" in first.output
    assert "Queued 0 statement(s)" in run("statements", "--month", "2024-01").output
    bad = run("statements", "--month", "January")
    assert bad.exit_code == 2 and "is not a month" in bad.output
