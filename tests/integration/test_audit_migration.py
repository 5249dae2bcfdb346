"""Migration 0009c re-hashes an existing, unkeyed audit chain with the key, as far as it is intact:
an intact chain verifies afterwards, and a row edited or deleted before the upgrade is still named."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from sqlalchemy import update

from core.db.migrate import alembic_config
from core.db.models import AuditChain, AuditEvent
from core.db.session import Database
from core.services import audit
from tests.conftest import PG_DB, _recreate_database, missing, pg_url

START = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgres"])
def legacy(request, tmp_path):
    """A database at 0008 holding six rows chained the old way (unkeyed SHA-256)."""
    if request.param == "postgres":
        name = f"{PG_DB}_legacy"
        if problem := _recreate_database(name):
            missing(problem)
        url = pg_url(name)
    else:
        url = f"sqlite:///{tmp_path / 'legacy.db'}"
    command.upgrade(alembic_config(url), "0008_journal_indexes")
    db = Database(url)
    prev = audit.GENESIS
    with db.transaction() as session:
        for n in range(1, 7):
            at = START + timedelta(seconds=n)
            after = audit.to_json_text({"n": n, "name": f"Ünïcode {n}"})
            digest = audit.legacy_chain_hash(prev, at, None, "user.create", "user", str(n), None, after)
            session.add(AuditEvent(at=at, actor_id=None, action="user.create", entity="user", entity_id=str(n),
                                   before=None, after=after, prev_hash=prev, hash=digest))
            session.flush()
            prev = digest
        session.execute(update(AuditChain).where(AuditChain.id == 1).values(head_hash=prev, last_id=6))
    yield db
    db.dispose()


def upgrade_and_verify(db) -> audit.ChainReport:
    db.dispose()
    command.upgrade(alembic_config(db.url), "heads")
    with db.read() as session:
        return audit.verify(session)


def test_an_intact_unkeyed_chain_is_keyed_by_the_upgrade(legacy):
    assert upgrade_and_verify(legacy) == audit.ChainReport(True, 6)
    with legacy.read() as session:  # every row now keyed: the old hashes are gone
        first = session.get(AuditEvent, 1)
        assert first.hash != audit.legacy_chain_hash(audit.GENESIS, first.at, None, "user.create", "user", "1", None,
                                                     audit.to_json_text(first.after))
    # the next row follows on, and the whole chain still verifies
    from tests.factories import make_user

    make_user(legacy, "analyst")
    with legacy.read() as session:
        assert audit.verify(session).ok


def test_a_row_edited_before_the_upgrade_is_still_named(legacy):
    with legacy.transaction() as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == 3).values(after={"n": 3, "name": "forged"}))
    assert upgrade_and_verify(legacy) == audit.ChainReport(False, 2, "row 3 was edited after it was written", 3)


def test_a_row_deleted_before_the_upgrade_is_still_named(legacy):
    from sqlalchemy import delete

    with legacy.transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.id == 4))
    assert upgrade_and_verify(legacy) == audit.ChainReport(
        False, 3, "row 5 does not follow row 3: a row before it was deleted or changed", 5)
