"""The Invoke pipeline in order: validate → guard call → CALL_TOOL gate → execute → guard result → memory."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from core.embedding import create_embedder
from core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from guards.model import Decision, Evidence, GuardRequest, GuardVerdict, Stage
from runtime.db import create_db_engine
from runtime.gates.engine import GateEngine
from runtime.gates.schema import metadata as gate_metadata
from runtime.tool_invoke import CheckedCall, InvokeRequest, ToolInvoker, add_builtins
from tools.model import ExecutorKind, ExecutorSpec, Outcome, Step, ToolDefinition, ToolPolicy
from tools.registry import ToolRegistry
from tools.search import ToolSearch
from tools.store import InMemoryToolStore

SCOPE = "t/ns"
ECHO = ExecutorSpec(ExecutorKind.BUILTIN, builtin="echo")
CONFIDENT = [{"token": "call", "logprob": -0.01, "top_logprobs": [{"token": "call", "logprob": -0.01}]}] * 4
UNSURE = [{"token": "x", "logprob": -2.3, "top_logprobs": [{"token": t, "logprob": -2.3} for t in ("x", "y", "z")]}] * 4


class KeywordGuard:
    """A guard double: blocks any stage whose text or arguments contain a keyword, records requests."""

    def __init__(self) -> None:
        self.requests: list[GuardRequest] = []

    def check(self, scope: str, request: GuardRequest) -> GuardVerdict:
        self.requests.append(request)
        blob = request.text + (request.tool_call.arguments_json if request.tool_call else "")
        decision = Decision.BLOCK if "forbidden" in blob else Decision.ALLOW
        ev = (
            (Evidence("rule", "test.keyword", "the word 'forbidden'", decision, 1.0),)
            if decision == Decision.BLOCK
            else ()
        )
        return GuardVerdict(
            f"v{len(self.requests)}", decision, 1.0 if ev else 0.0, 0.0, request.stage, ev, decided_by="rule"
        )


class FakeMemory:
    def __init__(self) -> None:
        self.writes: list[tuple[str, str, list[tuple[str, str]]]] = []

    async def write(self, scope: str, session_id: str, messages: Sequence[tuple[str, str]]) -> list[str]:
        self.writes.append((scope, session_id, list(messages)))
        return [f"m{i}" for i in range(len(messages))]

    async def search(self, scope: str, query: str, top_k: int) -> list[dict[str, Any]]:
        return [{"id": "m0", "text": f"hit for {query}", "score": 1.0}][:top_k]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[ToolInvoker, KeywordGuard, FakeMemory]]:
    registry = ToolRegistry(InMemoryToolStore(), ToolSearch(create_embedder("hashing")))
    memory = FakeMemory()
    add_builtins(registry, lambda: memory)

    async def lookup(scope: str, args: dict[str, Any]) -> Any:
        return {"found": args["q"], "note": args.get("note", "")}

    registry.builtins.add(
        "lookup",
        "Look something up",
        {"type": "object", "properties": {"q": {"type": "string"}, "note": {"type": "string"}}, "required": ["q"]},
        lookup,
    )
    engine = create_db_engine(f"sqlite:///{tmp_path / 'gates.db'}")
    gate_metadata.create_all(engine)
    guard = KeywordGuard()
    invoker = ToolInvoker(registry, registry._offload, guards=guard, gates=GateEngine(engine), memory=memory)
    yield invoker, guard, memory
    await registry.aclose()
    engine.dispose()


async def test_allowed_call_runs_every_step(setup: tuple[ToolInvoker, KeywordGuard, FakeMemory]) -> None:
    invoker, guard, _ = setup
    r = await invoker.invoke(InvokeRequest(SCOPE, "lookup", '{"q": "paris"}', instruction="find paris", tokens=UNSURE))
    assert r.outcome == Outcome.OK and r.stopped_at == Step.NONE
    assert json.loads(r.output) == {"found": "paris", "note": ""}
    assert [q.stage for q in guard.requests] == [Stage.TOOL_CALL, Stage.TOOL_RESULT]
    assert guard.requests[0].text == "find paris" and guard.requests[0].tool_call.name == "lookup"  # type: ignore[union-attr]
    assert r.gate is not None and r.gate.fire
    [audit] = await invoker.registry.audits(SCOPE)
    assert [v["stage"] for v in audit.verdicts] == ["tool_call", "gate", "tool_result"]


async def test_guard_block_at_call_stops_before_execution(setup: tuple[ToolInvoker, KeywordGuard, FakeMemory]) -> None:
    invoker, guard, _ = setup
    r = await invoker.invoke(InvokeRequest(SCOPE, "lookup", '{"q": "forbidden thing"}'))
    assert (r.outcome, r.stopped_at) == (Outcome.BLOCKED, Step.GUARD_CALL)
    assert "test.keyword" in r.reason and r.output == ""
    assert len(guard.requests) == 1


async def test_call_checked_by_the_caller_is_not_guarded_again(
    setup: tuple[ToolInvoker, KeywordGuard, FakeMemory],
) -> None:
    invoker, guard, _ = setup
    # The turn graph guarded the call (and a human approved its REVIEW): Invoke records that verdict and
    # guards only the result.
    approved = CheckedCall("v-turn", Decision.REVIEW, 0.6, approved=True)
    r = await invoker.invoke(InvokeRequest(SCOPE, "lookup", '{"q": "paris"}', checked_call=approved))
    assert r.outcome == Outcome.OK
    assert [q.stage for q in guard.requests] == [Stage.TOOL_RESULT]
    [audit] = await invoker.registry.audits(SCOPE)
    assert audit.verdicts[0] == {"stage": "tool_call", "decision": "approved", "id": "v-turn", "score": 0.6}
    # A verdict that neither allowed nor was approved still stops the call, without a second check.
    for decision, outcome in ((Decision.BLOCK, Outcome.BLOCKED), (Decision.REVIEW, Outcome.REVIEW)):
        r = await invoker.invoke(InvokeRequest(SCOPE, "lookup", '{"q": "x"}', checked_call=CheckedCall("v", decision)))
        assert (r.outcome, r.stopped_at) == (outcome, Step.GUARD_CALL)
    assert len(guard.requests) == 1


async def test_guard_block_at_result_withholds_output(setup: tuple[ToolInvoker, KeywordGuard, FakeMemory]) -> None:
    invoker, _guard, _ = setup
    # The argument is clean, the tool's output carries the keyword back.
    r = await invoker.invoke(InvokeRequest(SCOPE, "echo", '{"msg": "forbidden"}'))
    assert (r.outcome, r.stopped_at) == (Outcome.BLOCKED, Step.GUARD_CALL)
    invoker.registry.builtins.add("leak", "returns a bad page", {"type": "object"}, _bad_page)
    r = await invoker.invoke(InvokeRequest(SCOPE, "leak", "{}"))
    assert (r.outcome, r.stopped_at, r.output) == (Outcome.BLOCKED, Step.GUARD_RESULT, "")
    assert r.result_verdict is not None and r.result_verdict.decision == Decision.BLOCK


async def _bad_page(scope: str, args: dict[str, Any]) -> Any:
    return "page text ... forbidden instructions ..."


async def test_confident_model_holds_the_call_tool_gate(setup: tuple[ToolInvoker, KeywordGuard, FakeMemory]) -> None:
    invoker, guard, _ = setup
    r = await invoker.invoke(InvokeRequest(SCOPE, "lookup", '{"q": "x"}', tokens=CONFIDENT))
    assert (r.outcome, r.stopped_at) == (Outcome.GATE_STOPPED, Step.GATE)
    assert r.gate is not None and not r.gate.fire and "CALL_TOOL gate held" in r.reason
    assert [q.stage for q in guard.requests] == [Stage.TOOL_CALL]


async def test_bad_arguments_and_unknown_tools_raise_and_are_audited(
    setup: tuple[ToolInvoker, KeywordGuard, FakeMemory],
) -> None:
    invoker, guard, _ = setup
    with pytest.raises(InvalidArgumentError) as err:
        await invoker.invoke(InvokeRequest(SCOPE, "lookup", '{"q": 5}'))
    assert err.value.violations[0].field == "arguments_json.q"
    with pytest.raises(NotFoundError):
        await invoker.invoke(InvokeRequest(SCOPE, "missing", "{}"))
    assert guard.requests == []
    outcomes = [a.outcome for a in await invoker.registry.audits(SCOPE)]
    assert outcomes == [Outcome.NOT_FOUND, Outcome.INVALID_ARGUMENT]


async def test_memory_write_by_policy(setup: tuple[ToolInvoker, KeywordGuard, FakeMemory]) -> None:
    invoker, _, memory = setup
    await invoker.invoke(InvokeRequest(SCOPE, "lookup", '{"q": "a"}'))
    assert memory.writes == []
    await invoker.registry.set_policy(SCOPE, ToolPolicy(memory_write=True, memory_session_id="calls"))
    r = await invoker.invoke(InvokeRequest(SCOPE, "lookup", '{"q": "a"}'))
    assert r.memory_message_ids == ("m0", "m1")
    [(scope, session, msgs)] = memory.writes
    assert (scope, session) == (SCOPE, "calls")
    assert msgs[0] == ("tool_call", 'lookup({"q": "a"})') and '"found": "a"' in msgs[1][1]


async def test_memory_builtins_reach_memory_through_invoke(setup: tuple[ToolInvoker, KeywordGuard, FakeMemory]) -> None:
    invoker, guard, memory = setup
    r = await invoker.invoke(InvokeRequest(SCOPE, "memory.write", '{"text": "remember teal"}'))
    assert json.loads(r.output) == {"message_ids": ["m0"]}
    assert memory.writes == [(SCOPE, "agent-notes", [("agent", "remember teal")])]
    r = await invoker.invoke(InvokeRequest(SCOPE, "memory.search", '{"query": "colour"}'))
    assert json.loads(r.output)["hits"][0]["text"] == "hit for colour"
    assert len(guard.requests) == 4  # both builtins passed both guard stages


async def test_builtin_names_are_reserved(setup: tuple[ToolInvoker, KeywordGuard, FakeMemory]) -> None:
    invoker, _, _ = setup
    from core.errors import AlreadyExistsError

    with pytest.raises(AlreadyExistsError):
        await invoker.registry.register(
            SCOPE,
            ToolDefinition("memory.search", "", {"type": "object"}, ExecutorSpec(ExecutorKind.HTTP, url="http://x/")),
        )


async def test_every_failure_of_the_execute_step_is_audited(
    setup: tuple[ToolInvoker, KeywordGuard, FakeMemory],
) -> None:
    invoker, _, _ = setup
    registry = invoker.registry

    async def refuses(scope: str, args: dict[str, Any]) -> Any:
        raise InvalidArgumentError("session_id", "memory refused it")  # what a memory engine raises

    async def crashes(scope: str, args: dict[str, Any]) -> Any:
        return {"k": args["missing"]}

    registry.builtins.add("refuses", "raises", {"type": "object"}, refuses)
    registry.builtins.add("crashes", "raises", {"type": "object"}, crashes)
    # An MCP tool of a server that was never imported: Register accepts it, the call finds no server.
    nowhere = ExecutorSpec(ExecutorKind.MCP, mcp_server="nosuch", mcp_tool="x")
    ghost = ToolDefinition("ghost", "d", {"type": "object"}, nowhere)
    await registry.register(SCOPE, ghost)
    with pytest.raises(InvalidArgumentError) as err:
        await invoker.invoke(InvokeRequest(SCOPE, "refuses", "{}", arguments_field="tool_call.arguments_json"))
    # The handler named its own argument; the caller sent it inside the arguments field.
    assert [v.field for v in err.value.violations] == ["tool_call.arguments_json.session_id"]
    with pytest.raises(KeyError):
        await invoker.invoke(InvokeRequest(SCOPE, "crashes", "{}"))
    with pytest.raises(NotFoundError):
        await invoker.invoke(InvokeRequest(SCOPE, "ghost", "{}"))
    audits = {a.tool_name: a for a in await registry.audits(SCOPE)}
    assert {name: (a.outcome, a.stopped_at) for name, a in audits.items()} == {
        "refuses": (Outcome.INVALID_ARGUMENT, Step.EXECUTE),
        "crashes": (Outcome.TOOL_ERROR, Step.EXECUTE),
        "ghost": (Outcome.NOT_FOUND, Step.EXECUTE),
    }
    assert "KeyError" in audits["crashes"].reason and "nosuch" in audits["ghost"].reason


@pytest.mark.parametrize("field", ["session_id", "speaker"])
async def test_memory_write_refuses_what_memory_would_with_the_field(
    setup: tuple[ToolInvoker, KeywordGuard, FakeMemory], field: str
) -> None:
    invoker, _, memory = setup
    with pytest.raises(InvalidArgumentError) as err:
        await invoker.invoke(InvokeRequest(SCOPE, "memory.write", json.dumps({"text": "hi", field: "s" * 256})))
    assert [v.field for v in err.value.violations] == [f"arguments_json.{field}"]
    assert memory.writes == []
    await invoker.invoke(InvokeRequest(SCOPE, "memory.write", json.dumps({"text": "hi", field: "s" * 255})))
    assert len(memory.writes) == 1


async def test_a_stored_schema_whose_refs_loop_is_a_failed_precondition_and_audited(
    setup: tuple[ToolInvoker, KeywordGuard, FakeMemory],
) -> None:
    invoker, guard, _ = setup
    # Stored before Register refused $ref loops: every call used to raise RecursionError, unaudited.
    loop = {"type": "object", "$defs": {"a": {"$ref": "#/$defs/a"}}, "properties": {"x": {"$ref": "#/$defs/a"}}}
    invoker.registry.store.put_tool(SCOPE, ToolDefinition("loopy", "d", loop, ECHO))
    with pytest.raises(FailedPreconditionError) as err:
        await invoker.invoke(InvokeRequest(SCOPE, "loopy", '{"x": 1}'))
    assert "'loopy' version 1" in str(err.value) and "register a corrected version" in str(err.value)
    [audit] = await invoker.registry.audits(SCOPE)
    # Audited as answered (it used to be audited INVALID_ARGUMENT while the caller got FAILED_PRECONDITION).
    assert (audit.outcome, audit.stopped_at) == (Outcome.FAILED_PRECONDITION, Step.VALIDATE)
    assert guard.requests == []


@pytest.mark.parametrize("arguments", ['{"q": NaN}', '{"q": "a", "n": Infinity}', '{"q": "a", "n": 1e400}'])
async def test_non_finite_numbers_in_arguments_are_invalid(
    setup: tuple[ToolInvoker, KeywordGuard, FakeMemory], arguments: str
) -> None:
    invoker, guard, _ = setup
    with pytest.raises(InvalidArgumentError) as err:
        await invoker.invoke(InvokeRequest(SCOPE, "lookup", arguments))
    assert [v.field for v in err.value.violations] == ["arguments_json"]
    assert "NaN or Infinity" in err.value.violations[0].description and guard.requests == []


async def test_a_backtracking_pattern_does_not_stall_the_event_loop(
    setup: tuple[ToolInvoker, KeywordGuard, FakeMemory],
) -> None:
    invoker, _, _ = setup
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a|aa)+$"}}}
    await invoker.registry.register(SCOPE, ToolDefinition("pat", "d", schema, ECHO))
    stamps: list[float] = []

    async def tick() -> None:
        while True:
            stamps.append(time.monotonic())
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    with pytest.raises(FailedPreconditionError) as err:
        await invoker.invoke(InvokeRequest(SCOPE, "pat", json.dumps({"s": "a" * 40 + "b"})))
    ticker.cancel()
    assert "did not finish" in str(err.value)
    assert max(b - a for a, b in itertools.pairwise(stamps)) < 0.5
