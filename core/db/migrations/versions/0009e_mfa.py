"""TOTP second factor and re-authentication.

* ``users``: the TOTP secret (Fernet-encrypted like phone and bank account), when enrolment
  was confirmed, and the last time step accepted (a code is refused a second time).
* ``auth_sessions``: when the session gave its second factor (a manager's or admin's session
  signs nobody in before that) and when its user last confirmed their password or a code
  for a sensitive operation.
* ``mfa_recovery_codes``: one-time codes, stored as keyed digests.

Sessions open before this migration have no second factor: managers and admins sign in again.

Revision ID: 0009e_mfa
Revises: 0008_journal_indexes
"""
import sqlalchemy as sa
from alembic import op

import core.db.types

revision = "0009e_mfa"
down_revision = "0009d_sign_in_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mfa_secret", core.db.types.Encrypted(500), nullable=True))
        batch_op.add_column(sa.Column("mfa_enabled_at", core.db.types.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("mfa_last_step", sa.Integer(), nullable=True))
    with op.batch_alter_table("auth_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("second_factor_at", core.db.types.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("reauth_at", core.db.types.UTCDateTime(), nullable=True))
    op.create_table(
        "mfa_recovery_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("code_digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", core.db.types.UTCDateTime(), nullable=False),
        sa.Column("used_at", core.db.types.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("mfa_recovery_codes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mfa_recovery_codes_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("mfa_recovery_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mfa_recovery_codes_user_id"))
    op.drop_table("mfa_recovery_codes")
    with op.batch_alter_table("auth_sessions", schema=None) as batch_op:
        batch_op.drop_column("reauth_at")
        batch_op.drop_column("second_factor_at")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("mfa_last_step")
        batch_op.drop_column("mfa_enabled_at")
        batch_op.drop_column("mfa_secret")
