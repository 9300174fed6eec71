import datetime

from agentrt.v1 import common_pb2 as _common_pb2
from agentrt.v1 import gate_pb2 as _gate_pb2
from agentrt.v1 import guard_pb2 as _guard_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class McpTransport(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MCP_TRANSPORT_UNSPECIFIED: _ClassVar[McpTransport]
    MCP_TRANSPORT_STDIO: _ClassVar[McpTransport]
    MCP_TRANSPORT_STREAMABLE_HTTP: _ClassVar[McpTransport]

class InvokeOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVOKE_OUTCOME_UNSPECIFIED: _ClassVar[InvokeOutcome]
    INVOKE_OUTCOME_OK: _ClassVar[InvokeOutcome]
    INVOKE_OUTCOME_TOOL_ERROR: _ClassVar[InvokeOutcome]
    INVOKE_OUTCOME_BLOCKED: _ClassVar[InvokeOutcome]
    INVOKE_OUTCOME_REVIEW: _ClassVar[InvokeOutcome]
    INVOKE_OUTCOME_GATE_STOPPED: _ClassVar[InvokeOutcome]
    INVOKE_OUTCOME_INVALID_ARGUMENT: _ClassVar[InvokeOutcome]
    INVOKE_OUTCOME_UNAVAILABLE: _ClassVar[InvokeOutcome]
    INVOKE_OUTCOME_DEADLINE_EXCEEDED: _ClassVar[InvokeOutcome]
    INVOKE_OUTCOME_NOT_FOUND: _ClassVar[InvokeOutcome]
    INVOKE_OUTCOME_FAILED_PRECONDITION: _ClassVar[InvokeOutcome]
    INVOKE_OUTCOME_CANCELLED: _ClassVar[InvokeOutcome]
    INVOKE_OUTCOME_INTERNAL: _ClassVar[InvokeOutcome]

class InvokeStep(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVOKE_STEP_UNSPECIFIED: _ClassVar[InvokeStep]
    INVOKE_STEP_VALIDATE: _ClassVar[InvokeStep]
    INVOKE_STEP_GUARD_CALL: _ClassVar[InvokeStep]
    INVOKE_STEP_GATE: _ClassVar[InvokeStep]
    INVOKE_STEP_EXECUTE: _ClassVar[InvokeStep]
    INVOKE_STEP_GUARD_RESULT: _ClassVar[InvokeStep]
    INVOKE_STEP_MEMORY: _ClassVar[InvokeStep]
MCP_TRANSPORT_UNSPECIFIED: McpTransport
MCP_TRANSPORT_STDIO: McpTransport
MCP_TRANSPORT_STREAMABLE_HTTP: McpTransport
INVOKE_OUTCOME_UNSPECIFIED: InvokeOutcome
INVOKE_OUTCOME_OK: InvokeOutcome
INVOKE_OUTCOME_TOOL_ERROR: InvokeOutcome
INVOKE_OUTCOME_BLOCKED: InvokeOutcome
INVOKE_OUTCOME_REVIEW: InvokeOutcome
INVOKE_OUTCOME_GATE_STOPPED: InvokeOutcome
INVOKE_OUTCOME_INVALID_ARGUMENT: InvokeOutcome
INVOKE_OUTCOME_UNAVAILABLE: InvokeOutcome
INVOKE_OUTCOME_DEADLINE_EXCEEDED: InvokeOutcome
INVOKE_OUTCOME_NOT_FOUND: InvokeOutcome
INVOKE_OUTCOME_FAILED_PRECONDITION: InvokeOutcome
INVOKE_OUTCOME_CANCELLED: InvokeOutcome
INVOKE_OUTCOME_INTERNAL: InvokeOutcome
INVOKE_STEP_UNSPECIFIED: InvokeStep
INVOKE_STEP_VALIDATE: InvokeStep
INVOKE_STEP_GUARD_CALL: InvokeStep
INVOKE_STEP_GATE: InvokeStep
INVOKE_STEP_EXECUTE: InvokeStep
INVOKE_STEP_GUARD_RESULT: InvokeStep
INVOKE_STEP_MEMORY: InvokeStep

class HttpToolExecutor(_message.Message):
    __slots__ = ("url", "method", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    URL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    url: str
    method: str
    headers: _containers.ScalarMap[str, str]
    def __init__(self, url: _Optional[str] = ..., method: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class McpToolExecutor(_message.Message):
    __slots__ = ("server", "tool")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    server: str
    tool: str
    def __init__(self, server: _Optional[str] = ..., tool: _Optional[str] = ...) -> None: ...

class BuiltinToolExecutor(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Tool(_message.Message):
    __slots__ = ("name", "description", "input_schema_json", "output_schema_json", "risk_tags", "http", "mcp", "builtin", "idempotent", "timeout_s", "max_concurrency", "max_output_bytes", "max_retries", "version", "created_at", "no_retries")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    RISK_TAGS_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    MCP_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    NO_RETRIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    input_schema_json: str
    output_schema_json: str
    risk_tags: _containers.RepeatedScalarFieldContainer[str]
    http: HttpToolExecutor
    mcp: McpToolExecutor
    builtin: BuiltinToolExecutor
    idempotent: bool
    timeout_s: float
    max_concurrency: int
    max_output_bytes: int
    max_retries: int
    version: int
    created_at: _timestamp_pb2.Timestamp
    no_retries: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., input_schema_json: _Optional[str] = ..., output_schema_json: _Optional[str] = ..., risk_tags: _Optional[_Iterable[str]] = ..., http: _Optional[_Union[HttpToolExecutor, _Mapping]] = ..., mcp: _Optional[_Union[McpToolExecutor, _Mapping]] = ..., builtin: _Optional[_Union[BuiltinToolExecutor, _Mapping]] = ..., idempotent: _Optional[bool] = ..., timeout_s: _Optional[float] = ..., max_concurrency: _Optional[int] = ..., max_output_bytes: _Optional[int] = ..., max_retries: _Optional[int] = ..., version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., no_retries: _Optional[bool] = ...) -> None: ...

class RegisterToolRequest(_message.Message):
    __slots__ = ("namespace", "tool")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    tool: Tool
    def __init__(self, namespace: _Optional[str] = ..., tool: _Optional[_Union[Tool, _Mapping]] = ...) -> None: ...

class RegisterToolResponse(_message.Message):
    __slots__ = ("tool", "created")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    tool: Tool
    created: bool
    def __init__(self, tool: _Optional[_Union[Tool, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListToolsRequest(_message.Message):
    __slots__ = ("namespace", "prefix", "exclude_builtins")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_BUILTINS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    prefix: str
    exclude_builtins: bool
    def __init__(self, namespace: _Optional[str] = ..., prefix: _Optional[str] = ..., exclude_builtins: _Optional[bool] = ...) -> None: ...

class ListToolsResponse(_message.Message):
    __slots__ = ("tools",)
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    def __init__(self, tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ...) -> None: ...

class GetToolRequest(_message.Message):
    __slots__ = ("namespace", "name", "version")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    version: int
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetToolResponse(_message.Message):
    __slots__ = ("tool", "versions")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    tool: Tool
    versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tool: _Optional[_Union[Tool, _Mapping]] = ..., versions: _Optional[_Iterable[int]] = ...) -> None: ...

class UnregisterToolRequest(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class UnregisterToolResponse(_message.Message):
    __slots__ = ("last_version",)
    LAST_VERSION_FIELD_NUMBER: _ClassVar[int]
    last_version: int
    def __init__(self, last_version: _Optional[int] = ...) -> None: ...

class McpServer(_message.Message):
    __slots__ = ("name", "transport", "command", "args", "env", "cwd", "url", "headers", "risk_tags", "timeout_s", "max_concurrency", "max_output_bytes")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    RISK_TAGS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    transport: McpTransport
    command: str
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    cwd: str
    url: str
    headers: _containers.ScalarMap[str, str]
    risk_tags: _containers.RepeatedScalarFieldContainer[str]
    timeout_s: float
    max_concurrency: int
    max_output_bytes: int
    def __init__(self, name: _Optional[str] = ..., transport: _Optional[_Union[McpTransport, str]] = ..., command: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., url: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., risk_tags: _Optional[_Iterable[str]] = ..., timeout_s: _Optional[float] = ..., max_concurrency: _Optional[int] = ..., max_output_bytes: _Optional[int] = ...) -> None: ...

class McpServerStatus(_message.Message):
    __slots__ = ("name", "connected", "tool_count", "restarts", "last_error", "last_refresh")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    TOOL_COUNT_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_REFRESH_FIELD_NUMBER: _ClassVar[int]
    name: str
    connected: bool
    tool_count: int
    restarts: int
    last_error: str
    last_refresh: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., connected: _Optional[bool] = ..., tool_count: _Optional[int] = ..., restarts: _Optional[int] = ..., last_error: _Optional[str] = ..., last_refresh: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ImportMcpRequest(_message.Message):
    __slots__ = ("namespace", "server")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    server: McpServer
    def __init__(self, namespace: _Optional[str] = ..., server: _Optional[_Union[McpServer, _Mapping]] = ...) -> None: ...

class ImportMcpResponse(_message.Message):
    __slots__ = ("status", "tools")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    status: McpServerStatus
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    def __init__(self, status: _Optional[_Union[McpServerStatus, _Mapping]] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ...) -> None: ...

class RefreshMcpRequest(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListMcpServersRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class McpServerInfo(_message.Message):
    __slots__ = ("server", "status")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    server: McpServer
    status: McpServerStatus
    def __init__(self, server: _Optional[_Union[McpServer, _Mapping]] = ..., status: _Optional[_Union[McpServerStatus, _Mapping]] = ...) -> None: ...

class ListMcpServersResponse(_message.Message):
    __slots__ = ("servers",)
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    servers: _containers.RepeatedCompositeFieldContainer[McpServerInfo]
    def __init__(self, servers: _Optional[_Iterable[_Union[McpServerInfo, _Mapping]]] = ...) -> None: ...

class RemoveMcpRequest(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RemoveMcpResponse(_message.Message):
    __slots__ = ("removed_tools",)
    REMOVED_TOOLS_FIELD_NUMBER: _ClassVar[int]
    removed_tools: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed_tools: _Optional[_Iterable[str]] = ...) -> None: ...

class ToolSearchRequest(_message.Message):
    __slots__ = ("namespace", "query", "top_k")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    query: str
    top_k: int
    def __init__(self, namespace: _Optional[str] = ..., query: _Optional[str] = ..., top_k: _Optional[int] = ...) -> None: ...

class ToolHit(_message.Message):
    __slots__ = ("name", "description", "risk_tags", "score", "dense_score", "lexical_score", "version", "input_schema_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RISK_TAGS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DENSE_SCORE_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    risk_tags: _containers.RepeatedScalarFieldContainer[str]
    score: float
    dense_score: float
    lexical_score: float
    version: int
    input_schema_json: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., risk_tags: _Optional[_Iterable[str]] = ..., score: _Optional[float] = ..., dense_score: _Optional[float] = ..., lexical_score: _Optional[float] = ..., version: _Optional[int] = ..., input_schema_json: _Optional[str] = ...) -> None: ...

class ToolSearchResponse(_message.Message):
    __slots__ = ("hits", "entropy", "entropy_nats")
    HITS_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_NATS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[ToolHit]
    entropy: float
    entropy_nats: float
    def __init__(self, hits: _Optional[_Iterable[_Union[ToolHit, _Mapping]]] = ..., entropy: _Optional[float] = ..., entropy_nats: _Optional[float] = ...) -> None: ...

class ToolFieldViolation(_message.Message):
    __slots__ = ("field", "description")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    field: str
    description: str
    def __init__(self, field: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ValidateToolArgumentsRequest(_message.Message):
    __slots__ = ("namespace", "name", "arguments_json", "version")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    arguments_json: str
    version: int
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., arguments_json: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ValidateToolArgumentsResponse(_message.Message):
    __slots__ = ("valid", "violations")
    VALID_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    violations: _containers.RepeatedCompositeFieldContainer[ToolFieldViolation]
    def __init__(self, valid: _Optional[bool] = ..., violations: _Optional[_Iterable[_Union[ToolFieldViolation, _Mapping]]] = ...) -> None: ...

class InvokeToolRequest(_message.Message):
    __slots__ = ("namespace", "name", "arguments_json", "instruction", "tokens", "available_tools", "caller", "timeout_s", "version", "tool_call", "session_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_TOOLS_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    arguments_json: str
    instruction: str
    tokens: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    available_tools: _containers.RepeatedScalarFieldContainer[str]
    caller: str
    timeout_s: float
    version: int
    tool_call: _common_pb2.ToolCall
    session_id: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., arguments_json: _Optional[str] = ..., instruction: _Optional[str] = ..., tokens: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ..., available_tools: _Optional[_Iterable[str]] = ..., caller: _Optional[str] = ..., timeout_s: _Optional[float] = ..., version: _Optional[int] = ..., tool_call: _Optional[_Union[_common_pb2.ToolCall, _Mapping]] = ..., session_id: _Optional[str] = ...) -> None: ...

class InvokeToolResponse(_message.Message):
    __slots__ = ("invocation_id", "outcome", "stopped_at", "reason", "output", "is_error", "truncated", "output_bytes", "attempts", "duration_ms", "tool_version", "call_verdict", "result_verdict", "gate", "memory_message_ids")
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STOPPED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    TOOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CALL_VERDICT_FIELD_NUMBER: _ClassVar[int]
    RESULT_VERDICT_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    outcome: InvokeOutcome
    stopped_at: InvokeStep
    reason: str
    output: str
    is_error: bool
    truncated: bool
    output_bytes: int
    attempts: int
    duration_ms: float
    tool_version: int
    call_verdict: _guard_pb2.Verdict
    result_verdict: _guard_pb2.Verdict
    gate: _gate_pb2.GateDecision
    memory_message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, invocation_id: _Optional[str] = ..., outcome: _Optional[_Union[InvokeOutcome, str]] = ..., stopped_at: _Optional[_Union[InvokeStep, str]] = ..., reason: _Optional[str] = ..., output: _Optional[str] = ..., is_error: _Optional[bool] = ..., truncated: _Optional[bool] = ..., output_bytes: _Optional[int] = ..., attempts: _Optional[int] = ..., duration_ms: _Optional[float] = ..., tool_version: _Optional[int] = ..., call_verdict: _Optional[_Union[_guard_pb2.Verdict, _Mapping]] = ..., result_verdict: _Optional[_Union[_guard_pb2.Verdict, _Mapping]] = ..., gate: _Optional[_Union[_gate_pb2.GateDecision, _Mapping]] = ..., memory_message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ToolAuditVerdict(_message.Message):
    __slots__ = ("stage", "decision", "id", "score")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    decision: str
    id: str
    score: float
    def __init__(self, stage: _Optional[str] = ..., decision: _Optional[str] = ..., id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ToolAuditRecord(_message.Message):
    __slots__ = ("id", "tool_name", "tool_version", "caller", "arguments_sha256", "outcome", "stopped_at", "reason", "duration_ms", "attempts", "verdicts", "truncated", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    TOOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STOPPED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    tool_name: str
    tool_version: int
    caller: str
    arguments_sha256: str
    outcome: InvokeOutcome
    stopped_at: InvokeStep
    reason: str
    duration_ms: float
    attempts: int
    verdicts: _containers.RepeatedCompositeFieldContainer[ToolAuditVerdict]
    truncated: bool
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., tool_name: _Optional[str] = ..., tool_version: _Optional[int] = ..., caller: _Optional[str] = ..., arguments_sha256: _Optional[str] = ..., outcome: _Optional[_Union[InvokeOutcome, str]] = ..., stopped_at: _Optional[_Union[InvokeStep, str]] = ..., reason: _Optional[str] = ..., duration_ms: _Optional[float] = ..., attempts: _Optional[int] = ..., verdicts: _Optional[_Iterable[_Union[ToolAuditVerdict, _Mapping]]] = ..., truncated: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListToolAuditRequest(_message.Message):
    __slots__ = ("namespace", "tool_name", "limit")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    tool_name: str
    limit: int
    def __init__(self, namespace: _Optional[str] = ..., tool_name: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListToolAuditResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[ToolAuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[ToolAuditRecord, _Mapping]]] = ...) -> None: ...

class ToolPolicy(_message.Message):
    __slots__ = ("guard_calls", "guard_results", "memory_write", "memory_session_id")
    GUARD_CALLS_FIELD_NUMBER: _ClassVar[int]
    GUARD_RESULTS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_WRITE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    guard_calls: bool
    guard_results: bool
    memory_write: bool
    memory_session_id: str
    def __init__(self, guard_calls: _Optional[bool] = ..., guard_results: _Optional[bool] = ..., memory_write: _Optional[bool] = ..., memory_session_id: _Optional[str] = ...) -> None: ...

class GetToolPolicyRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class SetToolPolicyRequest(_message.Message):
    __slots__ = ("namespace", "policy")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    policy: ToolPolicy
    def __init__(self, namespace: _Optional[str] = ..., policy: _Optional[_Union[ToolPolicy, _Mapping]] = ...) -> None: ...
