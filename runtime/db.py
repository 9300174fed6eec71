"""The database: the source of truth of every component (SQLite by default, Postgres for replicas).

SQLite runs in WAL mode with ``synchronous=FULL`` so that a commit acknowledged to a client survives
``kill -9`` and power loss; every transaction starts with ``BEGIN IMMEDIATE`` so concurrent writers queue
on the busy timeout instead of failing on a stale read snapshot, except read-only ones (``core.sqlread``),
which begin deferred and wait for no writer.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import Engine, create_engine, event, insert, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError

from core.sqlread import READ_ONLY_OPTION, reading
from core.sqlwrite import lock_for_write
from runtime import schema

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


#: Key of the advisory lock that serialises migrations of one Postgres database across processes.
MIGRATION_LOCK = ("agentrt", "migrations")


class DatabaseError(RuntimeError):
    """The database cannot be used as asked (absent, without the agentrt schema, an unsupported URL); the
    message names it and what to do."""


def _redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; raises DatabaseError for an in-memory one (each pooled connection, one per worker
    thread, would open its own empty database, so the schema migrated on one is missing on the others)."""
    try:
        database = make_url(url).database
    except ArgumentError as exc:
        raise DatabaseError(f"not a database URL: {url!r} ({exc})") from None
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        raise DatabaseError(
            f"in-memory SQLite ({url!r}) is not supported: the worker threads would each see a separate empty "
            "database; use a file (--data-dir, or sqlite:////path/to/agentrt.db)"
        )
    return sqlite_file_path(database)


def sqlite_file_path(database: str) -> Path:
    """The file the database part of a SQLite URL names: the path itself, or the path of a ``file:`` URI
    (``sqlite:///file:/data/agentrt.db?uri=true``), which was taken for a directory named ``file:`` under the
    working directory (created there by the start, and named in "no database at file:/..." errors)."""
    if database.startswith("file:"):
        return Path(unquote(urlsplit(database).path))
    return Path(database)


def create_db_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An Engine configured for durability on SQLite and for pooled, pre-pinged connections on Postgres."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None},
            pool_size=pool_size,
            max_overflow=pool_size,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            # After a checkpoint, give back WAL space beyond 4 MiB: otherwise the WAL keeps its high-water
            # size for good, and after a disk-full the checkpoint grows the database on top of it.
            cur.execute("PRAGMA journal_size_limit=4194304")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Read-only connections (core.sqlread.reading) take a WAL snapshot and wait for no writer.
            read_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size)


class Database:
    """Owns the Engine, runs migrations and keeps the namespace registry."""

    def __init__(self, url: str, *, pool_size: int = 10, create: bool = True):
        """``create=False``: a SQLite file that does not exist is a DatabaseError instead of a new empty database
        (for commands that only make sense on an existing one, where a mistyped ``--data-dir`` must not pass)."""
        self.url = url
        if url.startswith("sqlite"):
            path = sqlite_file(url)
            if path is not None and not create and not path.is_file():
                raise DatabaseError(f"no database at {path} (check --data-dir / --database-url)")
            if path is not None and create:
                path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_db_engine(url, pool_size=pool_size)
        self._known_namespaces: set[str] = set()
        self._lock = threading.Lock()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def __repr__(self) -> str:
        return f"Database({_redact(self.url)!r})"

    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic ``upgrade head``)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.begin() as conn:
            # Replicas started together on one fresh Postgres would otherwise both find no alembic_version and
            # both run CREATE TABLE; the loser fails its start. The lock is held to this transaction's commit,
            # and the whole upgrade runs in it (env.py opens no transaction of its own), so the second replica
            # reads the revision only once the first has committed, and finds nothing to do. SQLite's
            # BEGIN IMMEDIATE serialises the same way.
            lock_for_write(conn, *MIGRATION_LOCK)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        log.info("database migrated", extra={"database": _redact(self.url)})

    def is_migrated(self) -> bool:
        """Whether the database holds the agentrt schema (any revision); nothing is created."""
        with reading(self.engine) as conn:
            return inspect(conn).has_table("alembic_version")

    def is_known(self, key: str) -> bool:
        """Whether this process already knows the namespace exists (no database round trip)."""
        return key in self._known_namespaces

    def ensure_namespace(self, key: str) -> bool:
        """Create the namespace row on first use; returns True when it was created now."""
        if key in self._known_namespaces:
            return False
        tenant, _, name = key.partition("/")
        created = False
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(schema.namespaces.c.key).where(schema.namespaces.c.key == key)
            ).first()
            if exists is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(schema.namespaces).values(key=key, tenant=tenant, name=name))
                    created = True
                except IntegrityError:  # another replica created it first
                    pass
        with self._lock:
            self._known_namespaces.add(key)
        return created

    def list_namespaces(self, tenant: str) -> list[str]:
        """Names of the tenant's namespaces."""
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(schema.namespaces.c.name)
                .where(schema.namespaces.c.tenant == tenant)
                .order_by(schema.namespaces.c.name)
            )
            return [r[0] for r in rows]

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
