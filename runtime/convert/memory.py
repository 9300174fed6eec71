"""Proto <-> domain conversion for MemoryService: the only memory code that touches generated classes."""

from __future__ import annotations

from collections.abc import Sequence

from agentrt.v1 import memory_pb2

from core.errors import FieldViolation, InvalidArgumentError
from memory.engine import ConsolidationReport, DeleteResult, MemoryStats, WriteResult
from memory.model import Granularity, MemoryMessage, SearchQuery, SearchResult
from runtime.convert.common import time_from_proto, time_to_proto


def message_from_proto(m: memory_pb2.Message, session_id: str, field: str = "message") -> MemoryMessage:
    """A domain message of ``session_id`` (``Message.session_id`` is output only)."""
    return MemoryMessage(
        id=m.id,
        session_id=session_id,
        speaker=m.speaker,
        text=m.text,
        time=time_from_proto(m.time, m.HasField("time"), f"{field}.time"),
        metadata=dict(m.metadata),
    )


def message_to_proto(m: MemoryMessage) -> memory_pb2.Message:
    """The wire form of a stored message (with its session)."""
    out = memory_pb2.Message(id=m.id, speaker=m.speaker, text=m.text, metadata=m.metadata, session_id=m.session_id)
    time_to_proto(m.time, out.time)
    return out


def write_from_proto(request: memory_pb2.WriteRequest) -> tuple[str, list[MemoryMessage]]:
    """(session_id, messages) of a WriteRequest."""
    return request.session_id, [
        message_from_proto(m, request.session_id, f"messages[{i}]") for i, m in enumerate(request.messages)
    ]


def write_to_proto(result: WriteResult) -> memory_pb2.WriteResponse:
    """WriteResponse from the engine's result."""
    return memory_pb2.WriteResponse(message_ids=result.message_ids, written=result.written, unchanged=result.unchanged)


def search_from_proto(request: memory_pb2.SearchRequest) -> SearchQuery:
    """The domain query; unknown granularity names are rejected naming the field."""
    granularities: list[Granularity] = []
    violations: list[FieldViolation] = []
    for i, name in enumerate(request.granularities):
        try:
            granularities.append(Granularity(name))
        except ValueError:
            choices = ", ".join(g.value for g in Granularity)
            violations.append(FieldViolation(f"granularities[{i}]", f"unknown granularity {name!r}; one of {choices}"))
    if violations:
        raise InvalidArgumentError(violations)
    return SearchQuery(
        query=request.query,
        top_k=request.top_k,
        token_budget=request.token_budget,
        time_start=time_from_proto(request.time_start, request.HasField("time_start"), "time_start"),
        time_end=time_from_proto(request.time_end, request.HasField("time_end"), "time_end"),
        session_ids=tuple(request.session_ids),
        granularities=tuple(granularities),
    )


def search_to_proto(result: SearchResult) -> memory_pb2.SearchResponse:
    """SearchResponse with hits in rank order and the routing diagnostics."""
    out = memory_pb2.SearchResponse(
        routing=memory_pb2.RoutingDiagnostics(entropy=result.routing.entropy, weight=result.routing.weight)
    )
    for hit in result.hits:
        unit = hit.unit
        h = out.hits.add(
            id=unit.id,
            granularity=unit.granularity.value,
            text=unit.text,
            score=float(hit.score),
            message_ids=list(unit.message_ids),
            session_id=unit.session_id,
        )
        time_to_proto(unit.time_start, h.time_start)
        time_to_proto(unit.time_end, h.time_end)
    return out


def messages_to_proto(messages: Sequence[MemoryMessage]) -> list[memory_pb2.Message]:
    """Wire forms of several messages."""
    return [message_to_proto(m) for m in messages]


def delete_to_proto(result: DeleteResult) -> memory_pb2.DeleteResponse:
    """DeleteResponse from the engine's result."""
    return memory_pb2.DeleteResponse(
        deleted_messages=result.messages,
        deleted_units=result.units,
        sessions_rederived=result.sessions_rederived,
    )


def consolidate_to_proto(report: ConsolidationReport) -> memory_pb2.ConsolidateResponse:
    """ConsolidateResponse from the engine's report."""
    return memory_pb2.ConsolidateResponse(
        sessions_derived=report.sessions_derived,
        units_added=report.units_added,
        units_removed=report.units_removed,
        clusters=report.clusters,
        edges=report.edges,
        refit=report.refit,
        seconds=report.seconds,
        messages_forgotten=report.messages_forgotten,
        units_reweighted=report.units_reweighted,
    )


def stats_to_proto(stats: MemoryStats) -> memory_pb2.StatsResponse:
    """StatsResponse from the engine's stats."""
    return memory_pb2.StatsResponse(
        messages=stats.messages,
        sessions=stats.sessions,
        units=stats.units,
        edges=stats.edges,
        generation=stats.generation,
        index_generation=stats.index_generation,
        pending_sessions=stats.pending_sessions,
        clusters=stats.clusters,
        index_backends=stats.index_backends,
        last_refit_seconds=stats.last_refit_seconds,
        pending_links=stats.pending_links,
    )
