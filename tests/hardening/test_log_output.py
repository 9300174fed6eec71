"""What the process log shows: credentials in URLs masked (an MCP server's URL reached the log at INFO through the
MCP client's httpx2 logger; the LLM endpoint's URL went into errors as given), and ``log.format: text`` keeping
the structured fields (it dropped every one: "listening" said nowhere where)."""

from __future__ import annotations

import http.server
import io
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from agentrt.v1 import agent_pb2, tool_pb2

from runtime import logs
from runtime.convert.tool import redacted_url as reply_redacted_url


@pytest.fixture
def process_log() -> Iterator[Callable[[str], io.StringIO]]:
    """The production logging set-up (``setup_logging``) writing into a buffer; the previous set-up restored."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()

    def configure(fmt: str) -> io.StringIO:
        logs.setup_logging("INFO", fmt)
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
        return buffer

    try:
        yield configure
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_text_logs_keep_the_structured_fields(make_server: Any, process_log: Any) -> None:
    out = process_log("text")
    srv = make_server(embedding_model="hashing")
    srv.stop()
    lines = out.getvalue().splitlines()
    listening = next(line for line in lines if "runtime.server: listening" in line)
    assert f"address=127.0.0.1:{srv.port}" in listening and "tls=False" in listening
    serving = next(line for line in lines if "runtime.server: serving" in line)
    assert "startup_s=" in serving and "embedder=hashing" in serving


class _Unauthorized(http.server.BaseHTTPRequestHandler):
    def _deny(self) -> None:
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET = do_DELETE = _deny

    def log_message(self, *_args: Any) -> None:
        pass


def test_an_mcp_servers_url_credentials_never_reach_the_log(make_server: Any, process_log: Any) -> None:
    out = process_log("json")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    password, key = "PW-s3cr3t-123", "KEY-abcdef-456"
    url = f"http://bob:{password}@127.0.0.1:{httpd.server_port}/mcp?api_key={key}"
    try:
        srv = make_server(embedding_model="hashing")
        with pytest.raises(grpc.RpcError) as err:
            srv.client.tool.ImportMcp(tool_pb2.ImportMcpRequest(namespace="ns", server=tool_pb2.McpServer(
                name="remote", url=url, timeout_s=3)), timeout=60)
        srv.stop()
    finally:
        httpd.shutdown()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    log = out.getvalue()
    assert log.strip()
    assert password not in log and key not in log


def test_an_llm_endpoints_password_is_masked_in_the_error(make_server: Any, process_log: Any) -> None:
    out = process_log("json")
    srv = make_server(embedding_model="hashing")
    req = agent_pb2.RunTurnRequest(namespace="ns", message="hi", thread_id="t1", policy=agent_pb2.TurnPolicy(
        llm_base_url="http://bob:LLM-s3cr3t@127.0.0.1:9/v1"))
    with pytest.raises(grpc.RpcError) as err:
        list(srv.client.agent.RunTurn(req, timeout=30))
    srv.stop()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "http://bob:***@127.0.0.1:9/v1/chat/completions" in (err.value.details() or "")
    assert "LLM-s3cr3t" not in (err.value.details() or "") and "LLM-s3cr3t" not in out.getvalue()


def test_the_filter_masks_urls_in_messages_fields_and_tracebacks(process_log: Any) -> None:
    out = process_log("json")
    log = logging.getLogger("tests.redaction")
    log.info("HTTP Request: POST %s \"HTTP/1.1 401\"", "http://u:pw-1@h:1/mcp?api_key=k-1&x")
    log.warning("connect", extra={"database": "postgresql+psycopg://app:pw-2@db:5432/agentrt"})
    try:
        raise ValueError("cannot reach https://h/v1?token=k-3")
    except ValueError:
        log.exception("failed")
    text = out.getvalue()
    for secret in ("pw-1", "k-1", "pw-2", "k-3"):
        assert secret not in text
    assert "http://u:***@h:1/mcp?api_key=***&x" in text and "app:***@db:5432/agentrt" in text


@pytest.mark.parametrize(("url", "shown"), [
    ("http://bob:pw@host:8080/mcp?api_key=k&flag", "http://bob:***@host:8080/mcp?api_key=***&flag"),
    ("https://host/v1", "https://host/v1"),
    ("https://user@host/p?a=1&b=2#frag", "https://user@host/p?a=***&b=***#frag"),
    ("postgresql+psycopg://app:pw@db/agentrt", "postgresql+psycopg://app:***@db/agentrt"),
    ("http://[::1]:80/x?y=z", "http://[::1]:80/x?y=***"),
    ("http://[bad", "***"),
])
def test_urls_are_masked_the_same_in_logs_and_replies(url: str, shown: str) -> None:
    # One function serves both (runtime.logs.redacted_url; the tool replies import it).
    assert reply_redacted_url is logs.redacted_url
    assert logs.redacted_url(url) == shown
