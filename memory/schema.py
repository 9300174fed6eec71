"""The memory's tables, declared on its own ``MetaData`` (``runtime/db.py`` lists it for migrations).

Portable SQLAlchemy Core types only, so the same schema runs on SQLite and Postgres. Every row is keyed
by the opaque scoped namespace key; no query may omit it. Embeddings are float32 bytes (``LargeBinary``).
Everything the indexes hold (FAISS, BM25, association adjacency) is rebuildable from these tables.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# Scoped keys are "<tenant>/<namespace>"; both parts are bounded by runtime/naming.py (257 characters at most).
_NS = 300  # a 128-character tenant, "/" and a 128-character namespace; 300 as in every other component
_ID = 255

messages = sa.Table(
    "memory_messages",
    metadata,
    sa.Column("namespace", sa.String(_NS), primary_key=True),
    sa.Column("id", sa.String(_ID), primary_key=True),
    sa.Column("session_id", sa.String(_ID), nullable=False),
    # Arrival order inside the namespace; breaks ties between messages without (or with equal) times.
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("speaker", sa.Text, nullable=False, default=""),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("time", sa.DateTime(timezone=True), nullable=True),
    sa.Column("metadata_json", sa.Text, nullable=False, default="{}"),
    # sha256 of the content fields: resending the same id with the same content is a no-op.
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Index("ix_memory_messages_session", "namespace", "session_id", "seq"),
    # Retention's two cuts (keep the newest N by arrival; forget what is older than a date) and namespace-wide
    # listing in arrival order: without them each retention pass scanned and sorted the whole namespace.
    sa.Index("ix_memory_messages_seq", "namespace", "seq"),
    sa.Index("ix_memory_messages_time", "namespace", "time"),
)

units = sa.Table(
    "memory_units",
    metadata,
    sa.Column("namespace", sa.String(_NS), primary_key=True),
    # The derived unit's string id (deterministic over its granularity and covered messages).
    sa.Column("id", sa.String(_ID), primary_key=True),
    # int64 key the vector and lexical indexes use; a hash of (namespace, id), unique per namespace.
    sa.Column("key", sa.BigInteger, nullable=False),
    sa.Column("granularity", sa.String(16), nullable=False),
    sa.Column("session_id", sa.String(_ID), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    # JSON list of the covered message ids, in conversation order.
    sa.Column("message_ids_json", sa.Text, nullable=False),
    sa.Column("time_start", sa.DateTime(timezone=True), nullable=True),
    sa.Column("time_end", sa.DateTime(timezone=True), nullable=True),
    sa.Column("weight", sa.Float, nullable=False, default=1.0),
    # float32 bytes of the L2-normalised embedding, and the model that produced it.
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Index("ix_memory_units_session", "namespace", "session_id"),
    sa.Index("ix_memory_units_key", "namespace", "key", unique=True),
)

# Which units cover which message: Delete finds every unit to re-derive through this table.
unit_messages = sa.Table(
    "memory_unit_messages",
    metadata,
    sa.Column("namespace", sa.String(_NS), primary_key=True),
    sa.Column("message_id", sa.String(_ID), primary_key=True),
    sa.Column("unit_id", sa.String(_ID), primary_key=True),
    # Re-deriving a unit deletes its links by unit id: without this every Write scans the table.
    sa.Index("ix_memory_unit_messages_unit", "namespace", "unit_id"),
)

# Association edges between units (GMM co-membership + similarity), written by consolidation.
edges = sa.Table(
    "memory_edges",
    metadata,
    sa.Column("namespace", sa.String(_NS), primary_key=True),
    sa.Column("src", sa.BigInteger, primary_key=True),
    sa.Column("dst", sa.BigInteger, primary_key=True),
    sa.Column("weight", sa.Float, nullable=False),
)

# Sessions whose derived units (beyond turns) are not yet rebuilt from their latest messages. Written in
# the same transaction as the messages, cleared in the one that commits the re-derived units, so a
# crash in between is repaired on restart by re-deriving whatever is still listed here.
pending_sessions = sa.Table(
    "memory_pending_sessions",
    metadata,
    sa.Column("namespace", sa.String(_NS), primary_key=True),
    sa.Column("session_id", sa.String(_ID), primary_key=True),
)

# Per-namespace bookkeeping: a generation bumped by every committed change (indexes record the
# generation they reflect, so a crash between commit and index update is detected and repaired) and
# the last consolidation's summary.
namespace_state = sa.Table(
    "memory_namespace_state",
    metadata,
    sa.Column("namespace", sa.String(_NS), primary_key=True),
    sa.Column("generation", sa.BigInteger, nullable=False, default=0),
    sa.Column("next_seq", sa.BigInteger, nullable=False, default=0),
    sa.Column("consolidated_generation", sa.BigInteger, nullable=False, default=0),
    sa.Column("clusters", sa.Integer, nullable=False, default=0),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
)
