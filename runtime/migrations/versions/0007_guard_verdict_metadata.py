"""Guard verdicts store their request's metadata (``guard_verdicts.metadata``).

CheckRequest.metadata (caller context: thread id, tool id...) was documented as stored with the verdict in the
audit log, and dropped. Rows from before stay NULL (no metadata).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 08:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('guard_verdicts') as batch:
        batch.add_column(sa.Column('metadata', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('guard_verdicts') as batch:
        batch.drop_column('metadata')
