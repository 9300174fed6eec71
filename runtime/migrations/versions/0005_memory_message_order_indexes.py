"""Memory messages get indexes on (namespace, seq) and (namespace, time).

Retention keeps the newest N messages by arrival and forgets those older than a date; both queries scanned and
sorted the namespace's messages on every pass (50 to 200 ms at 100k messages in SQLite, each pass, even with
nothing to forget); with the indexes they take a few milliseconds.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 08:00:00
"""
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_memory_messages_seq', 'memory_messages', ['namespace', 'seq'])
    op.create_index('ix_memory_messages_time', 'memory_messages', ['namespace', 'time'])


def downgrade() -> None:
    op.drop_index('ix_memory_messages_time', table_name='memory_messages')
    op.drop_index('ix_memory_messages_seq', table_name='memory_messages')
