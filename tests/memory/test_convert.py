"""Proto <-> domain conversion of MemoryService: round trips of every converted message."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from agentrt.v1 import memory_pb2

from core.errors import InvalidArgumentError
from memory.engine import ConsolidationReport, DeleteResult, MemoryStats, WriteResult
from memory.model import Granularity, MemoryMessage, MemoryUnit, RoutingDiagnostics, SearchHit, SearchResult
from runtime.convert import memory as conv

T0 = datetime(2023, 5, 8, 13, 56, 7, 123000, tzinfo=UTC)


def test_message_round_trip_keeps_every_field() -> None:
    m = MemoryMessage("m1", "s1", "alice", "héllo 🐈", T0, {"k": "v"})
    assert conv.message_from_proto(conv.message_to_proto(m), "s1") == m
    no_time = MemoryMessage("m2", "s1", "", "x")
    wire = conv.message_to_proto(no_time)
    assert not wire.HasField("time")
    assert conv.message_from_proto(wire, "s1") == no_time


def test_write_request_and_response() -> None:
    req = memory_pb2.WriteRequest(
        namespace="ns",
        session_id="s9",
        messages=[conv.message_to_proto(MemoryMessage("a", "ignored", "bob", "hi", T0))],
    )
    session, messages = conv.write_from_proto(req)
    assert session == "s9" and messages[0].session_id == "s9" and messages[0].time == T0
    resp = conv.write_to_proto(WriteResult(["a", "b"], 1, 1))
    assert list(resp.message_ids) == ["a", "b"] and (resp.written, resp.unchanged) == (1, 1)


def test_search_request_and_response() -> None:
    req = memory_pb2.SearchRequest(
        namespace="ns", query="q", top_k=5, token_budget=200, session_ids=["s1"], granularities=["turn", "fact"]
    )
    req.time_start.FromDatetime(T0)
    query = conv.search_from_proto(req)
    assert query.time_start == T0 and query.time_end is None
    assert query.granularities == (Granularity.TURN, Granularity.FACT) and query.session_ids == ("s1",)
    with pytest.raises(InvalidArgumentError) as exc:
        conv.search_from_proto(memory_pb2.SearchRequest(query="q", granularities=["turn", "para"]))
    assert exc.value.violations[0].field == "granularities[1]"

    unit = MemoryUnit("u1", Granularity.EXCHANGE, "a b", ("m1", "m2"), "s1", T0, T0)
    result = SearchResult([SearchHit(unit, 0.5)], RoutingDiagnostics({"turn": 0.2}, {"turn": 0.8}))
    wire = conv.search_to_proto(result)
    hit = wire.hits[0]
    assert (hit.id, hit.granularity, hit.text, hit.score, list(hit.message_ids), hit.session_id) == (
        "u1",
        "exchange",
        "a b",
        0.5,
        ["m1", "m2"],
        "s1",
    )
    assert hit.time_start.ToDatetime(tzinfo=UTC) == T0
    assert dict(wire.routing.entropy) == {"turn": 0.2} and dict(wire.routing.weight) == {"turn": 0.8}


def test_admin_responses() -> None:
    assert conv.delete_to_proto(DeleteResult(2, 5, 1)).deleted_units == 5
    report = conv.consolidate_to_proto(ConsolidationReport(1, 2, 3, 4, 5, True, 0.25))
    assert (report.sessions_derived, report.clusters, report.edges, report.refit) == (1, 4, 5, True)
    stats = conv.stats_to_proto(MemoryStats(3, 1, {"turn": 3}, 2, 7, 7, 0, 2, {"turn": "flat"}, 0.1, 42))
    assert dict(stats.units) == {"turn": 3} and dict(stats.index_backends) == {"turn": "flat"}
    assert stats.pending_links == 42
    assert stats.generation == stats.index_generation == 7
