"""Proto <-> domain conversion for AgentService: LangGraph store ops and results, and turn events.

Both directions of the store live here because the store client (``runtime/store.py``) and the
servicer (``runtime/services/agent.py``) must agree byte for byte.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from agentrt.v1 import agent_pb2, common_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from langgraph.store.base import (
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from core.errors import InvalidArgumentError
from core.jsontext import decode_json_object
from runtime.convert.common import time_from_proto, timestamp

# ------------------------------------------------------------------------------------------------
# Store: ops

#: Most operations one StoreBatch call carries; ``SidecarStore`` sends a larger batch as several calls.
MAX_STORE_OPS = 1000
#: Room a reply needs around one item's value: its path and key (at most 1,000 characters each, up to 4 bytes per
#: character), two timestamps, a score and the framing of the messages, with a wide margin.
REPLY_OVERHEAD_BYTES = 16 * 1024
#: Counts on the wire are int32; a larger limit, offset or max_depth asks for "everything" all the same.
INT32_MAX = 2**31 - 1


def max_value_bytes(max_message_bytes: int) -> int:
    """The largest item value (UTF-8 JSON text) whose ``get`` reply still fits in ``max_message_bytes``: a larger
    one could be stored but never read back."""
    return max(max_message_bytes - REPLY_OVERHEAD_BYTES, 0)


def op_to_proto(op: Op, default_index: list[str] | None, *, hybrid: bool = False) -> agent_pb2.StoreOp:
    """One LangGraph op as a ``StoreOp``. ``default_index`` resolves ``PutOp.index=None``; ``hybrid`` asks a
    search to rank by dense + lexical fusion. Counts past int32 are sent as ``INT32_MAX`` (no store holds that many
    items, so the answer is the same); negative ones are the caller's to refuse."""
    if isinstance(op, GetOp):
        return agent_pb2.StoreOp(get=agent_pb2.StoreGet(path=list(op.namespace), key=op.key))
    if isinstance(op, PutOp):
        put = agent_pb2.StorePut(path=list(op.namespace), key=op.key)
        if op.value is not None:
            put.value_json = json.dumps(dict(op.value), ensure_ascii=False)
            fields = default_index if op.index is None else (op.index or [])
            put.index_fields.extend(fields or [])
        return agent_pb2.StoreOp(put=put)
    if isinstance(op, SearchOp):
        search = agent_pb2.StoreSearch(
            path_prefix=list(op.namespace_prefix),
            filter_json=json.dumps(dict(op.filter)) if op.filter else "",
            limit=min(op.limit, INT32_MAX),
            offset=min(op.offset, INT32_MAX),
        )
        if op.query:
            search.query = op.query
        if hybrid:
            search.ranking = agent_pb2.STORE_RANKING_HYBRID
        return agent_pb2.StoreOp(search=search)
    if isinstance(op, ListNamespacesOp):
        ln = agent_pb2.StoreListNamespaces(limit=min(op.limit, INT32_MAX), offset=min(op.offset, INT32_MAX))
        if op.max_depth is not None:
            ln.max_depth = min(op.max_depth, INT32_MAX)
        for c in op.match_conditions or ():
            mt = agent_pb2.MATCH_TYPE_PREFIX if c.match_type == "prefix" else agent_pb2.MATCH_TYPE_SUFFIX
            ln.match_conditions.append(agent_pb2.StoreMatchCondition(match_type=mt, path=list(c.path)))
        return agent_pb2.StoreOp(list_namespaces=ln)
    raise TypeError(f"unknown store operation {type(op).__name__}")


#: What a StoreBatch op's ``limit`` of 0 (proto3's unset) means: LangGraph's own defaults.
SEARCH_LIMIT = 10
LIST_NAMESPACES_LIMIT = 100


def _json_object(text: str, field_name: str) -> dict[str, Any]:
    value, bad = decode_json_object(text, field_name)
    if value is None:
        raise InvalidArgumentError(bad)
    return value


def op_from_proto(op: agent_pb2.StoreOp, at: str) -> Op:
    """A ``StoreOp`` as the LangGraph op it encodes; ``at`` is its field path (``ops[3]``)."""
    kind = op.WhichOneof("op")
    if kind == "get":
        return GetOp(tuple(op.get.path), op.get.key)
    if kind == "put":
        p = op.put
        value = _json_object(p.value_json, f"{at}.put.value_json") if p.HasField("value_json") else None
        return PutOp(tuple(p.path), p.key, value, list(p.index_fields) if p.index_fields else False)
    if kind == "search":
        s = op.search
        filt = _json_object(s.filter_json, f"{at}.search.filter_json") if s.filter_json else None
        return SearchOp(
            tuple(s.path_prefix), filt, s.limit or SEARCH_LIMIT, s.offset, s.query if s.HasField("query") else None
        )
    if kind == "list_namespaces":
        ln = op.list_namespaces
        conds = []
        for j, c in enumerate(ln.match_conditions):
            if c.match_type == agent_pb2.MATCH_TYPE_PREFIX:
                conds.append(MatchCondition("prefix", tuple(c.path)))
            elif c.match_type == agent_pb2.MATCH_TYPE_SUFFIX:
                conds.append(MatchCondition("suffix", tuple(c.path)))
            else:
                raise InvalidArgumentError(
                    f"{at}.list_namespaces.match_conditions[{j}].match_type", "must be PREFIX or SUFFIX"
                )
        return ListNamespacesOp(
            tuple(conds) or None,
            ln.max_depth if ln.HasField("max_depth") else None,
            ln.limit or LIST_NAMESPACES_LIMIT,
            ln.offset,
        )
    raise InvalidArgumentError(at, "exactly one of get, put, search, list_namespaces must be set")


def ops_from_request(request: agent_pb2.StoreBatchRequest) -> list[Op]:
    """Every op of a StoreBatch request."""
    return [op_from_proto(op, f"ops[{i}]") for i, op in enumerate(request.ops)]


_RANKINGS = (agent_pb2.STORE_RANKING_UNSPECIFIED, agent_pb2.STORE_RANKING_DENSE, agent_pb2.STORE_RANKING_HYBRID)


def hybrid_searches(request: agent_pb2.StoreBatchRequest) -> frozenset[int]:
    """Positions of the search ops that rank by dense + lexical fusion (``ItemStore.batch(hybrid=...)``)."""
    out = set()
    for i, op in enumerate(request.ops):
        if op.WhichOneof("op") != "search":
            continue
        ranking = op.search.ranking
        if ranking not in _RANKINGS:
            raise InvalidArgumentError(f"ops[{i}].search.ranking", f"unknown ranking {ranking}: DENSE or HYBRID")
        if ranking == agent_pb2.STORE_RANKING_HYBRID:
            out.add(i)
    return frozenset(out)


# ------------------------------------------------------------------------------------------------
# Store: results


def _ts(dt: datetime) -> Timestamp:
    return timestamp(dt)


def _dt(ts: Timestamp, field: str) -> datetime:
    value = time_from_proto(ts, True, field)
    assert value is not None
    return value


def item_to_proto(item: Item) -> agent_pb2.StoreItem:
    """A LangGraph ``Item``/``SearchItem`` as a ``StoreItem``."""
    msg = agent_pb2.StoreItem(
        path=list(item.namespace),
        key=item.key,
        value_json=json.dumps(item.value, ensure_ascii=False),
        created_at=_ts(item.created_at),
        updated_at=_ts(item.updated_at),
    )
    score = getattr(item, "score", None)
    if score is not None and math.isfinite(score):
        msg.score = float(score)
    return msg


def result_to_proto(op: Op, result: Result) -> agent_pb2.StoreResult:
    """One op's result as a ``StoreResult``."""
    if isinstance(op, GetOp):
        get = agent_pb2.StoreGetResult()
        if result is not None:
            assert isinstance(result, Item)
            get.item.CopyFrom(item_to_proto(result))
        return agent_pb2.StoreResult(get=get)
    if isinstance(op, PutOp):
        return agent_pb2.StoreResult(put=agent_pb2.StorePutResult())
    if isinstance(op, SearchOp):
        items = [i for i in result if isinstance(i, Item)] if isinstance(result, list) else []
        return agent_pb2.StoreResult(search=agent_pb2.StoreSearchResult(items=[item_to_proto(i) for i in items]))
    namespaces = [p for p in result if isinstance(p, tuple)] if isinstance(result, list) else []
    return agent_pb2.StoreResult(
        list_namespaces=agent_pb2.StoreListNamespacesResult(
            namespaces=[agent_pb2.StoreNamespacePath(path=list(p)) for p in namespaces]
        )
    )


def _item_from_proto(msg: agent_pb2.StoreItem, *, search: bool) -> Item:
    kwargs: dict[str, Any] = dict(
        namespace=tuple(msg.path),
        key=msg.key,
        value=json.loads(msg.value_json),
        created_at=_dt(msg.created_at, "created_at"),
        updated_at=_dt(msg.updated_at, "updated_at"),
    )
    if search:
        return SearchItem(**kwargs, score=msg.score if msg.HasField("score") else None)
    return Item(**kwargs)


def result_from_proto(msg: agent_pb2.StoreResult) -> Result:
    """A ``StoreResult`` as the value LangGraph's ``batch`` returns for its op."""
    kind = msg.WhichOneof("result")
    if kind == "get":
        return _item_from_proto(msg.get.item, search=False) if msg.get.HasField("item") else None
    if kind == "search":
        return [_item_from_proto(i, search=True) for i in msg.search.items]
    if kind == "list_namespaces":
        return [tuple(p.path) for p in msg.list_namespaces.namespaces]
    return None


def results_to_response(ops: Sequence[Op], results: Sequence[Result]) -> agent_pb2.StoreBatchResponse:
    """The StoreBatch reply."""
    return agent_pb2.StoreBatchResponse(
        results=[result_to_proto(op, r) for op, r in zip(ops, results, strict=True)]
    )


# ------------------------------------------------------------------------------------------------
# Turns

_DECISIONS = {
    "allow": common_pb2.DECISION_ALLOW,
    "block": common_pb2.DECISION_BLOCK,
    "review": common_pb2.DECISION_REVIEW,
}
_STAGES = {
    "input": common_pb2.STAGE_INPUT,
    "tool_call": common_pb2.STAGE_TOOL_CALL,
    "tool_result": common_pb2.STAGE_TOOL_RESULT,
    "output": common_pb2.STAGE_OUTPUT,
}
_GATES = {"retrieve": common_pb2.GATE_RETRIEVE, "call_tool": common_pb2.GATE_CALL_TOOL,
          "escalate": common_pb2.GATE_ESCALATE}
_INTERRUPTS = {"review": agent_pb2.INTERRUPT_KIND_REVIEW, "tool_approval": agent_pb2.INTERRUPT_KIND_TOOL_APPROVAL}
_TURN_STATUS = {
    "completed": agent_pb2.TURN_STATUS_COMPLETED,
    "interrupted": agent_pb2.TURN_STATUS_INTERRUPTED,
    "blocked": agent_pb2.TURN_STATUS_BLOCKED,
}


def decision_from_proto(value: int, field_name: str = "decision") -> str:
    """A Resume decision: ``DECISION_ALLOW`` -> "allow", ``DECISION_BLOCK`` -> "block"."""
    if value == common_pb2.DECISION_ALLOW:
        return "allow"
    if value == common_pb2.DECISION_BLOCK:
        return "block"
    raise InvalidArgumentError(field_name, "must be DECISION_ALLOW or DECISION_BLOCK")


def policy_overrides(policy: agent_pb2.TurnPolicy) -> dict[str, Any]:
    """The request's TurnPolicy as overrides of the namespace policy (unset fields are left out)."""
    out: dict[str, Any] = {}
    for name in ("llm_base_url", "model", "system_prompt", "num_candidates", "max_tool_rounds", "retrieve_top_k",
                 "token_budget", "top_logprobs", "max_tokens", "llm_timeout_s"):
        value = getattr(policy, name)
        if value:
            out[name] = value
    for name in ("temperature", "write_memory", "force_retrieval", "speculative_retrieval", "parallel_input_guard"):
        if policy.HasField(name):
            out[name] = getattr(policy, name)
    if policy.tools:
        out["tools"] = list(policy.tools)
    if policy.approval_tools:
        out["approval_tools"] = list(policy.approval_tools)
    if policy.candidates:
        cands = []
        for c in policy.candidates:
            spec: dict[str, Any] = {k: v for k, v in (("agent_id", c.agent_id), ("model", c.model),
                                                      ("system_prompt", c.system_prompt)) if v}
            if c.HasField("temperature"):
                spec["temperature"] = c.temperature
            cands.append(spec)
        out["candidates"] = cands
    return out


def interrupt_to_proto(value: dict[str, Any]) -> agent_pb2.InterruptEvent:
    """An interrupt payload (graph.py) as an InterruptEvent."""
    msg = agent_pb2.InterruptEvent(
        kind=_INTERRUPTS.get(value.get("kind", ""), agent_pb2.INTERRUPT_KIND_UNSPECIFIED),
        stage=_STAGES.get(value.get("stage", ""), common_pb2.STAGE_UNSPECIFIED),
        text=value.get("text", ""),
        verdict_id=value.get("verdict_id", ""),
        reason=value.get("reason", ""),
        interrupt_id=value.get("interrupt_id", ""),
    )
    if tc := value.get("tool_call"):
        msg.tool_call.CopyFrom(common_pb2.ToolCall(name=tc["name"], arguments_json=tc["arguments_json"]))
    return msg


def event_to_proto(event: dict[str, Any], thread_id: str, seq: int) -> agent_pb2.TurnEvent:
    """One event dict from the turn graph as a TurnEvent."""
    msg = agent_pb2.TurnEvent(thread_id=thread_id, seq=seq)
    kind = event["type"]
    if kind == "stage":
        status = agent_pb2.STAGE_STATUS_STARTED if event["status"] == "started" else agent_pb2.STAGE_STATUS_FINISHED
        msg.stage.CopyFrom(agent_pb2.StageEvent(name=event["name"], status=status,
                                                elapsed_ms=event.get("elapsed_ms", 0.0)))
    elif kind == "guard":
        msg.guard.CopyFrom(agent_pb2.GuardEvent(
            stage=_STAGES.get(event["stage"], common_pb2.STAGE_UNSPECIFIED),
            verdict_id=event.get("verdict_id", ""),
            decision=_DECISIONS.get(event["decision"], common_pb2.DECISION_UNSPECIFIED),
            harm_score=event.get("harm_score", 0.0), entropy=event.get("entropy", 0.0), reason=event.get("reason", ""),
        ))
    elif kind == "gate":
        msg.gate.CopyFrom(agent_pb2.GateEvent(
            gate=_GATES.get(event["gate"], common_pb2.GATE_UNSPECIFIED), fire=event["fire"],
            score=_finite(event.get("score", 0.0)), threshold=_finite(event.get("threshold", 0.0)),
            signals={k: _finite(v) for k, v in event.get("signals", {}).items()},
            fallback_reason=event.get("fallback_reason", ""),
        ))
    elif kind == "retrieval":
        msg.retrieval.CopyFrom(agent_pb2.RetrievalEvent(
            query=event["query"],
            hits=[agent_pb2.RetrievedMemory(id=h["id"], text=h["text"], score=h["score"],
                                            granularity=h.get("granularity", "")) for h in event["hits"]],
            routing={k: _finite(v) for k, v in event.get("routing", {}).items()},
        ))
    elif kind == "tool_call":
        msg.tool_call.CopyFrom(agent_pb2.ToolCallEvent(
            call_id=event["call_id"],
            tool_call=common_pb2.ToolCall(name=event["name"], arguments_json=event["arguments_json"]),
        ))
    elif kind == "tool_result":
        msg.tool_result.CopyFrom(agent_pb2.ToolResultEvent(
            call_id=event["call_id"], name=event["name"], result_json=event.get("result_json", ""),
            error=event.get("error", ""),
        ))
    elif kind == "candidate":
        msg.candidate.CopyFrom(agent_pb2.CandidateEvent(
            index=event["index"], agent_id=event["agent_id"], answer=event["answer"],
            mean_logprob=event["mean_logprob"], num_tokens=event["num_tokens"], error=event.get("error", ""),
        ))
    elif kind == "selection":
        msg.selection.CopyFrom(agent_pb2.SelectionEvent(
            index=event["index"], answer=event["answer"], confidence=_finite(event["confidence"]),
            method=event["method"],
        ))
    elif kind == "interrupt":
        msg.interrupt.CopyFrom(interrupt_to_proto(event))
    elif kind == "memory_write":
        msg.memory_write.CopyFrom(agent_pb2.MemoryWriteEvent(message_ids=event["message_ids"]))
    elif kind == "result":
        result = agent_pb2.TurnResult(
            status=_TURN_STATUS.get(event["status"], agent_pb2.TURN_STATUS_UNSPECIFIED), answer=event.get("answer", ""),
            turn_id=event.get("turn_id", ""), replayed=bool(event.get("replayed", False)),
        )
        if event.get("interrupt"):
            result.interrupt.CopyFrom(interrupt_to_proto(event["interrupt"]))
        msg.result.CopyFrom(result)
    else:
        raise ValueError(f"unknown turn event type {kind!r}")
    return msg


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 0.0


def thread_to_proto(view: Any) -> agent_pb2.Thread:
    """A ``runner.ThreadView`` as a Thread."""
    msg = agent_pb2.Thread(
        thread_id=view.thread_id,
        status=agent_pb2.THREAD_STATUS_INTERRUPTED if view.interrupted else agent_pb2.THREAD_STATUS_IDLE,
        turns=view.turns,
    )
    for m in view.messages:
        msg.messages.append(agent_pb2.ThreadMessage(role=m.get("role", ""), text=m.get("content") or ""))
    if view.pending_interrupt:
        msg.pending_interrupt.CopyFrom(interrupt_to_proto(view.pending_interrupt))
    for h in view.history:
        cp = agent_pb2.Checkpoint(checkpoint_id=h["checkpoint_id"], step=h["step"], next=h["next"])
        if h.get("created_at"):
            cp.created_at.FromDatetime(datetime.fromisoformat(h["created_at"]).astimezone(UTC))
        msg.history.append(cp)
    return msg
