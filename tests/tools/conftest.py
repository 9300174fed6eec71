"""Fixtures of the tool tests: a real local HTTP tool server and helpers for gRPC error details."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from runtime.client import error_details as client_error_details
from tests.tools.http_tool_server import ToolHTTPServer

MCP_SERVER = str(Path(__file__).with_name("mcp_server.py"))
PYTHON = sys.executable


@pytest.fixture
def http_tools() -> Iterator[ToolHTTPServer]:
    """A fresh local HTTP tool server (fresh call counters per test)."""
    srv = ToolHTTPServer()
    yield srv
    srv.close()


def error_details(err: grpc.RpcError) -> tuple[list[tuple[str, str]], float | None]:
    """(BadRequest field violations, RetryInfo delay in seconds) of a failed call."""
    details = client_error_details(err)
    return details.field_violations, details.retry_after_s
