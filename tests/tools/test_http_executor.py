"""HttpExecutor against a real local HTTP server: methods, statuses, caps and transport faults."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import pytest

from core.errors import DeadlineExceededError, UnavailableError
from tests.tools.http_tool_server import ToolHTTPServer
from tools.executors import ExecResult, HttpExecutor
from tools.model import ExecutorKind, ExecutorSpec, ToolDefinition


@pytest.fixture(scope="module")
def server() -> Iterator[ToolHTTPServer]:
    s = ToolHTTPServer()
    yield s
    s.close()


def http_tool(url: str, method: str = "POST", cap: int = 65536) -> ToolDefinition:
    return ToolDefinition(
        name="t",
        description="",
        input_schema={"type": "object"},
        executor=ExecutorSpec(ExecutorKind.HTTP, url=url, method=method),
        version=1,
        max_output_bytes=cap,
    )


def run(tool: ToolDefinition, arguments: dict[str, object], timeout_s: float = 5.0) -> ExecResult:
    async def go() -> ExecResult:
        ex = HttpExecutor()
        try:
            return await ex.execute("t/ns", tool, arguments, timeout_s)
        finally:
            await ex.aclose()

    return asyncio.run(go())


def test_post_sends_arguments_as_json(server: ToolHTTPServer) -> None:
    res = run(http_tool(server.url("/echo")), {"city": "Lisbon", "days": 2, "tags": ["a"]})
    assert json.loads(res.output) == {"echo": {"city": "Lisbon", "days": 2, "tags": ["a"]}}
    assert not res.is_error and res.total_bytes is None


def test_get_sends_arguments_as_query_parameters(server: ToolHTTPServer) -> None:
    res = run(http_tool(server.url("/lookup"), method="GET"), {"q": "rome", "n": 3})
    assert json.loads(res.output) == {"method": "GET", "query": {"q": "rome", "n": "3"}}


def test_redirects_are_returned_not_followed(server: ToolHTTPServer) -> None:
    before = server.calls.get("/echo", 0)
    res = run(http_tool(server.url("/redirect"), method="GET"), {})
    assert json.loads(res.output) == {"moved": True}
    assert server.calls.get("/echo", 0) == before


def test_error_status_is_a_result_and_unavailable_status_raises(server: ToolHTTPServer) -> None:
    res = run(http_tool(server.url("/bad_request")), {})
    assert res.is_error and b"city unknown" in res.output
    with pytest.raises(UnavailableError) as err:
        run(http_tool(server.url("/down")), {})
    assert "HTTP 503" in str(err.value) and err.value.retry_after_s == 0.0


def test_reads_stop_after_the_cap(server: ToolHTTPServer) -> None:
    res = run(http_tool(server.url("/big"), cap=1000), {"n": 300_000})
    assert 1000 < len(res.output) <= 1001 and res.total_bytes == 300_000


def test_slow_endpoint_is_deadline_exceeded(server: ToolHTTPServer) -> None:
    with pytest.raises(DeadlineExceededError):
        run(http_tool(server.url("/slow")), {"delay": 2.0}, timeout_s=0.2)


def test_refused_connection_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(UnavailableError) as err:
            run(http_tool(f"http://127.0.0.1:{port}/x"), {})
    assert "unreachable" in str(err.value) and err.value.retry_after_s == 1.0
