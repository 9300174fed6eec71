"""Read-only transactions for the SQL backends of every component.

Every SQLite transaction starts with ``BEGIN IMMEDIATE`` (``runtime/db.py``): it takes the database's one write
lock up front, so a transaction that reads and then writes cannot fail on a stale snapshot. A transaction that
only reads needs no such lock, but with ``BEGIN IMMEDIATE`` it still queued behind every write in flight, each
holding the lock through its fsync (``synchronous=FULL``): profiled on ``bench agent``, the memory reads of a
turn's Write and of the background derivation, and the guard, gate and selection reads, waited there for the
audit and decision writers' commits. A connection from :func:`reading` begins with a plain, deferred ``BEGIN``
instead: in WAL mode its reads see one committed snapshot and wait for no writer. Postgres is unaffected (its
transactions never took that lock).
"""

from __future__ import annotations

import sqlalchemy as sa

#: Execution option that marks a connection as read-only (read by ``runtime/db.py``'s SQLite begin hook).
READ_ONLY_OPTION = "agentrt_read_only"


def reading(engine: sa.Engine) -> sa.Connection:
    """A new connection for a transaction that only reads (use it as a context manager, like
    ``engine.connect()``). Writing through it is a bug: on SQLite the write could fail on a stale snapshot."""
    return engine.connect().execution_options(**{READ_ONLY_OPTION: True})
