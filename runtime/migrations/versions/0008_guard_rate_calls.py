"""Rate-limit rules count calls in the database (``guard_rate_calls``), so replicas share one limit.

Each sidecar counted the calls it saw in its own memory: with N replicas behind a load balancer a
``rate_limit: {max_calls: 5}`` let 5 * N calls through per window. Counts held in memory before the upgrade are
not carried over (a window starts empty, as it did after every restart).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 14:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'guard_rate_calls',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('scope', sa.String(length=300), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('guard_rate_calls', schema=None) as batch_op:
        batch_op.create_index('ix_guard_rate_calls_key_at', ['key', 'at'], unique=False)
        batch_op.create_index('ix_guard_rate_calls_expires_at', ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('guard_rate_calls', schema=None) as batch_op:
        batch_op.drop_index('ix_guard_rate_calls_expires_at')
        batch_op.drop_index('ix_guard_rate_calls_key_at')
    op.drop_table('guard_rate_calls')
