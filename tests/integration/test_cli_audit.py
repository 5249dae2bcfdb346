"""`pooldesk audit head` and `pooldesk audit verify --expect-head`: anchoring the chain outside the database."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from app.cli import cli
from core.db.models import AuditChain, AuditEvent
from core.services import audit


@pytest.fixture
def run(db):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_a_head_written_down_is_checked_later(run, db):
    assert run("pool", "create", "--code", "ANCHOR", "--name", "Anchored").exit_code == 0
    printed = run("audit", "head", "--json")
    assert printed.exit_code == 0, printed.output
    anchored = json.loads(printed.output)
    with db.read() as session:
        rows = session.query(AuditEvent).order_by(AuditEvent.id).all()
        assert (anchored["hash"], anchored["last_id"], anchored["rows"]) == (rows[-1].hash, rows[-1].id, len(rows))
        assert anchored["at"] == rows[-1].at.isoformat()
    line = run("audit", "head").output
    assert line.startswith(f"{anchored['hash']} row {anchored['last_id']} of {anchored['rows']} at ")
    assert run("pool", "create", "--code", "LATER", "--name", "Later").exit_code == 0
    ok = run("audit", "verify", "--expect-head", anchored["hash"])
    assert ok.exit_code == 0 and "(the anchored head is in the chain)" in ok.output

    # someone holding the key rebuilds the whole chain from the first row on: consistent, but not the one anchored
    prev = audit.GENESIS
    with db.transaction() as session:
        for row in session.query(AuditEvent).order_by(AuditEvent.id):
            row.at = row.at.replace(microsecond=(row.at.microsecond + 1) % 1_000_000)
            session.flush()
            row.prev_hash = prev
            row.hash = prev = audit.chain_hash(prev, row.at, row.actor_id, row.action, row.entity, row.entity_id,
                                               audit.to_json_text(row.before), audit.to_json_text(row.after))
            last = row.id
        session.execute(update(AuditChain).where(AuditChain.id == 1).values(head_hash=prev, last_id=last))
    assert run("audit", "verify").exit_code == 0
    broken = run("audit", "verify", "--expect-head", anchored["hash"])
    assert broken.exit_code == 1
    assert f"the anchored head {anchored['hash']} is not the hash of any row" in broken.output


def test_verify_says_a_changed_key_makes_every_row_look_edited(run, db, monkeypatch):
    from core.config import reset_settings_cache

    assert run("pool", "create", "--code", "KEYCHANGE", "--name", "Key change").exit_code == 0
    monkeypatch.setenv("POOLDESK_AUDIT_KEY", "not the key the rows were written with")
    reset_settings_cache()
    result = run("audit", "verify")
    assert result.exit_code == 1
    assert "Audit log broken: row 1 was edited after it was written." in result.output
    assert "If the audit key (POOLDESK_AUDIT_KEY, else the secret key) changed" in result.output


def test_migrate_uses_the_owner_url_when_one_is_given(run, db, tmp_path, monkeypatch):
    """The app runs as a least-privilege role; `pooldesk migrate` connects as the tables' owner."""
    from sqlalchemy import create_engine, inspect

    from core.config import reset_settings_cache

    owner = tmp_path / "owner.db"
    monkeypatch.setenv("POOLDESK_MIGRATION_DATABASE_URL", f"sqlite:///{owner}")
    reset_settings_cache()
    assert run("migrate").exit_code == 0
    engine = create_engine(f"sqlite:///{owner}")
    assert "audit_log" in inspect(engine).get_table_names()
    engine.dispose()
