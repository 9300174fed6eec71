"""Round trips of every store op and result through the proto boundary, and every turn event kind."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from agentrt.v1 import agent_pb2, common_pb2
from langgraph.store.base import GetOp, Item, ListNamespacesOp, MatchCondition, PutOp, SearchItem, SearchOp

from core.errors import InvalidArgumentError
from runtime.convert import agent as conv

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


@pytest.mark.parametrize("op", [
    GetOp(("a", "b"), "k"),
    PutOp(("a",), "k", {"x": 1, "y": [1.5, "s"], "z": {"n": None}}, ["x", "y[*]"]),
    PutOp(("a",), "k", {"x": 1}, False),
    PutOp(("a",), "k", None, False),
    SearchOp(("a",), {"x": {"$gt": 1}}, 5, 2, "query"),
    SearchOp((), None, 10, 0, None),
    ListNamespacesOp((MatchCondition("prefix", ("a", "*")), MatchCondition("suffix", ("v1",))), 2, 7, 1),
    ListNamespacesOp(None, None, 100, 0),
])
def test_ops_round_trip(op) -> None:
    msg = conv.op_to_proto(op, default_index=None)
    back = conv.op_from_proto(agent_pb2.StoreOp.FromString(msg.SerializeToString()), "ops[0]")
    if isinstance(op, PutOp) and op.value is None:
        assert back == PutOp(op.namespace, op.key, None, False)
    else:
        assert back == op


def test_put_index_none_takes_the_store_default() -> None:
    msg = conv.op_to_proto(PutOp(("a",), "k", {"t": "x"}, None), default_index=["t"])
    assert list(msg.put.index_fields) == ["t"]


@pytest.mark.parametrize(("op", "result"), [
    (GetOp(("a",), "k"), Item(value={"v": 1}, key="k", namespace=("a",), created_at=NOW, updated_at=NOW)),
    (GetOp(("a",), "k"), None),
    (PutOp(("a",), "k", {}), None),
    (SearchOp(("a",)), [SearchItem(("a",), "k", {"v": 2}, NOW, NOW, 0.25),
                        SearchItem(("a",), "j", {"v": 3}, NOW, NOW, None)]),
    (ListNamespacesOp(), [("a",), ("a", "b")]),
])
def test_results_round_trip(op, result) -> None:
    msg = conv.result_to_proto(op, result)
    back = conv.result_from_proto(agent_pb2.StoreResult.FromString(msg.SerializeToString()))
    assert back == result
    if isinstance(result, list) and result and isinstance(result[0], SearchItem):
        assert [r.score for r in back] == [0.25, None]
        assert back[0].created_at == NOW


def test_malformed_ops_name_the_field() -> None:
    with pytest.raises(InvalidArgumentError) as err:
        conv.op_from_proto(agent_pb2.StoreOp(), "ops[4]")
    assert err.value.violations[0].field == "ops[4]"
    bad = agent_pb2.StoreOp(search=agent_pb2.StoreSearch(filter_json="{not json"))
    with pytest.raises(InvalidArgumentError) as err:
        conv.op_from_proto(bad, "ops[1]")
    assert err.value.violations[0].field == "ops[1].search.filter_json"


EVENTS = [
    {"type": "stage", "name": "agent", "status": "finished", "elapsed_ms": 1.5},
    {"type": "guard", "stage": "tool_call", "decision": "review", "verdict_id": "v", "harm_score": 0.5,
     "entropy": 0.2, "reason": "r"},
    {"type": "gate", "gate": "retrieve", "fire": True, "score": 0.7, "threshold": 0.5, "signals": {"s": 0.7},
     "fallback_reason": ""},
    {"type": "retrieval", "query": "q", "hits": [{"id": "m", "text": "t", "score": 0.9, "granularity": "turn"}],
     "routing": {"weight.turn": 1.0}},
    {"type": "tool_call", "call_id": "c", "name": "echo", "arguments_json": "{}"},
    {"type": "tool_result", "call_id": "c", "name": "echo", "result_json": "{}", "error": ""},
    {"type": "candidate", "index": 1, "agent_id": "a", "answer": "x", "mean_logprob": -0.1, "num_tokens": 3},
    {"type": "selection", "index": 1, "answer": "x", "confidence": 0.9, "method": "agreement"},
    {"type": "interrupt", "kind": "tool_approval", "stage": "tool_call", "text": "t",
     "tool_call": {"name": "echo", "arguments_json": "{}"}, "verdict_id": "v", "reason": "r"},
    {"type": "memory_write", "message_ids": ["a", "b"]},
    {"type": "result", "status": "interrupted", "answer": "",
     "interrupt": {"kind": "review", "stage": "output", "text": "t", "verdict_id": "v", "reason": "r"}},
]


@pytest.mark.parametrize("event", EVENTS, ids=[e["type"] for e in EVENTS])
def test_every_event_kind_converts(event) -> None:
    msg = conv.event_to_proto(event, "th", 3)
    assert msg.WhichOneof("event") == ("result" if event["type"] == "result" else event["type"])
    assert msg.thread_id == "th" and msg.seq == 3
    if event["type"] == "guard":
        assert msg.guard.decision == common_pb2.DECISION_REVIEW and msg.guard.stage == common_pb2.STAGE_TOOL_CALL
    if event["type"] == "result":
        assert msg.result.status == agent_pb2.TURN_STATUS_INTERRUPTED
        assert msg.result.interrupt.stage == common_pb2.STAGE_OUTPUT


def test_resume_decisions() -> None:
    assert conv.decision_from_proto(common_pb2.DECISION_ALLOW) == "allow"
    assert conv.decision_from_proto(common_pb2.DECISION_BLOCK) == "block"
    with pytest.raises(InvalidArgumentError):
        conv.decision_from_proto(common_pb2.DECISION_REVIEW)


def test_turn_policy_overrides_keep_only_what_the_request_set() -> None:
    assert conv.policy_overrides(agent_pb2.TurnPolicy()) == {}
    request = agent_pb2.TurnPolicy(model="m", speculative_retrieval=False, force_retrieval=True, tools=["echo"])
    assert conv.policy_overrides(request) == {
        "model": "m", "speculative_retrieval": False, "force_retrieval": True, "tools": ["echo"]}
