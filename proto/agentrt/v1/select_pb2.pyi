from agentrt.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Candidate(_message.Message):
    __slots__ = ("agent_id", "answer", "tokens")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    answer: str
    tokens: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    def __init__(self, agent_id: _Optional[str] = ..., answer: _Optional[str] = ..., tokens: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ...) -> None: ...

class SelectRequest(_message.Message):
    __slots__ = ("namespace", "candidates")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, namespace: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class Selection(_message.Message):
    __slots__ = ("index", "answer", "confidence")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    index: int
    answer: str
    confidence: float
    def __init__(self, index: _Optional[int] = ..., answer: _Optional[str] = ..., confidence: _Optional[float] = ...) -> None: ...
