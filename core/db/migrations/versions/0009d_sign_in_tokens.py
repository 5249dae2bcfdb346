"""Sign-in links: a link can be revoked, and no link is left readable in the database.

* ``invitations.revoked_at`` and ``password_resets.revoked_at``: set when a newer link
  replaces an open one (a new reset request, an invitation sent again), when another
  invitation of the same person is accepted, or when the password is changed, set or
  reset (every open reset link of the account ends).
* Links written before this revision are made unreadable: in ``deliveries.body`` of
  invitation and reset mails they are replaced by a note; in the outbox rows of those
  mails the link moves from ``context.link`` into ``sealed_link``, encrypted with the
  app's keys, so a mail still waiting is still sent with a working link.
* Open password-reset links (valid for an hour) were readable until now: they end.
  Open invitations stay valid (send them again to replace their links).

Revision ID: 0009d_sign_in_tokens
Revises: 0008_journal_indexes
"""
import re
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

import core.db.types

revision = "0009d_sign_in_tokens"
down_revision = "0009c_keyed_audit"
branch_labels = None
depends_on = None

LINK = re.compile(r"\S*[?&](?:invite|reset)=[A-Za-z0-9_\-]+")
LINK_REMOVED = "[link removed: it was sent to the recipient only]"  # as jobs.notify.LINK_REMOVED


def upgrade() -> None:
    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoked_at", core.db.types.UTCDateTime(), nullable=True))
    with op.batch_alter_table("password_resets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoked_at", core.db.types.UTCDateTime(), nullable=True))

    conn = op.get_bind()
    now = datetime.now(timezone.utc)
    resets = sa.table("password_resets", sa.column("id", sa.Integer), sa.column("used_at", core.db.types.UTCDateTime()),
                      sa.column("revoked_at", core.db.types.UTCDateTime()),
                      sa.column("expires_at", core.db.types.UTCDateTime()))
    conn.execute(resets.update().where(resets.c.used_at.is_(None), resets.c.revoked_at.is_(None),
                                       resets.c.expires_at > now).values(revoked_at=now))

    if not sa.inspect(conn).has_table("deliveries"):  # made by the jobs branch of the tree, maybe not yet
        _seal_outbox_links(conn)
        return
    deliveries = sa.table("deliveries", sa.column("id", sa.Integer), sa.column("event", sa.String),
                          sa.column("body", sa.Text))
    for delivery_id, body in conn.execute(sa.select(deliveries.c.id, deliveries.c.body).where(
            deliveries.c.event.in_(("invitation", "password_reset")))).all():
        cleaned = LINK.sub(LINK_REMOVED, body or "")
        if cleaned != (body or ""):
            conn.execute(deliveries.update().where(deliveries.c.id == delivery_id).values(body=cleaned))
    _seal_outbox_links(conn)


def _seal_outbox_links(conn) -> None:
    outbox = sa.table("outbox", sa.column("id", sa.Integer), sa.column("job", sa.String),
                      sa.column("payload", sa.JSON))
    rows = conn.execute(sa.select(outbox.c.id, outbox.c.payload).where(
        outbox.c.job == "jobs.notify.send_direct")).all()
    for outbox_id, payload in rows:
        payload = dict(payload or {})
        context = dict(payload.get("context") or {})
        link = context.pop("link", None)
        if not link:
            continue
        from core.crypto import encrypt  # the app's keys: only needed when there is a link to seal

        payload["context"] = context
        payload["sealed_link"] = encrypt(link)
        conn.execute(outbox.update().where(outbox.c.id == outbox_id).values(payload=payload))


def downgrade() -> None:
    # The removed links are not brought back (nothing could: only their recipients have them).
    with op.batch_alter_table("password_resets", schema=None) as batch_op:
        batch_op.drop_column("revoked_at")
    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.drop_column("revoked_at")
