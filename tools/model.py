"""Value objects of the tool registry: definitions, executor specs, MCP servers, audit records."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from core.errors import FieldViolation, InvalidArgumentError
from core.text import has_control_chars

# Every pattern here is used with fullmatch: "$" alone would accept a trailing newline.
# Dots separate an MCP server's name from its tools ("files.read") and builtins ("memory.search").
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}$")
# An HTTP header name is an RFC 9110 token; a value is visible characters, spaces and tabs. A CR or LF
# would let a registered tool inject headers (or a whole request) into what the sidecar sends.
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z\-]{1,256}$")
HEADER_VALUE_RE = re.compile(r"^[\t\x20-\x7e\x80-\U0010ffff]*$")
# The memory engine's limit on session ids (``memory.engine.MAX_ID_LEN``; a test keeps the two equal).
MAX_SESSION_ID_LEN = 255
# The audit stores "<tenant>:<caller>" in 300 characters; a tenant name has at most 128.
MAX_CALLER_LEN = 128
MAX_TIMEOUT_S = 3600.0


def utcnow() -> datetime:
    """Timezone-aware now; every timestamp in this package is UTC."""
    return datetime.now(UTC)


def _header_violations(headers: dict[str, str], field: str) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    for key, value in headers.items():
        where = f"{field}[{key[:40]!r}]"
        if not HEADER_NAME_RE.fullmatch(key):
            bad.append(FieldViolation(where, "a header name must be an HTTP token (letters, digits, !#$%&'*+-.^_`|~)"))
        if not HEADER_VALUE_RE.fullmatch(value):
            bad.append(FieldViolation(where, "a header value must not contain CR, LF, NUL or other control characters"))
    return bad


def _timeout_violation(value: float, field: str) -> FieldViolation | None:
    # Written so NaN fails too: every comparison with NaN is false.
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        return FieldViolation(field, f"must be a finite number in (0, {MAX_TIMEOUT_S:g}], got {value}")
    return None


def _limit_violations(
    timeout_s: float, max_concurrency: int, max_output_bytes: int, prefix: str
) -> list[FieldViolation]:
    """The bounds a tool and an MCP server share: call timeout, concurrent calls, output size."""
    bad: list[FieldViolation] = []
    timeout = _timeout_violation(timeout_s, f"{prefix}.timeout_s")
    if timeout is not None:
        bad.append(timeout)
    if not 1 <= max_concurrency <= 1024:
        bad.append(FieldViolation(f"{prefix}.max_concurrency", f"must be in [1, 1024], got {max_concurrency}"))
    if not 1 <= max_output_bytes <= 64 * 1024 * 1024:
        bad.append(FieldViolation(f"{prefix}.max_output_bytes", "must be in [1, 64 MiB]"))
    return bad


class ExecutorKind(StrEnum):
    """How a tool is executed."""

    HTTP = "http"
    MCP = "mcp"
    BUILTIN = "builtin"


@dataclass(frozen=True)
class ExecutorSpec:
    """Where a tool runs: an HTTP(S) endpoint, a tool of a registered MCP server, or a builtin."""

    kind: ExecutorKind
    url: str = ""
    """HTTP: the endpoint; the arguments are POSTed as a JSON object."""
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    mcp_server: str = ""
    """MCP: the registered server's name."""
    mcp_tool: str = ""
    """MCP: the tool's name on that server (the registry name carries a ``<server>.`` prefix)."""
    builtin: str = ""
    """BUILTIN: the builtin's name (``memory.search``, ``memory.write``, ``echo``)."""


@dataclass(frozen=True)
class ToolDefinition:
    """One version of a tool in one namespace."""

    name: str
    description: str
    input_schema: dict[str, Any]
    executor: ExecutorSpec
    output_schema: dict[str, Any] | None = None
    risk_tags: tuple[str, ...] = ()
    idempotent: bool = False
    """Only idempotent tools are retried after a transport failure."""
    timeout_s: float = 30.0
    max_concurrency: int = 4
    """Calls of this tool running at once in this namespace; more wait for a slot."""
    max_output_bytes: int = 65536
    max_retries: int = 2
    version: int = 0
    """Assigned by the store: 1, 2, ... per name; 0 before registration."""
    created_at: datetime | None = None

    def content_key(self) -> str:
        """Hash of everything but version and timestamp: re-registering the same content is a no-op."""
        body = definition_to_dict(replace(self, version=0, created_at=None))
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def search_text(self) -> str:
        """What tool search indexes: name (split into words), description and parameter docs."""
        words = re.sub(r"[_.\-]+", " ", self.name)
        parts = [words, self.description]
        props = self.input_schema.get("properties") if isinstance(self.input_schema, dict) else None
        if isinstance(props, dict):
            for pname, pschema in props.items():
                desc = pschema.get("description", "") if isinstance(pschema, dict) else ""
                parts.append(f"{re.sub(r'[_.-]+', ' ', str(pname))} {desc}".strip())
        return ". ".join(p for p in parts if p)


class McpTransport(StrEnum):
    """How the sidecar talks to an MCP server."""

    STDIO = "stdio"
    STREAMABLE_HTTP = "streamable_http"


@dataclass(frozen=True)
class McpServerSpec:
    """An MCP server registered in a namespace; all its tools are imported as ``<name>.<tool>``."""

    name: str
    transport: McpTransport
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    risk_tags: tuple[str, ...] = ()
    """Added to every imported tool's own tags."""
    timeout_s: float = 30.0
    max_concurrency: int = 4
    max_output_bytes: int = 65536


@dataclass(frozen=True)
class McpServerStatus:
    """Live state of one MCP connection (reported by ImportMcp/RefreshMcp/ListMcpServers)."""

    name: str
    connected: bool
    tool_count: int
    restarts: int
    last_error: str = ""
    last_refresh: datetime | None = None


class Outcome(StrEnum):
    """How one invocation ended; audited and returned."""

    OK = "ok"
    TOOL_ERROR = "tool_error"
    """The tool ran and reported an error (HTTP 4xx/5xx, MCP isError)."""
    INVALID_ARGUMENT = "invalid_argument"
    BLOCKED = "blocked"
    REVIEW = "review"
    GATE_STOPPED = "gate_stopped"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_FOUND = "not_found"
    FAILED_PRECONDITION = "failed_precondition"
    """The stored tool cannot be used as it is (a schema that cannot check arguments)."""
    CANCELLED = "cancelled"
    """The caller cancelled the call (the tool may already have run)."""
    INTERNAL = "internal"
    """An unexpected failure of the pipeline itself."""


class Step(StrEnum):
    """The steps of Invoke in order; the reply names the one that stopped a call."""

    NONE = "none"
    VALIDATE = "validate"
    GUARD_CALL = "guard_call"
    GATE = "gate"
    EXECUTE = "execute"
    GUARD_RESULT = "guard_result"
    MEMORY = "memory"


@dataclass(frozen=True)
class AuditRecord:
    """One invocation: who, what, a hash of the arguments, verdicts, duration and outcome."""

    id: str
    tool_name: str
    tool_version: int
    caller: str
    arguments_sha256: str
    outcome: Outcome
    stopped_at: Step
    reason: str
    duration_ms: float
    attempts: int
    verdicts: tuple[dict[str, Any], ...] = ()
    """``{"stage", "decision", "verdict_id", "harm_score"}`` per guard check; the gate's decision too."""
    truncated: bool = False
    created_at: datetime | None = None


@dataclass(frozen=True)
class ToolPolicy:
    """Per-namespace switches of the Invoke pipeline."""

    guard_calls: bool = True
    guard_results: bool = True
    memory_write: bool = False
    """Write each allowed call and its result to the namespace's memory."""
    memory_session_id: str = "tool-calls"


@dataclass(frozen=True)
class ToolPolicyPatch:
    """A partial ToolPolicy update: fields left None keep the stored (or default) value.

    Applied inside the store's write (``ToolRegistry.update_policy``), so two concurrent patches of
    different fields both survive.
    """

    guard_calls: bool | None = None
    guard_results: bool | None = None
    memory_write: bool | None = None
    memory_session_id: str | None = None

    def apply(self, base: ToolPolicy) -> ToolPolicy:
        """``base`` with every field this patch sets replaced."""
        changes = {k: v for k, v in self.__dict__.items() if v is not None}
        return replace(base, **changes)


def args_hash(arguments: Any) -> str:
    """Stable SHA-256 of the arguments (canonical JSON), so audits never store argument values."""
    return hashlib.sha256(json.dumps(arguments, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _has_userinfo(url: str) -> bool:
    """Whether ``url`` carries ``user[:password]@`` before its host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.username is not None or parts.password is not None


def validate_definition(d: ToolDefinition, *, prefix: str = "tool") -> None:
    """Raise InvalidArgumentError naming every bad field of a definition before it is stored."""
    from tools.validation import schema_violations

    bad: list[FieldViolation] = []
    if not TOOL_NAME_RE.fullmatch(d.name):
        bad.append(FieldViolation(f"{prefix}.name", f"{d.name!r} must match {TOOL_NAME_RE.pattern}"))
    if not isinstance(d.input_schema, dict):
        bad.append(FieldViolation(f"{prefix}.input_schema_json", "must be a JSON object"))
    else:
        bad += schema_violations(d.input_schema, f"{prefix}.input_schema_json")
        if d.input_schema.get("type", "object") != "object":
            bad.append(
                FieldViolation(f"{prefix}.input_schema_json", "the input schema's type must be 'object'")
            )
    if d.output_schema is not None:
        bad += schema_violations(d.output_schema, f"{prefix}.output_schema_json")
    if has_control_chars(d.description, "\t\n\r"):
        bad.append(FieldViolation(f"{prefix}.description", "must not contain NUL or other control characters"))
    for i, tag in enumerate(d.risk_tags):
        if has_control_chars(tag):
            bad.append(FieldViolation(f"{prefix}.risk_tags[{i}]", "must not contain NUL or other control characters"))
    bad += _limit_violations(d.timeout_s, d.max_concurrency, d.max_output_bytes, prefix)
    if not 0 <= d.max_retries <= 10:
        bad.append(FieldViolation(f"{prefix}.max_retries", f"must be in [0, 10], got {d.max_retries}"))
    ex = d.executor
    if ex.kind == ExecutorKind.HTTP:
        if not ex.url.startswith(("http://", "https://")):
            bad.append(FieldViolation(f"{prefix}.http.url", f"must be an http(s) URL, got {ex.url!r}"))
        if ex.method.upper() not in ("POST", "PUT", "GET"):
            bad.append(FieldViolation(f"{prefix}.http.method", "must be POST, PUT or GET"))
        bad += _header_violations(ex.headers, f"{prefix}.http.headers")
        if _has_userinfo(ex.url) and any(k.lower() == "authorization" for k in ex.headers):
            # Two credentials for one request: the HTTP client refuses to send it, so every call would fail.
            bad.append(
                FieldViolation(
                    f"{prefix}.http.url",
                    "carries user:password credentials and headers set Authorization as well; use one of them",
                )
            )
    elif ex.kind == ExecutorKind.MCP:
        if not ex.mcp_server or not ex.mcp_tool:
            bad.append(FieldViolation(f"{prefix}.mcp", "needs server and tool"))
    elif ex.kind == ExecutorKind.BUILTIN and not ex.builtin:
        bad.append(FieldViolation(f"{prefix}.builtin", "needs the builtin's name"))
    if bad:
        raise InvalidArgumentError(bad)


MAX_SPEC_TEXT = 4096


def validate_server(spec: McpServerSpec, *, prefix: str = "server") -> None:
    """Raise InvalidArgumentError for a malformed MCP server spec."""
    bad: list[FieldViolation] = []
    if not SERVER_NAME_RE.fullmatch(spec.name):
        bad.append(FieldViolation(f"{prefix}.name", f"{spec.name!r} must match {SERVER_NAME_RE.pattern}"))
    if spec.transport == McpTransport.STDIO and not spec.command:
        bad.append(FieldViolation(f"{prefix}.command", "a stdio server needs a command"))
    if spec.transport == McpTransport.STDIO and spec.url:
        bad.append(FieldViolation(f"{prefix}.url", "a stdio server takes a command, not a url"))
    if spec.transport == McpTransport.STREAMABLE_HTTP and spec.command:
        bad.append(FieldViolation(f"{prefix}.command", "a streamable HTTP server takes a url, not a command"))
    if spec.transport == McpTransport.STREAMABLE_HTTP and not spec.url.startswith(("http://", "https://")):
        bad.append(
            FieldViolation(
                f"{prefix}.url", f"a streamable HTTP server needs an http(s) URL, got {spec.url[:200]!r}"
            )
        )
    # A command line, directory or URL longer than any OS accepts is a mistake (or an attack), refused
    # before anything is stored or spawned.
    for name, value in (("command", spec.command), ("cwd", spec.cwd), ("url", spec.url)):
        if len(value) > MAX_SPEC_TEXT:
            bad.append(FieldViolation(f"{prefix}.{name}", f"longer than {MAX_SPEC_TEXT} characters"))
    for i, arg in enumerate(spec.args):
        if len(arg) > MAX_SPEC_TEXT:
            bad.append(FieldViolation(f"{prefix}.args[{i}]", f"longer than {MAX_SPEC_TEXT} characters"))
    for kind, mapping in (("env", spec.env), ("headers", spec.headers)):
        for key, value in mapping.items():
            if len(key) > MAX_SPEC_TEXT or len(value) > MAX_SPEC_TEXT:
                bad.append(FieldViolation(f"{prefix}.{kind}[{key[:40]!r}]", f"longer than {MAX_SPEC_TEXT} characters"))
    # A NUL cannot pass to exec(), a process environment or a URL.
    texts = [("command", spec.command), ("cwd", spec.cwd), ("url", spec.url)]
    texts += [(f"args[{i}]", a) for i, a in enumerate(spec.args)]
    texts += [(f"env[{k[:40]!r}]", k + v) for k, v in spec.env.items()]
    for name, value in texts:
        if "\x00" in value:
            bad.append(FieldViolation(f"{prefix}.{name}", "must not contain NUL"))
    bad += _header_violations(spec.headers, f"{prefix}.headers")
    bad += _limit_violations(spec.timeout_s, spec.max_concurrency, spec.max_output_bytes, prefix)
    if bad:
        raise InvalidArgumentError(bad)


def _stored_text_violations(value: str, field: str, max_len: int) -> list[FieldViolation]:
    """Why a column of ``max_len`` characters could not hold ``value`` (Postgres cannot store a NUL at all)."""
    bad: list[FieldViolation] = []
    if len(value) > max_len:
        bad.append(FieldViolation(field, f"longer than {max_len} characters"))
    if has_control_chars(value):
        bad.append(FieldViolation(field, "must not contain NUL or other control characters"))
    return bad


def session_id_violations(session_id: str, field: str) -> list[FieldViolation]:
    """Why memory would refuse writes to ``session_id`` (empty when it would take them)."""
    return _stored_text_violations(session_id, field, MAX_SESSION_ID_LEN)


def caller_violations(caller: str, field: str) -> list[FieldViolation]:
    """Why the audit could not store ``caller`` (empty when it can)."""
    return _stored_text_violations(caller, field, MAX_CALLER_LEN)


def validate_policy(policy: ToolPolicy, *, prefix: str = "policy") -> None:
    """Raise InvalidArgumentError for a policy whose memory writes could never succeed."""
    bad = session_id_violations(policy.memory_session_id, f"{prefix}.memory_session_id")
    if bad:
        raise InvalidArgumentError(bad)


# -- JSON round trip (the SQL backend stores definitions as JSON text) ---------------------------------


def definition_to_dict(d: ToolDefinition) -> dict[str, Any]:
    """Plain-JSON form of a definition."""
    ex = d.executor
    return {
        "name": d.name,
        "description": d.description,
        "input_schema": d.input_schema,
        "output_schema": d.output_schema,
        "risk_tags": list(d.risk_tags),
        "idempotent": d.idempotent,
        "timeout_s": d.timeout_s,
        "max_concurrency": d.max_concurrency,
        "max_output_bytes": d.max_output_bytes,
        "max_retries": d.max_retries,
        "version": d.version,
        "created_at": d.created_at.isoformat() if d.created_at else None,
        "executor": {
            "kind": ex.kind.value,
            "url": ex.url,
            "method": ex.method,
            "headers": dict(ex.headers),
            "mcp_server": ex.mcp_server,
            "mcp_tool": ex.mcp_tool,
            "builtin": ex.builtin,
        },
    }


def definition_from_dict(data: dict[str, Any]) -> ToolDefinition:
    """Inverse of definition_to_dict."""
    ex = data["executor"]
    created = data.get("created_at")
    return ToolDefinition(
        name=data["name"],
        description=data.get("description", ""),
        input_schema=data.get("input_schema") or {"type": "object"},
        output_schema=data.get("output_schema"),
        risk_tags=tuple(data.get("risk_tags", ())),
        idempotent=bool(data.get("idempotent", False)),
        timeout_s=float(data.get("timeout_s", 30.0)),
        max_concurrency=int(data.get("max_concurrency", 4)),
        max_output_bytes=int(data.get("max_output_bytes", 65536)),
        max_retries=int(data.get("max_retries", 2)),
        version=int(data.get("version", 0)),
        created_at=datetime.fromisoformat(created) if created else None,
        executor=ExecutorSpec(
            kind=ExecutorKind(ex["kind"]),
            url=ex.get("url", ""),
            method=ex.get("method", "POST"),
            headers=dict(ex.get("headers", {})),
            mcp_server=ex.get("mcp_server", ""),
            mcp_tool=ex.get("mcp_tool", ""),
            builtin=ex.get("builtin", ""),
        ),
    )


def server_to_dict(s: McpServerSpec) -> dict[str, Any]:
    """Plain-JSON form of an MCP server spec."""
    return {
        "name": s.name,
        "transport": s.transport.value,
        "command": s.command,
        "args": list(s.args),
        "env": dict(s.env),
        "cwd": s.cwd,
        "url": s.url,
        "headers": dict(s.headers),
        "risk_tags": list(s.risk_tags),
        "timeout_s": s.timeout_s,
        "max_concurrency": s.max_concurrency,
        "max_output_bytes": s.max_output_bytes,
    }


def server_from_dict(data: dict[str, Any]) -> McpServerSpec:
    """Inverse of server_to_dict."""
    return McpServerSpec(
        name=data["name"],
        transport=McpTransport(data["transport"]),
        command=data.get("command", ""),
        args=tuple(data.get("args", ())),
        env=dict(data.get("env", {})),
        cwd=data.get("cwd", ""),
        url=data.get("url", ""),
        headers=dict(data.get("headers", {})),
        risk_tags=tuple(data.get("risk_tags", ())),
        timeout_s=float(data.get("timeout_s", 30.0)),
        max_concurrency=int(data.get("max_concurrency", 4)),
        max_output_bytes=int(data.get("max_output_bytes", 65536)),
    )
