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

from agentrt.v1 import agent_pb2, common_pb2
from core.errors import InvalidArgumentError

# ------------------------------------------------------------------------------------------------
# Store: ops


def op_to_proto(op: Op, default_index: list[str] | None) -> agent_pb2.StoreOp:
    """One LangGraph op as a ``StoreOp``. ``default_index`` resolves ``PutOp.index=None``."""
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
            limit=op.limit,
            offset=op.offset,
        )
        if op.query:
            search.query = op.query
        return agent_pb2.StoreOp(search=search)
    if isinstance(op, ListNamespacesOp):
        ln = agent_pb2.StoreListNamespaces(limit=op.limit, offset=op.offset)
        if op.max_depth is not None:
            ln.max_depth = op.max_depth
        for c in op.match_conditions or ():
            mt = agent_pb2.MATCH_TYPE_PREFIX if c.match_type == "prefix" else agent_pb2.MATCH_TYPE_SUFFIX
            ln.match_conditions.append(agent_pb2.StoreMatchCondition(match_type=mt, path=list(c.path)))
        return agent_pb2.StoreOp(list_namespaces=ln)
    raise TypeError(f"unknown store operation {type(op).__name__}")


def _json_object(text: str, field_name: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgumentError(field_name, f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(field_name, "must be a JSON object")
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
            tuple(s.path_prefix), filt, s.limit, s.offset, s.query if s.HasField("query") else None
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
            ln.limit,
            ln.offset,
        )
    raise InvalidArgumentError(at, "exactly one of get, put, search, list_namespaces must be set")


def ops_from_request(request: agent_pb2.StoreBatchRequest) -> list[Op]:
    """Every op of a StoreBatch request."""
    return [op_from_proto(op, f"ops[{i}]") for i, op in enumerate(request.ops)]


# ------------------------------------------------------------------------------------------------
# Store: results


def _ts(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt.astimezone(UTC))
    return ts


def _dt(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


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
        items = result if isinstance(result, list) else []
        return agent_pb2.StoreResult(search=agent_pb2.StoreSearchResult(items=[item_to_proto(i) for i in items]))
    namespaces = result if isinstance(result, list) else []
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
        created_at=_dt(msg.created_at),
        updated_at=_dt(msg.updated_at),
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


_ = common_pb2  # turn-event conversions below use common enums
