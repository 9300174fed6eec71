from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_INPUT: _ClassVar[Stage]
    STAGE_TOOL_CALL: _ClassVar[Stage]
    STAGE_TOOL_RESULT: _ClassVar[Stage]
    STAGE_OUTPUT: _ClassVar[Stage]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_BLOCK: _ClassVar[Decision]
    DECISION_REVIEW: _ClassVar[Decision]

class Gate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GATE_UNSPECIFIED: _ClassVar[Gate]
    GATE_RETRIEVE: _ClassVar[Gate]
    GATE_CALL_TOOL: _ClassVar[Gate]
    GATE_ESCALATE: _ClassVar[Gate]
STAGE_UNSPECIFIED: Stage
STAGE_INPUT: Stage
STAGE_TOOL_CALL: Stage
STAGE_TOOL_RESULT: Stage
STAGE_OUTPUT: Stage
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_BLOCK: Decision
DECISION_REVIEW: Decision
GATE_UNSPECIFIED: Gate
GATE_RETRIEVE: Gate
GATE_CALL_TOOL: Gate
GATE_ESCALATE: Gate

class TopLogprob(_message.Message):
    __slots__ = ("token", "logprob")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token: str
    logprob: float
    def __init__(self, token: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token", "logprob", "top_logprobs", "full_entropy")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FULL_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    token: str
    logprob: float
    top_logprobs: _containers.RepeatedCompositeFieldContainer[TopLogprob]
    full_entropy: float
    def __init__(self, token: _Optional[str] = ..., logprob: _Optional[float] = ..., top_logprobs: _Optional[_Iterable[_Union[TopLogprob, _Mapping]]] = ..., full_entropy: _Optional[float] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("name", "arguments_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    arguments_json: str
    def __init__(self, name: _Optional[str] = ..., arguments_json: _Optional[str] = ...) -> None: ...

class TokenSpan(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class PackedTokens(_message.Message):
    __slots__ = ("logprobs", "top_k", "top_logprobs", "full_entropy")
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FULL_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    top_k: int
    top_logprobs: _containers.RepeatedScalarFieldContainer[float]
    full_entropy: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, logprobs: _Optional[_Iterable[float]] = ..., top_k: _Optional[int] = ..., top_logprobs: _Optional[_Iterable[float]] = ..., full_entropy: _Optional[_Iterable[float]] = ...) -> None: ...
