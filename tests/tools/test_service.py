"""ToolService over the wire: a real server on port 0, a real HTTP tool server, a real stdio MCP server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from agentrt.v1 import common_pb2, tool_pb2

from tests.conftest import RunningServer, make_settings
from tests.tools.conftest import MCP_SERVER, PYTHON, error_details
from tests.tools.http_tool_server import ToolHTTPServer

NS = "agent1"
CITY_SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 2, "description": "city name"},
            "days": {"type": "integer", "minimum": 1},
        },
        "required": ["city"],
    }
)


def http_tool(name: str, url: str, **kw: Any) -> tool_pb2.Tool:
    return tool_pb2.Tool(
        name=name,
        description=kw.pop("description", f"{name} tool"),
        input_schema_json=kw.pop("input_schema_json", '{"type": "object"}'),
        http=tool_pb2.HttpToolExecutor(url=url),
        **kw,
    )


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server (SQLite, real model) for the module; each test works in its own namespace.

    The Postgres path is covered by test_registry_survives_restart and the store conformance suite.
    """
    s = RunningServer(make_settings(data_dir=tmp_path_factory.mktemp("tool-server")))
    _ensure_guards(s)
    yield s
    s.stop()


@pytest.fixture
def srv(shared_server: RunningServer) -> RunningServer:
    shared_server.ns = f"ns-{uuid.uuid4().hex[:10]}"  # type: ignore[attr-defined]
    return shared_server


def _ensure_guards(s: RunningServer) -> None:
    # Until the guard service wires rt.guards itself, install the real engine (default rule pack).
    if s.rt.guards is None:
        from guards.engine import GuardEngine
        from guards.store import InMemoryGuardStore

        s.rt.guards = GuardEngine(InMemoryGuardStore(), s.rt.embedder, audit_async=False)


def no_guards(s: RunningServer) -> None:
    """For tests about something other than the guards: their verdicts on bare test calls are not the point."""
    s.client.tool.SetPolicy(
        tool_pb2.SetToolPolicyRequest(
            namespace=s.ns, policy=tool_pb2.ToolPolicy(guard_calls=False, guard_results=False)
        )
    )


def invoke(s: RunningServer, name: str, args: dict[str, Any] | str = "", **kw: Any) -> tool_pb2.InvokeToolResponse:
    text = args if isinstance(args, str) else json.dumps(args)
    return s.client.tool.Invoke(
        tool_pb2.InvokeToolRequest(namespace=s.ns, name=name, arguments_json=text, **kw), timeout=60
    )


def test_register_version_list_get_unregister(srv: RunningServer, http_tools: ToolHTTPServer) -> None:
    stub = srv.client.tool
    t = http_tool("weather", http_tools.url("/weather"), input_schema_json=CITY_SCHEMA, risk_tags=["network"])
    r1 = stub.Register(tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=t))
    assert (r1.tool.version, r1.created) == (1, True)
    assert stub.Register(tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=t)).created is False
    t.description = "Weather forecast for a city"
    r2 = stub.Register(tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=t))
    assert (r2.tool.version, r2.created) == (2, True)
    listed = stub.List(tool_pb2.ListToolsRequest(namespace=srv.ns))
    names = [x.name for x in listed.tools]
    assert "weather" in names and "memory.search" in names and "memory.write" in names
    assert [x.name for x in stub.List(tool_pb2.ListToolsRequest(namespace=srv.ns, exclude_builtins=True)).tools] == [
        "weather"
    ]
    got = stub.Get(tool_pb2.GetToolRequest(namespace=srv.ns, name="weather"))
    assert got.tool.version == 2 and list(got.versions) == [1, 2] and list(got.tool.risk_tags) == ["network"]
    assert got.tool.http.url == http_tools.url("/weather")
    assert (
        stub.Get(tool_pb2.GetToolRequest(namespace=srv.ns, name="weather", version=1)).tool.description
        == "weather tool"
    )
    # Another namespace sees nothing.
    assert stub.List(tool_pb2.ListToolsRequest(namespace=srv.ns + "-other", exclude_builtins=True)).tools == []
    assert stub.Unregister(tool_pb2.UnregisterToolRequest(namespace=srv.ns, name="weather")).last_version == 2
    with pytest.raises(grpc.RpcError) as err:
        stub.Get(tool_pb2.GetToolRequest(namespace=srv.ns, name="weather"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_register_rejects_bad_definitions_with_field(srv: RunningServer) -> None:
    bad = tool_pb2.Tool(
        name="x",
        input_schema_json='{"type": "object", "properties": {"a": {"type": 5}}}',
        http=tool_pb2.HttpToolExecutor(url="http://127.0.0.1:1/"),
    )
    with pytest.raises(grpc.RpcError) as err:
        srv.client.tool.Register(tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields, _ = error_details(err.value)
    assert fields[0][0] == "tool.input_schema_json" and "properties.a.type" in fields[0][1]
    with pytest.raises(grpc.RpcError) as err:
        srv.client.tool.Register(tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=tool_pb2.Tool(name="x")))
    assert error_details(err.value)[0][0][0] == "tool.executor"


def test_invoke_http_tool_and_audit(srv: RunningServer, http_tools: ToolHTTPServer) -> None:
    srv.client.tool.Register(
        tool_pb2.RegisterToolRequest(
            namespace=srv.ns, tool=http_tool("weather", http_tools.url("/weather"), input_schema_json=CITY_SCHEMA)
        )
    )
    r = invoke(srv, "weather", {"city": "Paris"}, instruction="What's the weather in Paris?", caller="planner")
    assert r.outcome == tool_pb2.INVOKE_OUTCOME_OK and r.stopped_at == tool_pb2.INVOKE_STEP_UNSPECIFIED
    assert json.loads(r.output) == {"city": "Paris", "forecast": "sunny", "temp_c": 21}
    assert (
        r.call_verdict.decision == common_pb2.DECISION_ALLOW and r.result_verdict.decision == common_pb2.DECISION_ALLOW
    )
    assert r.attempts == 1 and r.tool_version == 1
    # The guard's ToolCall shape is accepted as well.
    r2 = srv.client.tool.Invoke(
        tool_pb2.InvokeToolRequest(
            namespace=srv.ns, tool_call=common_pb2.ToolCall(name="weather", arguments_json='{"city": "Rome"}')
        )
    )
    assert json.loads(r2.output)["city"] == "Rome"
    records = srv.client.tool.ListAudit(tool_pb2.ListToolAuditRequest(namespace=srv.ns, tool_name="weather")).records
    assert [a.id for a in records] == [r2.invocation_id, r.invocation_id]
    first = records[1]
    assert first.caller == "default:planner" and first.outcome == tool_pb2.INVOKE_OUTCOME_OK
    assert len(first.arguments_sha256) == 64 and "Paris" not in str(first)
    assert [v.stage for v in first.verdicts] == ["tool_call", "tool_result"]


def test_invalid_arguments_name_the_schema_path(srv: RunningServer, http_tools: ToolHTTPServer) -> None:
    srv.client.tool.Register(
        tool_pb2.RegisterToolRequest(
            namespace=srv.ns, tool=http_tool("weather", http_tools.url("/weather"), input_schema_json=CITY_SCHEMA)
        )
    )
    with pytest.raises(grpc.RpcError) as err:
        invoke(srv, "weather", {"city": "P", "days": 0})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = dict(error_details(err.value)[0])
    assert set(fields) == {"arguments_json.city", "arguments_json.days"}
    assert "properties.days.minimum" in fields["arguments_json.days"]
    assert http_tools.calls.get("/weather") is None
    v = srv.client.tool.Validate(
        tool_pb2.ValidateToolArgumentsRequest(namespace=srv.ns, name="weather", arguments_json="{}")
    )
    assert not v.valid and v.violations[0].field == "arguments_json.city"
    assert srv.client.tool.Validate(
        tool_pb2.ValidateToolArgumentsRequest(namespace=srv.ns, name="weather", arguments_json='{"city": "Oslo"}')
    ).valid
    audit = srv.client.tool.ListAudit(tool_pb2.ListToolAuditRequest(namespace=srv.ns)).records
    assert (
        audit[0].outcome == tool_pb2.INVOKE_OUTCOME_INVALID_ARGUMENT
        and audit[0].stopped_at == tool_pb2.INVOKE_STEP_VALIDATE
    )


def test_unknown_tool_is_not_found(srv: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as err:
        invoke(srv, "nope", {})
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_guard_blocks_the_call_before_it_runs(srv: RunningServer, http_tools: ToolHTTPServer) -> None:
    shell = http_tool(
        "run_shell",
        http_tools.url("/echo"),
        input_schema_json='{"type": "object", "properties": {"command": {"type": "string"}}}',
    )
    srv.client.tool.Register(tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=shell))
    r = invoke(srv, "run_shell", {"command": "rm -rf / --no-preserve-root"}, instruction="clean up the disk")
    assert r.outcome == tool_pb2.INVOKE_OUTCOME_BLOCKED and r.stopped_at == tool_pb2.INVOKE_STEP_GUARD_CALL
    assert r.call_verdict.decision == common_pb2.DECISION_BLOCK and "guard block at tool_call" in r.reason
    assert r.output == "" and http_tools.calls.get("/echo") is None


def test_guard_blocks_an_injected_result(srv: RunningServer, http_tools: ToolHTTPServer) -> None:
    srv.client.tool.Register(
        tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=http_tool("browse", http_tools.url("/inject")))
    )
    r = invoke(srv, "browse", {"url": "http://example.com"}, instruction="read this page")
    assert http_tools.calls["/inject"] == 1
    assert r.outcome == tool_pb2.INVOKE_OUTCOME_BLOCKED and r.stopped_at == tool_pb2.INVOKE_STEP_GUARD_RESULT
    assert r.result_verdict.decision == common_pb2.DECISION_BLOCK and r.output == ""
    # Policy can switch the result guard off for a namespace.
    p = srv.client.tool.SetPolicy(
        tool_pb2.SetToolPolicyRequest(namespace=srv.ns, policy=tool_pb2.ToolPolicy(guard_results=False))
    )
    assert p.guard_calls and not p.guard_results
    assert "ignore all previous instructions" in invoke(srv, "browse", {}).output


def test_timeout_is_deadline_exceeded(srv: RunningServer, http_tools: ToolHTTPServer) -> None:
    no_guards(srv)
    srv.client.tool.Register(
        tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=http_tool("slow", http_tools.url("/slow"), timeout_s=0.3))
    )
    with pytest.raises(grpc.RpcError) as err:
        invoke(srv, "slow", {"delay": 3})
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The caller's own (shorter) timeout applies too.
    with pytest.raises(grpc.RpcError) as err:
        invoke(srv, "slow", {"delay": 0.2}, timeout_s=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_endpoint_down_is_unavailable_with_retry_advice(srv: RunningServer, http_tools: ToolHTTPServer) -> None:
    no_guards(srv)
    srv.client.tool.Register(
        tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=http_tool("gone", "http://127.0.0.1:9/x"))
    )
    with pytest.raises(grpc.RpcError) as err:
        invoke(srv, "gone", {})
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_details(err.value)[1] is not None


def test_only_idempotent_tools_are_retried(srv: RunningServer, http_tools: ToolHTTPServer) -> None:
    no_guards(srv)
    stub = srv.client.tool
    stub.Register(
        tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=http_tool("flaky_write", http_tools.url("/flaky")))
    )
    with pytest.raises(grpc.RpcError) as err:
        invoke(srv, "flaky_write", {})
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "not marked idempotent" in (err.value.details() or "")
    assert http_tools.calls["/flaky"] == 1
    http_tools.calls.clear()
    stub.Register(
        tool_pb2.RegisterToolRequest(
            namespace=srv.ns, tool=http_tool("flaky_read", http_tools.url("/flaky"), idempotent=True, max_retries=3)
        )
    )
    r = invoke(srv, "flaky_read", {})
    assert r.outcome == tool_pb2.INVOKE_OUTCOME_OK and r.attempts == 3 and http_tools.calls["/flaky"] == 3


def test_tool_error_is_reported_not_raised(srv: RunningServer, http_tools: ToolHTTPServer) -> None:
    no_guards(srv)
    srv.client.tool.Register(
        tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=http_tool("lookup", http_tools.url("/bad_request")))
    )
    r = invoke(srv, "lookup", {})
    assert r.outcome == tool_pb2.INVOKE_OUTCOME_TOOL_ERROR and r.is_error and "city unknown" in r.output


def test_output_is_truncated_with_marker(srv: RunningServer, http_tools: ToolHTTPServer) -> None:
    no_guards(srv)
    srv.client.tool.Register(
        tool_pb2.RegisterToolRequest(
            namespace=srv.ns, tool=http_tool("big", http_tools.url("/big"), max_output_bytes=1000)
        )
    )
    r = invoke(srv, "big", {"n": 200_000})
    assert r.truncated and r.output_bytes == 200_000
    assert r.output.startswith("x" * 1000) and r.output.endswith("[agentrt: output truncated to 1000 of 200000 bytes]")
    assert srv.client.tool.ListAudit(tool_pb2.ListToolAuditRequest(namespace=srv.ns)).records[0].truncated


def test_mcp_import_invoke_and_crash_over_the_wire(srv: RunningServer) -> None:
    no_guards(srv)
    stub = srv.client.tool
    server = tool_pb2.McpServer(name="lab", command=PYTHON, args=[MCP_SERVER], timeout_s=30)
    imported = stub.ImportMcp(tool_pb2.ImportMcpRequest(namespace=srv.ns, server=server), timeout=60)
    assert imported.status.connected and "lab.add" in [t.name for t in imported.tools]
    r = invoke(srv, "lab.add", {"a": 20, "b": 22})
    assert json.loads(r.output) == {"result": 42}
    with pytest.raises(grpc.RpcError) as err:
        invoke(srv, "lab.add", {"a": "x"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        invoke(srv, "lab.crash", {})
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "crashed" in (err.value.details() or "")
    # The sidecar is still up, and the server comes back.
    import time

    deadline = time.time() + 30
    while True:
        info = stub.ListMcpServers(tool_pb2.ListMcpServersRequest(namespace=srv.ns)).servers[0]
        if info.status.connected or time.time() > deadline:
            break
        time.sleep(0.1)
    assert info.status.connected and info.status.restarts >= 1 and info.status.last_error
    assert json.loads(invoke(srv, "lab.add", {"a": 1, "b": 2}).output) == {"result": 3}
    refreshed = stub.RefreshMcp(tool_pb2.RefreshMcpRequest(namespace=srv.ns, name="lab"))
    assert refreshed.status.tool_count == len(refreshed.tools)
    assert len(stub.RemoveMcp(tool_pb2.RemoveMcpRequest(namespace=srv.ns, name="lab")).removed_tools) == len(
        refreshed.tools
    )


def test_memory_builtins_go_through_invoke(srv: RunningServer) -> None:
    no_guards(srv)
    if srv.rt.memory is None:
        pytest.skip("the memory engine is not wired in this build")
    w = invoke(srv, "memory.write", {"text": "The user's favourite colour is teal.", "session_id": "notes"})
    assert w.outcome == tool_pb2.INVOKE_OUTCOME_OK and json.loads(w.output)["message_ids"]
    s = invoke(srv, "memory.search", {"query": "favourite colour", "top_k": 3})
    assert "teal" in s.output
    with pytest.raises(grpc.RpcError) as err:
        invoke(srv, "memory.search", {"top_k": 3})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_registry_survives_restart(make_server: Callable[..., RunningServer], db_url: str, tmp_path: Any) -> None:
    first = make_server(db_url=db_url, data_dir=tmp_path / "d")
    first.ns = NS  # type: ignore[attr-defined]
    tool = http_tool("echo_api", "http://127.0.0.1:9/echo", input_schema_json=CITY_SCHEMA, idempotent=True)
    first.client.tool.Register(tool_pb2.RegisterToolRequest(namespace=NS, tool=tool))
    tool.description = "v2"
    first.client.tool.Register(tool_pb2.RegisterToolRequest(namespace=NS, tool=tool))
    first.client.tool.ImportMcp(
        tool_pb2.ImportMcpRequest(
            namespace=NS, server=tool_pb2.McpServer(name="lab", command=PYTHON, args=[MCP_SERVER])
        ),
        timeout=60,
    )
    first.client.tool.SetPolicy(
        tool_pb2.SetToolPolicyRequest(namespace=NS, policy=tool_pb2.ToolPolicy(guard_calls=False, guard_results=False))
    )
    first.stop()
    second = make_server(db_url=db_url, data_dir=tmp_path / "d")
    second.ns = NS  # type: ignore[attr-defined]
    got = second.client.tool.Get(tool_pb2.GetToolRequest(namespace=NS, name="echo_api"))
    assert got.tool.version == 2 and list(got.versions) == [1, 2] and got.tool.idempotent
    # The MCP server spec was stored: the first call reconnects to it.
    assert json.loads(invoke(second, "lab.add", {"a": 2, "b": 2}).output) == {"result": 4}
    assert second.client.tool.ListMcpServers(tool_pb2.ListMcpServersRequest(namespace=NS)).servers[0].status.connected


def test_memory_write_policy_records_calls(srv: RunningServer) -> None:
    if srv.rt.memory is None:
        pytest.skip("the memory engine is not wired in this build")
    srv.client.tool.SetPolicy(
        tool_pb2.SetToolPolicyRequest(
            namespace=srv.ns,
            policy=tool_pb2.ToolPolicy(
                guard_calls=False, guard_results=False, memory_write=True, memory_session_id="calls"
            ),
        )
    )
    r = invoke(srv, "echo", {"note": "the parcel tracking number is ZX-4471"})
    assert r.outcome == tool_pb2.INVOKE_OUTCOME_OK and len(r.memory_message_ids) == 2
    hits = srv.client.search(srv.ns, "parcel tracking number", top_k=5).hits
    assert any("ZX-4471" in h.text for h in hits)


def test_mcp_server_from_config_is_imported_at_start(make_server: Callable[..., RunningServer]) -> None:
    policies = {
        "namespaces": {
            "configured": {
                "tools": {
                    "guard_calls": False,
                    "guard_results": False,
                    "mcp_servers": [{"name": "lab", "command": PYTHON, "args": [MCP_SERVER]}],
                }
            }
        }
    }
    s = make_server(embedding_model="hashing", policies=policies)
    s.ns = "configured"  # type: ignore[attr-defined]
    names = [t.name for t in s.client.tool.List(tool_pb2.ListToolsRequest(namespace="configured")).tools]
    assert "lab.add" in names
    assert not s.client.tool.GetPolicy(tool_pb2.GetToolPolicyRequest(namespace="configured")).guard_calls
    assert json.loads(invoke(s, "lab.add", {"a": 5, "b": 5}, instruction="add 5 and 5").output) == {"result": 10}


def test_configured_policy_booleans_given_as_strings_are_parsed() -> None:
    from core.errors import InvalidArgumentError
    from runtime.convert.tool import policy_from_config

    # AGENTRT_* environment variables give strings; bool("false") would be True.
    p = policy_from_config({"guard_calls": "false", "guard_results": "No", "memory_write": "0"})
    assert (p.guard_calls, p.guard_results, p.memory_write) == (False, False, False)
    assert policy_from_config({"guard_calls": "TRUE"}).guard_calls is True
    with pytest.raises(InvalidArgumentError) as err:
        policy_from_config({"memory_write": "sometimes"})
    assert err.value.violations[0].field == "policies.tools.memory_write"
