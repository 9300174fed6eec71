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

from sqlalchemy import Engine, create_engine, event, insert, select
from sqlalchemy.exc import IntegrityError

from core.sqlread import READ_ONLY_OPTION, reading
from runtime import schema

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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

    def __init__(self, url: str, *, pool_size: int = 10):
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
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
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        log.info("database migrated", extra={"database": _redact(self.url)})

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
