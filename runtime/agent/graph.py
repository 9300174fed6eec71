"""One agent turn as a LangGraph ``StateGraph``: the one place the order of the stages is written.

    input_guard ──allow──> agent ──(first answer)──> retrieve_gate ──fire──> retrieve ──> agent
        │ review                 │ tool calls                │ no fire
        v                        v                           v
    review_input (interrupt)   tool_gate -> check_tools -> [approve_tools (interrupt)] -> run_tools -> agent
                                 │ final answer
                                 v
                               candidates -> select -> output_guard ──allow──> write_memory -> finish
                                                          │ review -> review_output (interrupt)
                                                          │ block  -> blocked -> finish

* Retrieval is lazy: the agent first answers from the conversation alone; only when the retrieval gate
  fires on the entropy of that answer's tokens is memory searched (the memory engine routes the query
  over its granularities) and the agent asked again with the memories in its system prompt.
* Tool calls are checked by the guard (TOOL_CALL), paused for approval when policy lists the tool or the
  verdict is REVIEW (``approve_tools`` runs only then), run through the tool pipeline, and their results
  checked (TOOL_RESULT).
* The final answer's context produces N candidates (policy: prompts, models, temperatures); selection
  picks one; the output guard checks it; memory is written last, in one call, so a turn cancelled
  earlier leaves nothing behind.

Interrupts use LangGraph's ``interrupt()`` in nodes of their own (``review_*``, ``approve_tools``) so that
re-running the node on resume repeats no side effect. Stages with no interrupt between them share one
graph node (``retrieve_gate``+``retrieve``, ``tool_gate``+``check_tools``, ``candidates``+``select``,
``write_memory``/``blocked``+``finish``): each LangGraph step has a fixed cost, and the stage events are
the same either way. Every stage reports progress through the stream writer as plain dicts
(``{"type": "guard", ...}``); ``runtime/convert/agent.py`` turns them into events.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import operator
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict, cast

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from core.errors import AgentrtError, DeadlineExceededError
from runtime.agent.llm import ChatClient, Completion
from runtime.agent.policy import TurnPolicy
from runtime.agent.ports import (
    ALLOW,
    BLOCK,
    CALL_TOOL,
    RETRIEVE,
    REVIEW,
    CandidateView,
    GateOutcome,
    GuardOutcome,
    MemoryHitView,
    TurnPorts,
    function_name,
)

log = logging.getLogger(__name__)

#: Answer of a turn whose input or output a guard blocked.
BLOCKED_ANSWER = "I can't help with that."
#: Prior conversation messages sent to the LLM.
HISTORY_MESSAGES = 20
#: Finished turns whose ids a thread keeps, so that a retry of one of them is refused rather than run twice.
TURN_IDS_KEPT = 50


class TurnState(TypedDict, total=False):
    """Graph state: JSON-only values, checkpointed after every node."""

    # Conversation across turns: {"role": "user"|"assistant", "content": str}.
    messages: Annotated[list[dict[str, Any]], operator.add]
    turns: int
    # Ids of the thread's last TURN_IDS_KEPT finished turns, oldest first (a retried RunTurn is recognised by them).
    turn_ids: list[str]
    # This turn (every field below is reset by RunTurn's input).
    turn_id: str
    user: str
    speaker: str
    policy: dict[str, Any]
    status: str  # "running" | "completed" | "blocked"
    input_verdict: dict[str, Any]
    retrieved: bool
    retrieve_fire: bool
    memories: list[dict[str, Any]]
    # This turn's assistant tool-call and tool-result messages (OpenAI format).
    scratch: list[dict[str, Any]]
    draft: dict[str, Any]
    tool_round: int
    pending_calls: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    selected: dict[str, Any]
    answer: str
    output_verdict: dict[str, Any]
    memory_ids: list[str]


def turn_input(turn_id: str, user: str, speaker: str, policy: TurnPolicy) -> dict[str, Any]:
    """The input that starts a turn: the user message and a reset of every per-turn field."""
    return {
        "turn_id": turn_id, "user": user, "speaker": speaker, "policy": policy.to_dict(),
        "status": "running", "input_verdict": {}, "retrieved": False, "retrieve_fire": False,
        "memories": [], "scratch": [], "draft": {}, "tool_round": 0, "pending_calls": [],
        "candidates": [], "selected": {}, "answer": "", "output_verdict": {}, "memory_ids": [],
    }


@dataclass
class TurnContext:
    """Per-call dependencies handed to the nodes (never checkpointed)."""

    ports: TurnPorts
    llm: Callable[[str], ChatClient]
    thread_id: str
    # time.monotonic() value past which LLM calls are not started.
    deadline: float | None = None
    # Embeddings the retrieval, the output guard and the memory write will need, computed while the guards and
    # the LLM work.
    prefetches: list[asyncio.Task[None]] = field(default_factory=list)
    # The answer whose output check and memory turn are already being embedded (see ``candidates``).
    warmed_answer: str | None = None
    # The memory search started while the LLM writes its first answer (``TurnPolicy.speculative_retrieval``).
    speculative_search: asyncio.Task[tuple[list[MemoryHitView], dict[str, float]]] | None = None
    # The first answer, asked for while the input guard checks the message (``TurnPolicy.parallel_input_guard``).
    early_answer: asyncio.Task[Completion] | None = None
    # The turn's deadline as the runner enforces it (``asyncio.timeout`` around the graph run); see ``_begin_commit``.
    deadline_timer: asyncio.Timeout | None = None
    # Set when the memory write starts: from then on the turn runs to its end (see ``_begin_commit``).
    committing: bool = False


def _begin_commit(ctx: TurnContext) -> None:
    """Enter the turn's commit: its memory write, its bookkeeping and the checkpoint LangGraph writes at exit.

    From here on neither the deadline nor a cancelled RPC stops the turn (the runner lets the graph finish
    instead of cancelling it): stopped in between, the memory would hold a turn the thread never counted, and
    a client retrying it would store the exchange twice. What is left is one memory write and the checkpoint,
    milliseconds; a deadline that has already passed stops the turn here, before anything is written.
    """
    timer = ctx.deadline_timer
    if timer is not None:
        if timer.expired() or (ctx.deadline is not None and time.monotonic() >= ctx.deadline):
            raise DeadlineExceededError("the turn's deadline passed before its memory write")
        timer.reschedule(None)
    ctx.committing = True


def _prefetch(ctx: TurnContext, query: str, messages: list[tuple[str, str, str]]) -> None:
    """Embed, ahead of time, what a later search (``query``) or memory write will need."""
    _ahead(ctx, lambda: ctx.ports.memory.prefetch(query, messages))


def _ahead(ctx: TurnContext, work: Callable[[], Awaitable[None]]) -> None:
    """Start ``work`` (embedding something a later stage will need) in the background.

    Such work runs one piece after the other: two at once would only split the cores between them, and the one
    a stage waits for would finish later. Errors stay in the task (the stage then embeds for itself).
    """
    previous = ctx.prefetches[-1] if ctx.prefetches else None

    async def run() -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        await work()

    task = asyncio.create_task(run())
    # A turn that ends before it needs the vectors never awaits the task: keep its error out of the log.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    ctx.prefetches.append(task)


async def _prefetched(ctx: TurnContext) -> None:
    """Wait for the turn's prefetches so a stage does not embed the same text a second time."""
    tasks, ctx.prefetches = ctx.prefetches, []
    for task in tasks:
        try:
            await task
        except Exception:  # a failed prefetch only means the stage embeds for itself
            log.debug("memory prefetch failed", exc_info=True)


Node = Callable[[TurnState, Runtime[TurnContext]], Awaitable[dict[str, Any]]]


def _stage(name: str) -> Callable[[Node], Node]:
    """Wrap a node so it reports STARTED/FINISHED with its wall time."""

    def wrap(fn: Node) -> Node:
        @functools.wraps(fn)
        async def node(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
            write = runtime.stream_writer
            write({"type": "stage", "name": name, "status": "started"})
            t0 = time.perf_counter()
            out = await fn(state, runtime)
            write({"type": "stage", "name": name, "status": "finished",
                   "elapsed_ms": (time.perf_counter() - t0) * 1000})
            return out

        return node

    return wrap


def _guard_event(stage: str, v: GuardOutcome) -> dict[str, Any]:
    return {"type": "guard", "stage": stage, "decision": v.decision, "verdict_id": v.verdict_id,
            "harm_score": v.harm_score, "entropy": v.entropy, "reason": v.reason}


def _gate_event(g: GateOutcome) -> dict[str, Any]:
    return {"type": "gate", "gate": g.gate, "fire": g.fire, "score": g.score, "threshold": g.threshold,
            "signals": dict(g.signals), "fallback_reason": g.fallback_reason}


def _remaining(ctx: TurnContext, policy: TurnPolicy) -> float:
    if ctx.deadline is None:
        return policy.llm_timeout_s
    left = ctx.deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceededError("the turn's deadline passed before the LLM call")
    return min(left, policy.llm_timeout_s)


def _system_prompt(prompt: str, memories: list[dict[str, Any]]) -> str:
    if not memories:
        return prompt
    lines = "\n".join(f"- {m['text']}" for m in memories)
    return f"{prompt}\n\nMemories:\n{lines}"


def _chat(state: TurnState, system_prompt: str) -> list[dict[str, Any]]:
    history = state.get("messages", [])[-HISTORY_MESSAGES:]
    return [
        {"role": "system", "content": _system_prompt(system_prompt, state.get("memories", []))},
        *history,
        {"role": "user", "content": state["user"]},
        *state.get("scratch", []),
    ]


async def _complete(
    state: TurnState, ctx: TurnContext, policy: TurnPolicy, index: int, *, tools: list[dict[str, Any]] | None
) -> Completion:
    spec = policy.candidate(index)
    client = ctx.llm(spec.base_url)
    return await client.complete(
        _chat(state, spec.system_prompt), model=spec.model, temperature=spec.temperature, tools=tools,
        top_logprobs=policy.top_logprobs, max_tokens=policy.max_tokens, timeout_s=_remaining(ctx, policy),
    )


# ------------------------------------------------------------------------------------------------
# Nodes, in the order a turn runs them


def _speculate(ctx: TurnContext, state: TurnState, policy: TurnPolicy) -> None:
    """Start the turn's memory search before the retrieval gate decides (``TurnPolicy.speculative_retrieval``).

    The search only reads: if the gate then does not fire, dropping it costs CPU and nothing else. (Started
    with the input guard instead, the search waits for the message's vector and then competes with the guard's
    check for the cores: three interleaved pairs of bench runs showed no difference outside the VM's noise.)
    """
    if ctx.speculative_search is not None or state.get("retrieved") or state.get("tool_round", 0):
        return
    if not policy.speculative_retrieval or policy.force_retrieval is False or policy.retrieve_top_k <= 0:
        return
    task = asyncio.create_task(ctx.ports.memory.search(state["user"], policy.retrieve_top_k, policy.token_budget))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    ctx.speculative_search = task


async def _offered_tools(ctx: TurnContext, state: TurnState, policy: TurnPolicy) -> list[dict[str, Any]] | None:
    """The tool specs the LLM is offered in this round (none past max_tool_rounds)."""
    if policy.tools and state.get("tool_round", 0) < policy.max_tool_rounds:
        return await ctx.ports.tools.specs(policy.tools) or None
    return None


@_stage("input_guard")
async def input_guard(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Guard the user's message (STAGE_INPUT)."""
    ctx, policy = runtime.context, TurnPolicy.from_dict(state["policy"])
    if policy.parallel_input_guard and ctx.early_answer is None:
        async def first_answer() -> Completion:
            return await _complete(state, ctx, policy, 0, tools=await _offered_tools(ctx, state, policy))

        ctx.early_answer = asyncio.create_task(first_answer())
        ctx.early_answer.add_done_callback(lambda t: t.cancelled() or t.exception())
    try:
        v = await ctx.ports.guard.check("input", state["user"], tools=policy.tools, thread_id=ctx.thread_id)
    except BaseException:
        _drop_early_answer(ctx)
        raise
    if v.decision != ALLOW:
        # Blocked or held for review: the answer written meanwhile is never used (a resumed turn asks again).
        _drop_early_answer(ctx)
    runtime.stream_writer(_guard_event("input", v))
    return {"input_verdict": {"decision": v.decision, "verdict_id": v.verdict_id, "reason": v.reason}}


def _drop_early_answer(ctx: TurnContext) -> None:
    if ctx.early_answer is not None:
        ctx.early_answer.cancel()
        ctx.early_answer = None


async def review_input(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Pause for a human decision on an input the guard sent to REVIEW."""
    v = state["input_verdict"]
    answer = interrupt({"kind": "review", "stage": "input", "text": state["user"],
                        "verdict_id": v.get("verdict_id", ""), "reason": v.get("reason", "")})
    return {"input_verdict": {**v, "decision": _resume_decision(answer)}}


@_stage("agent")
async def agent(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Ask the LLM (candidate 0's spec) with the conversation, memories and tool results so far; tools are offered
    until max_tool_rounds."""
    ctx, policy = runtime.context, TurnPolicy.from_dict(state["policy"])
    if not state.get("retrieved") and state.get("tool_round", 0) == 0:
        # The turn's first LLM call: while the LLM answers, embed what retrieval (the message as a query) and
        # the memory write (the user's turn) will ask for. Not during the input guard, which is on the
        # critical path and would share the cores with it.
        # The query first: retrieval waits for it; the user's turn only for the memory write at the end.
        _prefetch(ctx, state["user"], [])
        if policy.write_memory:
            _prefetch(ctx, "", [(f"{state['turn_id']}-u", state.get("speaker") or "user", state["user"])])
        _speculate(ctx, state, policy)
    early, ctx.early_answer = ctx.early_answer, None
    if early is not None and not state.get("retrieved") and state.get("tool_round", 0) == 0:
        completion = await early  # asked for while the input guard checked the message
    else:
        if early is not None:
            early.cancel()
        completion = await _complete(state, ctx, policy, 0, tools=await _offered_tools(ctx, state, policy))
    for call in completion.tool_calls:
        # Embed each call's guard check now: it runs during the retrieval and the LLM call that follow the
        # first answer (which usually asks for the same calls again), or right after the gate otherwise.
        _ahead(ctx, functools.partial(ctx.ports.guard.warm, "tool_call", state["user"],
                                      tool_call=(call.name, call.arguments_json), tools=policy.tools))
    return {"draft": completion.to_state()}


@_stage("retrieve_gate")
async def retrieve_gate(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Decide from the first answer's token entropy whether memory is worth searching."""
    ctx, policy = runtime.context, TurnPolicy.from_dict(state["policy"])
    if policy.force_retrieval is not None:
        g = GateOutcome(RETRIEVE, policy.force_retrieval, fallback_reason="forced by policy")
    else:
        draft = Completion.from_state(state["draft"])
        g = await ctx.ports.gates.decide(RETRIEVE, draft.tokens, session_id=ctx.thread_id)
    runtime.stream_writer(_gate_event(g))
    if not g.fire and ctx.speculative_search is not None:
        ctx.speculative_search.cancel()
        ctx.speculative_search = None
    return {"retrieve_fire": g.fire, "retrieved": True}


@_stage("retrieve")
async def retrieve(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Search memory with the user's message; the memory router's weights go into the event."""
    ctx, policy = runtime.context, TurnPolicy.from_dict(state["policy"])
    # No wait for the prefetches: the search's embedder waits for a query another thread is embedding, and
    # the user's turn goes on embedding on the other core meanwhile.
    speculative, ctx.speculative_search = ctx.speculative_search, None
    found = None
    if speculative is not None:
        try:
            found = await speculative
        except Exception:  # search again below, so that an error, if it repeats, is the turn's
            log.debug("speculative memory search failed", exc_info=True)
    if found is None:
        found = await ctx.ports.memory.search(state["user"], policy.retrieve_top_k, policy.token_budget)
    hits, routing = found
    memories = [{"id": h.id, "text": h.text, "score": h.score, "granularity": h.granularity} for h in hits]
    runtime.stream_writer({"type": "retrieval", "query": state["user"], "hits": memories, "routing": routing})
    return {"memories": memories}


@_stage("tool_gate")
async def tool_gate(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Score the tool-calling answer with the CALL_TOOL gate (advisory unless enforce_tool_gate)."""
    ctx, policy = runtime.context, TurnPolicy.from_dict(state["policy"])
    draft = Completion.from_state(state["draft"])
    g = await ctx.ports.gates.decide(CALL_TOOL, draft.tokens, session_id=ctx.thread_id)
    runtime.stream_writer(_gate_event(g))
    # Only the tools this round offered may run: an LLM can name any tool (a prompt injection in a tool result or
    # a memory can make it), and the tool pipeline would run whatever it is asked for.
    offered = {s.get("function", {}).get("name") for s in (await _offered_tools(ctx, state, policy) or [])}
    # "tool" is the registered name behind the LLM's function name ("memory__search" is memory.search): the
    # guard, the approval list and the pipeline all speak of tools by their own names.
    calls = [{**c, "not_offered": c["name"] not in offered, "tool": _tool_name(c, policy)}
             for c in state["draft"]["tool_calls"]]
    if policy.enforce_tool_gate and not g.fire:
        # Confident enough to answer without the tools it asked for: ask again with tools switched off.
        return {"pending_calls": [], "tool_round": policy.max_tool_rounds}
    return {"pending_calls": calls}


def _tool_name(call: dict[str, Any], policy: TurnPolicy) -> str:
    """The registered tool behind a call: its "tool", else the policy's tool offered under the call's function
    name (``tool_gate`` sets "tool"; calls checkpointed before it did are mapped here too)."""
    if call.get("tool"):
        return str(call["tool"])
    return {function_name(t): t for t in policy.tools}.get(call["name"], call["name"])


@_stage("check_tools")
async def check_tools(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Guard each tool call (STAGE_TOOL_CALL) and mark the ones that need approval."""
    ctx, policy = runtime.context, TurnPolicy.from_dict(state["policy"])

    async def check(call: dict[str, Any]) -> dict[str, Any]:
        if call.get("not_offered"):
            return {**call, "verdict": {"decision": BLOCK, "verdict_id": "", "harm_score": 0.0,
                                        "reason": "not one of the tools offered in this turn"},
                    "needs_approval": False, "approved": False}
        tool = _tool_name(call, policy)
        v = await ctx.ports.guard.check("tool_call", state["user"], tool_call=(tool, call["arguments_json"]),
                                        tools=policy.tools, thread_id=ctx.thread_id)
        runtime.stream_writer(_guard_event("tool_call", v))
        needs = v.decision == REVIEW or tool in policy.approval_tools or call["name"] in policy.approval_tools
        return {**call, "verdict": {"decision": v.decision, "verdict_id": v.verdict_id, "reason": v.reason,
                                    "harm_score": v.harm_score},
                "needs_approval": needs and v.decision != BLOCK,
                "approved": v.decision != BLOCK and not needs}

    return {"pending_calls": list(await asyncio.gather(*(check(c) for c in state["pending_calls"])))}


async def approve_tools(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Pause once per tool call that needs approval (policy or a REVIEW verdict)."""
    policy = TurnPolicy.from_dict(state["policy"])
    calls = []
    for call in state["pending_calls"]:
        if call.get("needs_approval"):
            v = call["verdict"]
            kind = "review" if v["decision"] == REVIEW else "tool_approval"
            answer = interrupt({"kind": kind, "stage": "tool_call", "text": state["user"],
                                "tool_call": {"name": _tool_name(call, policy),
                                              "arguments_json": call["arguments_json"]},
                                "verdict_id": v.get("verdict_id", ""), "reason": v.get("reason", "")})
            call = {**call, "needs_approval": False, "approved": _resume_decision(answer) == ALLOW}
        calls.append(call)
    return {"pending_calls": calls}


@_stage("run_tools")
async def run_tools(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Run approved calls through the tool pipeline in parallel; refused ones become errors the LLM sees."""
    ctx, policy = runtime.context, TurnPolicy.from_dict(state["policy"])
    write = runtime.stream_writer

    async def run(call: dict[str, Any]) -> str:
        write({"type": "tool_call", "call_id": call["id"], "name": call["name"],
               "arguments_json": call["arguments_json"]})
        if not call.get("approved"):
            decision = call.get("verdict", {}).get("decision")
            if call.get("not_offered"):
                error = f"tool {call['name']!r} was not offered in this turn"
            else:
                error = "blocked by the guard" if decision == BLOCK else "refused at review"
            write({"type": "tool_result", "call_id": call["id"], "name": call["name"], "result_json": "",
                   "error": error})
            return json.dumps({"error": error})
        v = call.get("verdict", {})
        checked = GuardOutcome(v.get("decision", ALLOW), v.get("verdict_id", ""), v.get("harm_score", 0.0),
                               reason=v.get("reason", ""))
        tool = _tool_name(call, policy)
        out = await ctx.ports.tools.invoke(tool, call["arguments_json"], call_id=call["id"],
                                           instruction=state["user"], session_id=ctx.thread_id, checked=checked)
        result, error = out.result_json, out.error
        # The tool Invoke pipeline guards results itself; other tool ports get the check here.
        if not error and not getattr(ctx.ports.tools, "guards_results", False):
            v = await ctx.ports.guard.check("tool_result", result, tool_call=(tool, call["arguments_json"]),
                                            tools=policy.tools, thread_id=ctx.thread_id)
            write(_guard_event("tool_result", v))
            if v.decision != ALLOW:
                # A REVIEW on a result withholds it too: the LLM must not act on unreviewed content.
                result, error = "", f"tool result withheld by the guard ({v.decision})"
        write({"type": "tool_result", "call_id": call["id"], "name": call["name"], "result_json": result,
               "error": error})
        return result if not error else json.dumps({"error": error})

    calls = state["pending_calls"]
    contents = await asyncio.gather(*(run(c) for c in calls))
    assistant = {
        "role": "assistant", "content": state["draft"].get("text") or None,
        "tool_calls": [{"id": c["id"], "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments_json"]}} for c in calls],
    }
    tool_msgs = [{"role": "tool", "tool_call_id": c["id"], "content": content}
                 for c, content in zip(calls, contents, strict=True)]
    return {"scratch": [*state.get("scratch", []), assistant, *tool_msgs],
            "tool_round": state.get("tool_round", 0) + 1, "pending_calls": []}


@_stage("candidates")
async def candidates(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Candidate 0 is the agent's answer; the others answer the same context with their own spec."""
    ctx, policy = runtime.context, TurnPolicy.from_dict(state["policy"])
    first = Completion.from_state(state["draft"]).text
    if policy.num_candidates > 1 and first:
        # While the LLM writes the other candidates, embed what the output guard and the memory write will need
        # if the agent's own answer is selected (or another with the same text). Idle cores otherwise: the
        # other candidates take an LLM call's time.
        _ahead(ctx, functools.partial(ctx.ports.guard.warm, "output", first, tools=policy.tools))
        if policy.write_memory:
            _prefetch(ctx, "", [(f"{state['turn_id']}-a", "assistant", first)])
        ctx.warmed_answer = first
    # Candidate 0 is the agent's own final answer; the others answer the same context without tools.
    extra = await asyncio.gather(*(_complete(state, ctx, policy, i, tools=None)
                                   for i in range(1, policy.num_candidates)), return_exceptions=True)
    answered: list[tuple[str, Completion]] = [(policy.candidate(0).agent_id, Completion.from_state(state["draft"]))]
    left_out: list[tuple[str, str]] = []
    for i, result in enumerate(extra, start=1):
        agent_id = policy.candidate(i).agent_id
        if isinstance(result, Completion):
            answered.append((agent_id, result))
        elif isinstance(result, AgentrtError):
            # An extra candidate whose endpoint failed (down, slow, malformed answer) is left out: the turn already
            # has the agent's answer, and selection picks among those that answered.
            log.warning("turn on thread %r: candidate %d (%s) left out: %s", ctx.thread_id, i, agent_id, result)
            left_out.append((agent_id, str(result)))
        else:
            raise result  # a bug, cancellation or exit: not the endpoint's failure
    out = []
    # Indexes count the candidates that answered, so that the selection's index names one of these events (and
    # their position in the stream's candidate events: those left out come after them, with index -1).
    for i, (agent_id, c) in enumerate(answered):
        mean_lp = sum(t.logprob for t in c.tokens) / len(c.tokens) if c.tokens else 0.0
        runtime.stream_writer({"type": "candidate", "index": i, "agent_id": agent_id, "answer": c.text,
                               "mean_logprob": mean_lp, "num_tokens": len(c.tokens)})
        out.append({"agent_id": agent_id, "completion": c.to_state()})
    for agent_id, why in left_out:
        runtime.stream_writer({"type": "candidate", "index": -1, "agent_id": agent_id, "answer": "",
                               "mean_logprob": 0.0, "num_tokens": 0, "error": why})
    return {"candidates": out}


@_stage("select")
async def select(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Pick one candidate (answer selection over answers and token logprobs)."""
    ctx = runtime.context
    cands = [(c["agent_id"], Completion.from_state(c["completion"])) for c in state["candidates"]]
    if len(cands) == 1:
        index, confidence, method = 0, 1.0, "single"
    else:
        s = await ctx.ports.selector.select([CandidateView(a, c.text, c.tokens) for a, c in cands])
        index, confidence, method = s.index, s.confidence, s.method
    answer = cands[index][1].text
    runtime.stream_writer({"type": "selection", "index": index, "answer": answer, "confidence": confidence,
                           "method": method})
    return {"selected": {"index": index, "confidence": confidence, "method": method}, "answer": answer}


@_stage("output_guard")
async def output_guard(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Guard the selected answer (STAGE_OUTPUT)."""
    ctx, policy = runtime.context, TurnPolicy.from_dict(state["policy"])
    if policy.write_memory and state["answer"] != ctx.warmed_answer:
        # The answer's memory turn is embedded on the other core while the guard embeds the answer.
        _prefetch(ctx, "", [(f"{state['turn_id']}-a", "assistant", state["answer"])])
    v = await ctx.ports.guard.check("output", state["answer"], tools=policy.tools, thread_id=ctx.thread_id)
    runtime.stream_writer(_guard_event("output", v))
    return {"output_verdict": {"decision": v.decision, "verdict_id": v.verdict_id, "reason": v.reason}}


async def review_output(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Pause for a human decision on an answer the guard sent to REVIEW."""
    v = state["output_verdict"]
    answer = interrupt({"kind": "review", "stage": "output", "text": state["answer"],
                        "verdict_id": v.get("verdict_id", ""), "reason": v.get("reason", "")})
    return {"output_verdict": {**v, "decision": _resume_decision(answer)}}


@_stage("blocked")
async def blocked(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Replace the answer with a refusal."""
    return {"status": "blocked", "answer": BLOCKED_ANSWER}


@_stage("write_memory")
async def write_memory(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Write the user's message and the answer to memory in one call (the last side effect)."""
    ctx, policy = runtime.context, TurnPolicy.from_dict(state["policy"])
    _begin_commit(ctx)
    if not policy.write_memory:
        return {}
    turn = state["turn_id"]
    await _prefetched(ctx)
    # Deterministic ids: a write retried after a crash between the write and the checkpoint is a no-op.
    messages = [
        (f"{turn}-u", state.get("speaker") or "user", state["user"]),
        (f"{turn}-a", "assistant", state["answer"]),
    ]
    # An LLM may end a turn with no text (only tool calls past max_tool_rounds, or an empty answer): memory keeps
    # the user's message and nothing for the answer (memory refuses empty messages).
    messages = [m for m in messages if m[2].strip()]
    write = asyncio.ensure_future(ctx.ports.memory.write(ctx.thread_id, messages))
    try:
        ids = await asyncio.shield(write)
    except asyncio.CancelledError:
        # The runner does not cancel a committing turn; this is a cancellation of the graph task itself (the
        # sidecar stopping): the write goes on in a worker thread and may still commit, while the thread's
        # checkpoint will not count this turn. Take it back once it is done, so the turn leaves no memory.
        await asyncio.shield(_take_back(ctx, write, [m[0] for m in messages]))
        raise
    runtime.stream_writer({"type": "memory_write", "message_ids": list(ids)})
    return {"memory_ids": list(ids)}


async def _take_back(ctx: TurnContext, write: asyncio.Future[list[str]], message_ids: list[str]) -> None:
    try:
        await write
    except Exception:  # the write failed: nothing was stored
        return
    try:
        await ctx.ports.memory.delete(message_ids)
    except Exception:
        log.exception("could not take back the memory write of a cancelled turn (message ids %s)", message_ids)


@_stage("finish")
async def finish(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Append the exchange to the thread's conversation and count the turn."""
    status = "blocked" if state.get("status") == "blocked" else "completed"
    return {
        "status": status,
        "messages": [{"role": "user", "content": state["user"]}, {"role": "assistant", "content": state["answer"]}],
        "turns": state.get("turns", 0) + 1,
        "turn_ids": [*state.get("turn_ids", [])[-(TURN_IDS_KEPT - 1):], state["turn_id"]],
    }


# ------------------------------------------------------------------------------------------------
# Graph nodes that run two stages back to back. Every LangGraph step costs scheduling, channel and
# checkpoint bookkeeping; stages with no interrupt between them share one step (their events are the same).


def _then(first: Node, second: Node, when: Callable[[dict[str, Any]], bool] = lambda _out: True) -> Node:
    """A node running ``first``, then ``second`` on the updated state when ``when(first's update)``."""

    @functools.wraps(first)
    async def node(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
        out = await first(state, runtime)
        if when(out):
            out = {**out, **await second(cast(TurnState, {**state, **out}), runtime)}
        return out

    return node


#: The retrieval gate, and the memory search when it fired.
gated_retrieval = _then(retrieve_gate, retrieve, lambda out: bool(out["retrieve_fire"]))
#: The CALL_TOOL gate, and the guard checks of the calls it kept.
gated_tool_calls = _then(tool_gate, check_tools, lambda out: bool(out["pending_calls"]))
#: Candidates, then the selection among them.
answers = _then(candidates, select)
#: The last side effect, then the turn's bookkeeping.
write_and_finish = _then(write_memory, finish)
#: The refusal, then the turn's bookkeeping.
block_and_finish = _then(blocked, finish)


def _resume_decision(answer: Any) -> str:
    """The decision a Resume sent ("allow" or "block"; anything else refuses)."""
    decision = answer.get("decision") if isinstance(answer, dict) else answer
    return ALLOW if decision == ALLOW else BLOCK


# ------------------------------------------------------------------------------------------------
# Routing (async although they never await: LangGraph runs a sync router in a thread pool, a thread hop
# per edge)


async def after_input_guard(state: TurnState) -> str:
    """Route on the input verdict."""
    d = state["input_verdict"]["decision"]
    return {BLOCK: "blocked", REVIEW: "review_input"}.get(d, "agent")


async def after_review(state: TurnState) -> str:
    """Route on the human's decision about the input."""
    return "agent" if state["input_verdict"]["decision"] == ALLOW else "blocked"


async def after_agent(state: TurnState) -> str:
    """First answer -> retrieval gate; tool calls -> tool gate; otherwise -> candidates."""
    policy = TurnPolicy.from_dict(state["policy"])
    if not state.get("retrieved") and state.get("tool_round", 0) == 0 and policy.force_retrieval is not False:
        return "retrieve_gate"
    return "tool_gate" if _runs_tools(state, policy) else "candidates"


def _runs_tools(state: TurnState, policy: TurnPolicy) -> bool:
    """Whether the draft's tool calls go to the tools. Past max_tool_rounds no tools are offered; an LLM that asks
    for them anyway gets its answer taken as final (otherwise it could keep a turn calling tools until the
    deadline)."""
    return bool(state["draft"].get("tool_calls")) and state.get("tool_round", 0) < policy.max_tool_rounds


async def after_retrieval(state: TurnState) -> str:
    """Ask again when memory had something (the gate fired and the search found hits); otherwise continue
    with the first answer."""
    if state.get("memories"):
        return "agent"  # ask again, now with the memories
    return "tool_gate" if _runs_tools(state, TurnPolicy.from_dict(state["policy"])) else "candidates"


async def after_tool_checks(state: TurnState) -> str:
    """Ask again without tools when the enforced gate held; pause when a checked call needs approval;
    otherwise run the calls."""
    calls = state.get("pending_calls") or []
    if not calls:
        return "agent"
    return "approve_tools" if any(c.get("needs_approval") for c in calls) else "run_tools"


async def after_output_guard(state: TurnState) -> str:
    """Route on the output verdict."""
    d = state["output_verdict"]["decision"]
    return {BLOCK: "blocked", REVIEW: "review_output"}.get(d, "write_memory")


async def after_review_output(state: TurnState) -> str:
    """Route on the human's decision about the answer."""
    return "write_memory" if state["output_verdict"]["decision"] == ALLOW else "blocked"


def build_graph() -> StateGraph[TurnState, TurnContext, TurnState, TurnState]:
    """The turn graph, uncompiled (compile it with a checkpointer)."""
    g: StateGraph[TurnState, TurnContext, TurnState, TurnState] = StateGraph(TurnState, context_schema=TurnContext)
    nodes: dict[str, Any] = {
        "input_guard": input_guard, "review_input": review_input, "agent": agent,
        "retrieve_gate": gated_retrieval, "tool_gate": gated_tool_calls, "approve_tools": approve_tools,
        "run_tools": run_tools, "candidates": answers, "output_guard": output_guard,
        "review_output": review_output, "blocked": block_and_finish, "write_memory": write_and_finish,
    }
    for name, fn in nodes.items():
        g.add_node(name, fn)
    g.add_edge(START, "input_guard")
    g.add_conditional_edges("input_guard", after_input_guard, ["agent", "review_input", "blocked"])
    g.add_conditional_edges("review_input", after_review, ["agent", "blocked"])
    g.add_conditional_edges("agent", after_agent, ["retrieve_gate", "tool_gate", "candidates"])
    g.add_conditional_edges("retrieve_gate", after_retrieval, ["agent", "tool_gate", "candidates"])
    g.add_conditional_edges("tool_gate", after_tool_checks, ["agent", "approve_tools", "run_tools"])
    g.add_edge("approve_tools", "run_tools")
    g.add_edge("run_tools", "agent")
    g.add_edge("candidates", "output_guard")
    g.add_conditional_edges("output_guard", after_output_guard, ["write_memory", "review_output", "blocked"])
    g.add_conditional_edges("review_output", after_review_output, ["write_memory", "blocked"])
    g.add_edge("blocked", END)
    g.add_edge("write_memory", END)
    return g


def new_turn_id() -> str:
    """A fresh turn id."""
    return uuid.uuid4().hex
