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

class CalibrationObjective(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALIBRATION_OBJECTIVE_UNSPECIFIED: _ClassVar[CalibrationObjective]
    CALIBRATION_OBJECTIVE_FIRE_RATE: _ClassVar[CalibrationObjective]
    CALIBRATION_OBJECTIVE_RECALL: _ClassVar[CalibrationObjective]
    CALIBRATION_OBJECTIVE_LOGISTIC: _ClassVar[CalibrationObjective]
CALIBRATION_OBJECTIVE_UNSPECIFIED: CalibrationObjective
CALIBRATION_OBJECTIVE_FIRE_RATE: CalibrationObjective
CALIBRATION_OBJECTIVE_RECALL: CalibrationObjective
CALIBRATION_OBJECTIVE_LOGISTIC: CalibrationObjective

class DecideRequest(_message.Message):
    __slots__ = ("namespace", "gate", "tokens", "session_id", "answer_span", "dry_run", "packed_tokens")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_SPAN_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    PACKED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    gate: _common_pb2.Gate
    tokens: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    session_id: str
    answer_span: _common_pb2.TokenSpan
    dry_run: bool
    packed_tokens: _common_pb2.PackedTokens
    def __init__(self, namespace: _Optional[str] = ..., gate: _Optional[_Union[_common_pb2.Gate, str]] = ..., tokens: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ..., session_id: _Optional[str] = ..., answer_span: _Optional[_Union[_common_pb2.TokenSpan, _Mapping]] = ..., dry_run: _Optional[bool] = ..., packed_tokens: _Optional[_Union[_common_pb2.PackedTokens, _Mapping]] = ...) -> None: ...

class GateDecision(_message.Message):
    __slots__ = ("decision_id", "fire", "score", "threshold", "signals", "signal", "policy_version", "n_tokens", "gate")
    class SignalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    FIRE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    N_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    fire: bool
    score: float
    threshold: float
    signals: _containers.ScalarMap[str, float]
    signal: str
    policy_version: int
    n_tokens: int
    gate: _common_pb2.Gate
    def __init__(self, decision_id: _Optional[str] = ..., fire: _Optional[bool] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., signals: _Optional[_Mapping[str, float]] = ..., signal: _Optional[str] = ..., policy_version: _Optional[int] = ..., n_tokens: _Optional[int] = ..., gate: _Optional[_Union[_common_pb2.Gate, str]] = ...) -> None: ...

class GatePolicy(_message.Message):
    __slots__ = ("variant", "aggregation", "threshold", "hysteresis", "top_k", "q", "window", "d_min", "level", "first_k")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    HYSTERESIS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    D_MIN_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    FIRST_K_FIELD_NUMBER: _ClassVar[int]
    variant: str
    aggregation: str
    threshold: float
    hysteresis: float
    top_k: int
    q: float
    window: int
    d_min: int
    level: float
    first_k: int
    def __init__(self, variant: _Optional[str] = ..., aggregation: _Optional[str] = ..., threshold: _Optional[float] = ..., hysteresis: _Optional[float] = ..., top_k: _Optional[int] = ..., q: _Optional[float] = ..., window: _Optional[int] = ..., d_min: _Optional[int] = ..., level: _Optional[float] = ..., first_k: _Optional[int] = ...) -> None: ...

class GatePolicyVersion(_message.Message):
    __slots__ = ("gate", "version", "policy", "reason", "created_at", "follows_config")
    GATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FOLLOWS_CONFIG_FIELD_NUMBER: _ClassVar[int]
    gate: _common_pb2.Gate
    version: int
    policy: GatePolicy
    reason: str
    created_at: _timestamp_pb2.Timestamp
    follows_config: bool
    def __init__(self, gate: _Optional[_Union[_common_pb2.Gate, str]] = ..., version: _Optional[int] = ..., policy: _Optional[_Union[GatePolicy, _Mapping]] = ..., reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., follows_config: _Optional[bool] = ...) -> None: ...

class RecordOutcomeRequest(_message.Message):
    __slots__ = ("namespace", "decision_id", "gate", "signals", "needed", "answer_correct")
    class SignalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    NEEDED_FIELD_NUMBER: _ClassVar[int]
    ANSWER_CORRECT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    decision_id: str
    gate: _common_pb2.Gate
    signals: _containers.ScalarMap[str, float]
    needed: bool
    answer_correct: bool
    def __init__(self, namespace: _Optional[str] = ..., decision_id: _Optional[str] = ..., gate: _Optional[_Union[_common_pb2.Gate, str]] = ..., signals: _Optional[_Mapping[str, float]] = ..., needed: _Optional[bool] = ..., answer_correct: _Optional[bool] = ...) -> None: ...

class RecordOutcomeResponse(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...

class CalibrateRequest(_message.Message):
    __slots__ = ("namespace", "gate", "objective", "target_fire_rate", "alpha", "probability_cutoff", "signal", "min_outcomes", "min_per_class", "dry_run")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIRE_RATE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    MIN_OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    MIN_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    gate: _common_pb2.Gate
    objective: CalibrationObjective
    target_fire_rate: float
    alpha: float
    probability_cutoff: float
    signal: str
    min_outcomes: int
    min_per_class: int
    dry_run: bool
    def __init__(self, namespace: _Optional[str] = ..., gate: _Optional[_Union[_common_pb2.Gate, str]] = ..., objective: _Optional[_Union[CalibrationObjective, str]] = ..., target_fire_rate: _Optional[float] = ..., alpha: _Optional[float] = ..., probability_cutoff: _Optional[float] = ..., signal: _Optional[str] = ..., min_outcomes: _Optional[int] = ..., min_per_class: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class CalibrateResponse(_message.Message):
    __slots__ = ("updated", "message", "policy", "n_outcomes", "n_positive", "auroc", "signal", "fire_rate", "recall", "logistic_a", "logistic_b")
    class AurocEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    N_OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    N_POSITIVE_FIELD_NUMBER: _ClassVar[int]
    AUROC_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    FIRE_RATE_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    LOGISTIC_A_FIELD_NUMBER: _ClassVar[int]
    LOGISTIC_B_FIELD_NUMBER: _ClassVar[int]
    updated: bool
    message: str
    policy: GatePolicyVersion
    n_outcomes: int
    n_positive: int
    auroc: _containers.ScalarMap[str, float]
    signal: str
    fire_rate: float
    recall: float
    logistic_a: float
    logistic_b: float
    def __init__(self, updated: _Optional[bool] = ..., message: _Optional[str] = ..., policy: _Optional[_Union[GatePolicyVersion, _Mapping]] = ..., n_outcomes: _Optional[int] = ..., n_positive: _Optional[int] = ..., auroc: _Optional[_Mapping[str, float]] = ..., signal: _Optional[str] = ..., fire_rate: _Optional[float] = ..., recall: _Optional[float] = ..., logistic_a: _Optional[float] = ..., logistic_b: _Optional[float] = ...) -> None: ...

class GetGatePolicyRequest(_message.Message):
    __slots__ = ("namespace", "gate")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    gate: _common_pb2.Gate
    def __init__(self, namespace: _Optional[str] = ..., gate: _Optional[_Union[_common_pb2.Gate, str]] = ...) -> None: ...

class SetGatePolicyRequest(_message.Message):
    __slots__ = ("namespace", "gate", "policy", "reason")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    gate: _common_pb2.Gate
    policy: GatePolicy
    reason: str
    def __init__(self, namespace: _Optional[str] = ..., gate: _Optional[_Union[_common_pb2.Gate, str]] = ..., policy: _Optional[_Union[GatePolicy, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class ListGatePolicyVersionsRequest(_message.Message):
    __slots__ = ("namespace", "gate")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    gate: _common_pb2.Gate
    def __init__(self, namespace: _Optional[str] = ..., gate: _Optional[_Union[_common_pb2.Gate, str]] = ...) -> None: ...

class ListGatePolicyVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[GatePolicyVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[GatePolicyVersion, _Mapping]]] = ...) -> None: ...

class RollbackGatePolicyRequest(_message.Message):
    __slots__ = ("namespace", "gate", "version")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    gate: _common_pb2.Gate
    version: int
    def __init__(self, namespace: _Optional[str] = ..., gate: _Optional[_Union[_common_pb2.Gate, str]] = ..., version: _Optional[int] = ...) -> None: ...

class ResetGatePolicyRequest(_message.Message):
    __slots__ = ("namespace", "gate", "reason")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    gate: _common_pb2.Gate
    reason: str
    def __init__(self, namespace: _Optional[str] = ..., gate: _Optional[_Union[_common_pb2.Gate, str]] = ..., reason: _Optional[str] = ...) -> None: ...
