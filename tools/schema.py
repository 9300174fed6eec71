"""SQL tables of the tool registry, on their own MetaData (``runtime/db.py`` lists it for migrations).

Portable SQLAlchemy Core types only, so the same tables work on SQLite and Postgres. Definitions,
server specs, verdicts and policies are JSON text: they are read whole and never queried inside.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

tool_versions = Table(
    "tool_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("scope", String(300), nullable=False),
    Column("name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("content_key", String(64), nullable=False),
    Column("definition", Text, nullable=False),
    # Unregister marks every version deleted; the rows stay so audits can still name them.
    Column("deleted", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("scope", "name", "version", name="uq_tool_versions_scope_name_version"),
)
Index("ix_tool_versions_scope_name", tool_versions.c.scope, tool_versions.c.name)

tool_mcp_servers = Table(
    "tool_mcp_servers",
    metadata,
    Column("scope", String(300), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("spec", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

tool_audit = Table(
    "tool_audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("scope", String(300), nullable=False),
    Column("tool_name", String(128), nullable=False),
    Column("tool_version", Integer, nullable=False),
    Column("caller", String(300), nullable=False),
    Column("arguments_sha256", String(64), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("stopped_at", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("verdicts", Text, nullable=False),
    Column("truncated", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_tool_audit_scope_seq", tool_audit.c.scope, tool_audit.c.seq)

tool_policies = Table(
    "tool_policies",
    metadata,
    Column("scope", String(300), primary_key=True),
    Column("policy", Text, nullable=False),
)
