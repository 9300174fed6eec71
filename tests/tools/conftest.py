"""Fixtures of the tool tests: a real local HTTP tool server and helpers for gRPC error details."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

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
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    fields: list[tuple[str, str]] = []
    retry: float | None = None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            fields += [(v.field, v.description) for v in br.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            detail.Unpack(ri)
            retry = ri.retry_delay.ToNanoseconds() / 1e9
    return fields, retry
