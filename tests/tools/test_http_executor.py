"""HttpExecutor against a real local HTTP server: methods, statuses, caps and transport faults."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from core.errors import DeadlineExceededError, UnavailableError
from runtime.errors import MAX_RETRY_DELAY_S, to_rpc_error
from tests.tools.http_tool_server import ToolHTTPServer
from tools.executors import MAX_RETRY_AFTER_S, ExecResult, HttpExecutor
from tools.model import ExecutorKind, ExecutorSpec, ToolDefinition
from tools.runner import cap_output


@pytest.fixture(scope="module")
def server() -> Iterator[ToolHTTPServer]:
    s = ToolHTTPServer()
    yield s
    s.close()


def http_tool(
    url: str, method: str = "POST", cap: int = 65536, headers: dict[str, str] | None = None
) -> ToolDefinition:
    return ToolDefinition(
        name="t",
        description="",
        input_schema={"type": "object"},
        executor=ExecutorSpec(ExecutorKind.HTTP, url=url, method=method, headers=headers or {}),
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


@pytest.mark.parametrize(
    ("content_type", "accept"), [("content-type", "accept"), ("Content-Type", "Accept"), ("CONTENT-TYPE", "ACCEPT")]
)
def test_registered_headers_replace_the_defaults_in_any_case(
    server: ToolHTTPServer, content_type: str, accept: str
) -> None:
    headers = {content_type: "application/vnd.api+json", accept: "text/plain"}
    res = run(http_tool(server.url("/headers"), headers=headers), {"a": 1})
    assert json.loads(res.output) == {"content-type": ["application/vnd.api+json"], "accept": ["text/plain"]}


def test_truncation_total_is_unknown_under_a_content_encoding(server: ToolHTTPServer) -> None:
    # Content-Length is the gzip size (a few hundred bytes), not the 100,000 decompressed bytes read.
    res = run(http_tool(server.url("/gzip"), cap=1000), {"n": 100_000})
    assert 1000 < len(res.output) <= 1001 and res.total_bytes == -1
    text, truncated, size = cap_output(res.output, 1000, res.total_bytes)
    assert truncated and text.endswith("[agentrt: output truncated to 1000 of more than 1000 bytes]")
    assert size == len(res.output)


@pytest.mark.parametrize(("value", "advice"), [("inf", 1.0), ("nan", 1.0), ("1e300", MAX_RETRY_AFTER_S), ("7", 7.0)])
def test_retry_after_is_finite_and_clamped(server: ToolHTTPServer, value: str, advice: float) -> None:
    with pytest.raises(UnavailableError) as err:
        run(http_tool(server.url("/retry_after")), {"value": value})
    assert err.value.retry_after_s == advice
    # The gRPC mapping encodes it as a Duration (int(inf) used to raise OverflowError there).
    assert to_rpc_error(err.value).code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("seconds", [math.inf, math.nan, 1e300, -5.0])
def test_rpc_error_clamps_any_retry_advice(seconds: float) -> None:
    rpc = to_rpc_error(UnavailableError("down", retry_after_s=seconds))
    assert rpc.code == grpc.StatusCode.UNAVAILABLE and rpc.details
    status = status_pb2.Status.FromString(rpc.details)
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert 0 <= info.retry_delay.ToNanoseconds() <= MAX_RETRY_DELAY_S * 1e9
