"""Serialising writers of one key across processes, for the SQL backends of every component.

A "next version = max + 1" insert, a read-merge-write of a settings row or a delete-then-insert of a named
item is correct only if no other writer of the same key runs between its read and its commit. On SQLite every
write transaction starts with ``BEGIN IMMEDIATE`` (``runtime/db.py``), so writers of the file already queue
one behind the other. Postgres runs them concurrently, and several sidecar replicas share it: there the writer
takes a transaction-level advisory lock on the key first, released by its commit or rollback.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa


def advisory_key(*parts: str) -> int:
    """A signed 64-bit lock id for ``parts`` (Postgres advisory locks take a bigint)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_for_write(conn: sa.Connection, *key: str) -> None:
    """Hold ``key`` until ``conn``'s transaction ends, against writers in any process (call it first thing in
    the transaction, before reading what the write depends on). A no-op where the database already serialises
    write transactions (SQLite with ``BEGIN IMMEDIATE``)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_key(*key)})
