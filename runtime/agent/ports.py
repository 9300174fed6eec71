"""What a turn needs from the other components, as small async Protocols bound to one scope.

The graph (``graph.py``) only sees these. ``components.py`` binds them to the sidecar's real
components (guards, gates, selector, memory, tools) and falls back to the built-in defaults below when a
component is not configured. Tests can pass fakes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from core import entropy as E
from runtime.agent.llm import TokenLogprob

# Decisions and stages as lower-case strings (guards.model.Decision / Stage values).
ALLOW, BLOCK, REVIEW = "allow", "block", "review"
RETRIEVE, CALL_TOOL = "retrieve", "call_tool"


@dataclass(frozen=True)
class GuardOutcome:
    """A guard verdict as the turn uses it."""

    decision: str
    verdict_id: str = ""
    harm_score: float = 0.0
    entropy: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class GateOutcome:
    """An entropy gate decision; ``fallback_reason`` says why a default was used instead of the gate."""

    gate: str
    fire: bool
    score: float = 0.0
    threshold: float = 0.0
    signals: dict[str, float] = field(default_factory=dict)
    fallback_reason: str = ""


@dataclass(frozen=True)
class MemoryHitView:
    """One retrieved memory."""

    id: str
    text: str
    score: float
    granularity: str = ""


@dataclass(frozen=True)
class SelectionOutcome:
    """The chosen candidate."""

    index: int
    confidence: float
    method: str


@dataclass(frozen=True)
class ToolOutcome:
    """A tool's result (JSON text) or why there is none."""

    result_json: str = ""
    error: str = ""


@dataclass(frozen=True)
class CandidateView:
    """One candidate answer handed to selection."""

    agent_id: str
    answer: str
    tokens: Sequence[TokenLogprob] = ()


class TurnGuard(Protocol):
    """Guard checks of one scope."""

    async def check(
        self, stage: str, text: str, *, tool_call: tuple[str, str] | None = None, tools: Sequence[str] = (),
        thread_id: str = "",
    ) -> GuardOutcome:
        """Check ``text`` (and the tool call) at ``stage`` ("input", "tool_call", "tool_result", "output")."""
        ...

    async def warm(
        self, stage: str, text: str, *, tool_call: tuple[str, str] | None = None, tools: Sequence[str] = ()
    ) -> None:
        """Prepare (embed) what a later ``check(stage, text)`` will need; decides and records nothing."""
        ...


class TurnGates(Protocol):
    """Entropy gates of one scope."""

    async def decide(self, gate: str, tokens: Sequence[TokenLogprob], *, session_id: str) -> GateOutcome:
        """Decide ``gate`` ("retrieve", "call_tool") from the tokens' logprobs (may be empty)."""
        ...


class TurnMemory(Protocol):
    """Conversation memory of one scope."""

    async def search(self, query: str, top_k: int, token_budget: int) -> tuple[list[MemoryHitView], dict[str, float]]:
        """Hits and the memory router's per-granularity weights."""
        ...

    async def write(self, session_id: str, messages: Sequence[tuple[str, str, str]]) -> list[str]:
        """Write (id, speaker, text) messages atomically; returns their ids."""
        ...

    async def delete(self, message_ids: Sequence[str]) -> None:
        """Delete messages by id (ids that are not stored are ignored): takes back a write of a cancelled turn."""
        ...

    async def prefetch(self, query: str, messages: Sequence[tuple[str, str, str]]) -> None:
        """Prepare (embed) what a later ``search(query)`` and ``write(messages)`` will need; stores nothing."""
        ...

    def turn_in_flight(self) -> AbstractContextManager[None]:
        """Held for the whole run of a turn: the memory's background work waits for it where it can."""
        ...

    async def existing(self, message_ids: Sequence[str]) -> set[str]:
        """Which of ``message_ids`` are stored (a client's turn id must not name another turn's messages)."""
        ...


class TurnSelector(Protocol):
    """Answer selection of one scope."""

    async def select(self, candidates: Sequence[CandidateView]) -> SelectionOutcome:
        """Pick one of >= 1 candidates."""
        ...


def function_name(tool_name: str) -> str:
    """The name a tool is offered to the LLM under: OpenAI function names allow [a-zA-Z0-9_-] only, and our
    builtins and MCP tools are dotted ("memory.search")."""
    return tool_name.replace(".", "__")


class TurnTools(Protocol):
    """Tools of one scope."""

    async def specs(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """OpenAI ``tools`` entries for the named tools (unknown names are skipped)."""
        ...

    async def invoke(self, name: str, arguments_json: str, *, call_id: str, instruction: str = "",
                     session_id: str = "", tokens: Sequence[TokenLogprob] = (),
                     checked: GuardOutcome | None = None) -> ToolOutcome:
        """Run one call through the tool pipeline; failures come back as ``ToolOutcome.error``.

        ``instruction`` is the user message behind the call, ``tokens`` the logprobs of the LLM turn that
        asked for it (for the CALL_TOOL gate). ``checked`` is the STAGE_TOOL_CALL verdict the turn already
        got for this call, which the turn only runs when it is ALLOW or a human approved it at review:
        the pipeline records it instead of guarding the call a second time."""
        ...


@dataclass
class TurnPorts:
    """Everything a turn calls, bound to one scope."""

    guard: TurnGuard
    gates: TurnGates
    memory: TurnMemory
    selector: TurnSelector
    tools: TurnTools


# ------------------------------------------------------------------------------------------------
# Built-in defaults


class AllowAllGuard:
    """Used when no guard engine is configured: every check allows."""

    async def check(
        self, stage: str, text: str, *, tool_call: tuple[str, str] | None = None, tools: Sequence[str] = (),
        thread_id: str = "",
    ) -> GuardOutcome:
        return GuardOutcome(ALLOW, reason="no guard engine configured")

    async def warm(
        self, stage: str, text: str, *, tool_call: tuple[str, str] | None = None, tools: Sequence[str] = ()
    ) -> None:
        return None


#: Threshold of the built-in gate on the mean normalised top-k entropy of the answer tokens.
DEFAULT_GATE_THRESHOLD = 0.5


def mean_normalized_entropy(tokens: Sequence[TokenLogprob]) -> float:
    """Mean over tokens of the renormalised top-k entropy divided by ln k (0 = peaked, 1 = flat)."""
    rows = [[lp for _t, lp in t.top_logprobs] or [t.logprob] for t in tokens]
    if not rows:
        return 0.0
    top = E.pad_top_logprobs(rows)
    k = top.shape[1]
    if k < 2:
        return 0.0
    return float(np.mean(E.renormalized_topk_entropy(top)) / np.log(k))


class DefaultGates:
    """Built-in gates: fire when the mean normalised entropy exceeds ``threshold``.

    Without logprobs every gate fires (retrieving and running the tool the model asked for are the
    safe defaults), with ``fallback_reason`` saying so.
    """

    def __init__(self, threshold: float = DEFAULT_GATE_THRESHOLD, reason: str = "built-in gate"):
        self.threshold = threshold
        self.reason = reason

    async def decide(self, gate: str, tokens: Sequence[TokenLogprob], *, session_id: str) -> GateOutcome:
        if not tokens:
            return GateOutcome(gate, True, fallback_reason="no logprobs from the LLM: gate fires by default")
        score = mean_normalized_entropy(tokens)
        return GateOutcome(
            gate, score > self.threshold, score, self.threshold,
            {"renorm_normalized.mean": score}, fallback_reason=self.reason,
        )


class NoMemory:
    """Used when no memory engine is configured: nothing to retrieve, writes are dropped."""

    async def search(self, query: str, top_k: int, token_budget: int) -> tuple[list[MemoryHitView], dict[str, float]]:
        return [], {}

    async def write(self, session_id: str, messages: Sequence[tuple[str, str, str]]) -> list[str]:
        return []

    async def delete(self, message_ids: Sequence[str]) -> None:
        return None

    async def prefetch(self, query: str, messages: Sequence[tuple[str, str, str]]) -> None:
        return None

    def turn_in_flight(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def existing(self, message_ids: Sequence[str]) -> set[str]:
        return set()


class ConfidenceSelector:
    """Built-in selection: the candidate with the highest mean token logprob (first on ties or none)."""

    async def select(self, candidates: Sequence[CandidateView]) -> SelectionOutcome:
        means = [float(np.mean([t.logprob for t in c.tokens])) if c.tokens else -np.inf for c in candidates]
        best = int(np.argmax(means)) if candidates else 0
        conf = float(np.exp(means[best])) if candidates and np.isfinite(means[best]) else 0.0
        return SelectionOutcome(best, conf, "max_mean_logprob")


class NoTools:
    """Used when no tool pipeline is configured."""

    async def specs(self, names: Sequence[str]) -> list[dict[str, Any]]:
        return []

    async def invoke(self, name: str, arguments_json: str, *, call_id: str, instruction: str = "",
                     session_id: str = "", tokens: Sequence[TokenLogprob] = (),
                     checked: GuardOutcome | None = None) -> ToolOutcome:
        return ToolOutcome(error=f"tool {name!r} is not available: no tool pipeline configured")


def default_ports() -> TurnPorts:
    """Ports with every built-in default (no guard, no memory, no tools)."""
    return TurnPorts(AllowAllGuard(), DefaultGates(), NoMemory(), ConfidenceSelector(), NoTools())
