"""Guard fixtures: one store factory per backend (in-memory, SQLite, Postgres) and engines on them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from core.embedding import create_embedder
from guards.engine import GuardEngine
from guards.sql import SqlGuardStore
from guards.store import GuardStore, InMemoryGuardStore
from tests.conftest import backend_url


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def guard_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GuardStore]:
    """A fresh, empty store of each backend."""
    if request.param == "memory":
        yield InMemoryGuardStore()
        return
    with backend_url(request.param, tmp_path, "guards.db") as url:
        engine = create_engine(url)
        try:
            yield SqlGuardStore(engine)
        finally:
            engine.dispose()


@pytest.fixture
def hashing_engine() -> Iterator[Callable[..., GuardEngine]]:
    """Factory of engines on the deterministic hashing embedder (tests about logic, not model quality)."""
    made: list[GuardEngine] = []

    def factory(store: GuardStore | None = None, **kwargs: object) -> GuardEngine:
        engine = GuardEngine(store or InMemoryGuardStore(), create_embedder("hashing"), audit_async=False, **kwargs)  # type: ignore[arg-type]
        made.append(engine)
        return engine

    yield factory
    for e in made:
        e.close()


@pytest.fixture(scope="module")
def real_engine() -> Iterator[GuardEngine]:
    """One engine on the real MiniLM model with the default pack (in-memory store), shared per module."""
    engine = GuardEngine(InMemoryGuardStore(), create_embedder(), audit_async=False)
    yield engine
    engine.close()
