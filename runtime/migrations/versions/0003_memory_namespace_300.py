"""Memory's namespace columns widened from 255 to 300 characters, as every other component's scope column.

A scoped key is "<tenant>/<namespace>" with both parts up to 128 characters (runtime/naming.py): 257 characters.
Postgres refused such rows in memory ("value too long for type character varying(255)") while SQLite, which does
not enforce lengths, stored them, so a namespace valid everywhere else could not be written on Postgres.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 06:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_TABLES = ('memory_edges', 'memory_messages', 'memory_namespace_state', 'memory_pending_sessions',
           'memory_unit_messages', 'memory_units')


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column('namespace', existing_type=sa.String(length=255), type_=sa.String(length=300),
                                  existing_nullable=False)


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column('namespace', existing_type=sa.String(length=300), type_=sa.String(length=255),
                                  existing_nullable=False)
