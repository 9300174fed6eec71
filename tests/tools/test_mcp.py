"""MCP over stdio with a real server subprocess written with the official SDK: import, call,
refresh on tools/list_changed, and a crashing server that is restarted and reported."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from core.embedding import create_embedder
from core.errors import UnavailableError
from tools.model import McpServerSpec, McpTransport
from tools.registry import ToolRegistry
from tools.search import ToolSearch
from tools.store import InMemoryToolStore

SERVER = str(Path(__file__).with_name("mcp_server.py"))
RAW_SERVER = str(Path(__file__).with_name("raw_mcp_server.py"))
SCOPE = "t/ns"


def spec(name: str = "demo", **kw: object) -> McpServerSpec:
    return McpServerSpec(name, McpTransport.STDIO, command=sys.executable, args=(SERVER,), timeout_s=20, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def registry() -> AsyncIterator[ToolRegistry]:
    reg = ToolRegistry(InMemoryToolStore(), ToolSearch(create_embedder("hashing")))
    yield reg
    await reg.aclose()


async def _wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await predicate():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_import_lists_every_tool_with_hints_as_tags(registry: ToolRegistry) -> None:
    status, tools = await registry.import_mcp(SCOPE, spec(risk_tags=("lab",)))
    assert status.connected and status.restarts == 0
    by_name = {t.name: t for t in tools}
    assert set(by_name) == {"demo.add", "demo.echo_text", "demo.slow", "demo.wipe_directory", "demo.crash", "demo.grow"}
    add = by_name["demo.add"]
    assert add.idempotent and add.input_schema["required"] == ["a", "b"]
    assert add.risk_tags == ("lab",)
    assert "destructive" in by_name["demo.wipe_directory"].risk_tags
    assert by_name["demo.echo_text"].idempotent and "read_only" in by_name["demo.echo_text"].risk_tags
    run = await registry.execute(SCOPE, add, {"a": 2, "b": 40})
    assert json.loads(run.output) == {"result": 42}


async def test_list_changed_notification_reimports(registry: ToolRegistry) -> None:
    await registry.import_mcp(SCOPE, spec())
    grow = await registry.get(SCOPE, "demo.grow")
    await registry.execute(SCOPE, grow, {})

    async def has_multiply() -> bool:
        return any(t.name == "demo.multiply" for t in await registry.list_tools(SCOPE))

    await _wait_for(has_multiply)
    mul = await registry.get(SCOPE, "demo.multiply")
    assert json.loads((await registry.execute(SCOPE, mul, {"a": 6, "b": 7})).output) == {"result": 42}


async def test_crashing_server_is_restarted_and_reported(registry: ToolRegistry) -> None:
    await registry.import_mcp(SCOPE, spec())
    crash = await registry.get(SCOPE, "demo.crash")
    with pytest.raises(UnavailableError, match="crashed") as err:
        await registry.execute(SCOPE, crash, {})
    assert err.value.retry_after_s

    async def reconnected() -> bool:
        conn = registry.mcp.get(SCOPE, "demo")
        return conn is not None and conn.status().connected and conn.status().restarts >= 1

    await _wait_for(reconnected)
    [(_, status)] = await registry.mcp_servers(SCOPE)
    assert status.restarts >= 1 and "crash" in status.last_error
    add = await registry.get(SCOPE, "demo.add")
    assert json.loads((await registry.execute(SCOPE, add, {"a": 1, "b": 1})).output) == {"result": 2}


async def test_refresh_and_remove(registry: ToolRegistry) -> None:
    await registry.import_mcp(SCOPE, spec())
    status, tools = await registry.refresh_mcp(SCOPE, "demo")
    assert status.tool_count == len(tools) == 6
    removed = await registry.remove_mcp(SCOPE, "demo")
    assert len(removed) == 6
    assert [t for t in await registry.list_tools(SCOPE, include_builtins=False)] == []
    assert await registry.mcp_servers(SCOPE) == []


async def test_server_that_cannot_start_is_unavailable(registry: ToolRegistry) -> None:
    bad = McpServerSpec(
        "broken", McpTransport.STDIO, command=sys.executable, args=("-c", "import sys; sys.exit(2)"), timeout_s=5
    )
    with pytest.raises(UnavailableError, match="broken"):
        await registry.import_mcp(SCOPE, bad)
    assert await registry.mcp_servers(SCOPE) == []


async def test_a_server_that_cannot_start_says_why_from_its_stderr(registry: ToolRegistry) -> None:
    # The SDK's own error is "unhandled errors in a TaskGroup": the cause (a README user's "python" without
    # the mcp package) is only on the server's stderr, whose tail the error now carries.
    script = "import sys; sys.stderr.write('ModuleNotFoundError: No module named ' + repr('mcp') + chr(10))"
    script += "; sys.exit(1)"
    bad = McpServerSpec("broken", McpTransport.STDIO, command=sys.executable, args=("-c", script), timeout_s=5)
    with pytest.raises(UnavailableError, match="server stderr: ModuleNotFoundError: No module named 'mcp'"):
        await registry.import_mcp(SCOPE, bad)


async def test_a_crashed_servers_stderr_is_in_its_status(registry: ToolRegistry) -> None:
    await registry.import_mcp(SCOPE, spec())
    crash = await registry.get(SCOPE, "demo.crash")
    with pytest.raises(UnavailableError):
        await registry.execute(SCOPE, crash, {})

    async def restarted() -> bool:
        [(_, status)] = await registry.mcp_servers(SCOPE)
        return status.restarts >= 1

    await _wait_for(restarted)
    [(_, status)] = await registry.mcp_servers(SCOPE)
    assert "server stderr: crash requested by the test" in status.last_error, status.last_error


@pytest.fixture
def http_mcp_url() -> Iterator[str]:
    """The same MCP server over streamable HTTP (uvicorn in a thread, port 0)."""
    import socket
    import threading

    import uvicorn

    from tests.tools.mcp_server import server as mcp_server

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(mcp_server.streamable_http_app(), log_level="warning", lifespan="on")
    web = uvicorn.Server(config)
    thread = threading.Thread(target=web.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not web.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    web.should_exit = True
    web.force_exit = True  # do not wait for the client's open stream
    thread.join(10)
    sock.close()


async def test_streamable_http_server(registry: ToolRegistry, http_mcp_url: str) -> None:
    web = McpServerSpec("web", McpTransport.STREAMABLE_HTTP, url=http_mcp_url, timeout_s=20)
    status, tools = await registry.import_mcp(SCOPE, web)
    assert status.connected and "web.add" in {t.name for t in tools}
    add = await registry.get(SCOPE, "web.add")
    assert json.loads((await registry.execute(SCOPE, add, {"a": 3, "b": 4})).output) == {"result": 7}
    await registry.mcp.disconnect(SCOPE, "web")


async def test_listed_tools_register_would_refuse_are_skipped_and_reported(registry: ToolRegistry) -> None:
    listed = [
        {"name": "good", "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}}}},
        {"name": "badtype", "inputSchema": {"type": "object", "properties": {"x": {"type": "strnig"}}}},
        {"name": "badregex", "inputSchema": {"type": "object", "properties": {"x": {"pattern": "("}}}},
        {"name": "has space", "inputSchema": {"type": "object"}},
        {"name": "n" * 300, "inputSchema": {"type": "object"}},
    ]
    raw = McpServerSpec(
        "raw", McpTransport.STDIO, command=sys.executable, args=(RAW_SERVER, json.dumps(listed)), timeout_s=20
    )
    status, tools = await registry.import_mcp(SCOPE, raw)
    assert [t.name for t in tools] == ["raw.good"]
    assert [t.name for t in await registry.list_tools(SCOPE, include_builtins=False)] == ["raw.good"]
    assert status.connected and "skipped 4 of 5 listed tools" in status.last_error
    for why in ("'raw.badtype'", "strnig", "'raw.badregex'", "'raw.has space'", "tool.name"):
        assert why in status.last_error
    run = await registry.execute(SCOPE, tools[0], {"x": "a"})
    assert json.loads(run.output) == {"x": "a"}
