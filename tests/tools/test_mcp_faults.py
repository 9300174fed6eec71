"""MCP connections when the server misbehaves: a streamable-HTTP server that freezes or restarts, and
replicas whose connections must follow the spec stored by another replica."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from core.embedding import create_embedder
from core.errors import FailedPreconditionError, UnavailableError
from runtime.db import create_db_engine
from tools.model import McpServerSpec, McpTransport
from tools.registry import ToolRegistry
from tools.schema import metadata as tool_metadata
from tools.search import ToolSearch
from tools.sql_store import SqlToolStore
from tools.store import InMemoryToolStore

HTTP_SERVER = str(Path(__file__).with_name("mcp_http_server.py"))
STDIO_SERVER = str(Path(__file__).with_name("mcp_server.py"))
SCOPE = "t/ns"
# Generous: only a hang (minutes, the HTTP client's read timeout) must fail these.
HANG_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpMcpProcess:
    """The tests' MCP server over streamable HTTP in a subprocess on a fixed port (restartable)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, HTTP_SERVER, str(self.port)], stderr=subprocess.DEVNULL)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the MCP HTTP server did not start")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            os.kill(proc.pid, signal.SIGCONT)  # in case the test froze it
            proc.kill()
            proc.wait(10)


@pytest.fixture
def http_server() -> Iterator[HttpMcpProcess]:
    srv = HttpMcpProcess()
    yield srv
    srv.stop()


@pytest.fixture
async def registry() -> AsyncIterator[ToolRegistry]:
    reg = ToolRegistry(InMemoryToolStore(), ToolSearch(create_embedder("hashing")))
    yield reg
    await asyncio.wait_for(reg.aclose(), HANG_S)


def web(url: str) -> McpServerSpec:
    return McpServerSpec("web", McpTransport.STREAMABLE_HTTP, url=url, timeout_s=10)


async def test_removing_a_frozen_http_server_does_not_hang(
    registry: ToolRegistry, http_server: HttpMcpProcess
) -> None:
    await registry.import_mcp(SCOPE, web(http_server.url))
    assert http_server.proc is not None
    # Frozen: the kernel still accepts connections, nothing answers (the session's closing DELETE waits).
    os.kill(http_server.proc.pid, signal.SIGSTOP)
    started = time.monotonic()
    removed = await asyncio.wait_for(registry.remove_mcp(SCOPE, "web"), HANG_S)
    assert "web.add" in removed and time.monotonic() - started < HANG_S
    assert registry.mcp.get(SCOPE, "web") is None


async def test_closing_a_frozen_server_does_not_swallow_the_callers_cancellation(
    registry: ToolRegistry, http_server: HttpMcpProcess
) -> None:
    await registry.import_mcp(SCOPE, web(http_server.url))
    assert http_server.proc is not None
    os.kill(http_server.proc.pid, signal.SIGSTOP)
    task = asyncio.create_task(registry.mcp.disconnect(SCOPE, "web"))
    await asyncio.sleep(0.5)  # inside close(), waiting for the supervisor
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, HANG_S)


async def test_a_call_after_the_http_server_restarted_is_unavailable_not_a_tool_error(
    registry: ToolRegistry, http_server: HttpMcpProcess
) -> None:
    await registry.import_mcp(SCOPE, web(http_server.url))
    wipe = await registry.get(SCOPE, "web.wipe_directory")  # not idempotent: not retried
    assert not (await registry.execute(SCOPE, wipe, {"path": "/tmp/x"})).is_error
    http_server.stop()
    http_server.start()
    # The new process does not know the old session ("Session not found"): the protocol, not the tool.
    with pytest.raises(UnavailableError, match="reconnected"):
        await registry.execute(SCOPE, wipe, {"path": "/tmp/x"})
    end = time.monotonic() + HANG_S
    while True:  # the supervisor reconnects behind the failed call
        try:
            run = await registry.execute(SCOPE, wipe, {"path": "/tmp/x"})
            break
        except UnavailableError:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)
    assert not run.is_error and "pretended" in run.output


# -- replicas ---------------------------------------------------------------------------------------


def tagged(tag: str) -> McpServerSpec:
    return McpServerSpec(
        "demo", McpTransport.STDIO, command=sys.executable, args=(STDIO_SERVER,), env={"SPEC_TAG": tag}, timeout_s=20
    )


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[ToolRegistry, ToolRegistry]]:
    """Two registries on one database, as two sidecars sharing it (the change feed is called by hand)."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'tools.db'}")
    tool_metadata.create_all(engine)
    regs = [ToolRegistry(SqlToolStore(engine), ToolSearch(create_embedder("hashing"))) for _ in range(2)]
    yield regs[0], regs[1]
    for reg in regs:
        await asyncio.wait_for(reg.aclose(), HANG_S)
    engine.dispose()


async def _settled(reg: ToolRegistry) -> None:
    # The feed's recheck runs as a task on the connections' loop.
    await asyncio.sleep(0)
    while reg._recheck_tasks:
        await asyncio.wait(list(reg._recheck_tasks), timeout=HANG_S)


async def test_a_replica_follows_a_reimport_and_a_removal_made_by_another(
    replicas: tuple[ToolRegistry, ToolRegistry],
) -> None:
    a, b = replicas
    await a.import_mcp(SCOPE, tagged("v1"))
    add = await b.get(SCOPE, "demo.add")
    await b.execute(SCOPE, add, {"a": 1, "b": 1})  # B connects with the stored spec
    stale = b.mcp.get(SCOPE, "demo")
    assert stale is not None and stale.spec.env == {"SPEC_TAG": "v1"}

    await a.import_mcp(SCOPE, tagged("v2"))  # a new spec (a rotated token in env, say)
    b.invalidate(SCOPE)  # what the change feed does on B
    await _settled(b)
    conn = b.mcp.get(SCOPE, "demo")
    assert conn is not None and conn is not stale and conn.spec.env == {"SPEC_TAG": "v2"}

    await a.remove_mcp(SCOPE, "demo")
    b.invalidate(SCOPE)
    await _settled(b)
    assert b.mcp.get(SCOPE, "demo") is None
    assert await b.list_tools(SCOPE, include_builtins=False) == []


async def test_a_stale_connection_cannot_bring_back_a_removed_servers_tools(
    replicas: tuple[ToolRegistry, ToolRegistry],
) -> None:
    a, b = replicas
    await a.import_mcp(SCOPE, tagged("v1"))
    await b.execute(SCOPE, await b.get(SCOPE, "demo.add"), {"a": 1, "b": 1})
    await a.remove_mcp(SCOPE, "demo")
    # Before B hears of the removal, its connection re-lists (a restart, a tools/list_changed).
    stale = b.mcp.get(SCOPE, "demo")
    assert stale is not None
    await stale.refresh()
    assert await a.list_tools(SCOPE, include_builtins=False) == []
    assert await a.mcp_servers(SCOPE) == []
    await _settled(b)  # the refused sync also makes B drop the stale connection
    assert b.mcp.get(SCOPE, "demo") is None


def test_store_refuses_a_sync_from_a_connection_with_another_spec(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'tools.db'}")
    tool_metadata.create_all(engine)
    try:
        for store in (InMemoryToolStore(), SqlToolStore(engine)):
            from tools.mcp_client import McpTool, definitions_from_mcp

            listed = [McpTool("add", "Add.", {"type": "object"}, None, False, True, False, False)]
            v1, v2 = tagged("v1"), tagged("v2")
            with pytest.raises(FailedPreconditionError, match="no longer registered"):
                store.sync_server_tools(SCOPE, "demo", definitions_from_mcp(v1, listed), spec=v1)
            store.put_server(SCOPE, v2)
            with pytest.raises(FailedPreconditionError, match="another spec"):
                store.sync_server_tools(SCOPE, "demo", definitions_from_mcp(v1, listed), spec=v1)
            assert store.list_tools(SCOPE) == []
            result = store.sync_server_tools(SCOPE, "demo", definitions_from_mcp(v2, listed), spec=v2)
            assert result.created == ["demo.add"]
    finally:
        engine.dispose()

