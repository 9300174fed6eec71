"""A LangGraph ``BaseStore`` backed by the sidecar: ``StateGraph.compile(store=SidecarStore(...))``.

Each ``batch``/``abatch`` call sends all its ops in ONE ``AgentService.StoreBatch`` RPC. A LangGraph
namespace tuple (``("users", "42", "prefs")``) lives inside one agentrt namespace (the ``namespace``
argument, scoped to the caller's tenant by the sidecar), so several apps or tenants never share items.
``search(query=...)`` is ranked by the sidecar's embedder (all-MiniLM-L6-v2 by default) over the item
fields named by ``index``; filters run in the sidecar too. By default the ranking and scores are those of
LangGraph's ``InMemoryStore`` (cosine similarity); ``index={"ranking": "hybrid"}`` ranks through the memory
retriever's dense + lexical fusion instead, so exact names, ids and codes in a query count.

    store = SidecarStore("127.0.0.1:50051", namespace="my-app", index={"fields": ["text"], "ranking": "hybrid"})
    store.put(("docs",), "a", {"text": "Python tutorial"})
    store.search(("docs",), query="programming in python")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from agentrt.v1 import agent_pb2, agent_pb2_grpc
from langgraph.store.base import BaseStore, ListNamespacesOp, Op, Result, SearchOp

from runtime.convert import agent as convert


def _answered_here(op: Op) -> bool:
    """A search or namespace listing with ``limit=0`` asks for nothing (``InMemoryStore`` answers ``[]``); on the
    wire 0 is proto3's "unset", which the sidecar reads as LangGraph's default page, so it is answered here."""
    return isinstance(op, SearchOp | ListNamespacesOp) and op.limit == 0


class SidecarStore(BaseStore):
    """LangGraph store whose items live in the agentrt sidecar's database."""

    supports_ttl = False

    def __init__(
        self,
        target: str | None = None,
        *,
        namespace: str,
        index: Mapping[str, Any] | bool | None = None,
        token: str | None = None,
        timeout: float | None = 30.0,
        channel: grpc.Channel | None = None,
        aio_channel: grpc.aio.Channel | None = None,
    ):
        """Connect to the sidecar at ``target`` ("host:port"), or use the given channels.

        ``index``: ``{"fields": ["text", "tags[*]"]}`` (JSON paths embedded for search), ``None`` for the
        whole value (``["$"]``), ``False`` to index nothing (``search(query=...)`` then keeps insertion
        order). ``dims``/``embed`` keys are accepted and ignored: the sidecar embeds. ``"ranking"``:
        ``"dense"`` (default: cosine, as ``InMemoryStore``) or ``"hybrid"`` (z(cosine) + z(BM25) over the
        matching items, the memory retriever's fusion; scores are then fused values, not cosines).
        """
        if target is None and channel is None and aio_channel is None:
            raise ValueError("SidecarStore needs a target 'host:port' or a channel")
        self.namespace = namespace
        ranking = index.get("ranking", "dense") if isinstance(index, Mapping) else "dense"
        if ranking not in ("dense", "hybrid"):
            raise ValueError(f"index ranking must be 'dense' or 'hybrid', not {ranking!r}")
        self.hybrid = ranking == "hybrid"
        if index is False:
            self.index_fields: list[str] | None = None
        elif index is None or index is True:
            self.index_fields = ["$"]
        else:
            self.index_fields = list(index.get("fields") or ["$"])
        self._target = target
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = channel
        self._aio_channel = aio_channel
        self._owned: list[Any] = []

    def _request(self, ops: Iterable[Op]) -> tuple[agent_pb2.StoreBatchRequest, list[Op]]:
        """The RPC for the ops the sidecar must answer (see ``_answered_here``), and all the ops in order."""
        ops = list(ops)
        protos = [convert.op_to_proto(op, self.index_fields, hybrid=self.hybrid)
                  for op in ops if not _answered_here(op)]
        return agent_pb2.StoreBatchRequest(namespace=self.namespace, ops=protos), ops

    @staticmethod
    def _results(response: agent_pb2.StoreBatchResponse | None, ops: list[Op]) -> list[Result]:
        sent = sum(not _answered_here(op) for op in ops)
        got = list(response.results) if response is not None else []
        if len(got) != sent:
            raise RuntimeError(f"sidecar answered {len(got)} results for {sent} store operations")
        answers = iter(convert.result_from_proto(r) for r in got)
        return [[] if _answered_here(op) else next(answers) for op in ops]

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Execute ``ops`` in one RPC (blocking)."""
        request, all_ops = self._request(ops)
        if not request.ops:
            return self._results(None, all_ops)
        if self._channel is None:
            assert self._target is not None
            self._channel = grpc.insecure_channel(self._target)
            self._owned.append(self._channel)
        stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        return self._results(stub.StoreBatch(request, timeout=self._timeout, metadata=self._metadata), all_ops)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Execute ``ops`` in one RPC (asyncio)."""
        request, all_ops = self._request(ops)
        if not request.ops:
            return self._results(None, all_ops)
        if self._aio_channel is None:
            assert self._target is not None
            self._aio_channel = grpc.aio.insecure_channel(self._target)
            self._owned.append(self._aio_channel)
        stub = agent_pb2_grpc.AgentServiceStub(self._aio_channel)
        response = await stub.StoreBatch(request, timeout=self._timeout, metadata=self._metadata)
        return self._results(response, all_ops)

    def close(self) -> None:
        """Close channels this store opened itself (the sync one; use ``aclose`` for the asyncio one)."""
        for ch in self._owned:
            if isinstance(ch, grpc.Channel):
                ch.close()
        self._owned = [ch for ch in self._owned if not isinstance(ch, grpc.Channel)]

    async def aclose(self) -> None:
        """Close every channel this store opened itself."""
        self.close()
        for ch in self._owned:
            await ch.close()
        self._owned = []


__all__: Sequence[str] = ("SidecarStore",)
