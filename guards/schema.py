"""SQL tables of the guards, on their own MetaData (``runtime/db.py`` lists it for migrations).

Portable SQLAlchemy Core types only (SQLite and Postgres). Embeddings are float32 bytes.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Autoincrement on SQLite needs INTEGER PRIMARY KEY; BigInteger elsewhere.
_ID = BigInteger().with_variant(Integer(), "sqlite")

guard_settings = Table(
    "guard_settings",
    metadata,
    Column("scope", String(300), primary_key=True),
    Column("settings", JSON, nullable=False),
)

guard_rules = Table(
    "guard_rules",
    metadata,
    Column("scope", String(300), primary_key=True),
    Column("name", String(128), primary_key=True),
    # The rule as its YAML/JSON mapping (guards.rules.rule_to_dict).
    Column("body", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

guard_leaves = Table(
    "guard_leaves",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("scope", String(300), nullable=False),
    Column("category", String(100), nullable=False),
    Column("stage_group", String(32), nullable=False),
    Column("text", Text, nullable=False),
    Column("label", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    Column("cluster_id", BigInteger, nullable=False, default=0),
    Column("active", Boolean, nullable=False, default=True),
    Column("note", Text, nullable=False, default=""),
    Column("embedding", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=True),
    Index("ix_guard_leaves_scope", "scope", "id"),
)

guard_clusters = Table(
    "guard_clusters",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("scope", String(300), nullable=False),
    Column("category", String(100), nullable=False),
    Column("stage_group", String(32), nullable=False),
    Column("rule_text", Text, nullable=False, default=""),
    Column("active", Boolean, nullable=False, default=True),
    Index("ix_guard_clusters_scope", "scope", "id"),
)

guard_events = Table(
    "guard_events",
    metadata,
    Column("scope", String(300), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("summary", Text, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

guard_verdicts = Table(
    "guard_verdicts",
    metadata,
    Column("verdict_id", String(64), primary_key=True),
    Column("scope", String(300), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("harm_score", Float, nullable=False),
    Column("entropy", Float, nullable=False),
    Column("category", String(100), nullable=False, default=""),
    Column("decided_by", String(16), nullable=False, default=""),
    Column("memory_version", Integer, nullable=False, default=0),
    Column("evidence", JSON, nullable=False),
    Column("request_text", Text, nullable=False),
    Column("tool_name", String(200), nullable=False, default=""),
    Column("arguments_json", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("feedback", String(16), nullable=False, default="unspecified"),
    Column("feedback_note", Text, nullable=False, default=""),
    # What the feedback changed in the guard memory (leaf, cluster, events, memory version), committed with
    # the leaf: a repeated Feedback answers it again. NULL without feedback (and for feedback recorded
    # before migration 0002).
    Column("feedback_result", JSON, nullable=True),
    # The segment of the request (sentence, step, tool call) that decided the verdict, which Feedback labels
    # (guards.model.AuditRecord.decided_segment). NULL when that is the request text itself, and for verdicts stored
    # before migration 0004 (their feedback labels the request text, as it did then).
    Column("decided_segment", Text, nullable=True),
    # The CheckRequest's metadata (caller context: thread id, tool id...), at most 32 short entries (the servicer
    # bounds them). NULL when there was none, and for verdicts stored before migration 0007.
    Column("metadata", JSON, nullable=True),
    Index("ix_guard_verdicts_scope_time", "scope", "created_at"),
)

# Calls counted by rate-limit rules, shared by the replicas on one database (guards.sql.SqlRateLimiter): one row
# per counted TOOL_CALL check. ``key`` is a digest of (scope, rule, tool name), so a tool name of any length fits.
# A key's calls out of its window go when the key is next hit, everyone's expired calls in a periodic sweep.
guard_rate_calls = Table(
    "guard_rate_calls",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("key", String(64), nullable=False),
    Column("scope", String(300), nullable=False),
    Column("at", Float, nullable=False),  # seconds since the epoch
    Column("expires_at", Float, nullable=False),  # at + the rule's per_seconds
    Index("ix_guard_rate_calls_key_at", "key", "at"),
    Index("ix_guard_rate_calls_expires_at", "expires_at"),
)
