import datetime

from agentrt.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StageStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_STATUS_UNSPECIFIED: _ClassVar[StageStatus]
    STAGE_STATUS_STARTED: _ClassVar[StageStatus]
    STAGE_STATUS_FINISHED: _ClassVar[StageStatus]

class InterruptKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERRUPT_KIND_UNSPECIFIED: _ClassVar[InterruptKind]
    INTERRUPT_KIND_REVIEW: _ClassVar[InterruptKind]
    INTERRUPT_KIND_TOOL_APPROVAL: _ClassVar[InterruptKind]

class TurnStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TURN_STATUS_UNSPECIFIED: _ClassVar[TurnStatus]
    TURN_STATUS_COMPLETED: _ClassVar[TurnStatus]
    TURN_STATUS_INTERRUPTED: _ClassVar[TurnStatus]
    TURN_STATUS_BLOCKED: _ClassVar[TurnStatus]

class ThreadStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THREAD_STATUS_UNSPECIFIED: _ClassVar[ThreadStatus]
    THREAD_STATUS_IDLE: _ClassVar[ThreadStatus]
    THREAD_STATUS_INTERRUPTED: _ClassVar[ThreadStatus]

class StoreRanking(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STORE_RANKING_UNSPECIFIED: _ClassVar[StoreRanking]
    STORE_RANKING_DENSE: _ClassVar[StoreRanking]
    STORE_RANKING_HYBRID: _ClassVar[StoreRanking]

class MatchType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MATCH_TYPE_UNSPECIFIED: _ClassVar[MatchType]
    MATCH_TYPE_PREFIX: _ClassVar[MatchType]
    MATCH_TYPE_SUFFIX: _ClassVar[MatchType]
STAGE_STATUS_UNSPECIFIED: StageStatus
STAGE_STATUS_STARTED: StageStatus
STAGE_STATUS_FINISHED: StageStatus
INTERRUPT_KIND_UNSPECIFIED: InterruptKind
INTERRUPT_KIND_REVIEW: InterruptKind
INTERRUPT_KIND_TOOL_APPROVAL: InterruptKind
TURN_STATUS_UNSPECIFIED: TurnStatus
TURN_STATUS_COMPLETED: TurnStatus
TURN_STATUS_INTERRUPTED: TurnStatus
TURN_STATUS_BLOCKED: TurnStatus
THREAD_STATUS_UNSPECIFIED: ThreadStatus
THREAD_STATUS_IDLE: ThreadStatus
THREAD_STATUS_INTERRUPTED: ThreadStatus
STORE_RANKING_UNSPECIFIED: StoreRanking
STORE_RANKING_DENSE: StoreRanking
STORE_RANKING_HYBRID: StoreRanking
MATCH_TYPE_UNSPECIFIED: MatchType
MATCH_TYPE_PREFIX: MatchType
MATCH_TYPE_SUFFIX: MatchType

class CandidateSpec(_message.Message):
    __slots__ = ("agent_id", "model", "temperature", "system_prompt")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    model: str
    temperature: float
    system_prompt: str
    def __init__(self, agent_id: _Optional[str] = ..., model: _Optional[str] = ..., temperature: _Optional[float] = ..., system_prompt: _Optional[str] = ...) -> None: ...

class TurnPolicy(_message.Message):
    __slots__ = ("llm_base_url", "model", "temperature", "system_prompt", "candidates", "num_candidates", "tools", "approval_tools", "max_tool_rounds", "retrieve_top_k", "token_budget", "write_memory", "force_retrieval", "top_logprobs", "max_tokens", "llm_timeout_s", "speculative_retrieval", "parallel_input_guard")
    LLM_BASE_URL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_TOOLS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOOL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVE_TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    WRITE_MEMORY_FIELD_NUMBER: _ClassVar[int]
    FORCE_RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LLM_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_INPUT_GUARD_FIELD_NUMBER: _ClassVar[int]
    llm_base_url: str
    model: str
    temperature: float
    system_prompt: str
    candidates: _containers.RepeatedCompositeFieldContainer[CandidateSpec]
    num_candidates: int
    tools: _containers.RepeatedScalarFieldContainer[str]
    approval_tools: _containers.RepeatedScalarFieldContainer[str]
    max_tool_rounds: int
    retrieve_top_k: int
    token_budget: int
    write_memory: bool
    force_retrieval: bool
    top_logprobs: int
    max_tokens: int
    llm_timeout_s: float
    speculative_retrieval: bool
    parallel_input_guard: bool
    def __init__(self, llm_base_url: _Optional[str] = ..., model: _Optional[str] = ..., temperature: _Optional[float] = ..., system_prompt: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[CandidateSpec, _Mapping]]] = ..., num_candidates: _Optional[int] = ..., tools: _Optional[_Iterable[str]] = ..., approval_tools: _Optional[_Iterable[str]] = ..., max_tool_rounds: _Optional[int] = ..., retrieve_top_k: _Optional[int] = ..., token_budget: _Optional[int] = ..., write_memory: _Optional[bool] = ..., force_retrieval: _Optional[bool] = ..., top_logprobs: _Optional[int] = ..., max_tokens: _Optional[int] = ..., llm_timeout_s: _Optional[float] = ..., speculative_retrieval: _Optional[bool] = ..., parallel_input_guard: _Optional[bool] = ...) -> None: ...

class RunTurnRequest(_message.Message):
    __slots__ = ("namespace", "thread_id", "message", "policy", "speaker", "turn_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    thread_id: str
    message: str
    policy: TurnPolicy
    speaker: str
    turn_id: str
    def __init__(self, namespace: _Optional[str] = ..., thread_id: _Optional[str] = ..., message: _Optional[str] = ..., policy: _Optional[_Union[TurnPolicy, _Mapping]] = ..., speaker: _Optional[str] = ..., turn_id: _Optional[str] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("namespace", "thread_id", "decision", "note", "interrupt_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    thread_id: str
    decision: _common_pb2.Decision
    note: str
    interrupt_id: str
    def __init__(self, namespace: _Optional[str] = ..., thread_id: _Optional[str] = ..., decision: _Optional[_Union[_common_pb2.Decision, str]] = ..., note: _Optional[str] = ..., interrupt_id: _Optional[str] = ...) -> None: ...

class GetThreadRequest(_message.Message):
    __slots__ = ("namespace", "thread_id", "history_limit")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    thread_id: str
    history_limit: int
    def __init__(self, namespace: _Optional[str] = ..., thread_id: _Optional[str] = ..., history_limit: _Optional[int] = ...) -> None: ...

class StageEvent(_message.Message):
    __slots__ = ("name", "status", "elapsed_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: StageStatus
    elapsed_ms: float
    def __init__(self, name: _Optional[str] = ..., status: _Optional[_Union[StageStatus, str]] = ..., elapsed_ms: _Optional[float] = ...) -> None: ...

class GuardEvent(_message.Message):
    __slots__ = ("stage", "verdict_id", "decision", "harm_score", "entropy", "reason")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    HARM_SCORE_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    stage: _common_pb2.Stage
    verdict_id: str
    decision: _common_pb2.Decision
    harm_score: float
    entropy: float
    reason: str
    def __init__(self, stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., verdict_id: _Optional[str] = ..., decision: _Optional[_Union[_common_pb2.Decision, str]] = ..., harm_score: _Optional[float] = ..., entropy: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class GateEvent(_message.Message):
    __slots__ = ("gate", "fire", "score", "threshold", "signals", "fallback_reason")
    class SignalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    GATE_FIELD_NUMBER: _ClassVar[int]
    FIRE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    gate: _common_pb2.Gate
    fire: bool
    score: float
    threshold: float
    signals: _containers.ScalarMap[str, float]
    fallback_reason: str
    def __init__(self, gate: _Optional[_Union[_common_pb2.Gate, str]] = ..., fire: _Optional[bool] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., signals: _Optional[_Mapping[str, float]] = ..., fallback_reason: _Optional[str] = ...) -> None: ...

class RetrievedMemory(_message.Message):
    __slots__ = ("id", "text", "score", "granularity")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    score: float
    granularity: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., granularity: _Optional[str] = ...) -> None: ...

class RetrievalEvent(_message.Message):
    __slots__ = ("query", "hits", "routing")
    class RoutingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    QUERY_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    query: str
    hits: _containers.RepeatedCompositeFieldContainer[RetrievedMemory]
    routing: _containers.ScalarMap[str, float]
    def __init__(self, query: _Optional[str] = ..., hits: _Optional[_Iterable[_Union[RetrievedMemory, _Mapping]]] = ..., routing: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ToolCallEvent(_message.Message):
    __slots__ = ("call_id", "tool_call")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    tool_call: _common_pb2.ToolCall
    def __init__(self, call_id: _Optional[str] = ..., tool_call: _Optional[_Union[_common_pb2.ToolCall, _Mapping]] = ...) -> None: ...

class ToolResultEvent(_message.Message):
    __slots__ = ("call_id", "name", "result_json", "error")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    name: str
    result_json: str
    error: str
    def __init__(self, call_id: _Optional[str] = ..., name: _Optional[str] = ..., result_json: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class CandidateEvent(_message.Message):
    __slots__ = ("index", "agent_id", "answer", "mean_logprob", "num_tokens", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    MEAN_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    agent_id: str
    answer: str
    mean_logprob: float
    num_tokens: int
    error: str
    def __init__(self, index: _Optional[int] = ..., agent_id: _Optional[str] = ..., answer: _Optional[str] = ..., mean_logprob: _Optional[float] = ..., num_tokens: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class SelectionEvent(_message.Message):
    __slots__ = ("index", "answer", "confidence", "method")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    index: int
    answer: str
    confidence: float
    method: str
    def __init__(self, index: _Optional[int] = ..., answer: _Optional[str] = ..., confidence: _Optional[float] = ..., method: _Optional[str] = ...) -> None: ...

class InterruptEvent(_message.Message):
    __slots__ = ("kind", "stage", "text", "tool_call", "verdict_id", "reason", "interrupt_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    VERDICT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_ID_FIELD_NUMBER: _ClassVar[int]
    kind: InterruptKind
    stage: _common_pb2.Stage
    text: str
    tool_call: _common_pb2.ToolCall
    verdict_id: str
    reason: str
    interrupt_id: str
    def __init__(self, kind: _Optional[_Union[InterruptKind, str]] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., text: _Optional[str] = ..., tool_call: _Optional[_Union[_common_pb2.ToolCall, _Mapping]] = ..., verdict_id: _Optional[str] = ..., reason: _Optional[str] = ..., interrupt_id: _Optional[str] = ...) -> None: ...

class MemoryWriteEvent(_message.Message):
    __slots__ = ("message_ids",)
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class TurnResult(_message.Message):
    __slots__ = ("status", "answer", "interrupt", "turn_id", "replayed")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    status: TurnStatus
    answer: str
    interrupt: InterruptEvent
    turn_id: str
    replayed: bool
    def __init__(self, status: _Optional[_Union[TurnStatus, str]] = ..., answer: _Optional[str] = ..., interrupt: _Optional[_Union[InterruptEvent, _Mapping]] = ..., turn_id: _Optional[str] = ..., replayed: _Optional[bool] = ...) -> None: ...

class TurnEvent(_message.Message):
    __slots__ = ("thread_id", "seq", "stage", "guard", "gate", "retrieval", "tool_call", "tool_result", "candidate", "selection", "interrupt", "memory_write", "result")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_WRITE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    seq: int
    stage: StageEvent
    guard: GuardEvent
    gate: GateEvent
    retrieval: RetrievalEvent
    tool_call: ToolCallEvent
    tool_result: ToolResultEvent
    candidate: CandidateEvent
    selection: SelectionEvent
    interrupt: InterruptEvent
    memory_write: MemoryWriteEvent
    result: TurnResult
    def __init__(self, thread_id: _Optional[str] = ..., seq: _Optional[int] = ..., stage: _Optional[_Union[StageEvent, _Mapping]] = ..., guard: _Optional[_Union[GuardEvent, _Mapping]] = ..., gate: _Optional[_Union[GateEvent, _Mapping]] = ..., retrieval: _Optional[_Union[RetrievalEvent, _Mapping]] = ..., tool_call: _Optional[_Union[ToolCallEvent, _Mapping]] = ..., tool_result: _Optional[_Union[ToolResultEvent, _Mapping]] = ..., candidate: _Optional[_Union[CandidateEvent, _Mapping]] = ..., selection: _Optional[_Union[SelectionEvent, _Mapping]] = ..., interrupt: _Optional[_Union[InterruptEvent, _Mapping]] = ..., memory_write: _Optional[_Union[MemoryWriteEvent, _Mapping]] = ..., result: _Optional[_Union[TurnResult, _Mapping]] = ...) -> None: ...

class ThreadMessage(_message.Message):
    __slots__ = ("role", "text", "tool_calls", "tool_call_id")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    role: str
    text: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[_common_pb2.ToolCall]
    tool_call_id: str
    def __init__(self, role: _Optional[str] = ..., text: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[_common_pb2.ToolCall, _Mapping]]] = ..., tool_call_id: _Optional[str] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("checkpoint_id", "step", "next", "created_at")
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    checkpoint_id: str
    step: int
    next: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, checkpoint_id: _Optional[str] = ..., step: _Optional[int] = ..., next: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Thread(_message.Message):
    __slots__ = ("thread_id", "status", "messages", "pending_interrupt", "history", "turns")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PENDING_INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    status: ThreadStatus
    messages: _containers.RepeatedCompositeFieldContainer[ThreadMessage]
    pending_interrupt: InterruptEvent
    history: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    turns: int
    def __init__(self, thread_id: _Optional[str] = ..., status: _Optional[_Union[ThreadStatus, str]] = ..., messages: _Optional[_Iterable[_Union[ThreadMessage, _Mapping]]] = ..., pending_interrupt: _Optional[_Union[InterruptEvent, _Mapping]] = ..., history: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ..., turns: _Optional[int] = ...) -> None: ...

class StoreGet(_message.Message):
    __slots__ = ("path", "key")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    path: _containers.RepeatedScalarFieldContainer[str]
    key: str
    def __init__(self, path: _Optional[_Iterable[str]] = ..., key: _Optional[str] = ...) -> None: ...

class StorePut(_message.Message):
    __slots__ = ("path", "key", "value_json", "index_fields")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELDS_FIELD_NUMBER: _ClassVar[int]
    path: _containers.RepeatedScalarFieldContainer[str]
    key: str
    value_json: str
    index_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, path: _Optional[_Iterable[str]] = ..., key: _Optional[str] = ..., value_json: _Optional[str] = ..., index_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class StoreSearch(_message.Message):
    __slots__ = ("path_prefix", "filter_json", "limit", "offset", "query", "ranking")
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    path_prefix: _containers.RepeatedScalarFieldContainer[str]
    filter_json: str
    limit: int
    offset: int
    query: str
    ranking: StoreRanking
    def __init__(self, path_prefix: _Optional[_Iterable[str]] = ..., filter_json: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., query: _Optional[str] = ..., ranking: _Optional[_Union[StoreRanking, str]] = ...) -> None: ...

class StoreMatchCondition(_message.Message):
    __slots__ = ("match_type", "path")
    MATCH_TYPE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    match_type: MatchType
    path: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, match_type: _Optional[_Union[MatchType, str]] = ..., path: _Optional[_Iterable[str]] = ...) -> None: ...

class StoreListNamespaces(_message.Message):
    __slots__ = ("match_conditions", "max_depth", "limit", "offset")
    MATCH_CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    match_conditions: _containers.RepeatedCompositeFieldContainer[StoreMatchCondition]
    max_depth: int
    limit: int
    offset: int
    def __init__(self, match_conditions: _Optional[_Iterable[_Union[StoreMatchCondition, _Mapping]]] = ..., max_depth: _Optional[int] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class StoreOp(_message.Message):
    __slots__ = ("get", "put", "search", "list_namespaces")
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    LIST_NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    get: StoreGet
    put: StorePut
    search: StoreSearch
    list_namespaces: StoreListNamespaces
    def __init__(self, get: _Optional[_Union[StoreGet, _Mapping]] = ..., put: _Optional[_Union[StorePut, _Mapping]] = ..., search: _Optional[_Union[StoreSearch, _Mapping]] = ..., list_namespaces: _Optional[_Union[StoreListNamespaces, _Mapping]] = ...) -> None: ...

class StoreBatchRequest(_message.Message):
    __slots__ = ("namespace", "ops")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    ops: _containers.RepeatedCompositeFieldContainer[StoreOp]
    def __init__(self, namespace: _Optional[str] = ..., ops: _Optional[_Iterable[_Union[StoreOp, _Mapping]]] = ...) -> None: ...

class StoreItem(_message.Message):
    __slots__ = ("path", "key", "value_json", "created_at", "updated_at", "score")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    path: _containers.RepeatedScalarFieldContainer[str]
    key: str
    value_json: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    score: float
    def __init__(self, path: _Optional[_Iterable[str]] = ..., key: _Optional[str] = ..., value_json: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., score: _Optional[float] = ...) -> None: ...

class StoreGetResult(_message.Message):
    __slots__ = ("item",)
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item: StoreItem
    def __init__(self, item: _Optional[_Union[StoreItem, _Mapping]] = ...) -> None: ...

class StorePutResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StoreSearchResult(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[StoreItem]
    def __init__(self, items: _Optional[_Iterable[_Union[StoreItem, _Mapping]]] = ...) -> None: ...

class StoreNamespacePath(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, path: _Optional[_Iterable[str]] = ...) -> None: ...

class StoreListNamespacesResult(_message.Message):
    __slots__ = ("namespaces",)
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedCompositeFieldContainer[StoreNamespacePath]
    def __init__(self, namespaces: _Optional[_Iterable[_Union[StoreNamespacePath, _Mapping]]] = ...) -> None: ...

class StoreResult(_message.Message):
    __slots__ = ("get", "put", "search", "list_namespaces")
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    LIST_NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    get: StoreGetResult
    put: StorePutResult
    search: StoreSearchResult
    list_namespaces: StoreListNamespacesResult
    def __init__(self, get: _Optional[_Union[StoreGetResult, _Mapping]] = ..., put: _Optional[_Union[StorePutResult, _Mapping]] = ..., search: _Optional[_Union[StoreSearchResult, _Mapping]] = ..., list_namespaces: _Optional[_Union[StoreListNamespacesResult, _Mapping]] = ...) -> None: ...

class StoreBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StoreResult]
    def __init__(self, results: _Optional[_Iterable[_Union[StoreResult, _Mapping]]] = ...) -> None: ...
