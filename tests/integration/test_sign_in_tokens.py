"""Sign-in links (invitations, password resets): never stored in clear, revoked when they should be.

The mails are sent through a real SMTP server; the links are read from what it received,
as the person would click them.
"""
from __future__ import annotations

import re

import pytest
from sqlalchemy import inspect, select, text

from core.db.models import Delivery, Invitation, OutboxMessage, utcnow
from core.domain.errors import AuthenticationError, ValidationError
from core.services import auth, users
from jobs.backend import embedded_backend
from tests.factories import PASSWORD, make_user
from tests.integration.test_jobs_support import fast_jobs, smtp_server  # noqa: F401

LINK = re.compile(r"https?://\S+?[?&](?:invite|reset)=([A-Za-z0-9_\-]+)")
NO_LONGER_VALID = "This link is no longer valid"


def _mailed_links(db, smtp, address: str) -> list[str]:
    """Send what is waiting in the outbox; the links in the mails ``address`` received, oldest first."""
    embedded_backend().run_until_idle(db)
    links = []
    for message in smtp.to(address):
        body = message.get_body(preferencelist=("plain",)).get_content()
        links += [m.group(0) for m in LINK.finditer(body)]
    return links


def _token(link: str) -> str:
    return LINK.match(link).group(1)


def _everything_stored(db) -> str:
    """Every value of every column of every table, as the database holds it (a backup holds the same)."""
    values = []
    with db.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                values.extend(str(value) for value in row if value is not None)
    return "\n".join(values)


def test_no_table_holds_a_sent_invitation_or_reset_link(db, fast_jobs, smtp_server):
    admin = make_user(db, "admin")
    auth.invite_user(db, actor=admin, email="newcomer@example.com", name="Nina Newcomer", role="analyst")
    make_user(db, "investor", email="forgetful@example.com")
    auth.request_password_reset(db, email="forgetful@example.com")
    [invitation_link] = _mailed_links(db, smtp_server, "newcomer@example.com")
    [reset_link] = _mailed_links(db, smtp_server, "forgetful@example.com")

    stored = _everything_stored(db)
    for link in (invitation_link, reset_link):
        assert _token(link) not in stored
        assert link not in stored
    with db.read() as session:  # the delivery log still shows what was sent, without the link
        bodies = [d.body for d in session.scalars(select(Delivery).order_by(Delivery.id))]
        # once sent, the outbox rows do not keep the link even encrypted
        payloads = [m.payload for m in session.scalars(select(OutboxMessage).where(
            OutboxMessage.job == "jobs.notify.send_direct"))]
    assert len(bodies) == 2 and all("[link removed" in body for body in bodies)
    assert len(payloads) == 2 and all("sealed_link" not in p and "link" not in p["context"] for p in payloads)

    # the mailed links work
    assert auth.check_invitation(db, token=_token(invitation_link)).email == "newcomer@example.com"
    auth.reset_password(db, token=_token(reset_link), password="a-fresh-passphrase-77")
    assert users.authenticate(db, email="forgetful@example.com", password="a-fresh-passphrase-77")


def test_a_retried_send_mails_a_link_that_works(db, fast_jobs, smtp_server):
    from jobs.outbox import relay_once

    make_user(db, "investor", email="retry@example.com")
    auth.request_password_reset(db, email="retry@example.com")
    smtp_server.refuse = True  # the first attempt meets a mail server that says "try later"
    backend = embedded_backend()
    relay_once(db, backend)
    backend.run_due()
    with db.read() as session:
        assert session.scalar(select(Delivery.status)) == "error"
        assert "sealed_link" in session.scalar(select(OutboxMessage.payload))  # kept for the retry
    assert smtp_server.to("retry@example.com") == []
    smtp_server.refuse = False
    [link] = _mailed_links(db, smtp_server, "retry@example.com")
    auth.reset_password(db, token=_token(link), password="a-fresh-passphrase-77")
    assert _token(link) not in _everything_stored(db)


def test_a_reset_link_works_once_and_a_newer_request_replaces_it(db, fast_jobs, smtp_server):
    make_user(db, "investor", email="twice@example.com")
    auth.request_password_reset(db, email="twice@example.com")
    auth.request_password_reset(db, email="twice@example.com")
    older, newer = _mailed_links(db, smtp_server, "twice@example.com")
    with pytest.raises(ValidationError) as replaced:
        auth.reset_password(db, token=_token(older), password="a-fresh-passphrase-77")
    assert replaced.value.message.startswith(NO_LONGER_VALID)
    auth.reset_password(db, token=_token(newer), password="a-fresh-passphrase-77")
    with pytest.raises(ValidationError) as used:
        auth.reset_password(db, token=_token(newer), password="another-fresh-passphrase-78")
    assert used.value.message.startswith(NO_LONGER_VALID)
    assert users.authenticate(db, email="twice@example.com", password="a-fresh-passphrase-77")


def test_changing_the_password_ends_open_reset_links(db):
    admin = make_user(db, "admin")
    investor = make_user(db, "investor")
    link = auth.issue_reset_link(db, actor=admin, user_id=investor.id)
    auth.change_password(db, actor=investor, current_password=PASSWORD, new_password="a-fresh-passphrase-77")
    with pytest.raises(ValidationError) as refused:
        auth.reset_password(db, token=_token(link), password="someone-elses-choice-99")
    assert refused.value.message.startswith(NO_LONGER_VALID)
    with pytest.raises(AuthenticationError):
        users.authenticate(db, email=investor.email, password="someone-elses-choice-99")


def test_an_admin_setting_a_password_ends_open_reset_links(db):
    admin = make_user(db, "admin")
    investor = make_user(db, "investor")
    link = auth.issue_reset_link(db, actor=admin, user_id=investor.id)
    users.set_password(db, actor=admin, user_id=investor.id, password="a-fresh-passphrase-77")
    with pytest.raises(ValidationError) as refused:
        auth.reset_password(db, token=_token(link), password="someone-elses-choice-99")
    assert refused.value.message.startswith(NO_LONGER_VALID)


def test_a_reset_ends_every_other_open_reset_link(db):
    """Links made before the upgrade could be open side by side: using one ends the others."""
    from datetime import timedelta

    from core.crypto import token_digest
    from core.db.models import PasswordReset

    admin = make_user(db, "admin")
    investor = make_user(db, "investor")
    first = auth.issue_reset_link(db, actor=admin, user_id=investor.id)
    now = utcnow()
    with db.transaction() as session:
        session.add(PasswordReset(token_digest=token_digest("older-open-token"), user_id=investor.id,
                                  created_at=now, expires_at=now + timedelta(minutes=auth.RESET_MINUTES)))
    auth.reset_password(db, token=_token(first), password="a-fresh-passphrase-77")
    with pytest.raises(ValidationError) as refused:
        auth.reset_password(db, token="older-open-token", password="someone-elses-choice-99")
    assert refused.value.message.startswith(NO_LONGER_VALID)


def test_sending_an_invitation_again_replaces_the_older_link(db):
    admin = make_user(db, "admin")
    first = auth.invite_user(db, actor=admin, email="late@example.com", name="Lee Late", role="analyst")
    second = auth.invite_user(db, actor=admin, email="late@example.com", name="Lee Late", role="analyst")
    with pytest.raises(ValidationError) as replaced:
        auth.check_invitation(db, token=_token(first.link))
    assert replaced.value.message.startswith(NO_LONGER_VALID)
    with pytest.raises(ValidationError):
        auth.accept_invitation(db, token=_token(first.link), password="a-fresh-passphrase-77")
    auth.accept_invitation(db, token=_token(second.link), password="a-fresh-passphrase-77")
    states = {row["id"]: row["state"] for row in auth.list_invitations(db, actor=admin)}
    assert states == {first.invitation_id: "replaced", second.invitation_id: "accepted"}


def test_accepting_an_invitation_ends_the_other_open_ones(db):
    """Two open invitations (made before the upgrade): accepting one ends the other."""
    from datetime import timedelta

    from core.crypto import token_digest

    admin = make_user(db, "admin")
    result = auth.invite_user(db, actor=admin, email="two@example.com", name="Tia Two", role="analyst")
    now = utcnow()
    with db.transaction() as session:
        session.add(Invitation(token_digest=token_digest("second-open-token"), email="two@example.com", name="Tia",
                               role="analyst", invited_by=admin.id, created_at=now,
                               expires_at=now + timedelta(days=7)))
    auth.accept_invitation(db, token=_token(result.link), password="a-fresh-passphrase-77")
    with pytest.raises(ValidationError) as refused:
        auth.check_invitation(db, token="second-open-token")
    assert refused.value.message.startswith(NO_LONGER_VALID)


def test_the_upgrade_seals_links_written_before_it_and_ends_open_reset_links(db):
    """Links sent before the upgrade lay in clear in the outbox and the delivery log: the migration removes
    them there (a mail still waiting is still sent with its link) and ends the open reset links."""
    from datetime import timedelta

    import sqlalchemy as sa
    from alembic import command

    from core.crypto import decrypt
    from core.db.migrate import alembic_config
    from core.db.types import UTCDateTime

    investor = make_user(db, "investor", email="old@example.com")
    config = alembic_config(db.url)
    command.downgrade(config, "0008_journal_indexes")
    link = "http://localhost:8501/?reset=an-old-token-in-clear"
    now = utcnow()
    with db.engine.begin() as conn:
        outbox = sa.table("outbox", sa.column("queue"), sa.column("job"), sa.column("payload", sa.JSON),
                          sa.column("created_at", UTCDateTime()), sa.column("attempts"))
        conn.execute(outbox.insert().values(queue="notifications", job="jobs.notify.send_direct", created_at=now,
                                            attempts=0, payload={"to_email": "old@example.com", "to_name": "Old",
                                                                 "template": "password_reset", "user_id": investor.id,
                                                                 "context": {"link": link, "minutes": 60}}))
        deliveries = sa.table("deliveries", sa.column("key"), sa.column("channel"), sa.column("event"),
                              sa.column("to_address"), sa.column("subject"), sa.column("body"), sa.column("status"),
                              sa.column("attempts"), sa.column("created_at", UTCDateTime()))
        conn.execute(deliveries.insert().values(key="direct-mail:old", channel="email", event="password_reset",
                                                to_address="x", subject="Reset your Pooldesk password",
                                                body=f"Choose a new one here:\n\n{link}\n\nThe link...",
                                                status="logged", attempts=1, created_at=now))
        resets = sa.table("password_resets", sa.column("token_digest"), sa.column("user_id"),
                          sa.column("created_at", UTCDateTime()), sa.column("expires_at", UTCDateTime()))
        conn.execute(resets.insert().values(token_digest="d" * 64, user_id=investor.id, created_at=now,
                                            expires_at=now + timedelta(minutes=60)))
    command.upgrade(config, "heads")
    db.dispose()
    assert "an-old-token-in-clear" not in _everything_stored(db)
    with db.read() as session:
        from core.db.models import OutboxMessage, PasswordReset

        payload = session.scalar(select(OutboxMessage.payload))
        assert decrypt(payload["sealed_link"]) == link and payload["context"] == {"minutes": 60}
        assert session.scalar(select(Delivery.body)).startswith(
            "Choose a new one here:\n\n[link removed: it was sent to the recipient only]")
        assert session.scalar(select(PasswordReset.revoked_at)) is not None
