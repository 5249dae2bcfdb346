"""jobs: distribution payouts (one row per cash part of a declared distribution)

Revision ID: 0005_jobs_payouts
Revises: 0003_jobs
Create Date: 2026-11-24 09:10:00
"""
from alembic import op
import sqlalchemy as sa
import core.db.types


revision = '0005_jobs_payouts'
down_revision = '0003_jobs'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('distribution_payouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('transaction_id', sa.Integer(), nullable=False),
    sa.Column('distribution_id', sa.Integer(), nullable=False),
    sa.Column('pool_id', sa.Integer(), nullable=False),
    sa.Column('investor_id', sa.Integer(), nullable=False),
    sa.Column('amount', core.db.types.Fixed(4), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('gateway', sa.String(length=16), nullable=True),
    sa.Column('reference', sa.String(length=100), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', core.db.types.UTCDateTime(), nullable=False),
    sa.Column('updated_at', core.db.types.UTCDateTime(), nullable=False),
    sa.Column('paid_at', core.db.types.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['transaction_id'], ['transactions.id'],
                            name=op.f('fk_distribution_payouts_transaction_id_transactions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_distribution_payouts')),
    sa.UniqueConstraint('transaction_id', name=op.f('uq_distribution_payouts_transaction_id'))
    )
    with op.batch_alter_table('distribution_payouts', schema=None) as batch_op:
        batch_op.create_index('ix_distribution_payouts_distribution', ['distribution_id', 'status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('distribution_payouts', schema=None) as batch_op:
        batch_op.drop_index('ix_distribution_payouts_distribution')
    op.drop_table('distribution_payouts')
