"""The Alembic history builds exactly the schema the code declares, on SQLite and Postgres."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, inspect

from runtime.db import Database
from runtime.schema import all_metadata


def test_migrations_match_the_declared_tables(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    db.migrate()  # idempotent: already at head
    combined = MetaData()
    for md in all_metadata():
        for table in md.tables.values():
            table.to_metadata(combined)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), combined)
        tables = set(inspect(conn).get_table_names())
    db.dispose()
    assert diff == [], diff
    assert {"namespaces", "change_feed", "memory_messages", "guard_leaves", "tool_versions",
            "gate_policies", "agent_store_items", "alembic_version"} <= tables
