"""Guard verdicts store what their feedback changed (``guard_verdicts.feedback_result``), so that a repeated
Feedback answers it again instead of adding a second leaf. Rows with feedback from before stay NULL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 08:56:51.765528
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('guard_verdicts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('feedback_result', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('guard_verdicts', schema=None) as batch_op:
        batch_op.drop_column('feedback_result')
