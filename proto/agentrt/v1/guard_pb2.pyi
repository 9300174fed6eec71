from agentrt.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckRequest(_message.Message):
    __slots__ = ("namespace", "stage", "text", "tool_call", "available_tools")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_TOOLS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    stage: _common_pb2.Stage
    text: str
    tool_call: _common_pb2.ToolCall
    available_tools: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., text: _Optional[str] = ..., tool_call: _Optional[_Union[_common_pb2.ToolCall, _Mapping]] = ..., available_tools: _Optional[_Iterable[str]] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("verdict_id", "decision", "harm_score", "entropy")
    VERDICT_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    HARM_SCORE_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    verdict_id: str
    decision: _common_pb2.Decision
    harm_score: float
    entropy: float
    def __init__(self, verdict_id: _Optional[str] = ..., decision: _Optional[_Union[_common_pb2.Decision, str]] = ..., harm_score: _Optional[float] = ..., entropy: _Optional[float] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("namespace", "verdict_id", "expected", "note")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    verdict_id: str
    expected: _common_pb2.Decision
    note: str
    def __init__(self, namespace: _Optional[str] = ..., verdict_id: _Optional[str] = ..., expected: _Optional[_Union[_common_pb2.Decision, str]] = ..., note: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
