import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Message(_message.Message):
    __slots__ = ("id", "speaker", "text", "time", "metadata", "session_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    speaker: str
    text: str
    time: _timestamp_pb2.Timestamp
    metadata: _containers.ScalarMap[str, str]
    session_id: str
    def __init__(self, id: _Optional[str] = ..., speaker: _Optional[str] = ..., text: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., session_id: _Optional[str] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("namespace", "session_id", "messages")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    session_id: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, namespace: _Optional[str] = ..., session_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("message_ids", "written", "unchanged")
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    written: int
    unchanged: int
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ..., written: _Optional[int] = ..., unchanged: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("namespace", "query", "top_k", "token_budget", "time_start", "time_end", "session_ids", "granularities")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    TIME_START_FIELD_NUMBER: _ClassVar[int]
    TIME_END_FIELD_NUMBER: _ClassVar[int]
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    GRANULARITIES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    query: str
    top_k: int
    token_budget: int
    time_start: _timestamp_pb2.Timestamp
    time_end: _timestamp_pb2.Timestamp
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    granularities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., query: _Optional[str] = ..., top_k: _Optional[int] = ..., token_budget: _Optional[int] = ..., time_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., time_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., session_ids: _Optional[_Iterable[str]] = ..., granularities: _Optional[_Iterable[str]] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "granularity", "text", "score", "message_ids", "session_id", "time_start", "time_end")
    ID_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_START_FIELD_NUMBER: _ClassVar[int]
    TIME_END_FIELD_NUMBER: _ClassVar[int]
    id: str
    granularity: str
    text: str
    score: float
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    session_id: str
    time_start: _timestamp_pb2.Timestamp
    time_end: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., granularity: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., message_ids: _Optional[_Iterable[str]] = ..., session_id: _Optional[str] = ..., time_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., time_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RoutingDiagnostics(_message.Message):
    __slots__ = ("entropy", "weight")
    class EntropyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class WeightEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    entropy: _containers.ScalarMap[str, float]
    weight: _containers.ScalarMap[str, float]
    def __init__(self, entropy: _Optional[_Mapping[str, float]] = ..., weight: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "routing")
    HITS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    routing: RoutingDiagnostics
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., routing: _Optional[_Union[RoutingDiagnostics, _Mapping]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("namespace", "message_ids")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("namespace", "session_id", "page_size", "page_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    session_id: str
    page_size: int
    page_token: str
    def __init__(self, namespace: _Optional[str] = ..., session_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("messages", "next_page_token", "session_ids")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    next_page_token: str
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., session_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateRequest(_message.Message):
    __slots__ = ("namespace", "message")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    message: Message
    def __init__(self, namespace: _Optional[str] = ..., message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class UpdateResponse(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    def __init__(self, changed: _Optional[bool] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("namespace", "message_ids", "session_id", "all")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    session_id: str
    all: bool
    def __init__(self, namespace: _Optional[str] = ..., message_ids: _Optional[_Iterable[str]] = ..., session_id: _Optional[str] = ..., all: _Optional[bool] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted_messages", "deleted_units", "sessions_rederived")
    DELETED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    DELETED_UNITS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_REDERIVED_FIELD_NUMBER: _ClassVar[int]
    deleted_messages: int
    deleted_units: int
    sessions_rederived: int
    def __init__(self, deleted_messages: _Optional[int] = ..., deleted_units: _Optional[int] = ..., sessions_rederived: _Optional[int] = ...) -> None: ...

class ConsolidateRequest(_message.Message):
    __slots__ = ("namespace", "skip_refit")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SKIP_REFIT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    skip_refit: bool
    def __init__(self, namespace: _Optional[str] = ..., skip_refit: _Optional[bool] = ...) -> None: ...

class ConsolidateResponse(_message.Message):
    __slots__ = ("sessions_derived", "units_added", "units_removed", "clusters", "edges", "refit", "seconds", "messages_forgotten", "units_reweighted")
    SESSIONS_DERIVED_FIELD_NUMBER: _ClassVar[int]
    UNITS_ADDED_FIELD_NUMBER: _ClassVar[int]
    UNITS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    REFIT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    UNITS_REWEIGHTED_FIELD_NUMBER: _ClassVar[int]
    sessions_derived: int
    units_added: int
    units_removed: int
    clusters: int
    edges: int
    refit: bool
    seconds: float
    messages_forgotten: int
    units_reweighted: int
    def __init__(self, sessions_derived: _Optional[int] = ..., units_added: _Optional[int] = ..., units_removed: _Optional[int] = ..., clusters: _Optional[int] = ..., edges: _Optional[int] = ..., refit: _Optional[bool] = ..., seconds: _Optional[float] = ..., messages_forgotten: _Optional[int] = ..., units_reweighted: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("messages", "sessions", "units", "edges", "generation", "index_generation", "pending_sessions", "clusters", "index_backends", "last_refit_seconds", "pending_links")
    class UnitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class IndexBackendsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    INDEX_GENERATION_FIELD_NUMBER: _ClassVar[int]
    PENDING_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    INDEX_BACKENDS_FIELD_NUMBER: _ClassVar[int]
    LAST_REFIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PENDING_LINKS_FIELD_NUMBER: _ClassVar[int]
    messages: int
    sessions: int
    units: _containers.ScalarMap[str, int]
    edges: int
    generation: int
    index_generation: int
    pending_sessions: int
    clusters: int
    index_backends: _containers.ScalarMap[str, str]
    last_refit_seconds: float
    pending_links: int
    def __init__(self, messages: _Optional[int] = ..., sessions: _Optional[int] = ..., units: _Optional[_Mapping[str, int]] = ..., edges: _Optional[int] = ..., generation: _Optional[int] = ..., index_generation: _Optional[int] = ..., pending_sessions: _Optional[int] = ..., clusters: _Optional[int] = ..., index_backends: _Optional[_Mapping[str, str]] = ..., last_refit_seconds: _Optional[float] = ..., pending_links: _Optional[int] = ...) -> None: ...

class ReindexRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class ReindexResponse(_message.Message):
    __slots__ = ("units", "seconds")
    UNITS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    units: int
    seconds: float
    def __init__(self, units: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...
