"""Fixtures of the memory tests: one fresh ``MemoryStore`` per backend (in-memory, SQLite, Postgres)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from memory import schema
from memory.store import InMemoryStore, MemoryStore, SqlMemoryStore
from tests.conftest import _skip_or_fail_postgres, create_pg_database, postgres_available


def sqlite_engine(path: Path) -> sa.Engine:
    """A SQLite engine configured like the runtime's (WAL, synchronous=FULL) with the memory tables."""
    from runtime.db import create_db_engine

    engine = create_db_engine(f"sqlite:///{path}")
    schema.metadata.create_all(engine)
    return engine


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], MemoryStore]]:
    """A factory of stores over ONE fresh backend: each call gives a new store object on the same data
    (a "restart"); for the in-memory backend every call returns the same object."""
    if request.param == "memory":
        store = InMemoryStore()
        yield lambda: store
        return
    if request.param == "sqlite":
        engine = sqlite_engine(tmp_path / "memory.db")
        yield lambda: SqlMemoryStore(engine)
        engine.dispose()
        return
    reason = postgres_available()
    if reason:
        _skip_or_fail_postgres(reason)
    url, drop = create_pg_database()
    from runtime.db import create_db_engine

    engine = create_db_engine(url)
    schema.metadata.create_all(engine)
    try:
        yield lambda: SqlMemoryStore(engine)
    finally:
        engine.dispose()
        drop()


@pytest.fixture
def store(store_factory: Callable[[], MemoryStore]) -> MemoryStore:
    """One fresh store of each backend."""
    return store_factory()
