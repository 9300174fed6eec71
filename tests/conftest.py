"""Shared fixtures: real servers on port 0 (in-process and as subprocesses), SQLite and Postgres databases.

- ``db_url``: parametrised over ``sqlite`` and ``postgres``. Each Postgres test gets a fresh database that
  is dropped afterwards; where 127.0.0.1:5432 is unreachable the Postgres case skips with a message,
  unless AGENTRT_TEST_POSTGRES=required (CI), where it fails.
- ``make_server(**overrides)``: starts an AgentrtServer in a background thread (its own event loop) and
  returns a ``RunningServer`` with ``.client`` (typed sync client), ``.channel``, ``.target``, ``.rt``.
  Overrides: ``db_url``, ``data_dir``, ``embedding_model`` ("hashing" for a deterministic fake), ``tokens``,
  ``policies``, or ``settings`` (a full Settings). Servers are stopped at teardown.
- ``spawn_server(...)``: the same as a real ``agentrt serve`` subprocess (for kill -9 / SIGTERM tests).
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from runtime.client import AgentrtClient, error_details
from runtime.config import Settings
from runtime.embedded import EmbeddedServer
from runtime.process import ServerProcess

REPO = Path(__file__).resolve().parent.parent
PG_HOST = os.environ.get("AGENTRT_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("AGENTRT_TEST_PG_PORT", "5432"))
PG_ADMIN_DB = os.environ.get("AGENTRT_TEST_PG_DB", "test")


def _pg_user() -> str:
    return os.environ.get("AGENTRT_TEST_PG_USER", "postgres")


def postgres_available() -> str | None:
    """None when the test Postgres is reachable, else the reason it is not."""
    try:
        import psycopg

        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=_pg_user(), dbname=PG_ADMIN_DB, connect_timeout=3):
            return None
    except Exception as exc:
        return f"PostgreSQL at {PG_HOST}:{PG_PORT} unreachable ({exc.__class__.__name__}: {exc})"


def _skip_or_fail_postgres(reason: str) -> None:
    if os.environ.get("AGENTRT_TEST_POSTGRES") == "required":
        pytest.fail(f"Postgres tests are required here but {reason}")
    pytest.skip(reason)


def create_pg_database() -> tuple[str, Callable[[], None]]:
    """A fresh Postgres database; returns (SQLAlchemy URL, drop function)."""
    import psycopg

    name = f"agentrt_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=_pg_user(), dbname=PG_ADMIN_DB, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=_pg_user(), dbname=PG_ADMIN_DB,
                             autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgresql+psycopg://{_pg_user()}@{PG_HOST}:{PG_PORT}/{name}", drop


@contextlib.contextmanager
def backend_url(backend: str, directory: Path, filename: str = "agentrt.db") -> Iterator[str]:
    """The SQLAlchemy URL of a fresh, empty database: SQLite (``directory / filename``) or Postgres (created, and
    dropped on exit; skipped, or failed where required, when Postgres is unreachable)."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / filename}"
        return
    reason = postgres_available()
    if reason:
        _skip_or_fail_postgres(reason)
    url, drop = create_pg_database()
    try:
        yield url
    finally:
        drop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each backend."""
    with backend_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh Postgres database only (for Postgres-specific tests)."""
    reason = postgres_available()
    if reason:
        _skip_or_fail_postgres(reason)
    url, drop = create_pg_database()
    try:
        yield url
    finally:
        drop()


def make_settings(
    *,
    data_dir: str | os.PathLike[str],
    db_url: str | None = None,
    embedding_model: str | None = None,
    tokens: list[dict[str, Any]] | None = None,
    policies: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
) -> Settings:
    """Settings for a test server: port 0, metrics off, given data dir and database."""
    values: dict[str, Any] = {
        "server": {"port": 0, "metrics_port": -1, "shutdown_grace_s": 2.0, **(server or {})},
        "storage": {"data_dir": str(data_dir), "database_url": db_url},
        "log": {"level": "WARNING", "format": "text"},
    }
    if embedding_model:
        values["embedding"] = {"model": embedding_model}
    if tokens is not None:
        values["auth"] = {"tokens": tokens}
    if policies is not None:
        values["policies"] = policies
    return Settings(**values)


class RunningServer(EmbeddedServer):
    """An embedded server (runtime/embedded.py) with a typed client attached."""

    def __init__(self, settings: Settings, token: str | None = None):
        super().__init__(settings, ready_timeout_s=300)
        self.client = AgentrtClient(self.target, token=token)
        self.channel = self.client.channel

    def new_client(self, token: str | None = None) -> AgentrtClient:
        return AgentrtClient(self.target, token=token)

    def stop(self, grace: float = 0.0) -> None:
        # A server whose start failed is stopped from EmbeddedServer.__init__, before it has a client.
        client = getattr(self, "client", None)
        if client is not None and not self._stopped:
            client.close()
        super().stop(grace)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Factory of in-process servers (see module docstring); all are stopped at teardown."""
    started: list[RunningServer] = []

    def factory(*, settings: Settings | None = None, token: str | None = None, **kwargs: Any) -> RunningServer:
        if settings is None:
            kwargs.setdefault("data_dir", tmp_path / f"data{len(started)}")
            settings = make_settings(**kwargs)
        srv = RunningServer(settings, token=token)
        started.append(srv)
        return srv

    yield factory
    for srv in reversed(started):
        srv.stop()


@pytest.fixture
def server(make_server: Callable[..., RunningServer]) -> RunningServer:
    """A default server: SQLite, the real MiniLM model."""
    return make_server()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def spawn_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory of ``agentrt serve`` subprocesses; ``spawn_server(data_dir=…, db_url=…, env={…})``."""
    procs: list[ServerProcess] = []

    def factory(*, data_dir: Path | None = None, db_url: str | None = None, extra_args: list[str] | None = None,
                env: dict[str, str] | None = None) -> ServerProcess:
        srv = ServerProcess(data_dir or tmp_path / "data", database_url=db_url, extra_args=extra_args or (),
                            env={"AGENTRT_LOG__FORMAT": "text", **(env or {})},
                            log_path=tmp_path / f"server-{uuid.uuid4().hex[:6]}.log")
        procs.append(srv)
        return srv

    yield factory
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(30)
        p.stop()


@pytest.fixture(scope="session", autouse=True)
def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    tempfile.tempdir = None


def bad_fields(err: grpc.RpcError) -> list[str]:
    """Field names of the BadRequest detail of an INVALID_ARGUMENT error."""
    return [field for field, _ in error_details(err).field_violations]
