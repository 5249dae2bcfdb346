"""The journal's index covers the legs of holdings only: (pool_id, investor_id) where there is an investor.

Every query that goes through it names an investor or asks for investor legs: one
holding's history, the holders on a record date, reconciling positions. The old index,
(pool_id, account, investor_id), also held every pool, gain and fee leg, about half of
the journal, under a text key. The new one is half the size and all integers, which
makes it about five times faster to build (measured on a 2,000,000-leg journal: 0.4 s
instead of 2.2 s); a first large import rebuilds it.

Revision ID: 0008_journal_holder_index
Revises: 0007_one_trip_flow
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_journal_holder_index"
down_revision = "0007_one_trip_flow"
branch_labels = None
depends_on = None

HOLDER = "investor_id IS NOT NULL"


def upgrade() -> None:
    op.drop_index("ix_journal_pool_account", table_name="journal_entries")
    op.create_index("ix_journal_investor", "journal_entries", ["pool_id", "investor_id"], unique=False,
                    postgresql_where=sa.text(HOLDER), sqlite_where=sa.text(HOLDER))


def downgrade() -> None:
    op.drop_index("ix_journal_investor", table_name="journal_entries")
    op.create_index("ix_journal_pool_account", "journal_entries", ["pool_id", "account", "investor_id"], unique=False)
