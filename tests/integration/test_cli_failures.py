"""Every `pooldesk` command fails with one clear line on stderr and exit code 1, never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from app.cli import cli
from tests.conftest import PG_ADMIN_URL, _recreate_database, missing, pg_url
from tests.integration.test_jobs_support import free_port

ROOT = Path(__file__).resolve().parents[2]


def run(*args, env: dict | None = None):
    """In-process; an exception that escapes the command fails the test (catch_exceptions=False)."""
    from core.config import reset_settings_cache

    reset_settings_cache()
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    reset_settings_cache()
    return result


def one_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def bare_postgres():
    """An empty PostgreSQL database (no tables): what a new installation has before `pooldesk migrate`."""
    name = os.environ.get("POOLDESK_TEST_PG_DB", "pooldesk_test") + "_bare"
    if problem := _recreate_database(name):
        missing(problem)
    return pg_url(name)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_database_never_migrated_says_to_run_migrate(kind, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'new.db'}" if kind == "sqlite" else request.getfixturevalue("bare_postgres")
    for args in (["reconcile"], ["pool", "create", "--code", "A1", "--name", "A"], ["audit", "verify"]):
        line = one_line(run(*args, env={"POOLDESK_DATABASE_URL": url}))
        assert line.endswith("has no Pooldesk tables yet: run `pooldesk migrate` first."), line
    assert run("migrate", env={"POOLDESK_DATABASE_URL": url}).exit_code == 0
    assert run("reconcile", env={"POOLDESK_DATABASE_URL": url}).exit_code == 0


def test_an_unreachable_server_is_named_without_its_password():
    port = free_port()
    line = one_line(run("reconcile", env={
        "POOLDESK_DATABASE_URL": f"postgresql+psycopg://pooldesk:s3cret-pw@127.0.0.1:{port}/books"}))
    assert line.startswith(f"Error: Cannot reach the database 'books' on 127.0.0.1:{port}: "), line
    assert "s3cret" not in line


def test_a_missing_postgres_database_says_to_create_it():
    url = pg_url("pooldesk_ops_no_such_database")
    line = one_line(run("reconcile", env={"POOLDESK_DATABASE_URL": url}))
    assert "'pooldesk_ops_no_such_database' on 127.0.0.1:5432 does not exist: create it" in line


def test_a_missing_sqlite_directory_is_named(tmp_path):
    line = one_line(run("reconcile", env={"POOLDESK_DATABASE_URL": f"sqlite:///{tmp_path}/gone/books.db"}))
    assert f"the directory {tmp_path}/gone does not exist" in line


@pytest.mark.parametrize("url, expected", [
    ("oracle+nothing://u@h/db", "names an unknown database driver 'oracle.nothing'"),
    ("mysql://u@h/db", "database driver for POOLDESK_DATABASE_URL is not installed"),
    ("just words", "POOLDESK_DATABASE_URL is not a database URL"),
])
def test_an_unknown_driver_in_the_url(url, expected):
    assert expected in one_line(run("reconcile", env={"POOLDESK_DATABASE_URL": url}))


def test_a_bad_setting_is_named():
    line = one_line(run("reconcile", env={"POOLDESK_SMTP_PORT": "twenty-five"}))
    assert line.startswith("Error: Bad setting POOLDESK_SMTP_PORT: Input should be a valid integer"), line


def test_the_server_restarting_mid_import_is_one_line_and_nothing_is_imported(pg_db, tmp_path, monkeypatch):
    """The import's own backend is terminated from a second connection while it writes."""
    import psycopg

    from core.db.models import Transaction
    from core.services.import_writer import PostingWriter

    assert run("pool", "create", "--code", "EX", "--name", "Example", "--inception", "2024-01-01").exit_code == 0
    original = PostingWriter._write_tx

    def server_restarts(self, batch):
        pid = self.raw.info.backend_pid
        with psycopg.connect(PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql"), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return original(self, batch)

    monkeypatch.setattr(PostingWriter, "_write_tx", server_restarts)
    csv_path = tmp_path / "history.csv"
    csv_path.write_text("date,type,investor,amount,units,note\n"
                        + "".join(f"2024-01-{d:02d},contribution,i{d}@example.com,100.00,,\n" for d in range(2, 28)))
    line = one_line(run("import", "--pool", "EX", "--create-investors", str(csv_path)))
    assert "was lost during the command" in line and "run it again once the database is back" in line, line
    with pg_db.read() as session:
        rows = session.scalars(select(Transaction)).all()
        assert rows == [], [(r.id, r.kind, r.status, r.amount, r.effective_date, r.note, r.created_at) for r in rows]


def test_debug_keeps_the_traceback():
    with pytest.raises(Exception, match="sqlalchemy.dialects:nothing"):
        run("--debug", "reconcile", env={"POOLDESK_DATABASE_URL": "nothing://u@h/db"})
    with pytest.raises(Exception, match="sqlalchemy.dialects:nothing"):
        run("reconcile", env={"POOLDESK_DATABASE_URL": "nothing://u@h/db", "POOLDESK_DEBUG": "1"})


@pytest.mark.parametrize("case", ["not migrated", "unreachable", "directory missing", "unknown driver",
                                  "bad setting", "worker status without redis"])
def test_the_installed_command_prints_one_line(case, tmp_path):
    """The real `pooldesk` entry point in a process of its own: stderr is one line, exit code 1 (2 for status)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLDESK_")}
    env.update(POOLDESK_DATA_DIR=str(tmp_path), POOLDESK_ENV="test")
    args = ["reconcile"]
    if case == "unreachable":
        env["POOLDESK_DATABASE_URL"] = f"postgresql+psycopg://u:pw@127.0.0.1:{free_port()}/db"
    elif case == "directory missing":
        env["POOLDESK_DATABASE_URL"] = f"sqlite:///{tmp_path}/none/x.db"
    elif case == "unknown driver":
        env["POOLDESK_DATABASE_URL"] = "postgresql+nodriver://u@h/db"
    elif case == "bad setting":
        env["POOLDESK_SESSION_IDLE_MINUTES"] = "half an hour"
    elif case == "worker status without redis":
        args = ["worker", "status"]
    done = subprocess.run([sys.executable, "-c", "from app.cli import main; main()", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == (2 if case.startswith("worker") else 1), done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""
