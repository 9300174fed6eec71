"""gRPC servicer for AgentService: whole turns on LangGraph (RunTurn, Resume, GetThread) and the item
store behind ``runtime.store.SidecarStore`` (StoreBatch)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from agentrt.v1 import agent_pb2, agent_pb2_grpc

from core.errors import InvalidArgumentError
from core.text import has_control_chars
from memory.engine import MAX_ID_LEN
from runtime import naming
from runtime.agent.components import bind_ports
from runtime.agent.items import ItemStore, SqlItemBackend
from runtime.agent.policy import LlmKey, TurnPolicy
from runtime.agent.runner import ThreadLocks, TurnRunner, open_checkpointer
from runtime.container import Runtime
from runtime.convert import agent as conv

MAX_STORE_OPS = conv.MAX_STORE_OPS
MAX_MESSAGE_CHARS = 100_000
#: A client turn id names the memory messages "<turn_id>-u" and "<turn_id>-a".
MAX_TURN_ID_CHARS = 100
#: What memory keeps of a speaker's name.
MAX_SPEAKER_CHARS = MAX_ID_LEN
_THREAD_RULE = "1-200 characters, no control characters, no leading or trailing spaces"


@dataclass
class AgentComponent:
    """What ``rt.agent`` holds."""

    items: ItemStore
    runner: TurnRunner | None = None
    closers: list[Any] = field(default_factory=list)


def build(rt: Runtime) -> None:
    """Attach the item store; the turn runner needs the event loop and is opened in ``start``."""
    # A value is refused at put when the reply to its get would not fit in a message: stored, it could never be read.
    max_value = conv.max_value_bytes(rt.settings.server.max_message_bytes)
    rt.agent = AgentComponent(items=ItemStore(SqlItemBackend(rt.db.engine), rt.embedder, max_value_bytes=max_value))


async def start(rt: Runtime) -> None:
    """Open the LangGraph checkpointer on the sidecar's database and compile the turn graph."""
    saver, close = await open_checkpointer(rt.db.url)
    rt.agent.runner = TurnRunner(saver, ThreadLocks(rt.db.url))
    rt.agent.closers.append(close)


async def stop(rt: Runtime) -> None:
    """Close LLM clients and the checkpointer's connections."""
    component: AgentComponent | None = rt.agent
    if component is None:
        return
    if component.runner is not None:
        await component.runner.aclose()
    for close in component.closers:
        await close()
    component.closers.clear()


def _thread_id(value: str) -> str:
    # The thread id is also the memory session id, which refuses what this refuses: checked before the turn runs,
    # not at its memory write after every LLM call and tool.
    if not value or len(value) > 200 or has_control_chars(value) or value != value.strip():
        raise InvalidArgumentError("thread_id", f"{value[:40]!r} is not a valid thread id: {_THREAD_RULE}")
    return value


def _speaker(value: str) -> str:
    """The speaker memory writes for the user's message (empty: "user"); memory's rules, checked up front."""
    if len(value) > MAX_SPEAKER_CHARS or has_control_chars(value):
        raise InvalidArgumentError(
            "speaker", f"{value[:40]!r} is not a valid speaker: at most {MAX_SPEAKER_CHARS} characters, no control "
            "characters"
        )
    return value


def _turn_id(value: str) -> str:
    """A client's turn id (empty: the sidecar picks one). It names memory messages, so it follows their rules."""
    if value and (len(value) > MAX_TURN_ID_CHARS or value != value.strip() or any(ord(ch) < 32 for ch in value)):
        raise InvalidArgumentError(
            "turn_id", f"{value[:40]!r} is not a valid turn id: at most {MAX_TURN_ID_CHARS} characters, no control "
            "characters, no leading or trailing spaces"
        )
    return value


def _deadline(context: Any) -> float | None:
    remaining = context.time_remaining() if context is not None else None
    return None if remaining is None else time.monotonic() + remaining


class AgentServiceServicer(agent_pb2_grpc.AgentServiceServicer):
    """Thin servicer: validate, convert, call the component, convert back."""

    def __init__(self, rt: Runtime):
        self._rt = rt

    @property
    def _agent(self) -> AgentComponent:
        return self._rt.agent  # type: ignore[no-any-return]

    @property
    def _runner(self) -> TurnRunner:
        runner = self._agent.runner
        assert runner is not None, "AgentService started without its runner"
        return runner

    def _configured(self, scope: str) -> TurnPolicy:
        configured = self._rt.policy("agent", scope) if hasattr(self._rt, "policy") else {}
        return TurnPolicy.from_dict(dict(configured or {}))

    def _policy(self, scope: str, request_policy: agent_pb2.TurnPolicy) -> tuple[TurnPolicy, LlmKey]:
        """The turn's policy (without the API key) and the configured key with the URLs it may go to."""
        base = self._configured(scope)
        return base.merged(conv.policy_overrides(request_policy)).validate(), base.llm_key()

    async def _events(
        self, thread_id: str, events: AsyncGenerator[dict[str, Any], None]
    ) -> AsyncIterator[agent_pb2.TurnEvent]:
        seq = 0
        # Closed on every exit (an error converting an event, a client gone): the run holds its thread's lock
        # until its generator is closed, and an abandoned one is closed only when the garbage collector gets to it.
        async with contextlib.aclosing(events):
            async for ev in events:
                yield conv.event_to_proto(ev, thread_id, seq)
                seq += 1

    async def RunTurn(self, request: agent_pb2.RunTurnRequest, context: Any) -> AsyncIterator[agent_pb2.TurnEvent]:
        thread_id = _thread_id(request.thread_id)
        if not request.message.strip():
            raise InvalidArgumentError("message", "must not be empty")
        if len(request.message) > MAX_MESSAGE_CHARS:
            raise InvalidArgumentError("message", f"at most {MAX_MESSAGE_CHARS} characters")
        if "\x00" in request.message:
            raise InvalidArgumentError("message", "must not hold NUL characters (memory cannot store them)")
        speaker, turn_id = _speaker(request.speaker), _turn_id(request.turn_id)
        scope = await self._rt.scope(request.namespace, write=True)
        policy, key = self._policy(scope, request.policy)
        ports = bind_ports(self._rt, scope, self._rt.extras.get("agent_ports"))
        events = self._runner.run_turn(scope, thread_id, request.message, speaker, policy, ports,
                                       deadline=_deadline(context), turn_id=turn_id, llm_key=key)
        async for ev in self._events(thread_id, events):
            yield ev

    async def Resume(self, request: agent_pb2.ResumeRequest, context: Any) -> AsyncIterator[agent_pb2.TurnEvent]:
        thread_id = _thread_id(request.thread_id)
        decision = conv.decision_from_proto(request.decision)
        # Write permission checked, but the namespace not created: a Resume of a thread that cannot exist there
        # (a mistyped namespace) answers NOT_FOUND and leaves nothing behind.
        scope = naming.scoped_namespace(request.namespace, write=True, field_name="namespace")
        ports = bind_ports(self._rt, scope, self._rt.extras.get("agent_ports"))
        # The key of the configuration in force now: a paused turn never carries one (see ``LlmKey``).
        events = self._runner.resume(scope, thread_id, decision, request.note, ports, deadline=_deadline(context),
                                     llm_key=self._configured(scope).llm_key(), interrupt_id=request.interrupt_id)
        async for ev in self._events(thread_id, events):
            yield ev

    async def GetThread(self, request: agent_pb2.GetThreadRequest, context: Any) -> agent_pb2.Thread:
        thread_id = _thread_id(request.thread_id)
        if request.history_limit < 0:
            raise InvalidArgumentError("history_limit", "must be >= 0")
        scope = await self._rt.scope(request.namespace)
        view = await self._runner.get_thread(scope, thread_id, request.history_limit or 20)
        return conv.thread_to_proto(view)

    async def StoreBatch(self, request: agent_pb2.StoreBatchRequest, context: Any) -> agent_pb2.StoreBatchResponse:
        if len(request.ops) > MAX_STORE_OPS:
            raise InvalidArgumentError(
                "ops", f"at most {MAX_STORE_OPS} operations per StoreBatch call, got {len(request.ops)} (SidecarStore "
                "sends a larger batch as several calls)"
            )
        ops = conv.ops_from_request(request)
        hybrid = conv.hybrid_searches(request)
        writes = any(op.WhichOneof("op") == "put" for op in request.ops)
        scope = await self._rt.scope(request.namespace, write=writes)
        results = await self._rt.offload(self._agent.items.batch, scope, ops, hybrid=hybrid)
        return conv.results_to_response(ops, results)


def register(server: grpc.aio.Server, rt: Runtime) -> None:
    """Add AgentService to the server."""
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServiceServicer(rt), server)
