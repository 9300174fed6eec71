import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from agentrt.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckRequest(_message.Message):
    __slots__ = ("namespace", "stage", "text", "tool_call", "available_tools", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_TOOLS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    stage: _common_pb2.Stage
    text: str
    tool_call: _common_pb2.ToolCall
    available_tools: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, namespace: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., text: _Optional[str] = ..., tool_call: _Optional[_Union[_common_pb2.ToolCall, _Mapping]] = ..., available_tools: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GuardEvidence(_message.Message):
    __slots__ = ("kind", "ref", "text", "decision", "score", "detail")
    class DetailEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    ref: str
    text: str
    decision: _common_pb2.Decision
    score: float
    detail: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[str] = ..., ref: _Optional[str] = ..., text: _Optional[str] = ..., decision: _Optional[_Union[_common_pb2.Decision, str]] = ..., score: _Optional[float] = ..., detail: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("verdict_id", "decision", "harm_score", "entropy", "evidence", "category", "decided_by", "memory_version", "stage")
    VERDICT_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    HARM_SCORE_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    verdict_id: str
    decision: _common_pb2.Decision
    harm_score: float
    entropy: float
    evidence: _containers.RepeatedCompositeFieldContainer[GuardEvidence]
    category: str
    decided_by: str
    memory_version: int
    stage: _common_pb2.Stage
    def __init__(self, verdict_id: _Optional[str] = ..., decision: _Optional[_Union[_common_pb2.Decision, str]] = ..., harm_score: _Optional[float] = ..., entropy: _Optional[float] = ..., evidence: _Optional[_Iterable[_Union[GuardEvidence, _Mapping]]] = ..., category: _Optional[str] = ..., decided_by: _Optional[str] = ..., memory_version: _Optional[int] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ...) -> None: ...

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

class GuardEvolutionEvent(_message.Message):
    __slots__ = ("version", "kind", "summary", "created_at", "payload_json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    version: int
    kind: str
    summary: str
    created_at: _timestamp_pb2.Timestamp
    payload_json: str
    def __init__(self, version: _Optional[int] = ..., kind: _Optional[str] = ..., summary: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payload_json: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("leaf_id", "cluster_id", "events", "memory_version")
    LEAF_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    leaf_id: int
    cluster_id: int
    events: _containers.RepeatedCompositeFieldContainer[GuardEvolutionEvent]
    memory_version: int
    def __init__(self, leaf_id: _Optional[int] = ..., cluster_id: _Optional[int] = ..., events: _Optional[_Iterable[_Union[GuardEvolutionEvent, _Mapping]]] = ..., memory_version: _Optional[int] = ...) -> None: ...

class ReportIncidentRequest(_message.Message):
    __slots__ = ("namespace", "stage", "text", "tool_call", "expected", "category", "note")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    stage: _common_pb2.Stage
    text: str
    tool_call: _common_pb2.ToolCall
    expected: _common_pb2.Decision
    category: str
    note: str
    def __init__(self, namespace: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., text: _Optional[str] = ..., tool_call: _Optional[_Union[_common_pb2.ToolCall, _Mapping]] = ..., expected: _Optional[_Union[_common_pb2.Decision, str]] = ..., category: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class GuardRule(_message.Message):
    __slots__ = ("name", "action", "priority", "description", "stages", "spec_json", "enabled", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    action: _common_pb2.Decision
    priority: int
    description: str
    stages: _containers.RepeatedScalarFieldContainer[_common_pb2.Stage]
    spec_json: str
    enabled: bool
    source: str
    def __init__(self, name: _Optional[str] = ..., action: _Optional[_Union[_common_pb2.Decision, str]] = ..., priority: _Optional[int] = ..., description: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[_common_pb2.Stage, str]]] = ..., spec_json: _Optional[str] = ..., enabled: _Optional[bool] = ..., source: _Optional[str] = ...) -> None: ...

class PutRulesRequest(_message.Message):
    __slots__ = ("namespace", "yaml", "rules", "replace")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    yaml: str
    rules: _containers.RepeatedCompositeFieldContainer[GuardRule]
    replace: bool
    def __init__(self, namespace: _Optional[str] = ..., yaml: _Optional[str] = ..., rules: _Optional[_Iterable[_Union[GuardRule, _Mapping]]] = ..., replace: _Optional[bool] = ...) -> None: ...

class PutRulesResponse(_message.Message):
    __slots__ = ("rules",)
    RULES_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[GuardRule]
    def __init__(self, rules: _Optional[_Iterable[_Union[GuardRule, _Mapping]]] = ...) -> None: ...

class ListRulesRequest(_message.Message):
    __slots__ = ("namespace", "include_pack")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PACK_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    include_pack: bool
    def __init__(self, namespace: _Optional[str] = ..., include_pack: _Optional[bool] = ...) -> None: ...

class ListRulesResponse(_message.Message):
    __slots__ = ("rules",)
    RULES_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[GuardRule]
    def __init__(self, rules: _Optional[_Iterable[_Union[GuardRule, _Mapping]]] = ...) -> None: ...

class DeleteRulesRequest(_message.Message):
    __slots__ = ("namespace", "names")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteRulesResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class GuardRuleMatch(_message.Message):
    __slots__ = ("rule", "reason", "field")
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    rule: GuardRule
    reason: str
    field: str
    def __init__(self, rule: _Optional[_Union[GuardRule, _Mapping]] = ..., reason: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class TestRulesRequest(_message.Message):
    __slots__ = ("check", "yaml")
    CHECK_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    check: CheckRequest
    yaml: str
    def __init__(self, check: _Optional[_Union[CheckRequest, _Mapping]] = ..., yaml: _Optional[str] = ...) -> None: ...

class TestRulesResponse(_message.Message):
    __slots__ = ("matches", "verdict")
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedCompositeFieldContainer[GuardRuleMatch]
    verdict: Verdict
    def __init__(self, matches: _Optional[_Iterable[_Union[GuardRuleMatch, _Mapping]]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ...) -> None: ...

class GetGuardSettingsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class GuardSettings(_message.Message):
    __slots__ = ("namespace", "pack", "disabled_pack_rules", "default_decision", "review_entropy", "judge", "audit_retention_days", "judge_tool_results")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PACK_FIELD_NUMBER: _ClassVar[int]
    DISABLED_PACK_RULES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DECISION_FIELD_NUMBER: _ClassVar[int]
    REVIEW_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    JUDGE_TOOL_RESULTS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    pack: bool
    disabled_pack_rules: _containers.RepeatedScalarFieldContainer[str]
    default_decision: _common_pb2.Decision
    review_entropy: float
    judge: bool
    audit_retention_days: int
    judge_tool_results: bool
    def __init__(self, namespace: _Optional[str] = ..., pack: _Optional[bool] = ..., disabled_pack_rules: _Optional[_Iterable[str]] = ..., default_decision: _Optional[_Union[_common_pb2.Decision, str]] = ..., review_entropy: _Optional[float] = ..., judge: _Optional[bool] = ..., audit_retention_days: _Optional[int] = ..., judge_tool_results: _Optional[bool] = ...) -> None: ...

class UpdateGuardSettingsRequest(_message.Message):
    __slots__ = ("namespace", "pack", "disabled_pack_rules", "set_disabled_pack_rules", "default_decision", "review_entropy", "judge", "audit_retention_days", "judge_tool_results")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PACK_FIELD_NUMBER: _ClassVar[int]
    DISABLED_PACK_RULES_FIELD_NUMBER: _ClassVar[int]
    SET_DISABLED_PACK_RULES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DECISION_FIELD_NUMBER: _ClassVar[int]
    REVIEW_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    JUDGE_TOOL_RESULTS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    pack: bool
    disabled_pack_rules: _containers.RepeatedScalarFieldContainer[str]
    set_disabled_pack_rules: bool
    default_decision: _common_pb2.Decision
    review_entropy: float
    judge: bool
    audit_retention_days: int
    judge_tool_results: bool
    def __init__(self, namespace: _Optional[str] = ..., pack: _Optional[bool] = ..., disabled_pack_rules: _Optional[_Iterable[str]] = ..., set_disabled_pack_rules: _Optional[bool] = ..., default_decision: _Optional[_Union[_common_pb2.Decision, str]] = ..., review_entropy: _Optional[float] = ..., judge: _Optional[bool] = ..., audit_retention_days: _Optional[int] = ..., judge_tool_results: _Optional[bool] = ...) -> None: ...

class GuardCluster(_message.Message):
    __slots__ = ("id", "category", "stage_group", "rule_text", "harmful", "benign", "label_entropy", "leaf_ids")
    ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    STAGE_GROUP_FIELD_NUMBER: _ClassVar[int]
    RULE_TEXT_FIELD_NUMBER: _ClassVar[int]
    HARMFUL_FIELD_NUMBER: _ClassVar[int]
    BENIGN_FIELD_NUMBER: _ClassVar[int]
    LABEL_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    LEAF_IDS_FIELD_NUMBER: _ClassVar[int]
    id: int
    category: str
    stage_group: str
    rule_text: str
    harmful: int
    benign: int
    label_entropy: float
    leaf_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, id: _Optional[int] = ..., category: _Optional[str] = ..., stage_group: _Optional[str] = ..., rule_text: _Optional[str] = ..., harmful: _Optional[int] = ..., benign: _Optional[int] = ..., label_entropy: _Optional[float] = ..., leaf_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ListGuardClustersRequest(_message.Message):
    __slots__ = ("namespace", "category")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    category: str
    def __init__(self, namespace: _Optional[str] = ..., category: _Optional[str] = ...) -> None: ...

class ListGuardClustersResponse(_message.Message):
    __slots__ = ("clusters", "memory_version")
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    clusters: _containers.RepeatedCompositeFieldContainer[GuardCluster]
    memory_version: int
    def __init__(self, clusters: _Optional[_Iterable[_Union[GuardCluster, _Mapping]]] = ..., memory_version: _Optional[int] = ...) -> None: ...

class GuardHistoryRequest(_message.Message):
    __slots__ = ("namespace", "after_version", "limit")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    after_version: int
    limit: int
    def __init__(self, namespace: _Optional[str] = ..., after_version: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class GuardHistoryResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[GuardEvolutionEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[GuardEvolutionEvent, _Mapping]]] = ...) -> None: ...

class GuardRollbackRequest(_message.Message):
    __slots__ = ("namespace", "version")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    version: int
    def __init__(self, namespace: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GuardAuditRecord(_message.Message):
    __slots__ = ("verdict", "request_text", "tool_name", "arguments_json", "created_at", "feedback", "feedback_note", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TEXT_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_NOTE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    request_text: str
    tool_name: str
    arguments_json: str
    created_at: _timestamp_pb2.Timestamp
    feedback: _common_pb2.Decision
    feedback_note: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, verdict: _Optional[_Union[Verdict, _Mapping]] = ..., request_text: _Optional[str] = ..., tool_name: _Optional[str] = ..., arguments_json: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., feedback: _Optional[_Union[_common_pb2.Decision, str]] = ..., feedback_note: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetVerdictRequest(_message.Message):
    __slots__ = ("namespace", "verdict_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    verdict_id: str
    def __init__(self, namespace: _Optional[str] = ..., verdict_id: _Optional[str] = ...) -> None: ...

class QueryGuardAuditRequest(_message.Message):
    __slots__ = ("namespace", "stage", "decision", "since", "until", "page_size", "page_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    stage: _common_pb2.Stage
    decision: _common_pb2.Decision
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, namespace: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., decision: _Optional[_Union[_common_pb2.Decision, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class QueryGuardAuditResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[GuardAuditRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[GuardAuditRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PurgeGuardAuditRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class PurgeGuardAuditResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...
