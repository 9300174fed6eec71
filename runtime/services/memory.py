"""gRPC servicer for MemoryService: validate, convert, call ``rt.memory`` off the event loop, convert back."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from agentrt.v1 import memory_pb2, memory_pb2_grpc

from core.errors import FieldViolation, InvalidArgumentError
from memory.consolidation import ConsolidationPolicy
from memory.engine import MemoryEngine, checked_derive_duty
from memory.index import IndexSnapshots
from memory.retrieval import RetrievalPolicy
from memory.store import SqlMemoryStore
from memory.units import UnitPolicy
from runtime import metrics
from runtime.container import Runtime
from runtime.convert import memory as conv

MAX_MESSAGES_PER_WRITE = 1000
MAX_IDS_PER_CALL = 1000


def build(rt: Runtime) -> None:
    """Attach the MemoryEngine (``rt.memory``) and rebuild every namespace's indexes from the database.

    Runs before health turns SERVING, so a restarted server answers Search from complete indexes
    (and re-derives sessions a crash left pending, in the background).
    """

    def publish(conn: Any, scope: str, payload: dict[str, Any]) -> None:
        rt.changes.publish(conn, "memory", scope, payload)

    # Process-wide knobs of the background worker come from the default memory policy
    # (``policies.defaults.memory.settle_s``: debounce of session re-derivation, 0 = derive at once;
    # ``derive_duty``: the most of a core that re-deriving any one session may take, see MemoryEngine).
    defaults = rt.settings.policies.defaults.get("memory", {})
    try:
        derive_duty = checked_derive_duty(defaults.get("derive_duty", 0.25))
    except ValueError as exc:
        raise InvalidArgumentError("policies.defaults.memory.derive_duty", str(exc)) from exc
    _check_memory_policies(rt)
    storage = rt.settings.storage
    engine = MemoryEngine(
        SqlMemoryStore(rt.db.engine, publisher=publish),
        rt.embedder,
        policy=lambda scope: rt.policy("memory", scope),
        settle_s=float(defaults.get("settle_s", 0.0)),
        max_delay_s=float(defaults.get("max_delay_s", 5.0)),
        derive_duty=derive_duty,
        leases=rt.leases,
        snapshots=IndexSnapshots(Path(storage.data_dir) / "index") if storage.index_snapshots else None,
        snapshot_interval_s=storage.index_snapshot_interval_s,
    )
    engine.load()
    rt.memory = engine
    rt.replica_handlers["memory"] = engine.apply_remote_change
    metrics.register_size_reporter(engine.sizes)


def _check_memory_policies(rt: Runtime) -> None:
    """Refuse to start on a configured memory policy whose unit, retrieval or consolidation settings derivation,
    search and background consolidation could not use, naming every bad setting (they would otherwise fail
    each background pass or Search)."""
    configured = rt.settings.policies.configured("memory")
    violations: list[FieldViolation] = []
    for where, policy in configured:
        if policy is None:
            continue
        if not isinstance(policy, Mapping):
            violations.append(FieldViolation(where, "must be a mapping"))
            continue
        units_at = f"{where}.units" if "units" in policy else where
        violations += [
            FieldViolation(f"{units_at}.{name}" if name else units_at, why) for name, why in UnitPolicy.problems(policy)
        ]
        try:
            RetrievalPolicy.from_mapping(policy)
        except (TypeError, ValueError) as exc:
            violations.append(FieldViolation(f"{where}.retrieval" if "retrieval" in policy else where, str(exc)))
        violations += [
            FieldViolation(f"{where}.consolidation.{name}" if name else f"{where}.consolidation", why)
            for name, why in ConsolidationPolicy.problems(policy)
        ]
    if violations:
        raise InvalidArgumentError(violations)


async def stop(rt: Runtime) -> None:
    """Stop background consolidation (unfinished work stays marked pending in the database) and snapshot
    the vector indexes."""
    if rt.memory is not None:
        metrics.unregister_size_reporter(rt.memory.sizes)
        await rt.offload(rt.memory.close)


class MemoryServiceServicer(memory_pb2_grpc.MemoryServiceServicer):
    """Thin servicer: validate, convert, call the component, convert back."""

    def __init__(self, rt: Runtime):
        self._rt = rt

    @property
    def _memory(self) -> MemoryEngine:
        return self._rt.memory  # type: ignore[no-any-return]

    async def Write(self, request: memory_pb2.WriteRequest, context: Any) -> memory_pb2.WriteResponse:
        if len(request.messages) > MAX_MESSAGES_PER_WRITE:
            raise InvalidArgumentError(
                "messages",
                f"at most {MAX_MESSAGES_PER_WRITE} messages per Write, got {len(request.messages)}",
            )
        session_id, messages = conv.write_from_proto(request)
        scope = await self._rt.scope(request.namespace, write=True)
        result = await self._rt.offload(self._memory.write, scope, session_id, messages)
        return conv.write_to_proto(result)

    async def Search(self, request: memory_pb2.SearchRequest, context: Any) -> memory_pb2.SearchResponse:
        query = conv.search_from_proto(request)
        scope = await self._rt.scope(request.namespace)

        def run() -> memory_pb2.SearchResponse:
            return conv.search_to_proto(self._memory.search(scope, query))

        return await self._rt.offload(run)

    async def Get(self, request: memory_pb2.GetRequest, context: Any) -> memory_pb2.GetResponse:
        if not request.message_ids:
            raise InvalidArgumentError("message_ids", "at least one id is required")
        if len(request.message_ids) > MAX_IDS_PER_CALL:
            raise InvalidArgumentError("message_ids", f"at most {MAX_IDS_PER_CALL} ids per call")
        scope = await self._rt.scope(request.namespace)
        messages = await self._rt.offload(self._memory.get, scope, list(request.message_ids))
        return memory_pb2.GetResponse(messages=conv.messages_to_proto(messages))

    async def List(self, request: memory_pb2.ListRequest, context: Any) -> memory_pb2.ListResponse:
        scope = await self._rt.scope(request.namespace)

        def run() -> memory_pb2.ListResponse:
            messages, token = self._memory.list_messages(
                scope,
                session_id=request.session_id or None,
                page_size=request.page_size or 100,
                page_token=request.page_token,
            )
            sessions = [] if request.page_token or request.session_id else self._memory.sessions(scope)
            return memory_pb2.ListResponse(
                messages=conv.messages_to_proto(messages), next_page_token=token, session_ids=sessions
            )

        return await self._rt.offload(run)

    async def Update(self, request: memory_pb2.UpdateRequest, context: Any) -> memory_pb2.UpdateResponse:
        if not request.HasField("message") or not request.message.id:
            raise InvalidArgumentError("message.id", "is required")
        scope = await self._rt.scope(request.namespace, write=True)
        message = conv.message_from_proto(request.message, "")
        result = await self._rt.offload(self._memory.update, scope, message)
        return memory_pb2.UpdateResponse(changed=result.written > 0)

    async def Delete(self, request: memory_pb2.DeleteRequest, context: Any) -> memory_pb2.DeleteResponse:
        if not (request.message_ids or request.session_id or request.all):
            raise InvalidArgumentError("message_ids", "give message_ids, session_id or all")
        scope = await self._rt.scope(request.namespace, write=True)
        result = await self._rt.offload(
            self._memory.delete,
            scope,
            message_ids=list(request.message_ids),
            session_id=request.session_id,
            everything=request.all,
        )
        return conv.delete_to_proto(result)

    async def Consolidate(self, request: memory_pb2.ConsolidateRequest, context: Any) -> memory_pb2.ConsolidateResponse:
        scope = await self._rt.scope(request.namespace, write=True)
        report = await self._rt.offload(self._memory.consolidate, scope, refit=not request.skip_refit)
        return conv.consolidate_to_proto(report)

    async def Stats(self, request: memory_pb2.StatsRequest, context: Any) -> memory_pb2.StatsResponse:
        scope = await self._rt.scope(request.namespace)
        return conv.stats_to_proto(await self._rt.offload(self._memory.stats, scope))

    async def Reindex(self, request: memory_pb2.ReindexRequest, context: Any) -> memory_pb2.ReindexResponse:
        scope = await self._rt.scope(request.namespace, write=True)
        started = time.perf_counter()
        units = await self._rt.offload(self._memory.rebuild, scope)
        return memory_pb2.ReindexResponse(units=units, seconds=time.perf_counter() - started)


def register(server: grpc.aio.Server, rt: Runtime) -> None:
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(MemoryServiceServicer(rt), server)
