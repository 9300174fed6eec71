"""Guard verdicts store the segment of the request that decided them (``guard_verdicts.decided_segment``).

Feedback labels that segment. It was kept only in the engine's in-process cache of recent verdicts, so Feedback
after a restart, on another replica or after the cache evicted the verdict labelled the whole request: an ALLOW on
a multi-sentence false BLOCK then changed nothing. Rows from before stay NULL (their feedback labels the request
text, as it did).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 12:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('guard_verdicts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('decided_segment', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('guard_verdicts', schema=None) as batch_op:
        batch_op.drop_column('decided_segment')
