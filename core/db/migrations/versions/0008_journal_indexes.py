"""The journal's index splits in two partial ones, each holding only the legs its queries read.

* ``ix_journal_investor``: (pool_id, investor_id) where there is an investor. One
  holding's history, an investor's legs, the holders on a record date.
* ``ix_journal_balances``: (pool_id, account) for the gain and fee accounts, the
  pool-level balances the pages show: a few legs per valuation.

The old index, (pool_id, account, investor_id), also held a leg for the pool's cash in
every transaction, about half of the journal, under a text key. Together the new ones
are half its size, with integer keys where it counts, and about five times faster to
build (measured on a 2,000,000-leg journal: 0.4 s instead of 2.2 s); a first large
import rebuilds them.

Revision ID: 0008_journal_indexes
Revises: 0007_one_trip_flow
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_journal_indexes"
down_revision = "0007_one_trip_flow"
branch_labels = None
depends_on = None

HOLDER = "investor_id IS NOT NULL"
BALANCE = "account = 'gain' OR account = 'fee_expense' OR account = 'fees_payable'"  # kept as written


def upgrade() -> None:
    op.drop_index("ix_journal_pool_account", table_name="journal_entries")
    op.create_index("ix_journal_investor", "journal_entries", ["pool_id", "investor_id"], unique=False,
                    postgresql_where=sa.text(HOLDER), sqlite_where=sa.text(HOLDER))
    op.create_index("ix_journal_balances", "journal_entries", ["pool_id", "account"], unique=False,
                    postgresql_where=sa.text(BALANCE), sqlite_where=sa.text(BALANCE))


def downgrade() -> None:
    op.drop_index("ix_journal_balances", table_name="journal_entries")
    op.drop_index("ix_journal_investor", table_name="journal_entries")
    op.create_index("ix_journal_pool_account", "journal_entries", ["pool_id", "account", "investor_id"], unique=False)
