"""A LangGraph ``BaseStore`` backed by the sidecar: ``StateGraph.compile(store=SidecarStore(...))``.

A ``batch``/``abatch`` call sends its ops in one ``AgentService.StoreBatch`` RPC (a batch of more than 1,000
ops, the sidecar's cap per call, in several: see ``SidecarStore.batch``). A LangGraph namespace tuple (``("users",
"42", "prefs")``) lives inside one agentrt namespace (the ``namespace`` argument, scoped to the caller's tenant
by the sidecar), so several apps or tenants never share items. ``search(query=...)`` is ranked by the sidecar's
embedder (all-MiniLM-L6-v2 by default) over the item fields named by ``index``; filters run in the sidecar too.
By default the ranking and scores are those of LangGraph's ``InMemoryStore`` (cosine similarity);
``index={"ranking": "hybrid"}`` ranks through the memory retriever's dense + lexical fusion instead, so exact
names, ids and codes in a query count.

    store = SidecarStore("127.0.0.1:50051", namespace="my-app", index={"fields": ["text"], "ranking": "hybrid"})
    store.put(("docs",), "a", {"text": "Python tutorial"})
    store.search(("docs",), query="programming in python")

The asyncio API works from any event loop (each loop gets its own channel, as a ``grpc.aio`` channel belongs to
the loop it was made in), and the calls made at once in one loop (a LangGraph fan-out of 150 branches, an
``asyncio.gather``) are sent together: in as few StoreBatch calls as keeps every op seeing the ops issued
before it, and at most ``max_in_flight`` of them at a time. A call the sidecar sheds (RESOURCE_EXHAUSTED at its
concurrency cap, UNAVAILABLE while it starts or its database is away, ABORTED on a write conflict) is retried
with backoff; that is safe because a StoreBatch applies all its writes or none, and applying them twice leaves
the same items. Errors that retrying cannot fix are raised as builtins LangGraph's ``RetryPolicy`` does not
retry (``StoreInvalidArgumentError`` is a ``ValueError``, ``StorePermissionError`` a ``PermissionError``), and
are still ``grpc.RpcError`` with ``code()`` and ``details()``.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from agentrt.v1 import agent_pb2, agent_pb2_grpc
from langgraph.store.base import (
    BaseStore,
    InvalidNamespaceError,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchOp,
)

from runtime.client import _channel_options, error_details
from runtime.convert import agent as convert

#: Room a request needs beyond its ops (the agentrt namespace and the framing).
_REQUEST_SLACK_BYTES = 4 * 1024
#: First retry delay; it doubles per attempt (with jitter) up to ``_BACKOFF_MAX_S``.
_BACKOFF_S = 0.05
_BACKOFF_MAX_S = 2.0

_ItemKey = tuple[tuple[str, ...], str]


# ------------------------------------------------------------------------------------------------
# Errors


class SidecarStoreError(grpc.RpcError):
    """A store call refused for good, by the sidecar or by this client before sending: retrying cannot help.

    Still a ``grpc.RpcError`` with the call's ``code()`` and ``details()``, so code written against the raw
    gRPC errors keeps working. ``field_violations``: (field, why) of each bad op field, e.g. ``("ops[1].put.key",
    "...")``, numbered as the ops of the caller's batch.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        field_violations: Sequence[tuple[str, str]] = (),
        trailing_metadata: tuple[tuple[str, Any], ...] = (),
    ):
        super().__init__(details)
        self._code = code
        self._details = details
        self._trailing = trailing_metadata
        self.field_violations = list(field_violations)

    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return self._code

    def details(self) -> str:
        """The status message."""
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        """The call's trailers (``grpc_status.rpc_status.from_call`` reads the status details there); empty for an
        error raised before sending, or whose field numbers were translated to the caller's batch."""
        return self._trailing

    def __str__(self) -> str:
        return self._details


class StoreInvalidArgumentError(SidecarStoreError, ValueError):
    """INVALID_ARGUMENT: an op the store refuses (a key too long, a negative limit, a value too large...)."""


class StoreInvalidNamespaceError(StoreInvalidArgumentError, InvalidNamespaceError):
    """INVALID_ARGUMENT on a namespace path (a label with a period, a path too long...): LangGraph's error for it."""


class StorePermissionError(SidecarStoreError, PermissionError):
    """PERMISSION_DENIED (a read-only token writing, a namespace of another tenant) or UNAUTHENTICATED."""


_NAMESPACE_FIELD = re.compile(r"\.(path|path_prefix)(\[\d+\])?$")
_OP_INDEX = re.compile(r"\bops\[(\d+)\]")


def _code(err: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(err, "code", None)
    return code() if callable(code) else None


def _details(err: grpc.RpcError) -> str:
    details = getattr(err, "details", None)
    return (details() if callable(details) else None) or ""


def _transient(err: grpc.RpcError) -> bool:
    """Shed before its handler ran, or failed with nothing written: the same call may succeed later. A message over
    the size limit is RESOURCE_EXHAUSTED too, but it would fail again."""
    code = _code(err)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED):
        return True
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" not in _details(err)


def _about_the_ops(err: grpc.RpcError) -> bool:
    """Whether a call that carried several callers' ops may have failed because of one caller's ops (or of their
    replies' size together), so that each caller's ops alone could fare differently."""
    code = _code(err)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAUTHENTICATED):
        return False
    return not _transient(err)


def _invalid(field_name: str, description: str) -> StoreInvalidArgumentError:
    cls = StoreInvalidNamespaceError if _NAMESPACE_FIELD.search(field_name) else StoreInvalidArgumentError
    return cls(grpc.StatusCode.INVALID_ARGUMENT, f"{field_name}: {description}", [(field_name, description)])


def _store_error(err: grpc.RpcError, positions: Sequence[int]) -> grpc.RpcError:
    """The error to raise for a failed call whose op ``j`` is op ``positions[j]`` of the caller's batch."""
    code = _code(err)
    if code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.UNAUTHENTICATED):
        # Transient or unknown: left as gRPC raised it, which LangGraph's RetryPolicy retries.
        return err
    assert code is not None
    details = _details(err)
    try:
        violations = error_details(err).field_violations
    except (ValueError, TypeError, AttributeError):  # no or inconsistent status details
        violations = []
    metadata = getattr(err, "trailing_metadata", None)
    trailing = tuple(metadata() or ()) if callable(metadata) else ()
    if list(positions) != list(range(len(positions))):
        # The sidecar numbered the ops of one call; the caller knows the ops of its batch.
        def renumber(text: str) -> str:
            return _OP_INDEX.sub(
                lambda m: f"ops[{positions[int(m[1])]}]" if int(m[1]) < len(positions) else m[0], text
            )

        details = renumber(details)
        violations = [(renumber(f), why) for f, why in violations]
        trailing = ()  # its status details name the call's numbers
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        namespace = any(_NAMESPACE_FIELD.search(f) for f, _ in violations)
        cls: type[SidecarStoreError] = StoreInvalidNamespaceError if namespace else StoreInvalidArgumentError
    else:
        cls = StorePermissionError
    mapped = cls(code, details, violations, trailing)
    mapped.__cause__ = err  # as ``raise mapped from err`` would, for the errors set on futures too
    return mapped


# ------------------------------------------------------------------------------------------------
# Batches


def _answered_here(op: Op) -> bool:
    """A search or namespace listing with ``limit=0`` asks for nothing (``InMemoryStore`` answers ``[]``); on the
    wire 0 is proto3's "unset", which the sidecar reads as LangGraph's default page, so it is answered here."""
    return isinstance(op, SearchOp | ListNamespacesOp) and op.limit == 0


def _check_counts(op: Op, at: str) -> None:
    """Refuse negative counts before sending: InMemoryStore slices with them ("all but the last n"), which no app
    means. Counts past int32 are sent as int32's maximum (``convert.op_to_proto``): "all" either way."""
    if isinstance(op, SearchOp | ListNamespacesOp):
        kind = "search" if isinstance(op, SearchOp) else "list_namespaces"
        for name in ("limit", "offset"):
            value = getattr(op, name)
            if value < 0:
                raise _invalid(f"{at}.{kind}.{name}", f"{name} must be >= 0, got {value}")
    if isinstance(op, ListNamespacesOp) and op.max_depth is not None and op.max_depth < 0:
        raise _invalid(f"{at}.list_namespaces.max_depth", f"max_depth must be >= 0, got {op.max_depth}")


@dataclass
class _Unit:
    """The ops of one ``batch``/``abatch`` call, converted, and where their answers go."""

    ops: list[Op]
    #: Position in ``ops`` of each op sent (the others are answered here).
    sent: list[int] = field(default_factory=list)
    protos: list[agent_pb2.StoreOp] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    reads: bool = False
    written: set[_ItemKey] = field(default_factory=set)
    deleted: set[_ItemKey] = field(default_factory=set)

    @property
    def nbytes(self) -> int:
        return sum(self.sizes)

    def results(self, answers: Mapping[int, Result]) -> list[Result]:
        """Every op's result, from the answers to the sent ops (by position in ``protos``)."""
        out: list[Result] = [[] if _answered_here(op) else None for op in self.ops]
        for j, result in answers.items():
            out[self.sent[j]] = result
        return out


@dataclass
class _Group:
    """Units sent in one call: issued together, and such that one call gives each what it would get alone, in
    issue order. ``plan`` is set for a unit too large for one call, which is sent alone (see ``_plan``)."""

    members: list[tuple[_Unit, asyncio.Future[list[Result]]]]
    plan: list[list[int]] | None = None
    nops: int = 0
    nbytes: int = 0
    written: set[_ItemKey] = field(default_factory=set)
    deleted: set[_ItemKey] = field(default_factory=set)
    #: Set when the call is about to be made; no unit joins after.
    started: bool = False

    def add(self, unit: _Unit, fut: asyncio.Future[list[Result]]) -> None:
        self.members.append((unit, fut))
        self.nops += len(unit.protos)
        self.nbytes += unit.nbytes
        self.written |= unit.written
        self.deleted |= unit.deleted

    def admits(self, unit: _Unit, max_ops: int, max_bytes: int, *, launched: bool) -> bool:
        if self.plan is not None or self.nops + len(unit.protos) > max_ops or self.nbytes + unit.nbytes > max_bytes:
            return False
        # In one call, reads see the state before its writes: a read issued after a write must wait for it.
        if unit.reads and self.written:
            return False
        # One call applies the last write of a key; a delete then a put would re-create the item (new created_at,
        # last in insertion order) where the collapsed put updates it.
        shared = unit.written & self.written
        if shared & (unit.deleted | self.deleted):
            return False
        # A launched group has taken its place among the reads and writes of the loop; it cannot change kind.
        return not launched or bool(unit.written) == bool(self.written)


class _Lane:
    """One event loop's channel and what is queued or in flight on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, channel: grpc.aio.Channel, owned: bool, max_in_flight: int):
        self.loop = loop
        self.channel = channel
        self.owned = owned
        self.stub = agent_pb2_grpc.AgentServiceStub(channel)
        self.slots = asyncio.Semaphore(max_in_flight)
        self.pending: list[tuple[_Unit, list[list[int]], asyncio.Future[list[Result]]]] = []
        self.flush_scheduled = False
        #: The last group launched, which units may join until it starts.
        self.open: _Group | None = None
        #: Done when the last group with writes has finished; the groups of reads launched since.
        self.last_write: asyncio.Future[None] | None = None
        self.reads_since: list[asyncio.Future[None]] = []
        self.tasks: set[asyncio.Task[None]] = set()


def _resolve(fut: asyncio.Future[list[Result]], result: list[Result]) -> None:
    if not fut.done():
        fut.set_result(result)


def _fail(fut: asyncio.Future[list[Result]], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


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
        max_message_bytes: int = 8 * 1024 * 1024,
        max_in_flight: int = 8,
        retries: int = 5,
    ):
        """Connect to the sidecar at ``target`` ("host:port"), or use the given channels.

        ``index``: ``{"fields": ["text", "tags[*]"]}`` (JSON paths embedded for search), ``None`` for the
        whole value (``["$"]``), ``False`` to index nothing (``search(query=...)`` then keeps insertion
        order). ``dims``/``embed`` keys are accepted and ignored: the sidecar embeds. ``"ranking"``:
        ``"dense"`` (default: cosine, as ``InMemoryStore``) or ``"hybrid"`` (z(cosine) + z(BM25) over the
        matching items, the memory retriever's fusion; scores are then fused values, not cosines).

        ``channel`` serves the blocking API and ``aio_channel`` the asyncio one; each is used as given (an asyncio
        channel only works in the event loop it was made in) and left open by ``close``. Without one, the store
        opens its own from ``target``: one blocking channel, and one asyncio channel per event loop.
        ``max_message_bytes``: the largest request or reply, as the sidecar's ``server.max_message_bytes``
        (default 8 MiB, both); a put whose value could not come back in a reply is refused before sending.
        ``max_in_flight``: calls this store has in flight at once, per event loop and for the blocking API (the
        sidecar sheds calls past its ``server.max_concurrent_rpcs``, 64 by default, across all clients).
        ``retries``: how many times a shed call is tried again, with backoff, within ``timeout``.
        """
        if target is None and channel is None and aio_channel is None:
            raise ValueError("SidecarStore needs a target 'host:port' or a channel")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight}")
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
        self._options = _channel_options(max_message_bytes)
        self._max_value_bytes = convert.max_value_bytes(max_message_bytes)
        self._max_request_bytes = max_message_bytes - _REQUEST_SLACK_BYTES
        self._max_in_flight = max_in_flight
        self._retries = retries
        self._channel = channel
        self._aio_channel = aio_channel
        self._lock = threading.Lock()
        self._own_channel: grpc.Channel | None = None
        self._sync_slots = threading.BoundedSemaphore(max_in_flight)
        self._lanes: dict[int, _Lane] = {}

    # -- preparing calls ---------------------------------------------------------------------------

    def _unit(self, ops: Iterable[Op]) -> _Unit:
        unit = _Unit(list(ops))
        for i, op in enumerate(unit.ops):
            _check_counts(op, f"ops[{i}]")
            if _answered_here(op):
                continue
            proto = convert.op_to_proto(op, self.index_fields, hybrid=self.hybrid)
            size = proto.ByteSize()
            if isinstance(op, PutOp):
                key = (tuple(op.namespace), op.key)
                unit.written.add(key)
                if op.value is None:
                    unit.deleted.add(key)
                # The whole put bounds its value: encoding the text is only needed near the limit.
                elif size > self._max_value_bytes and len(proto.put.value_json.encode()) > self._max_value_bytes:
                    raise _invalid(
                        f"ops[{i}].put.value_json",
                        f"the value is {len(proto.put.value_json.encode())} bytes as JSON; at most "
                        f"{self._max_value_bytes}, so that a reply can carry it back (max_message_bytes)",
                    )
            else:
                unit.reads = True
            unit.sent.append(i)
            unit.protos.append(proto)
            unit.sizes.append(size + 8)  # + the field's tag and length
        return unit

    def _plan(self, unit: _Unit) -> list[list[int]]:
        """The calls that send ``unit`` (positions in ``unit.protos``, in sending order).

        One call when it fits (1,000 ops, ``max_message_bytes``). Otherwise its reads go first, in as many calls as
        they need, then its writes in one call: the reads still see the state before the batch's writes, and the
        writes are still applied together or not at all. Writes that do not fit in one call are refused.
        """
        n = len(unit.protos)
        if n <= convert.MAX_STORE_OPS and unit.nbytes <= self._max_request_bytes:
            return [list(range(n))]
        last_write: dict[_ItemKey, int] = {}
        reads: list[int] = []
        for j, proto in enumerate(unit.protos):
            if proto.WhichOneof("op") == "put":
                # Applied in one call, a key's last put is the one that counts.
                last_write[(tuple(proto.put.path), proto.put.key)] = j
            else:
                reads.append(j)
        writes = sorted(last_write.values())
        write_bytes = sum(unit.sizes[j] for j in writes)
        if len(writes) > convert.MAX_STORE_OPS or write_bytes > self._max_request_bytes:
            raise _invalid(
                "ops", f"the batch writes {len(writes)} items in {write_bytes} bytes; one batch's writes are applied "
                f"together, in one call of at most {convert.MAX_STORE_OPS} operations and {self._max_request_bytes} "
                "bytes (max_message_bytes): split them into several batches",
            )
        chunks: list[list[int]] = []
        chunk_bytes = 0
        for j in reads:
            full = len(chunks[-1]) >= convert.MAX_STORE_OPS if chunks else True
            if full or chunk_bytes + unit.sizes[j] > self._max_request_bytes:
                chunks.append([])
                chunk_bytes = 0
            chunks[-1].append(j)
            chunk_bytes += unit.sizes[j]
        return chunks + ([writes] if writes else [])

    def _request(self, protos: Iterable[agent_pb2.StoreOp]) -> agent_pb2.StoreBatchRequest:
        return agent_pb2.StoreBatchRequest(namespace=self.namespace, ops=list(protos))

    @staticmethod
    def _answers(response: agent_pb2.StoreBatchResponse, sent: int) -> list[Result]:
        got = list(response.results)
        if len(got) != sent:
            raise RuntimeError(f"sidecar answered {len(got)} results for {sent} store operations")
        return [convert.result_from_proto(r) for r in got]

    def _backoff(self, err: grpc.RpcError, attempt: int, deadline: float | None) -> float | None:
        """Seconds to wait before trying ``err``'s call again, or None to give up."""
        if attempt >= self._retries or not _transient(err):
            return None
        try:
            advice = error_details(err).retry_after_s
        except (ValueError, TypeError, AttributeError):
            advice = None
        # Jittered, so that the callers shed together do not all come back together.
        delay = advice if advice is not None else min(_BACKOFF_S * 2**attempt, _BACKOFF_MAX_S) * random.uniform(0.5, 1)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    # -- blocking API ------------------------------------------------------------------------------

    def _sync_stub(self) -> agent_pb2_grpc.AgentServiceStub:
        channel = self._channel
        if channel is None:
            with self._lock:
                if self._own_channel is None:
                    if self._target is None:
                        raise RuntimeError(
                            "this SidecarStore was given only an asyncio channel (aio_channel=...): its blocking "
                            "calls (batch, get, put, search, ...) need channel=grpc.insecure_channel(...) or a "
                            "target, or use the async API (abatch, aget, aput, asearch, ...)"
                        )
                    self._own_channel = grpc.insecure_channel(self._target, options=self._options)
                channel = self._own_channel
        return agent_pb2_grpc.AgentServiceStub(channel)

    def _call(self, stub: agent_pb2_grpc.AgentServiceStub, request: agent_pb2.StoreBatchRequest,
              deadline: float | None) -> agent_pb2.StoreBatchResponse:
        attempt = 0
        while True:
            with self._sync_slots:
                try:
                    response: agent_pb2.StoreBatchResponse = stub.StoreBatch(
                        request, timeout=_remaining(deadline), metadata=self._metadata
                    )
                    return response
                except grpc.RpcError as err:
                    delay = self._backoff(err, attempt, deadline)
                    if delay is None:
                        raise
            time.sleep(delay)
            attempt += 1

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Execute ``ops`` in one RPC (blocking).

        As in LangGraph's stores, the reads see the items as they were before the batch and its writes are
        applied together (atomically; the last write of a key wins). A batch of more than 1,000 ops is sent as
        several RPCs: its reads first, then its writes in one (see ``_plan``).
        """
        unit = self._unit(ops)
        if not unit.protos:
            return unit.results({})
        plan = self._plan(unit)
        stub = self._sync_stub()
        deadline = self._deadline()
        answers: dict[int, Result] = {}
        for chunk in plan:
            try:
                response = self._call(stub, self._request(unit.protos[j] for j in chunk), deadline)
            except grpc.RpcError as err:
                mapped = _store_error(err, [unit.sent[j] for j in chunk])
                if mapped is err:
                    raise
                raise mapped from err
            answers.update(zip(chunk, self._answers(response, len(chunk)), strict=True))
        return unit.results(answers)

    # -- asyncio API -------------------------------------------------------------------------------

    def _lane(self) -> _Lane:
        loop = asyncio.get_running_loop()
        with self._lock:
            lane = self._lanes.get(id(loop))
            if lane is not None and lane.loop is loop:
                return lane
            # The channels of closed loops can never carry a call again; dropped, they are closed when collected (a
            # closed loop cannot run their asynchronous close). A new loop may reuse a dead one's id.
            for key, other in list(self._lanes.items()):
                if other.loop.is_closed() or key == id(loop):
                    del self._lanes[key]
            if self._aio_channel is not None:
                channel, owned = self._aio_channel, False
            elif self._target is None:
                raise RuntimeError(
                    "this SidecarStore was given only a blocking channel (channel=...): its async calls (abatch, "
                    "aget, aput, asearch, ...) need aio_channel=grpc.aio.insecure_channel(...) or a target, or use "
                    "the blocking API (batch, get, put, search, ...)"
                )
            else:
                channel, owned = grpc.aio.insecure_channel(self._target, options=self._options), True
            lane = _Lane(loop, channel, owned, self._max_in_flight)
            self._lanes[id(loop)] = lane
            return lane

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Execute ``ops`` (asyncio), with the semantics of ``batch``.

        Calls made in the same turn of the event loop are sent together (see the module docstring); each call's
        ops still see the writes of every call issued before it, and none of those issued after.
        """
        unit = self._unit(ops)
        if not unit.protos:
            return unit.results({})
        plan = self._plan(unit)
        lane = self._lane()
        fut: asyncio.Future[list[Result]] = lane.loop.create_future()
        lane.pending.append((unit, plan, fut))
        if not lane.flush_scheduled:
            # Scheduled after the callbacks already ready: the other tasks started in this turn queue their ops first.
            lane.flush_scheduled = True
            lane.loop.call_soon(self._flush, lane)
        return await fut

    def _flush(self, lane: _Lane) -> None:
        """Sort the queued calls into groups, in issue order, and launch them."""
        lane.flush_scheduled = False
        pending, lane.pending = lane.pending, []
        group = lane.open if lane.open is not None and not lane.open.started else None
        fresh = False  # whether ``group`` is still to be launched
        for unit, plan, fut in pending:
            if fut.done():  # its caller was cancelled
                continue
            if (group is not None and len(plan) == 1
                    and group.admits(unit, convert.MAX_STORE_OPS, self._max_request_bytes, launched=not fresh)):
                group.add(unit, fut)
                continue
            if group is not None and fresh:
                self._launch(lane, group)
            group = _Group([], plan if len(plan) > 1 else None)
            group.add(unit, fut)
            fresh = True
        if group is not None and fresh:
            self._launch(lane, group)

    def _launch(self, lane: _Lane, group: _Group) -> None:
        # A group of reads waits for the writes issued before it; a group with writes waits for everything before.
        done: asyncio.Future[None] = lane.loop.create_future()
        if group.written:
            deps = [lane.last_write, *lane.reads_since]
            lane.last_write, lane.reads_since = done, []
        else:
            deps = [lane.last_write]
            lane.reads_since = [f for f in lane.reads_since if not f.done()] + [done]
        lane.open = group
        task = lane.loop.create_task(self._run(lane, group, [d for d in deps if d is not None], done))
        lane.tasks.add(task)
        task.add_done_callback(lane.tasks.discard)

    async def _run(
        self, lane: _Lane, group: _Group, deps: list[asyncio.Future[None]], done: asyncio.Future[None]
    ) -> None:
        try:
            for dep in deps:
                await dep
            # Units may join until a slot is free: under load, what queues meanwhile goes in this call.
            await lane.slots.acquire()
            group.started = True
            live = [(unit, fut) for unit, fut in group.members if not fut.done()]
            if not live or group.plan is not None:
                lane.slots.release()
                for unit, fut in live:
                    await self._send_plan(lane, unit, group.plan or [], fut)
                return
            request = self._request(p for unit, _ in live for p in unit.protos)
            try:
                answers = await self._acall(lane, request, slot_held=True)
            except grpc.RpcError as err:
                if len(live) > 1 and _about_the_ops(err):
                    # One caller's bad op (or all their replies together, too large for one message) failed the
                    # call: each caller's ops alone, in issue order, get their own answer and field numbers.
                    for unit, fut in live:
                        await self._send_plan(lane, unit, [list(range(len(unit.protos)))], fut)
                    return
                for unit, fut in live:
                    # Not about any one op (shed, unauthenticated): the same error for all, numbered as sent alone.
                    _fail(fut, _store_error(err, unit.sent if len(live) == 1 else range(len(request.ops))))
                return
            except Exception as exc:
                for _, fut in live:
                    _fail(fut, exc)
                return
            start = 0
            for unit, fut in live:
                n = len(unit.protos)
                _resolve(fut, unit.results(dict(enumerate(answers[start : start + n]))))
                start += n
        except asyncio.CancelledError:
            for _, fut in group.members:
                fut.cancel()
            raise
        finally:
            if not done.done():
                done.set_result(None)

    async def _send_plan(self, lane: _Lane, unit: _Unit, plan: list[list[int]],
                         fut: asyncio.Future[list[Result]]) -> None:
        answers: dict[int, Result] = {}
        for chunk in plan:
            try:
                got = await self._acall(lane, self._request(unit.protos[j] for j in chunk))
            except grpc.RpcError as err:
                _fail(fut, _store_error(err, [unit.sent[j] for j in chunk]))
                return
            except Exception as exc:
                _fail(fut, exc)
                return
            answers.update(zip(chunk, got, strict=True))
        _resolve(fut, unit.results(answers))

    async def _acall(self, lane: _Lane, request: agent_pb2.StoreBatchRequest, *,
                     slot_held: bool = False) -> list[Result]:
        """One StoreBatch in a slot of ``lane``, retried while the sidecar sheds it. ``slot_held``: the caller has
        acquired the first attempt's slot."""
        deadline = self._deadline()
        attempt = 0
        while True:
            if not slot_held:
                await lane.slots.acquire()
            slot_held = False
            try:
                response = await lane.stub.StoreBatch(request, timeout=_remaining(deadline), metadata=self._metadata)
                return self._answers(response, len(request.ops))
            except grpc.RpcError as err:
                delay = self._backoff(err, attempt, deadline)
                if delay is None:
                    raise
            finally:
                lane.slots.release()
            await asyncio.sleep(delay)
            attempt += 1

    # -- closing -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channels this store opened: the blocking one, and the asyncio ones of event loops that are not
        running (``aclose`` closes the running loop's too). Channels given to the store are left open. The store
        stays usable: a later call opens a new channel."""
        with self._lock:
            channel, self._own_channel = self._own_channel, None
            for key, lane in list(self._lanes.items()):
                if not lane.loop.is_running():
                    # Its loop cannot run the channel's asynchronous close; dropped, it is closed when collected.
                    del self._lanes[key]
        if channel is not None:
            channel.close()

    async def aclose(self) -> None:
        """``close``, and close the running event loop's asyncio channel if this store opened it."""
        self.close()
        loop = asyncio.get_running_loop()
        with self._lock:
            lane = self._lanes.pop(id(loop), None)
        if lane is not None and lane.owned:
            await lane.channel.close()


__all__: Sequence[str] = (
    "SidecarStore",
    "SidecarStoreError",
    "StoreInvalidArgumentError",
    "StoreInvalidNamespaceError",
    "StorePermissionError",
)
