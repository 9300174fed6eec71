"""Tables of the agent area: the LangGraph item store (items and their embeddings).

LangGraph's own checkpointer tables (``checkpoints``, ``writes``, ...) are created by the checkpointer
package in the same database; see ``runtime/agent/checkpoint.py``.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

#: Longest key, and longest namespace path (labels joined by "."), an item can have: the sizes of the columns below.
#: Postgres enforces them; the item store checks them itself so that every backend refuses the same puts.
KEY_CHARS = 1000
PATH_CHARS = 1000

store_items = Table(
    "agent_store_items",
    metadata,
    # Also the insertion order: an update keeps its row, a delete then put gets a new one.
    Column("id", Integer, primary_key=True, autoincrement=True),
    # "<tenant>/<namespace>" from rt.scope(); one scope never sees another's rows.
    Column("scope", String(300), nullable=False),
    # LangGraph namespace labels joined by "." (labels cannot contain periods).
    Column("path", String(PATH_CHARS), nullable=False),
    Column("key", String(KEY_CHARS), nullable=False),
    Column("value_json", Text, nullable=False),
    # Unix seconds; portable across SQLite and Postgres without time zone surprises.
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("scope", "path", "key", name="uq_agent_store_items_scope_path_key"),
)
Index("ix_agent_store_items_scope_path", store_items.c.scope, store_items.c.path)

store_vectors = Table(
    "agent_store_vectors",
    metadata,
    Column("item_id", Integer, ForeignKey("agent_store_items.id", ondelete="CASCADE"), primary_key=True),
    # The JSON path the text came from ("$", "text", "tags.1" for the second list element).
    Column("field", String(300), primary_key=True),
    # float32 bytes, L2-normalised.
    Column("vector", LargeBinary, nullable=False),
)
