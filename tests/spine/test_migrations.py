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


# Each replica is its own process (Alembic's context is process-global, so threads would not be replicas).
_REPLICA = """
import sys, time
from runtime.db import Database
db = Database(sys.argv[1])
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
db.migrate()
db.dispose()
"""


def test_replicas_migrating_one_fresh_postgres_at_once_all_succeed(pg_url: str) -> None:
    """Replicas started together each run ``migrate`` on start-up; without a cross-process lock both found no
    schema, both ran CREATE TABLE, and one failed its start (a duplicate-key error from the catalog)."""
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    # A common start time past the imports, so the upgrades overlap.
    at = time.time() + 4
    procs = [subprocess.Popen([sys.executable, "-c", _REPLICA, pg_url, str(at)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o[-2000:] for o in outputs)
    check = Database(pg_url)
    with check.engine.connect() as conn:
        assert "gate_decisions" in inspect(conn).get_table_names()
    check.dispose()
