"""Tables owned by the runtime itself, and the list of every component's tables for migrations."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, MetaData, String, Table

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
