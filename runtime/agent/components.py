"""Binds the turn's ports (``ports.py``) to the sidecar's components for one scope.

Each adapter calls its component in-process through ``rt.offload`` (they are synchronous and may embed
or hit the database). A component slot that is empty (not configured, or its issue not merged) falls
back to the built-in default of ``ports.py``, and the gate events say so in ``fallback_reason``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from core.errors import AgentrtError
from runtime.agent.llm import TokenLogprob
from runtime.agent.ports import (
    AllowAllGuard,
    CandidateView,
    ConfidenceSelector,
    DefaultGates,
    GateOutcome,
    GuardOutcome,
    MemoryHitView,
    NoMemory,
    NoTools,
    SelectionOutcome,
    ToolOutcome,
    TurnPorts,
    function_name,
)
from runtime.container import Runtime, check_guard
from runtime.gates.types import TokenStream


def _token_stream(tokens: Sequence[TokenLogprob], field_name: str = "tokens") -> TokenStream:
    """The arrays the gates and the selector compute on, built straight from the parsed completion (an
    OpenAI-shaped dict per token, parsed back by them, cost about 2 ms of a turn's GIL time)."""
    return TokenStream.from_lists(
        [t.logprob for t in tokens], [[lp for _, lp in t.top_logprobs] for t in tokens], field_name=field_name
    )


class EngineGuard:
    """``rt.guards`` (guards.GuardEngine): ``check(scope, GuardRequest) -> GuardVerdict``."""

    def __init__(self, rt: Runtime, scope: str):
        self.rt, self.scope = rt, scope

    async def check(
        self, stage: str, text: str, *, tool_call: tuple[str, str] | None = None, tools: Sequence[str] = (),
        thread_id: str = "",
    ) -> GuardOutcome:
        from guards.model import GuardRequest, Stage, ToolCallInfo

        request = GuardRequest(
            stage=Stage(stage), text=text,
            tool_call=ToolCallInfo(*tool_call) if tool_call else None,
            available_tools=tuple(tools), metadata={"thread_id": thread_id, "source": "agent"},
        )
        v = await check_guard(self.rt.guards, self.rt.offload, self.scope, request)
        reason = "; ".join(e.text or e.ref for e in getattr(v, "evidence", ())[:3])
        return GuardOutcome(str(v.decision), v.verdict_id, float(v.harm_score), float(v.entropy), reason)

    async def warm(
        self, stage: str, text: str, *, tool_call: tuple[str, str] | None = None, tools: Sequence[str] = ()
    ) -> None:
        from guards.model import GuardRequest, Stage, ToolCallInfo

        warm = getattr(self.rt.guards, "warm", None)
        if warm is None:  # a guard engine that cannot embed ahead: its check embeds for itself
            return
        request = GuardRequest(stage=Stage(stage), text=text, tool_call=ToolCallInfo(*tool_call) if tool_call else None,
                               available_tools=tuple(tools))
        await self.rt.offload(warm, self.scope, request)


class EngineGates:
    """``rt.gates`` (runtime.gates.GateEngine): ``decide(scope, gate, tokens, session_id=...)``."""

    def __init__(self, rt: Runtime, scope: str):
        self.rt, self.scope = rt, scope

    async def decide(self, gate: str, tokens: Sequence[TokenLogprob], *, session_id: str) -> GateOutcome:
        if not tokens:
            return GateOutcome(gate, True, fallback_reason="no logprobs from the LLM: gate fires by default")
        gates = self.rt.gates
        stream = _token_stream(tokens)
        if gates.can_decide_now(self.scope, gate, session_id):
            # Nothing to read from the database: a few hundred microseconds of numpy, cheaper than a hop.
            d = gates.decide(self.scope, gate, stream, session_id=session_id)
        else:
            d = await self.rt.offload(gates.decide, self.scope, gate, stream, session_id=session_id)
        return GateOutcome(gate, bool(d.fire), float(d.score), float(d.threshold), dict(d.signals))


class EngineMemory:
    """``rt.memory`` (memory.MemoryEngine): ``search(ns, SearchQuery)``, ``write(ns, session, messages)``."""

    def __init__(self, rt: Runtime, scope: str):
        self.rt, self.scope = rt, scope

    async def search(self, query: str, top_k: int, token_budget: int) -> tuple[list[MemoryHitView], dict[str, float]]:
        from memory.model import SearchQuery

        if top_k <= 0:
            return [], {}
        res = await self.rt.offload(self.rt.memory.search, self.scope,
                                    SearchQuery(query=query, top_k=top_k, token_budget=token_budget))
        hits = [MemoryHitView(h.unit.id, h.unit.text, float(h.score), str(h.unit.granularity)) for h in res.hits]
        routing = {f"weight.{k}": float(v) for k, v in res.routing.weight.items()}
        routing.update({f"entropy.{k}": float(v) for k, v in res.routing.entropy.items()})
        return hits, routing

    async def write(self, session_id: str, messages: Sequence[tuple[str, str, str]]) -> list[str]:
        res = await self.rt.offload(self.rt.memory.write, self.scope, session_id, _messages(session_id, messages))
        return list(res.message_ids)

    async def delete(self, message_ids: Sequence[str]) -> None:
        await self.rt.offload(self.rt.memory.delete, self.scope, message_ids=list(message_ids))

    async def prefetch(self, query: str, messages: Sequence[tuple[str, str, str]]) -> None:
        await self.rt.offload(self.rt.memory.prefetch, [query], _messages("", messages))

    async def existing(self, message_ids: Sequence[str]) -> set[str]:
        found = await self.rt.offload(self.rt.memory.store.get_messages, self.scope, list(message_ids))
        return set(found)

    def turn_in_flight(self) -> AbstractContextManager[None]:
        # The derivation the previous turn's write queued waits for this one to end (at most 1 s) instead
        # of sharing the GIL with its guard checks and search.
        return self.rt.memory.interactive()


def _messages(session_id: str, messages: Sequence[tuple[str, str, str]]) -> list[Any]:
    from datetime import UTC, datetime

    from memory.model import MemoryMessage

    now = datetime.now(UTC)
    return [MemoryMessage(id=i, session_id=session_id, speaker=s, text=t, time=now) for i, s, t in messages]


class EngineSelector:
    """``rt.selector`` (runtime.selection.AnswerSelector): ``select(scope, candidates)``."""

    def __init__(self, rt: Runtime, scope: str):
        self.rt, self.scope = rt, scope

    async def select(self, candidates: Sequence[CandidateView]) -> SelectionOutcome:
        from runtime.selection.types import Candidate

        if any(not c.tokens for c in candidates):
            # The selector needs logprobs from every candidate; without them use the built-in choice.
            return await ConfidenceSelector().select(candidates)
        cands = [
            Candidate(answer=c.answer, agent_id=c.agent_id, tokens=_token_stream(c.tokens, f"candidates[{i}].tokens"))
            for i, c in enumerate(candidates)
        ]
        select_now = getattr(self.rt.selector, "select_now", None)
        s: Any = select_now(self.scope, cands) if select_now is not None else None
        if s is None:
            s = await self.rt.offload(self.rt.selector.select, self.scope, cands)
        return SelectionOutcome(int(s.index), float(s.confidence), str(s.method))


class PipelineTools:
    """The tool Invoke pipeline (``runtime.tool_invoke.ToolInvoker`` on ``rt.extras["tool_invoker"]``).

    The pipeline validates, guards the call and its result, applies the CALL_TOOL gate to the logprobs
    sent with the call, executes and audits. A call it stops (blocked, held for review, gated) comes back
    as ``ToolOutcome.error`` naming the step and the reason, which the LLM then sees.
    """

    #: The pipeline checks results at STAGE_TOOL_RESULT, so the turn graph does not repeat it.
    guards_results = True

    def __init__(self, rt: Runtime, scope: str):
        self.rt, self.scope = rt, scope
        self._names: dict[str, str] = {}

    async def specs(self, names: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for name in names:
            try:
                tool = await self.rt.tools.get(self.scope, name)
            except AgentrtError:
                continue  # an unknown tool is simply not offered
            fn = function_name(tool.name)
            self._names[fn] = tool.name
            out.append({"type": "function", "function": {
                "name": fn, "description": tool.description, "parameters": tool.input_schema}})
        return out

    async def invoke(self, name: str, arguments_json: str, *, call_id: str, instruction: str = "",
                     session_id: str = "", tokens: Sequence[TokenLogprob] = (),
                     checked: GuardOutcome | None = None) -> ToolOutcome:
        from guards.model import Decision
        from runtime.tool_invoke import CheckedCall, InvokeRequest

        prior = None
        if checked is not None:
            # The turn runs a call only when its verdict allowed it or a human approved it at review.
            decision = Decision(checked.decision)
            prior = CheckedCall(checked.verdict_id, decision, checked.harm_score,
                                approved=decision == Decision.REVIEW)
        request = InvokeRequest(
            # ``name`` is the tool's own name (the turn maps the LLM's function names back to the offered tools).
            scope=self.scope, name=self._names.get(name, name), arguments_json=arguments_json,
            instruction=instruction, tokens=_token_stream(tokens) if tokens else (), caller="agent",
            session_id=session_id, checked_call=prior,
        )
        try:
            res = await self.rt.extras["tool_invoker"].invoke(request)
        except AgentrtError as exc:
            return ToolOutcome(error=str(exc))
        outcome = str(res.outcome)
        if outcome != "ok":
            return ToolOutcome(result_json=res.output or "", error=res.reason or outcome)
        if res.is_error:
            return ToolOutcome(result_json=res.output, error=res.output or "tool reported an error")
        return ToolOutcome(result_json=res.output)


def bind_ports(
    rt: Runtime, scope: str, overrides: Mapping[str, Callable[[Runtime, str], Any]] | None = None
) -> TurnPorts:
    """Ports for ``scope``: the sidecar's components where present, the built-in defaults elsewhere.

    ``overrides`` (``rt.extras["agent_ports"]``: port name -> factory(rt, scope)) replaces single ports;
    tests and benchmarks use it to plug in tools without a tool registry.
    """
    ports = TurnPorts(
        guard=EngineGuard(rt, scope) if rt.guards is not None else AllowAllGuard(),
        gates=EngineGates(rt, scope) if rt.gates is not None else DefaultGates(reason="no gate engine configured"),
        memory=EngineMemory(rt, scope) if rt.memory is not None else NoMemory(),
        selector=EngineSelector(rt, scope) if rt.selector is not None else ConfidenceSelector(),
        tools=PipelineTools(rt, scope) if "tool_invoker" in rt.extras and rt.tools is not None else NoTools(),
    )
    for name, port in (overrides or {}).items():
        setattr(ports, name, port(rt, scope))
    return ports
