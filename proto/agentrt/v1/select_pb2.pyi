from agentrt.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Candidate(_message.Message):
    __slots__ = ("agent_id", "answer", "tokens", "first_round_tokens", "answer_span", "packed_tokens")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    FIRST_ROUND_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_SPAN_FIELD_NUMBER: _ClassVar[int]
    PACKED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    answer: str
    tokens: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    first_round_tokens: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    answer_span: _common_pb2.TokenSpan
    packed_tokens: _common_pb2.PackedTokens
    def __init__(self, agent_id: _Optional[str] = ..., answer: _Optional[str] = ..., tokens: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ..., first_round_tokens: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ..., answer_span: _Optional[_Union[_common_pb2.TokenSpan, _Mapping]] = ..., packed_tokens: _Optional[_Union[_common_pb2.PackedTokens, _Mapping]] = ...) -> None: ...

class SelectRequest(_message.Message):
    __slots__ = ("namespace", "candidates", "dry_run")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    dry_run: bool
    def __init__(self, namespace: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class Cluster(_message.Message):
    __slots__ = ("indices", "share")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    share: float
    def __init__(self, indices: _Optional[_Iterable[int]] = ..., share: _Optional[float] = ...) -> None: ...

class Selection(_message.Message):
    __slots__ = ("index", "answer", "confidence", "selection_id", "scores", "clusters", "semantic_entropy", "normalized_semantic_entropy", "method", "mean_entropy", "default_index")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SELECTION_ID_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_SEMANTIC_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MEAN_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_INDEX_FIELD_NUMBER: _ClassVar[int]
    index: int
    answer: str
    confidence: float
    selection_id: str
    scores: _containers.RepeatedScalarFieldContainer[float]
    clusters: _containers.RepeatedCompositeFieldContainer[Cluster]
    semantic_entropy: float
    normalized_semantic_entropy: float
    method: str
    mean_entropy: _containers.RepeatedScalarFieldContainer[float]
    default_index: int
    def __init__(self, index: _Optional[int] = ..., answer: _Optional[str] = ..., confidence: _Optional[float] = ..., selection_id: _Optional[str] = ..., scores: _Optional[_Iterable[float]] = ..., clusters: _Optional[_Iterable[_Union[Cluster, _Mapping]]] = ..., semantic_entropy: _Optional[float] = ..., normalized_semantic_entropy: _Optional[float] = ..., method: _Optional[str] = ..., mean_entropy: _Optional[_Iterable[float]] = ..., default_index: _Optional[int] = ...) -> None: ...

class RecordSelectionOutcomeRequest(_message.Message):
    __slots__ = ("namespace", "selection_id", "correct_indices", "correct_answer")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SELECTION_ID_FIELD_NUMBER: _ClassVar[int]
    CORRECT_INDICES_FIELD_NUMBER: _ClassVar[int]
    CORRECT_ANSWER_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    selection_id: str
    correct_indices: _containers.RepeatedScalarFieldContainer[int]
    correct_answer: str
    def __init__(self, namespace: _Optional[str] = ..., selection_id: _Optional[str] = ..., correct_indices: _Optional[_Iterable[int]] = ..., correct_answer: _Optional[str] = ...) -> None: ...

class RecordSelectionOutcomeResponse(_message.Message):
    __slots__ = ("correct",)
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    correct: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, correct: _Optional[_Iterable[bool]] = ...) -> None: ...

class TrainSelectorRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class TrainSelectorResponse(_message.Message):
    __slots__ = ("active", "message", "n_sets", "n_train_sets", "n_heldout_sets", "heldout_default_accuracy", "heldout_learned_accuracy", "model_version")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    N_SETS_FIELD_NUMBER: _ClassVar[int]
    N_TRAIN_SETS_FIELD_NUMBER: _ClassVar[int]
    N_HELDOUT_SETS_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_DEFAULT_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_LEARNED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    active: bool
    message: str
    n_sets: int
    n_train_sets: int
    n_heldout_sets: int
    heldout_default_accuracy: float
    heldout_learned_accuracy: float
    model_version: int
    def __init__(self, active: _Optional[bool] = ..., message: _Optional[str] = ..., n_sets: _Optional[int] = ..., n_train_sets: _Optional[int] = ..., n_heldout_sets: _Optional[int] = ..., heldout_default_accuracy: _Optional[float] = ..., heldout_learned_accuracy: _Optional[float] = ..., model_version: _Optional[int] = ...) -> None: ...
