"""Tables owned by the runtime itself, and the list of every component's tables for migrations."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text

metadata = MetaData()

namespaces = Table(
    "namespaces",
    metadata,
    # "<tenant>/<namespace>", see runtime/naming.py
    Column("key", String(300), primary_key=True),
    Column("tenant", String(128), nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, default=lambda: datetime.now(UTC)),
)

# The change feed replicas tail (runtime/replication.py): one row per committed change of a component's
# cached state. On Postgres, rows are inserted under a transaction-scoped advisory lock, so ``seq`` order is
# commit order and a reader never skips a row that commits late.
change_feed = Table(
    "change_feed",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("component", String(32), nullable=False),
    Column("scope", String(300), nullable=False),
    # Replica that made the change (it applied it already).
    Column("origin", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, default=lambda: datetime.now(UTC)),
)

# Modules that declare a module-level ``metadata: MetaData`` with their tables. Order does not matter.
SCHEMA_MODULES: tuple[str, ...] = (
    "runtime.schema",
    "memory.schema",
    "guards.schema",
    "tools.schema",
    "runtime.gates.schema",
    "runtime.selection.schema",
    "runtime.agent.schema",
)


def all_metadata() -> list[MetaData]:
    """Every component's MetaData (modules not present are skipped)."""
    found: list[MetaData] = []
    for name in SCHEMA_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue
            raise
        md = getattr(module, "metadata", None)
        if isinstance(md, MetaData) and md not in found:
            found.append(md)
    return found
