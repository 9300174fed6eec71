"""Gate decisions record the signal parameters they were computed with; policy versions may follow the
configuration.

``gate_decisions.signal_params``: calibration fitted thresholds on signals computed under an older top_k
(or window, quantile, ...) and stored them under the current one, where they meant something else; it now
fits only on decisions whose fingerprint matches. Rows stored before have none (NULL) and count as computed
under the policy version they recorded.

``gate_policies.follows_config``: ResetPolicy (and a rollback to version 0) stores a version whose policy is
read from the configuration when used, instead of a frozen copy that a later configuration change never
reached.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 08:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('gate_decisions') as batch:
        batch.add_column(sa.Column('signal_params', sa.String(length=128), nullable=True))
    with op.batch_alter_table('gate_policies') as batch:
        batch.add_column(sa.Column('follows_config', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('gate_policies') as batch:
        batch.drop_column('follows_config')
    with op.batch_alter_table('gate_decisions') as batch:
        batch.drop_column('signal_params')
