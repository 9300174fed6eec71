"""ToolService refuses malformed input with INVALID_ARGUMENT naming the field, over the wire.

A real server on port 0 (hashing embedder: nothing here is about search quality) and generated stubs.
Each test works in its own namespace.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from agentrt.v1 import common_pb2, tool_pb2

from runtime import naming
from tests.conftest import RunningServer, make_settings
from tests.tools.conftest import error_details
from tests.tools.http_tool_server import ToolHTTPServer
from tools.model import ExecutorKind, ExecutorSpec, ToolDefinition

SCHEMA = '{"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}}'
HUGE_INT = "1" + "0" * 5000  # past Python's 4300-digit cap on int("...")


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = RunningServer(make_settings(data_dir=tmp_path_factory.mktemp("tool-input"), embedding_model="hashing"))
    yield s
    s.stop()


@pytest.fixture
def srv(shared_server: RunningServer) -> RunningServer:
    shared_server.ns = f"ns-{uuid.uuid4().hex[:10]}"  # type: ignore[attr-defined]
    shared_server.client.tool.SetPolicy(
        tool_pb2.SetToolPolicyRequest(
            namespace=shared_server.ns,  # type: ignore[attr-defined]
            policy=tool_pb2.ToolPolicy(guard_calls=False, guard_results=False),
        )
    )
    return shared_server


def _tool(name: str = "myecho", **kw: Any) -> tool_pb2.Tool:
    kw.setdefault("input_schema_json", SCHEMA)
    if "http" not in kw:
        kw.setdefault("builtin", tool_pb2.BuiltinToolExecutor(name="echo"))
    return tool_pb2.Tool(name=name, description=kw.pop("description", "echo things"), **kw)


def _invalid(call: Any, request: Any) -> dict[str, str]:
    """The BadRequest field violations of a call that must fail with INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    fields = dict(error_details(err.value)[0])
    assert fields, "INVALID_ARGUMENT without a field violation"
    return fields


def _register(s: RunningServer, tool: tool_pb2.Tool) -> tool_pb2.RegisterToolResponse:
    return s.client.tool.Register(tool_pb2.RegisterToolRequest(namespace=s.ns, tool=tool))


def test_register_refuses_unresolvable_refs_without_fetching(srv: RunningServer, http_tools: ToolHTTPServer) -> None:
    for ref in ("#/nope", http_tools.url("/schema.json")):
        schema = json.dumps({"type": "object", "properties": {"a": {"$ref": ref}}})
        fields = _invalid(
            srv.client.tool.Register,
            tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=_tool("refs", input_schema_json=schema)),
        )
        assert set(fields) == {"tool.input_schema_json"} and "$ref" in fields["tool.input_schema_json"]
    assert http_tools.gets == []  # a remote $ref is refused, never requested
    # References the schema can resolve itself stay accepted.
    ok = {"type": "object", "$defs": {"s": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/s"}}}
    assert _register(srv, _tool("refs", input_schema_json=json.dumps(ok))).created


def test_a_stored_schema_with_a_bad_ref_is_a_clear_error(srv: RunningServer, http_tools: ToolHTTPServer) -> None:
    # Stored before Register checked references (or listed by an MCP server): Validate and Invoke say what
    # is wrong with the tool instead of INTERNAL, and still fetch nothing.
    scope = f"{naming.DEFAULT_TENANT}/{srv.ns}"
    for name, ref in (("local", "#/nope"), ("remote", http_tools.url("/schema.json"))):
        schema = {"type": "object", "properties": {"a": {"$ref": ref}}}
        srv.rt.tools.store.put_tool(
            scope,
            ToolDefinition(name, "d", schema, ExecutorSpec(ExecutorKind.BUILTIN, builtin="echo")),
        )
        for call, request in (
            (
                srv.client.tool.Validate,
                tool_pb2.ValidateToolArgumentsRequest(namespace=srv.ns, name=name, arguments_json='{"a": 1}'),
            ),
            (
                srv.client.tool.Invoke,
                tool_pb2.InvokeToolRequest(namespace=srv.ns, name=name, arguments_json='{"a": 1}'),
            ),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call(request, timeout=30)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
            assert name in err.value.details() and "$ref" in err.value.details()
    assert http_tools.gets == []


def test_huge_integer_literals_name_the_field(srv: RunningServer) -> None:
    _register(srv, _tool())
    tool = srv.client.tool
    huge = f'{{"q": "x", "n": {HUGE_INT}}}'
    # Validate's contract: the arguments' violations come back in the reply, not as an error.
    v = tool.Validate(tool_pb2.ValidateToolArgumentsRequest(namespace=srv.ns, name="myecho", arguments_json=huge))
    assert not v.valid and [(x.field, "4300 digits" in x.description) for x in v.violations] == [
        ("arguments_json", True)
    ]
    assert "arguments_json" in _invalid(
        tool.Invoke, tool_pb2.InvokeToolRequest(namespace=srv.ns, name="myecho", arguments_json=huge)
    )
    assert "tool_call.arguments_json" in _invalid(
        tool.Invoke,
        tool_pb2.InvokeToolRequest(
            namespace=srv.ns, tool_call=common_pb2.ToolCall(name="myecho", arguments_json=huge)
        ),
    )
    schema = f'{{"type": "object", "maxProperties": {HUGE_INT}}}'
    assert "tool.input_schema_json" in _invalid(
        tool.Register, tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=_tool("big", input_schema_json=schema))
    )


def test_lone_surrogate_in_arguments_is_invalid(srv: RunningServer) -> None:
    fields = _invalid(
        srv.client.tool.Invoke,
        tool_pb2.InvokeToolRequest(namespace=srv.ns, name="echo", arguments_json='{"q": "\\ud800"}'),
    )
    assert "surrogate" in fields["arguments_json"]
    # A tool's schema holds the same kind of text: refused there too, naming the field.
    schema = '{"type": "object", "description": "\\udfff"}'
    fields = _invalid(
        srv.client.tool.Register,
        tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=_tool("surrogate", input_schema_json=schema)),
    )
    assert "surrogate" in fields["tool.input_schema_json"]


def test_non_finite_timeouts_are_refused(srv: RunningServer) -> None:
    tool = srv.client.tool
    nan, inf = float("nan"), float("inf")
    assert "tool.timeout_s" in _invalid(
        tool.Register, tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=_tool("t", timeout_s=nan))
    )
    for value in (nan, inf):
        assert "timeout_s" in _invalid(
            tool.Invoke,
            tool_pb2.InvokeToolRequest(namespace=srv.ns, name="echo", arguments_json="{}", timeout_s=value),
        )
    for value in (nan, inf):
        server = tool_pb2.McpServer(name="lab", command="true", timeout_s=value)
        request = tool_pb2.ImportMcpRequest(namespace=srv.ns, server=server)
        assert "server.timeout_s" in _invalid(tool.ImportMcp, request)
    assert not tool.ListMcpServers(tool_pb2.ListMcpServersRequest(namespace=srv.ns)).servers


def test_invoke_refuses_two_calls_in_one_request(srv: RunningServer) -> None:
    _register(srv, _tool())
    request = tool_pb2.InvokeToolRequest(
        namespace=srv.ns,
        name="myecho",
        arguments_json='{"q": "a"}',
        tool_call=common_pb2.ToolCall(name="echo", arguments_json='{"z": 1}'),
    )
    assert set(_invalid(srv.client.tool.Invoke, request)) == {"name", "arguments_json", "tool_call"}
    # Nothing ran: the only audit record is none at all.
    assert not srv.client.tool.ListAudit(tool_pb2.ListToolAuditRequest(namespace=srv.ns)).records


def test_import_mcp_refuses_contradictory_servers(srv: RunningServer) -> None:
    tool = srv.client.tool
    both = tool_pb2.McpServer(name="s7", command="true", url="http://127.0.0.1:1/")
    assert set(_invalid(tool.ImportMcp, tool_pb2.ImportMcpRequest(namespace=srv.ns, server=both))) == {
        "server.command",
        "server.url",
    }
    unknown = tool_pb2.McpServer(name="s6", transport=99, command="true")  # type: ignore[arg-type]
    assert "server.transport" in _invalid(tool.ImportMcp, tool_pb2.ImportMcpRequest(namespace=srv.ns, server=unknown))
    http_with_command = tool_pb2.McpServer(
        name="s8", transport=tool_pb2.MCP_TRANSPORT_STREAMABLE_HTTP, command="true", url="http://127.0.0.1:1/"
    )
    assert "server.command" in _invalid(
        tool.ImportMcp, tool_pb2.ImportMcpRequest(namespace=srv.ns, server=http_with_command)
    )
    assert not tool.ListMcpServers(tool_pb2.ListMcpServersRequest(namespace=srv.ns)).servers


def test_set_policy_refuses_a_session_id_memory_would_refuse(srv: RunningServer) -> None:
    tool = srv.client.tool
    before = tool.GetPolicy(tool_pb2.GetToolPolicyRequest(namespace=srv.ns))
    for sid in ("a\x00b", "s" * 256):
        request = tool_pb2.SetToolPolicyRequest(
            namespace=srv.ns, policy=tool_pb2.ToolPolicy(memory_write=True, memory_session_id=sid)
        )
        assert "policy.memory_session_id" in _invalid(tool.SetPolicy, request)
    assert tool.GetPolicy(tool_pb2.GetToolPolicyRequest(namespace=srv.ns)) == before
    ok = tool_pb2.SetToolPolicyRequest(
        namespace=srv.ns, policy=tool_pb2.ToolPolicy(memory_write=True, memory_session_id="s" * 255)
    )
    assert tool.SetPolicy(ok).memory_session_id == "s" * 255


def test_invoke_refuses_a_session_id_memory_would_refuse(srv: RunningServer) -> None:
    for sid in ("a\x00b", "s" * 256):
        request = tool_pb2.InvokeToolRequest(namespace=srv.ns, name="echo", arguments_json="{}", session_id=sid)
        assert set(_invalid(srv.client.tool.Invoke, request)) == {"session_id"}


def test_invoke_refuses_a_caller_the_audit_could_not_store(srv: RunningServer) -> None:
    # The audit column holds "<tenant>:<caller>" in 300 characters (Postgres refuses more, SQLite would not).
    for caller in ("agent\x00x", "a\nb", "c" * 129):
        request = tool_pb2.InvokeToolRequest(namespace=srv.ns, name="echo", arguments_json="{}", caller=caller)
        assert set(_invalid(srv.client.tool.Invoke, request)) == {"caller"}
    assert srv.client.tool.ListAudit(tool_pb2.ListToolAuditRequest(namespace=srv.ns)).records == []
    ok = tool_pb2.InvokeToolRequest(namespace=srv.ns, name="echo", arguments_json="{}", caller="c" * 128)
    srv.client.tool.Invoke(ok, timeout=30)


def test_session_id_limit_is_memorys() -> None:
    from memory.engine import MAX_ID_LEN
    from tools.model import MAX_SESSION_ID_LEN

    assert MAX_SESSION_ID_LEN == MAX_ID_LEN


def test_negative_version_is_invalid_everywhere(srv: RunningServer) -> None:
    _register(srv, _tool())
    tool = srv.client.tool
    for call, request in (
        (tool.Get, tool_pb2.GetToolRequest(namespace=srv.ns, name="myecho", version=-1)),
        (
            tool.Validate,
            tool_pb2.ValidateToolArgumentsRequest(namespace=srv.ns, name="myecho", version=-1, arguments_json="{}"),
        ),
        (tool.Invoke, tool_pb2.InvokeToolRequest(namespace=srv.ns, name="myecho", version=-1, arguments_json="{}")),
    ):
        assert set(_invalid(call, request)) == {"version"}


def test_register_refuses_header_injection_and_control_characters(srv: RunningServer) -> None:
    tool = srv.client.tool

    def register_fields(t: tool_pb2.Tool) -> set[str]:
        return set(_invalid(tool.Register, tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=t)))

    http = tool_pb2.HttpToolExecutor
    for headers in ({"X-Ok": "a\r\nX-Evil: 1"}, {"X\nEvil": "a"}, {"X-Ok": "a\x00"}):
        fields = register_fields(_tool("h", http=http(url="http://127.0.0.1:1/x", headers=headers)))
        assert len(fields) == 1 and fields.pop().startswith("tool.http.headers[")
    assert register_fields(_tool("d", description="a\x00b")) == {"tool.description"}
    assert register_fields(_tool("r", risk_tags=["ok", "a\x00"])) == {"tool.risk_tags[1]"}
    assert register_fields(_tool("name\n")) == {"tool.name"}
    server = tool_pb2.McpServer(name="s", url="http://127.0.0.1:1/", headers={"X-Ok": "a\nb"})
    fields = set(_invalid(tool.ImportMcp, tool_pb2.ImportMcpRequest(namespace=srv.ns, server=server)))
    assert len(fields) == 1 and fields.pop().startswith("server.headers[")
    # A plain header and a multi-line description still register.
    good = _tool("h", description="line one\nline two", http=http(url="http://127.0.0.1:1/x", headers={"X-Key": "v 1"}))
    assert _register(srv, good).created


def test_register_refuses_two_credentials_for_one_http_tool(srv: RunningServer, http_tools: ToolHTTPServer) -> None:
    # The HTTP client will not send user:password from the URL and an Authorization header together: such a
    # tool failed every call with TOOL_ERROR; it is refused when registered.
    http = tool_pb2.HttpToolExecutor
    url = http_tools.url("/echo").replace("http://", "http://user:secret@")
    both = _tool("both", http=http(url=url, headers={"authorization": "Bearer t"}))
    assert set(_invalid(srv.client.tool.Register, tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=both))) == {
        "tool.http.url"
    }
    assert _register(srv, _tool("userinfo", http=http(url=url))).created
    header = _tool("header", http=http(url=http_tools.url("/echo"), headers={"Authorization": "t"}))
    assert _register(srv, header).created


def test_register_refuses_schemas_that_could_never_check_arguments(srv: RunningServer) -> None:
    loop = {"type": "object", "$defs": {"a": {"$ref": "#/$defs/a"}}, "properties": {"x": {"$ref": "#/$defs/a"}}}
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(400):
        deep = {"type": "object", "properties": {"a": deep}}
    for schema, why in (
        ({"type": "object", "$schema": [1]}, "$schema must be a URI string"),  # was INTERNAL (unhashable list)
        (loop, "loop"),
        (deep, "nested too deeply"),  # was INTERNAL (RecursionError)
        ({"type": "object", "properties": {"n": {"maximum": float("nan")}}}, "NaN or Infinity"),  # never fails
    ):
        tool = _tool("bad", input_schema_json=json.dumps(schema))
        request = tool_pb2.RegisterToolRequest(namespace=srv.ns, tool=tool)
        fields = _invalid(srv.client.tool.Register, request)
        assert set(fields) == {"tool.input_schema_json"} and why in fields["tool.input_schema_json"]


def test_a_stored_ref_loop_is_a_failed_precondition_and_audited(srv: RunningServer) -> None:
    scope = f"{naming.DEFAULT_TENANT}/{srv.ns}"
    loop = {"type": "object", "$defs": {"a": {"$ref": "#/$defs/a"}}, "properties": {"x": {"$ref": "#/$defs/a"}}}
    echo = ExecutorSpec(ExecutorKind.BUILTIN, builtin="echo")
    srv.rt.tools.store.put_tool(scope, ToolDefinition("loopy", "d", loop, echo))
    call_with = {"namespace": srv.ns, "name": "loopy", "arguments_json": '{"x": 1}'}
    for call, request in (
        (srv.client.tool.Validate, tool_pb2.ValidateToolArgumentsRequest(**call_with)),
        (srv.client.tool.Invoke, tool_pb2.InvokeToolRequest(**call_with)),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=30)
        # Not INVALID_ARGUMENT "request nested too deeply": the caller's arguments are fine.
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
        assert "loopy" in err.value.details()
    records = srv.client.tool.ListAudit(tool_pb2.ListToolAuditRequest(namespace=srv.ns, tool_name="loopy")).records
    # Audited as answered (it used to be audited INVALID_ARGUMENT while the caller got FAILED_PRECONDITION).
    assert [(r.outcome, r.reason.split(":")[0]) for r in records] == [
        (tool_pb2.INVOKE_OUTCOME_FAILED_PRECONDITION, "FailedPreconditionError")
    ]


def test_non_finite_numbers_in_arguments_name_the_field(srv: RunningServer) -> None:
    schema = '{"type": "object", "properties": {"n": {"type": "number", "maximum": 10}}}'
    _register(srv, _tool(input_schema_json=schema))
    for args in ('{"n": NaN}', '{"n": -Infinity}', '{"n": 1e400}'):
        for call, request in (
            (srv.client.tool.Invoke, tool_pb2.InvokeToolRequest(namespace=srv.ns, name="myecho", arguments_json=args)),
            (
                srv.client.tool.Invoke,
                tool_pb2.InvokeToolRequest(
                    namespace=srv.ns, tool_call=common_pb2.ToolCall(name="myecho", arguments_json=args)
                ),
            ),
        ):
            fields = _invalid(call, request)
            [(field, why)] = fields.items()
            assert field.endswith("arguments_json") and "NaN or Infinity" in why


def test_memory_write_names_the_argument_memory_would_refuse(srv: RunningServer) -> None:
    for field in ("session_id", "speaker"):
        args = json.dumps({"text": "hello", field: "s" * 300})
        request = tool_pb2.InvokeToolRequest(namespace=srv.ns, name="memory.write", arguments_json=args)
        assert set(_invalid(srv.client.tool.Invoke, request)) == {f"arguments_json.{field}"}
    audit = tool_pb2.ListToolAuditRequest(namespace=srv.ns, tool_name="memory.write")
    records = srv.client.tool.ListAudit(audit).records
    assert [r.outcome for r in records] == [tool_pb2.INVOKE_OUTCOME_INVALID_ARGUMENT] * 2
