"""The Invoke pipeline, in the order it runs:

    validate → guard (STAGE_TOOL_CALL) → CALL_TOOL gate (only when logprobs are sent) → execute
    → guard (STAGE_TOOL_RESULT) → memory write (by namespace policy) → audit

A guard BLOCK/REVIEW or a held gate stops the call with an OK reply that names the step and the
reason; bad input and faults raise ``core.errors`` (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE,
DEADLINE_EXCEEDED). Every outcome, raised or returned, is audited.

The guard, gate and memory engines are reached through the small Protocols below, so this file only
needs their call shapes; ``runtime/services/tool.py`` wires the real ones from the Runtime.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.errors import (
    AgentrtError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from guards.model import Decision, GuardRequest, GuardVerdict, Stage, ToolCallInfo
from runtime.container import check_guard
from tools.model import (
    MAX_SESSION_ID_LEN,
    AuditRecord,
    ExecutorKind,
    Outcome,
    Step,
    ToolDefinition,
    args_hash,
    utcnow,
)
from tools.registry import ToolRegistry
from tools.validation import parse_arguments

log = logging.getLogger(__name__)

# A memory write of a tool result keeps at most this many characters (the audit keeps none).
MEMORY_RESULT_CHARS = 4000
# Retry advice when the guard or gate backend failed (a database or model hiccup is usually brief).
BACKEND_RETRY_S = 1.0


class GuardChecker(Protocol):
    """``GuardEngine.check`` (blocking; run through offload)."""

    def check(self, scope: str, request: GuardRequest) -> GuardVerdict:
        """Check one request."""
        ...


class GateDecider(Protocol):
    """``GateEngine.decide`` (blocking; run through offload)."""

    def decide(self, scope: str, gate: Any, tokens: Any, *, session_id: str = "") -> Any:
        """A decision with ``decision_id``, ``fire``, ``score``, ``threshold``, ``signal``."""
        ...


class MemoryPort(Protocol):
    """What Invoke and the memory builtins need from the memory engine."""

    async def write(self, scope: str, session_id: str, messages: Sequence[tuple[str, str]]) -> list[str]:
        """Store ``(speaker, text)`` messages; returns their ids."""
        ...

    async def search(self, scope: str, query: str, top_k: int) -> list[dict[str, Any]]:
        """Hits as plain dicts (id, text, score, ...)."""
        ...


@dataclass(frozen=True)
class CheckedCall:
    """A STAGE_TOOL_CALL verdict the in-process caller already holds for this exact call.

    The turn graph guards each tool call before its approval step (a REVIEW pauses the turn for a human);
    checking the call again in Invoke would cost a second guard pass and would hold a call a human just
    approved. Only in-process callers build this; Invoke over gRPC always runs the guard itself.
    """

    verdict_id: str
    decision: Decision
    harm_score: float = 0.0
    #: A human approved the call at review (``decision`` was REVIEW).
    approved: bool = False


@dataclass(frozen=True)
class InvokeRequest:
    """One Invoke call, after the namespace was resolved to its scope."""

    scope: str
    name: str
    arguments_json: str = ""
    arguments_field: str = "arguments_json"
    """The request field ``arguments_json`` came from, named in violations (``tool_call.arguments_json``)."""
    instruction: str = ""
    tokens: Any = ()
    """Logprobs behind the call: a gates ``TokenStream`` or a sequence of token dicts."""
    available_tools: tuple[str, ...] = ()
    caller: str = ""
    timeout_s: float = 0.0
    version: int = 0
    session_id: str = ""
    deadline_s: float | None = None
    """What is left of the caller's deadline when Invoke starts (in-process callers); see ``deadline_at``."""
    deadline_at: float | None = None
    """The caller's deadline on the ``time.monotonic()`` clock (the RPC's, less a margin for the reply).

    Absolute, so the execute budget is what is left right before the tool is called, after validation and
    the call guard spent their share: a budget read when the request arrived would let the tool run past
    the RPC deadline, and the call would end cancelled instead of DEADLINE_EXCEEDED with its audit."""
    checked_call: CheckedCall | None = None
    """The call's verdict from an in-process caller (see ``CheckedCall``); None: Invoke guards the call."""


@dataclass(frozen=True)
class InvokeResult:
    """The reply of Invoke."""

    invocation_id: str
    outcome: Outcome
    stopped_at: Step = Step.NONE
    reason: str = ""
    output: str = ""
    is_error: bool = False
    truncated: bool = False
    output_bytes: int = 0
    attempts: int = 0
    duration_ms: float = 0.0
    tool_version: int = 0
    call_verdict: GuardVerdict | None = None
    result_verdict: GuardVerdict | None = None
    gate: Any = None
    memory_message_ids: tuple[str, ...] = ()


@dataclass
class _Trace:
    """What the audit record needs, filled in as the pipeline runs."""

    request: InvokeRequest
    started: float = field(default_factory=time.perf_counter)
    tool_version: int = 0
    arguments_sha256: str = ""
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    step: Step = Step.VALIDATE
    """The step running now: a failure or cancellation is audited as stopped there."""
    audited: bool = False
    stored: asyncio.Future[None] | None = None
    """Done once the audit record is stored (or holding why it could not be)."""
    attempts: int = 0
    truncated: bool = False


# Steps at or after which the tool has been contacted (a cancellation there is worth saying so).
_AFTER_CONTACT = frozenset({Step.EXECUTE.value, Step.GUARD_RESULT.value, Step.MEMORY.value})


class StepUnavailableError(UnavailableError):
    """A guard or gate backend failed (raised, not decided): UNAVAILABLE, audited at ``step``."""

    def __init__(self, message: str, step: Step):
        self.step = step
        super().__init__(message, retry_after_s=BACKEND_RETRY_S)


def _backend_failure(what: str, step: Step, exc: Exception, after: str = "") -> Exception:
    """A guard or gate that raised instead of deciding, as the error Invoke raises on.

    Domain errors (a request the guard refuses to check, its own UnavailableError) pass unchanged; anything
    else is the backend failing (its database, its model): UNAVAILABLE with retry advice rather than INTERNAL,
    as a retry is likely to succeed. The message names the exception type only; the details go to the log."""
    if isinstance(exc, AgentrtError):
        return exc
    log.warning("%s failed: %s: %s", what, type(exc).__name__, exc, exc_info=exc)
    return StepUnavailableError(f"{what} failed ({type(exc).__name__}){after}; retry later", step)


def _failure_outcome(exc: BaseException) -> Outcome:
    """The audited outcome of an Invoke that raised ``exc`` outside the execute step."""
    if isinstance(exc, UnavailableError):
        return Outcome.UNAVAILABLE
    if isinstance(exc, DeadlineExceededError):
        return Outcome.DEADLINE_EXCEEDED
    if isinstance(exc, InvalidArgumentError):
        return Outcome.INVALID_ARGUMENT
    if isinstance(exc, NotFoundError):
        return Outcome.NOT_FOUND
    if isinstance(exc, FailedPreconditionError):
        return Outcome.FAILED_PRECONDITION
    return Outcome.INTERNAL


def _execute_outcome(exc: Exception) -> Outcome:
    """The audited outcome of a call whose execution raised ``exc`` (Invoke raises it on): as outside execute
    (NOT_FOUND: an MCP tool whose server was never imported; FAILED_PRECONDITION: an MCP server refused the
    call), except that an unexpected failure of a builtin's handler or an executor is the tool's error: the
    tool gave no answer."""
    outcome = _failure_outcome(exc)
    return Outcome.TOOL_ERROR if outcome == Outcome.INTERNAL else outcome


def _verdict_reason(stage: str, v: GuardVerdict) -> str:
    top = v.evidence[0] if v.evidence else None
    why = f"{top.kind} {top.ref}: {top.text}" if top is not None else f"decided by {v.decided_by}"
    category = f", category {v.category}" if v.category else ""
    return f"guard {v.decision.value} at {stage} (harm {v.harm_score:.2f}{category}; {why})"


class ToolInvoker:
    """Runs Invoke for one sidecar: owns no state besides its collaborators."""

    def __init__(
        self,
        registry: ToolRegistry,
        offload: Callable[..., Awaitable[Any]],
        *,
        guards: GuardChecker | None = None,
        gates: GateDecider | None = None,
        memory: MemoryPort | None = None,
        durable_records: bool = False,
    ):
        """``durable_records``: an Invoke answers (or fails) only once its audit record is stored
        (``storage.durable_records``; by default records are written behind)."""
        self.durable_records = durable_records
        self.registry = registry
        self._offload = offload
        self.guards = guards
        self.gates = gates
        self.memory = memory

    def _audit(
        self,
        trace: _Trace,
        outcome: Outcome,
        stopped_at: Step,
        reason: str,
        *,
        attempts: int = 0,
        truncated: bool = False,
    ) -> tuple[str, float]:
        req = trace.request
        trace.audited = True
        record_id = uuid.uuid4().hex
        duration_ms = (time.perf_counter() - trace.started) * 1000
        tenant = req.scope.partition("/")[0]
        trace.stored = self.registry.audit(
            req.scope,
            AuditRecord(
                id=record_id,
                tool_name=req.name,
                tool_version=trace.tool_version,
                caller=f"{tenant}:{req.caller}" if req.caller else tenant,
                arguments_sha256=trace.arguments_sha256,
                outcome=outcome,
                stopped_at=stopped_at,
                reason=reason[:2000],
                duration_ms=duration_ms,
                attempts=attempts,
                verdicts=tuple(trace.verdicts),
                truncated=truncated,
                created_at=utcnow(),
            ),
        )
        return record_id, duration_ms

    def _guard_request(
        self, req: InvokeRequest, stage: Stage, text: str, tool: ToolDefinition, args: str
    ) -> GuardRequest:
        return GuardRequest(
            stage=stage,
            text=text,
            tool_call=ToolCallInfo(name=tool.name, arguments_json=args),
            available_tools=req.available_tools,
            metadata={"tool": tool.name, "tool_version": str(tool.version), "risk_tags": ",".join(tool.risk_tags)},
        )

    @staticmethod
    def _trace_verdict(trace: _Trace, verdict: GuardVerdict) -> None:
        trace.verdicts.append(
            {
                "stage": verdict.stage.value,
                "decision": verdict.decision.value,
                "id": verdict.verdict_id,
                "score": round(float(verdict.harm_score), 6),
            }
        )

    async def _guard(
        self, trace: _Trace, stage: Stage, text: str, tool: ToolDefinition, arguments_json: str
    ) -> GuardVerdict | None:
        if self.guards is None:
            return None
        request = self._guard_request(trace.request, stage, text, tool, arguments_json)
        try:
            verdict: GuardVerdict = await check_guard(self.guards, self._offload, trace.request.scope, request)
        except Exception as exc:
            after = "; the tool ran and its output is withheld" if stage == Stage.TOOL_RESULT else ""
            raise _backend_failure(f"guard check at {stage.value}", trace.step, exc, after) from exc
        self._trace_verdict(trace, verdict)
        return verdict

    def _check_call(
        self, req: InvokeRequest, tool: ToolDefinition, args: str, guard: bool, *, at_once: bool = False
    ) -> tuple[GuardVerdict | None, Any] | None:
        """Guard the call (when ``guard``), then, unless the guard stopped it, decide the CALL_TOOL gate.

        ``at_once``: only if both can answer without blocking (cached embeddings and policies: see
        ``GuardEngine.check_now`` and ``GateEngine.can_decide_now``), as the event loop calls it; None (and
        nothing decided) otherwise. Else it runs in one worker-thread hop for both: with a cached embedding
        each costs about a third of a millisecond, less than a hop to the thread pool and back under load.
        """
        needs_gate = self.gates is not None and len(req.tokens) > 0
        if at_once and needs_gate:
            can_decide_now = getattr(self.gates, "can_decide_now", None)
            if can_decide_now is None or not can_decide_now(req.scope, "call_tool", req.session_id):
                return None
        verdict = None
        if guard and self.guards is not None:
            request = self._guard_request(req, Stage.TOOL_CALL, req.instruction, tool, args)
            try:
                if at_once:
                    check_now = getattr(self.guards, "check_now", None)
                    verdict = check_now(req.scope, request) if check_now is not None else None
                    if verdict is None:
                        return None
                else:
                    verdict = self.guards.check(req.scope, request)
            except Exception as exc:
                raise _backend_failure("guard check at tool_call", Step.GUARD_CALL, exc) from exc
            if verdict.decision in (Decision.BLOCK, Decision.REVIEW):
                return verdict, None
        gate = None
        if needs_gate:
            assert self.gates is not None
            try:
                gate = self.gates.decide(req.scope, "call_tool", req.tokens, session_id=req.session_id)
            except Exception as exc:
                raise _backend_failure("CALL_TOOL gate", Step.GATE, exc) from exc
        return verdict, gate

    async def invoke(self, req: InvokeRequest) -> InvokeResult:
        """Run the pipeline; see the module docstring for the order and the error contract."""
        if req.deadline_at is None and req.deadline_s is not None:
            req = dataclasses.replace(req, deadline_at=time.monotonic() + req.deadline_s)
        trace = _Trace(req)
        try:
            result = await self._invoke(trace)
        except asyncio.CancelledError:
            # The caller went away (gRPC cancel) or its deadline passed (the RPC's, or the server's default as
            # an asyncio timeout): the tool may already have been contacted, so this call is audited as well.
            # ``_audit`` only queues the record (no await), so the cancellation cannot interrupt it.
            if not trace.audited:
                passed = req.deadline_at is not None and time.monotonic() >= req.deadline_at
                outcome = Outcome.DEADLINE_EXCEEDED if passed else Outcome.CANCELLED
                why = "the caller's deadline passed" if passed else "the caller cancelled the call"
                contacted = " (the tool may already have run)" if trace.step.value in _AFTER_CONTACT else ""
                self._audit(
                    trace,
                    outcome,
                    trace.step,
                    f"{why} during {trace.step.value}{contacted}",
                    attempts=trace.attempts,
                    truncated=trace.truncated,
                )
            raise
        except Exception as exc:
            # One place audits every failure the steps did not audit themselves (a guard or gate backend that
            # raised, a policy that could not be read), stopped at the step that was running.
            if not trace.audited:
                step = exc.step if isinstance(exc, StepUnavailableError) else trace.step
                self._audit(
                    trace,
                    _failure_outcome(exc),
                    step,
                    f"{type(exc).__name__}: {exc}",
                    attempts=trace.attempts,
                    truncated=trace.truncated,
                )
            raise
        finally:
            if self.durable_records:
                # The audit record (its id is the response's invocation_id) is stored before the caller hears
                # back. Shielded: on a cancelled call the flush still completes (and a second cancel does not
                # lose the record).
                await asyncio.shield(self.registry.audit_log.flush())
        if self.durable_records and trace.stored is not None and trace.stored.done():
            error = trace.stored.exception()
            if error is not None:
                # The answer names a record that is not stored: say so rather than hand out its id. The tool has
                # run, so this is not an error to retry blindly.
                raise FailedPreconditionError(
                    f"the invocation of {req.name!r} completed but its audit record could not be stored "
                    f"({type(error).__name__}); the tool has run, do not retry without checking its effect"
                )
        return result

    async def _invoke(self, trace: _Trace) -> InvokeResult:
        req = trace.request
        # 1. The tool and its arguments.
        tool = await self.registry.get(req.scope, req.name, req.version)
        trace.tool_version = tool.version
        arguments, bad = parse_arguments(req.arguments_json, req.arguments_field)
        if not bad:
            # A stored schema that cannot be used is FAILED_PRECONDITION, raised and audited alike.
            bad = await self.registry.check_arguments(tool, arguments, req.arguments_field)
        trace.arguments_sha256 = args_hash(arguments if arguments is not None else req.arguments_json)
        if bad:
            self._audit(trace, Outcome.INVALID_ARGUMENT, Step.VALIDATE, "; ".join(v.description for v in bad))
            raise InvalidArgumentError(bad)
        assert isinstance(arguments, dict)
        canonical_args = json.dumps(arguments, sort_keys=True)
        policy = await self.registry.policy(req.scope)
        trace.step = Step.GUARD_CALL

        def stop(outcome: Outcome, step: Step, reason: str, **extra: Any) -> InvokeResult:
            record_id, duration_ms = self._audit(trace, outcome, step, reason)
            return InvokeResult(
                record_id, outcome, step, reason, duration_ms=duration_ms, tool_version=tool.version, **extra
            )

        # 2. Guard the call, with the instruction that led to it (unless the in-process caller already did).
        # 3. The CALL_TOOL gate fires when the model was unsure enough that a tool is worth calling;
        #    a confident model holds the gate and the call is skipped.
        if req.checked_call is not None:
            checked = req.checked_call
            trace.verdicts.append(
                {
                    "stage": Stage.TOOL_CALL.value,
                    "decision": "approved" if checked.approved else checked.decision.value,
                    "id": checked.verdict_id,
                    "score": round(float(checked.harm_score), 6),
                }
            )
            if checked.decision != Decision.ALLOW and not checked.approved:
                outcome = Outcome.BLOCKED if checked.decision == Decision.BLOCK else Outcome.REVIEW
                reason = f"guard {checked.decision.value} at tool_call (verdict {checked.verdict_id})"
                return stop(outcome, Step.GUARD_CALL, reason)
        guard_call = req.checked_call is None and policy.guard_calls and self.guards is not None
        call_verdict, gate = None, None
        if guard_call or (self.gates is not None and len(req.tokens) > 0):
            decided = self._check_call(req, tool, canonical_args, guard_call, at_once=True)
            if decided is None:
                decided = await self._offload(self._check_call, req, tool, canonical_args, guard_call)
            assert decided is not None  # only an at_once call declines
            call_verdict, gate = decided
        if call_verdict is not None:
            self._trace_verdict(trace, call_verdict)
            if call_verdict.decision in (Decision.BLOCK, Decision.REVIEW):
                outcome = Outcome.BLOCKED if call_verdict.decision == Decision.BLOCK else Outcome.REVIEW
                return stop(
                    outcome,
                    Step.GUARD_CALL,
                    _verdict_reason("tool_call", call_verdict),
                    call_verdict=call_verdict,
                )
        if gate is not None:
            trace.verdicts.append(
                {
                    "stage": "gate",
                    "decision": "fire" if gate.fire else "hold",
                    "id": gate.decision_id,
                    "score": round(float(gate.score), 6),
                }
            )
            if not gate.fire:
                reason = (
                    f"CALL_TOOL gate held: {getattr(gate, 'signal', 'score')} {gate.score:.3f} <= threshold "
                    f"{gate.threshold:.3f} (the model was confident without the tool)"
                )
                return stop(Outcome.GATE_STOPPED, Step.GATE, reason, call_verdict=call_verdict, gate=gate)

        # 4. Execute under the tool's deadline, concurrency limit, retry rule and output cap. The caller's
        #    deadline is read now: validation and the call guard have already spent part of it.
        trace.step = Step.EXECUTE
        budget = req.timeout_s if req.timeout_s > 0 else None
        try:
            if req.deadline_at is not None:
                left = req.deadline_at - time.monotonic()
                if left <= 0:
                    raise DeadlineExceededError(
                        f"the caller's deadline passed before tool {tool.name!r} was called "
                        "(spent in validation and the call guard)"
                    )
                budget = left if budget is None else min(budget, left)
            run = await self.registry.execute(req.scope, tool, arguments, deadline_s=budget)
        except Exception as exc:
            self._audit(trace, _execute_outcome(exc), Step.EXECUTE, f"{type(exc).__name__}: {exc}")
            if isinstance(exc, InvalidArgumentError) and tool.executor.kind == ExecutorKind.BUILTIN:
                # A builtin's handler names its own argument ("session_id"); the caller sent it in arguments_json.
                raise InvalidArgumentError(
                    [FieldViolation(f"{req.arguments_field}.{v.field}", v.description) for v in exc.violations]
                ) from exc
            raise

        trace.attempts, trace.truncated = run.attempts, run.truncated
        # 5. Guard the output: a tool result is untrusted text (indirect prompt injection).
        trace.step = Step.GUARD_RESULT
        result_verdict = None
        if policy.guard_results:
            result_verdict = await self._guard(trace, Stage.TOOL_RESULT, run.output, tool, canonical_args)
            if result_verdict is not None and result_verdict.decision in (Decision.BLOCK, Decision.REVIEW):
                outcome = Outcome.BLOCKED if result_verdict.decision == Decision.BLOCK else Outcome.REVIEW
                record_id, duration_ms = self._audit(
                    trace,
                    outcome,
                    Step.GUARD_RESULT,
                    _verdict_reason("tool_result", result_verdict),
                    attempts=run.attempts,
                    truncated=run.truncated,
                )
                # The output is withheld: handing it to the agent is what the guard just refused.
                return InvokeResult(
                    record_id,
                    outcome,
                    Step.GUARD_RESULT,
                    _verdict_reason("tool_result", result_verdict),
                    is_error=run.is_error,
                    truncated=run.truncated,
                    output_bytes=run.output_bytes,
                    attempts=run.attempts,
                    duration_ms=duration_ms,
                    tool_version=tool.version,
                    call_verdict=call_verdict,
                    result_verdict=result_verdict,
                    gate=gate,
                )

        # 6. Remember the call and its result when the namespace asks for it. The memory builtins are
        #    skipped: writing "memory.write(...)" into memory would only echo what they stored.
        trace.step = Step.MEMORY
        memory_ids: list[str] = []
        reason = ""
        is_memory_tool = tool.executor.kind == ExecutorKind.BUILTIN and tool.name.startswith("memory.")
        if policy.memory_write and self.memory is not None and not is_memory_tool:
            session = req.session_id or policy.memory_session_id
            try:
                memory_ids = await self.memory.write(
                    req.scope,
                    session,
                    [
                        ("tool_call", f"{tool.name}({canonical_args})"),
                        (f"tool_result:{tool.name}", run.output[:MEMORY_RESULT_CHARS]),
                    ],
                )
            except Exception as exc:  # the call itself succeeded; a memory failure is reported, not raised
                reason = f"memory write failed: {type(exc).__name__}: {exc}"

        outcome = Outcome.TOOL_ERROR if run.is_error else Outcome.OK
        record_id, duration_ms = self._audit(
            trace, outcome, Step.NONE, reason, attempts=run.attempts, truncated=run.truncated
        )
        return InvokeResult(
            record_id,
            outcome,
            Step.NONE,
            reason,
            output=run.output,
            is_error=run.is_error,
            truncated=run.truncated,
            output_bytes=run.output_bytes,
            attempts=run.attempts,
            duration_ms=duration_ms,
            tool_version=tool.version,
            call_verdict=call_verdict,
            result_verdict=result_verdict,
            gate=gate,
            memory_message_ids=tuple(memory_ids),
        )


def add_builtins(registry: ToolRegistry, memory: Callable[[], MemoryPort | None]) -> None:
    """Add the builtins: memory search and write (so an agent reaches memory through Invoke) and echo.

    ``memory`` is looked up at call time: the memory engine may be built after the tool registry.
    """

    def port() -> MemoryPort:
        m = memory()
        if m is None:
            raise UnavailableError("the memory engine is not available in this sidecar", retry_after_s=5.0)
        return m

    async def search(scope: str, args: dict[str, Any]) -> Any:
        hits = await port().search(scope, str(args["query"]), int(args.get("top_k", 5)))
        return {"hits": hits}

    async def write(scope: str, args: dict[str, Any]) -> Any:
        ids = await port().write(
            scope,
            str(args.get("session_id") or "agent-notes"),
            [(str(args.get("speaker", "agent")), str(args["text"]))],
        )
        return {"message_ids": ids}

    registry.builtins.add(
        "memory.search",
        "Search the agent's long-term conversation memory for passages relevant to a query "
        "(past messages, facts, sessions). Returns the best matching memory hits.",
        {
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "description": "what to look for in memory"},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 50, "description": "how many hits"},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        search,
        risk_tags=("read_only",),
        idempotent=True,
    )
    registry.builtins.add(
        "memory.write",
        "Store a note or message in the agent's long-term memory so it can be recalled later.",
        {
            "type": "object",
            "properties": {
                "text": {"type": "string", "minLength": 1, "description": "the text to remember"},
                # Memory refuses longer speakers and session ids (its MAX_ID_LEN): refused here, the field is named.
                "speaker": {
                    "type": "string",
                    "maxLength": MAX_SESSION_ID_LEN,
                    "description": "who said it (default 'agent')",
                },
                "session_id": {
                    "type": "string",
                    "maxLength": MAX_SESSION_ID_LEN,
                    "description": "memory session (default 'agent-notes')",
                },
            },
            "required": ["text"],
            "additionalProperties": False,
        },
        write,
        risk_tags=("writes_memory",),
    )

    async def echo(scope: str, args: dict[str, Any]) -> Any:
        return args

    registry.builtins.add(
        "echo",
        "Return the arguments unchanged (a no-op tool for testing connectivity and the pipeline).",
        {"type": "object"},
        echo,
        idempotent=True,
    )


__all__ = [
    "CheckedCall",
    "GateDecider",
    "GuardChecker",
    "InvokeRequest",
    "InvokeResult",
    "MemoryPort",
    "ToolInvoker",
    "add_builtins",
]
