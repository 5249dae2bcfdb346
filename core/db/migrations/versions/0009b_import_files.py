"""import_files: the fingerprint of every file imported into a pool, so the same file is not imported twice

Revision ID: 0009b_import_files
Revises: 0008_journal_indexes
"""
import sqlalchemy as sa
from alembic import op

import core.db.types

revision = "0009b_import_files"
down_revision = "0008_journal_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "import_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pool_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("imported_by", sa.Integer(), nullable=False),
        sa.Column("imported_at", core.db.types.UTCDateTime(), nullable=False),
        sa.Column("duplicate_allowed", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["pool_id"], ["pools.id"], name=op.f("fk_import_files_pool_id_pools")),
        sa.ForeignKeyConstraint(["imported_by"], ["users.id"], name=op.f("fk_import_files_imported_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_files")),
    )
    op.create_index("ix_import_files_pool_sha256", "import_files", ["pool_id", "sha256"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_import_files_pool_sha256", table_name="import_files")
    op.drop_table("import_files")
