"""Proto <-> domain conversion for ToolService (the only module besides the servicer touching tool_pb2)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from agentrt.v1 import common_pb2, guard_pb2, tool_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from core.errors import FieldViolation, InvalidArgumentError
from core.jsontext import decode_json_object
from guards.model import Decision, GuardVerdict
from runtime.config import setting_boolean
from runtime.logs import REDACTED, redacted_url
from runtime.tool_invoke import InvokeResult
from tools.model import (
    AuditRecord,
    ExecutorKind,
    ExecutorSpec,
    McpServerSpec,
    McpServerStatus,
    McpTransport,
    Outcome,
    Step,
    ToolDefinition,
    ToolPolicy,
    ToolPolicyPatch,
)
from tools.search import ToolSearchResult

# REDACTED is what a secret-bearing value (header, environment variable, URL password) reads as in a reply; the
# logs mask URLs with the same redacted_url (in runtime.logs, which imports nothing of ours).

_DEFAULTS = ToolDefinition(
    name="", description="", input_schema={}, executor=ExecutorSpec(ExecutorKind.BUILTIN)
)

OUTCOME_TO_PROTO = {
    Outcome.OK: tool_pb2.INVOKE_OUTCOME_OK,
    Outcome.TOOL_ERROR: tool_pb2.INVOKE_OUTCOME_TOOL_ERROR,
    Outcome.BLOCKED: tool_pb2.INVOKE_OUTCOME_BLOCKED,
    Outcome.REVIEW: tool_pb2.INVOKE_OUTCOME_REVIEW,
    Outcome.GATE_STOPPED: tool_pb2.INVOKE_OUTCOME_GATE_STOPPED,
    Outcome.INVALID_ARGUMENT: tool_pb2.INVOKE_OUTCOME_INVALID_ARGUMENT,
    Outcome.UNAVAILABLE: tool_pb2.INVOKE_OUTCOME_UNAVAILABLE,
    Outcome.DEADLINE_EXCEEDED: tool_pb2.INVOKE_OUTCOME_DEADLINE_EXCEEDED,
    Outcome.NOT_FOUND: tool_pb2.INVOKE_OUTCOME_NOT_FOUND,
    Outcome.FAILED_PRECONDITION: tool_pb2.INVOKE_OUTCOME_FAILED_PRECONDITION,
    Outcome.CANCELLED: tool_pb2.INVOKE_OUTCOME_CANCELLED,
    Outcome.INTERNAL: tool_pb2.INVOKE_OUTCOME_INTERNAL,
}
STEP_TO_PROTO = {
    Step.NONE: tool_pb2.INVOKE_STEP_UNSPECIFIED,
    Step.VALIDATE: tool_pb2.INVOKE_STEP_VALIDATE,
    Step.GUARD_CALL: tool_pb2.INVOKE_STEP_GUARD_CALL,
    Step.GATE: tool_pb2.INVOKE_STEP_GATE,
    Step.EXECUTE: tool_pb2.INVOKE_STEP_EXECUTE,
    Step.GUARD_RESULT: tool_pb2.INVOKE_STEP_GUARD_RESULT,
    Step.MEMORY: tool_pb2.INVOKE_STEP_MEMORY,
}
_DECISION_TO_PROTO = {
    Decision.UNSPECIFIED: common_pb2.DECISION_UNSPECIFIED,
    Decision.ALLOW: common_pb2.DECISION_ALLOW,
    Decision.BLOCK: common_pb2.DECISION_BLOCK,
    Decision.REVIEW: common_pb2.DECISION_REVIEW,
}


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _json_field(text: str, field: str, *, required: bool) -> dict[str, Any] | None:
    if not text.strip():
        if required:
            return {"type": "object"}
        return None
    # A NaN bound ("maximum": NaN) in a schema would never fail.
    value, bad = decode_json_object(text, field, finite=True)
    if value is None:
        raise InvalidArgumentError(bad)
    return value


def tool_from_proto(msg: tool_pb2.Tool, prefix: str = "tool") -> ToolDefinition:
    """A definition to register; zero values take the defaults, an executor is required."""
    which = msg.WhichOneof("executor")
    if which == "http":
        ex = ExecutorSpec(
            ExecutorKind.HTTP,
            url=msg.http.url,
            method=msg.http.method or "POST",
            headers=dict(msg.http.headers),
        )
    elif which == "mcp":
        ex = ExecutorSpec(ExecutorKind.MCP, mcp_server=msg.mcp.server, mcp_tool=msg.mcp.tool)
    elif which == "builtin":
        ex = ExecutorSpec(ExecutorKind.BUILTIN, builtin=msg.builtin.name)
    else:
        raise InvalidArgumentError(f"{prefix}.executor", "set one of http, mcp or builtin")
    input_schema = _json_field(msg.input_schema_json, f"{prefix}.input_schema_json", required=True)
    assert input_schema is not None
    return ToolDefinition(
        name=msg.name,
        description=msg.description,
        input_schema=input_schema,
        output_schema=_json_field(msg.output_schema_json, f"{prefix}.output_schema_json", required=False),
        risk_tags=tuple(dict.fromkeys(t for t in msg.risk_tags if t)),
        executor=ex,
        idempotent=msg.idempotent,
        timeout_s=msg.timeout_s or _DEFAULTS.timeout_s,
        max_concurrency=msg.max_concurrency or _DEFAULTS.max_concurrency,
        max_output_bytes=msg.max_output_bytes or _DEFAULTS.max_output_bytes,
        max_retries=0 if msg.no_retries else (msg.max_retries or _DEFAULTS.max_retries),
    )


def tool_to_proto(d: ToolDefinition) -> tool_pb2.Tool:
    """Every field set."""
    msg = tool_pb2.Tool(
        name=d.name,
        description=d.description,
        input_schema_json=json.dumps(d.input_schema, sort_keys=True),
        output_schema_json=json.dumps(d.output_schema, sort_keys=True) if d.output_schema is not None else "",
        risk_tags=list(d.risk_tags),
        idempotent=d.idempotent,
        timeout_s=d.timeout_s,
        max_concurrency=d.max_concurrency,
        max_output_bytes=d.max_output_bytes,
        max_retries=d.max_retries,
        no_retries=d.max_retries == 0,
        version=d.version,
        created_at=_ts(d.created_at),
    )
    ex = d.executor
    if ex.kind == ExecutorKind.HTTP:
        # Header values are not echoed back (any caller that may read the namespace would see an Authorization
        # token), as MCP server headers are not; the names stay so a caller can see which are set.
        msg.http.CopyFrom(
            tool_pb2.HttpToolExecutor(url=redacted_url(ex.url), method=ex.method,
                                      headers={k: REDACTED for k in ex.headers})
        )
    elif ex.kind == ExecutorKind.MCP:
        msg.mcp.CopyFrom(tool_pb2.McpToolExecutor(server=ex.mcp_server, tool=ex.mcp_tool))
    else:
        msg.builtin.CopyFrom(tool_pb2.BuiltinToolExecutor(name=ex.builtin))
    return msg


def server_from_proto(msg: tool_pb2.McpServer, prefix: str = "server") -> McpServerSpec:
    """An MCP server spec; the transport defaults to stdio when a command is given."""
    if msg.transport == tool_pb2.MCP_TRANSPORT_STDIO:
        transport = McpTransport.STDIO
    elif msg.transport == tool_pb2.MCP_TRANSPORT_STREAMABLE_HTTP:
        transport = McpTransport.STREAMABLE_HTTP
    elif msg.transport != tool_pb2.MCP_TRANSPORT_UNSPECIFIED:
        raise InvalidArgumentError(
            f"{prefix}.transport",
            f"unknown transport {msg.transport}: use STDIO or STREAMABLE_HTTP (or leave it unset)",
        )
    elif msg.command and msg.url:
        raise InvalidArgumentError(
            [
                FieldViolation(f"{prefix}.command", "give a command (stdio) or a url (streamable HTTP), not both"),
                FieldViolation(f"{prefix}.url", "give a command (stdio) or a url (streamable HTTP), not both"),
            ]
        )
    elif msg.command:
        transport = McpTransport.STDIO
    elif msg.url:
        transport = McpTransport.STREAMABLE_HTTP
    else:
        raise InvalidArgumentError(f"{prefix}.transport", "give a command (stdio) or a url (streamable HTTP)")
    return McpServerSpec(
        name=msg.name,
        transport=transport,
        command=msg.command,
        args=tuple(msg.args),
        env=dict(msg.env),
        cwd=msg.cwd,
        url=msg.url,
        headers=dict(msg.headers),
        risk_tags=tuple(msg.risk_tags),
        timeout_s=msg.timeout_s or 30.0,
        max_concurrency=msg.max_concurrency or 4,
        max_output_bytes=msg.max_output_bytes or 65536,
    )


def server_to_proto(s: McpServerSpec) -> tool_pb2.McpServer:
    """Env values and headers are not echoed back: they may hold secrets."""
    return tool_pb2.McpServer(
        name=s.name,
        transport=tool_pb2.MCP_TRANSPORT_STDIO
        if s.transport == McpTransport.STDIO
        else tool_pb2.MCP_TRANSPORT_STREAMABLE_HTTP,
        command=s.command,
        args=list(s.args),
        env={k: REDACTED for k in s.env},
        cwd=s.cwd,
        url=redacted_url(s.url) if s.url else "",
        headers={k: REDACTED for k in s.headers},
        risk_tags=list(s.risk_tags),
        timeout_s=s.timeout_s,
        max_concurrency=s.max_concurrency,
        max_output_bytes=s.max_output_bytes,
    )


def status_to_proto(s: McpServerStatus) -> tool_pb2.McpServerStatus:
    """Connection status."""
    return tool_pb2.McpServerStatus(
        name=s.name,
        connected=s.connected,
        tool_count=s.tool_count,
        restarts=s.restarts,
        last_error=s.last_error,
        last_refresh=_ts(s.last_refresh),
    )


def search_to_proto(r: ToolSearchResult) -> tool_pb2.ToolSearchResponse:
    """Hits best first with the entropy of their distribution."""
    return tool_pb2.ToolSearchResponse(
        hits=[
            tool_pb2.ToolHit(
                name=h.tool.name,
                description=h.tool.description,
                risk_tags=list(h.tool.risk_tags),
                score=h.score,
                dense_score=h.dense,
                lexical_score=h.lexical,
                version=h.tool.version,
                input_schema_json=json.dumps(h.tool.input_schema, sort_keys=True),
            )
            for h in r.hits
        ],
        entropy=r.entropy,
        entropy_nats=r.entropy_nats,
    )


def violations_to_proto(violations: list[FieldViolation]) -> tool_pb2.ValidateToolArgumentsResponse:
    """Validate's reply."""
    return tool_pb2.ValidateToolArgumentsResponse(
        valid=not violations,
        violations=[
            tool_pb2.ToolFieldViolation(field=v.field, description=v.description) for v in violations
        ],
    )


def verdict_to_proto(v: GuardVerdict) -> guard_pb2.Verdict:
    """The guard's verdict as GuardService.Check returns it."""
    return guard_pb2.Verdict(
        verdict_id=v.verdict_id,
        decision=_DECISION_TO_PROTO.get(v.decision, common_pb2.DECISION_UNSPECIFIED),
        harm_score=float(v.harm_score),
        entropy=float(v.entropy),
    )


def invoke_to_proto(r: InvokeResult) -> tool_pb2.InvokeToolResponse:
    """Invoke's reply."""
    msg = tool_pb2.InvokeToolResponse(
        invocation_id=r.invocation_id,
        outcome=OUTCOME_TO_PROTO[r.outcome],
        stopped_at=STEP_TO_PROTO[r.stopped_at],
        reason=r.reason,
        output=r.output,
        is_error=r.is_error,
        truncated=r.truncated,
        output_bytes=r.output_bytes,
        attempts=r.attempts,
        duration_ms=r.duration_ms,
        tool_version=r.tool_version,
        memory_message_ids=list(r.memory_message_ids),
    )
    if r.call_verdict is not None:
        msg.call_verdict.CopyFrom(verdict_to_proto(r.call_verdict))
    if r.result_verdict is not None:
        msg.result_verdict.CopyFrom(verdict_to_proto(r.result_verdict))
    if r.gate is not None:
        from runtime.convert.gate import decision_to_proto

        msg.gate.CopyFrom(decision_to_proto(r.gate))
    return msg


def audit_to_proto(a: AuditRecord) -> tool_pb2.ToolAuditRecord:
    """One audit record."""
    return tool_pb2.ToolAuditRecord(
        id=a.id,
        tool_name=a.tool_name,
        tool_version=a.tool_version,
        caller=a.caller,
        arguments_sha256=a.arguments_sha256,
        outcome=OUTCOME_TO_PROTO[a.outcome],
        stopped_at=STEP_TO_PROTO[a.stopped_at],
        reason=a.reason,
        duration_ms=a.duration_ms,
        attempts=a.attempts,
        verdicts=[
            tool_pb2.ToolAuditVerdict(
                stage=str(v.get("stage", "")),
                decision=str(v.get("decision", "")),
                id=str(v.get("id", "")),
                score=float(v.get("score", 0.0)),
            )
            for v in a.verdicts
        ],
        truncated=a.truncated,
        created_at=_ts(a.created_at),
    )


def policy_to_proto(p: ToolPolicy) -> tool_pb2.ToolPolicy:
    """Every field set."""
    return tool_pb2.ToolPolicy(
        guard_calls=p.guard_calls,
        guard_results=p.guard_results,
        memory_write=p.memory_write,
        memory_session_id=p.memory_session_id,
    )


def policy_patch_from_proto(msg: tool_pb2.ToolPolicy) -> ToolPolicyPatch:
    """The fields ``msg`` sets (an empty memory_session_id is unset); the rest keep the stored value."""
    return ToolPolicyPatch(
        guard_calls=msg.guard_calls if msg.HasField("guard_calls") else None,
        guard_results=msg.guard_results if msg.HasField("guard_results") else None,
        memory_write=msg.memory_write if msg.HasField("memory_write") else None,
        memory_session_id=msg.memory_session_id or None,
    )


def policy_from_config(values: dict[str, Any]) -> ToolPolicy:
    """ToolPolicy from the ``tools`` section of a namespace's configured policy (unknown keys ignored).

    A boolean that is not one raises InvalidArgumentError naming ``policies.tools.<key>``.
    """
    base = ToolPolicy()
    return ToolPolicy(
        guard_calls=_config_bool(values, "guard_calls", base.guard_calls),
        guard_results=_config_bool(values, "guard_results", base.guard_results),
        memory_write=_config_bool(values, "memory_write", base.memory_write),
        memory_session_id=str(values.get("memory_session_id", base.memory_session_id)),
    )


def _config_bool(values: dict[str, Any], key: str, default: bool) -> bool:
    """``values[key]`` as a boolean (see ``runtime.config.setting_boolean``)."""
    value = values.get(key, default)
    parsed = setting_boolean(value)
    if parsed is None:
        raise InvalidArgumentError(
            f"policies.tools.{key}", f"must be a boolean (true/false, yes/no, 1/0), got {value!r}"
        )
    return parsed
