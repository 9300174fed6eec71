"""The turn graph in-process (no gRPC): routing rules, policies and the LLM client, against the stub LLM."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from core.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from runtime.agent.llm import ChatClient, parse_completion
from runtime.agent.policy import TurnPolicy
from runtime.agent.ports import (
    ALLOW,
    GateOutcome,
    GuardOutcome,
    MemoryHitView,
    NoMemory,
    default_ports,
    mean_normalized_entropy,
)
from runtime.agent.runner import TurnRunner
from tests.agent.conftest import LookupTools, WriteInAThread


class FixedGates:
    """Gates with a fixed decision per gate."""

    def __init__(self, **fire: bool):
        self.fire = fire

    async def decide(self, gate: str, tokens: Any, *, session_id: str) -> GateOutcome:
        return GateOutcome(gate, self.fire.get(gate, False), 0.1, 0.5)


def run(runner: TurnRunner, thread: str, message: str, policy: TurnPolicy, ports: Any) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        return [ev async for ev in runner.run_turn("t/ns", thread, message, "user", policy, ports)]

    return asyncio.run(go())


@pytest.fixture
def runner() -> TurnRunner:
    return TurnRunner(InMemorySaver())


def test_enforced_tool_gate_drops_calls_and_reasks_without_tools(runner, llm) -> None:
    ports = default_ports()
    ports.tools = tools = LookupTools()
    ports.gates = FixedGates(retrieve=False, call_tool=False)
    policy = TurnPolicy(llm_base_url=llm.base_url, tools=("lookup",), enforce_tool_gate=True)
    events = run(runner, "g1", 'x [call:lookup {"q": "a"}]', policy, ports)
    assert tools.calls == []
    assert "tools" not in llm.requests[-1]
    assert events[-1] == {"type": "result", "status": "completed", "answer": "default: x",
                          "turn_id": events[-1]["turn_id"]}
    assert len(events[-1]["turn_id"]) == 32


def test_advisory_tool_gate_still_runs_the_call(runner, llm) -> None:
    ports = default_ports()
    ports.tools = tools = LookupTools()
    ports.gates = FixedGates(retrieve=False, call_tool=False)
    policy = TurnPolicy(llm_base_url=llm.base_url, tools=("lookup",))
    run(runner, "g2", 'x [call:lookup {"q": "a"}]', policy, ports)
    assert tools.calls == [("lookup", '{"q": "a"}')]


def test_zero_tool_rounds_offers_no_tools(runner, llm) -> None:
    ports = default_ports()
    ports.tools = tools = LookupTools()
    policy = TurnPolicy(llm_base_url=llm.base_url, tools=("lookup",), max_tool_rounds=0, force_retrieval=False)
    events = run(runner, "g3", 'x [call:lookup {"q": "a"}]', policy, ports)
    assert tools.calls == [] and "tools" not in llm.requests[-1]
    assert [e["name"] for e in events if e["type"] == "stage" and e["status"] == "finished"] == [
        "input_guard", "agent", "candidates", "select", "output_guard", "write_memory", "finish"]


def test_candidate_specs_choose_model_temperature_and_prompt(runner, llm) -> None:
    policy = TurnPolicy(llm_base_url=llm.base_url, force_retrieval=False, candidates=(
        {"agent_id": "a", "model": "m-a"},
        {"agent_id": "b", "model": "m-b", "temperature": 0.9, "system_prompt": "Be terse."},
    ))
    before = len(llm.requests)
    events = run(runner, "g4", "hi", policy, default_ports())
    sent = llm.requests[before:]
    assert [(r["model"], r["temperature"]) for r in sent] == [("m-a", 0.0), ("m-b", 0.9)]
    assert sent[1]["messages"][0]["content"] == "Be terse."
    assert all(r["logprobs"] is True and r["top_logprobs"] == 5 for r in sent)
    cands = [e for e in events if e["type"] == "candidate"]
    assert [(c["agent_id"], c["answer"]) for c in cands] == [("a", "m-a: hi"), ("b", "m-b: hi")]
    # The built-in selection prefers the more confident candidate (temperature 0 in the stub).
    assert next(e for e in events if e["type"] == "selection")["index"] == 0


class RecordingGuard:
    """Allows everything and records, in order, what the turn warmed and what it checked."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, str, Any]] = []

    async def check(self, stage: str, text: str, *, tool_call: Any = None, tools: Any = (),
                    thread_id: str = "") -> GuardOutcome:
        self.log.append(("check", stage, text, tool_call))
        return GuardOutcome(ALLOW, verdict_id=f"v-{len(self.log)}")

    async def warm(self, stage: str, text: str, *, tool_call: Any = None, tools: Any = ()) -> None:
        self.log.append(("warm", stage, text, tool_call))


def test_guard_checks_are_warmed_while_the_llm_works(runner, llm) -> None:
    """The tool call of the first answer and the agent's own final answer are embedded for their guard checks
    before those checks run: during the retrieval and the LLM calls that come first."""
    ports = default_ports()
    ports.tools = LookupTools()
    ports.guard = guard = RecordingGuard()
    policy = TurnPolicy(llm_base_url=llm.base_url, tools=("lookup",), num_candidates=3, force_retrieval=True)
    events = run(runner, "g5", 'x [call:lookup {"q": "a"}]', policy, ports)
    answer = events[-1]["answer"]
    call = ("lookup", '{"q": "a"}')
    warm_call = guard.log.index(("warm", "tool_call", 'x [call:lookup {"q": "a"}]', call))
    check_call = guard.log.index(("check", "tool_call", 'x [call:lookup {"q": "a"}]', call))
    warm_out = guard.log.index(("warm", "output", answer, None))
    check_out = guard.log.index(("check", "output", answer, None))
    assert warm_call < check_call < warm_out < check_out
    # One candidate: the output check follows the answer at once, nothing to overlap.
    guard.log.clear()
    run(TurnRunner(InMemorySaver()), "g6", "y", TurnPolicy(llm_base_url=llm.base_url, force_retrieval=False), ports)
    assert [e[:2] for e in guard.log] == [("check", "input"), ("check", "output")]


class RecordingMemory(NoMemory):
    """A memory with one hit that records when it is searched, relative to the retrieval gate's decisions."""

    def __init__(self, gates: Any) -> None:
        self.gates = gates
        self.searches: list[int] = []  # gate decisions made before each search started

    async def search(self, query: str, top_k: int, token_budget: int) -> Any:
        self.searches.append(self.gates.decided)
        await asyncio.sleep(0)
        return [MemoryHitView("m1", "the answer is 42", 1.0, "turn")], {"weight.turn": 1.0}


class CountingGates(FixedGates):
    def __init__(self, **fire: bool):
        super().__init__(**fire)
        self.decided = 0

    async def decide(self, gate: str, tokens: Any, *, session_id: str) -> GateOutcome:
        self.decided += gate == "retrieve"
        return await super().decide(gate, tokens, session_id=session_id)


@pytest.mark.parametrize("fire", [True, False])
@pytest.mark.parametrize("speculative", [True, False])
def test_speculative_retrieval_searches_while_the_llm_answers(llm, fire: bool, speculative: bool) -> None:
    """With speculative_retrieval the search starts with the first LLM call, before the gate decides, and a
    firing gate uses its hits; a gate that does not fire drops them. Without it, memory is searched only after
    the gate fired."""
    ports = default_ports()
    ports.gates = gates = CountingGates(retrieve=fire, call_tool=True)
    ports.memory = memory = RecordingMemory(gates)
    policy = TurnPolicy(llm_base_url=llm.base_url, speculative_retrieval=speculative)
    events = run(TurnRunner(InMemorySaver()), f"spec-{fire}-{speculative}", "what is the answer?", policy, ports)
    retrievals = [e for e in events if e["type"] == "retrieval"]
    if speculative:
        assert memory.searches == [0]  # one search, started before the gate's decision
    else:
        assert memory.searches == ([1] if fire else [])
    if fire:
        assert [h["id"] for h in retrievals[0]["hits"]] == ["m1"]
        assert "remembers the answer is 42" in events[-1]["answer"]
    else:
        assert not retrievals and "remembers" not in events[-1]["answer"]


def test_policy_rules_name_the_field() -> None:
    with pytest.raises(InvalidArgumentError) as err:
        TurnPolicy().validate()
    assert err.value.violations[0].field == "policy.llm_base_url"
    with pytest.raises(InvalidArgumentError) as err:
        TurnPolicy(llm_base_url="http://x/v1", num_candidates=0).validate()
    assert err.value.violations[0].field == "policy.num_candidates"
    with pytest.raises(InvalidArgumentError) as err:
        TurnPolicy(llm_base_url="http://x/v1", candidates=tuple({"model": "m"} for _ in range(17))).validate()
    assert err.value.violations[0].field == "policy.candidates"
    for timeout in (float("inf"), float("nan"), 0.0, 86401.0):
        with pytest.raises(InvalidArgumentError) as err:
            TurnPolicy(llm_base_url="http://x/v1", llm_timeout_s=timeout).validate()
        assert err.value.violations[0].field == "policy.llm_timeout_s"
    with pytest.raises(InvalidArgumentError) as err:
        TurnPolicy.from_dict({"modle": "x"})
    assert "modle" in str(err.value)
    merged = TurnPolicy(model="a", num_candidates=2).merged({"model": "b", "temperature": None})
    assert (merged.model, merged.num_candidates, merged.temperature) == ("b", 2, 0.0)


def test_llm_client_errors(llm) -> None:
    async def go() -> None:
        broken = ChatClient(llm.base_url)
        with pytest.raises(UnavailableError, match="500"):
            await broken.complete([{"role": "user", "content": "x"}], model="broken")
        await broken.aclose()
        missing = ChatClient(llm.base_url.replace("/v1", "/nope"))
        with pytest.raises(FailedPreconditionError, match="404"):
            await missing.complete([{"role": "user", "content": "x"}], model="m")
        await missing.aclose()

    asyncio.run(go())


def test_parse_completion_reads_tool_calls_and_logprobs() -> None:
    body = {"model": "m", "choices": [{"message": {"content": None, "tool_calls": [
        {"id": "c1", "function": {"name": "f", "arguments": {"a": 1}}}]},
        "logprobs": {"content": [{"token": "x", "logprob": -0.5, "top_logprobs": [
            {"token": "x", "logprob": -0.5}, {"token": "y", "logprob": -1.0}]}]},
        "finish_reason": "tool_calls"}]}
    c = parse_completion(body)
    assert c.tool_calls[0].arguments_json == '{"a": 1}' and c.has_logprobs
    assert c.tokens[0].top_logprobs == (("x", -0.5), ("y", -1.0))
    assert parse_completion({"choices": [{"message": {"content": "hi"}}]}).has_logprobs is False
    # Flat top-k -> 1, peaked -> near 0.
    flat = parse_completion({"choices": [{"message": {"content": "a"}, "logprobs": {"content": [
        {"token": "a", "logprob": -1.386, "top_logprobs": [{"token": t, "logprob": -1.386} for t in "abcd"]}]}}]})
    assert mean_normalized_entropy(flat.tokens) == pytest.approx(1.0, abs=1e-3)


def test_one_llm_client_serves_successive_event_loops(llm) -> None:
    """The runner keeps one client per endpoint for the sidecar's life; tests and embedding apps call it from
    several loops in turn, and an aiohttp session works only on the loop it was opened on."""
    client = ChatClient(llm.base_url)

    async def ask() -> str:
        return (await client.complete([{"role": "user", "content": "hello there"}], model="m")).text

    first = asyncio.run(ask())
    second = asyncio.run(ask())
    assert first and second == first


@pytest.mark.parametrize("key, value", [
    ("num_candidates", "three"), ("temperature", None), ("tools", "search"), ("approval_tools", None),
    ("write_memory", "maybe"), ("temperature_spread", -1), ("temperature_spread", float("nan")),
    ("llm_base_url", 5), ("candidates", {"model": "m"}), ("candidates", [{"modle": "m"}]),
    ("candidates", [{"model": 5}]),
])
def test_configured_policy_values_of_the_wrong_type_name_their_field(key: str, value: Any) -> None:
    """Configured agent policies come from YAML and the environment untyped: "3" candidates raised TypeError in the
    middle of a turn (INTERNAL), "false" was truthy, and a string tool list became a tuple of its letters."""
    with pytest.raises(InvalidArgumentError) as exc:
        TurnPolicy.from_dict({key: value})
    assert exc.value.violations[0].field == f"policy.{key}"


def test_numbers_and_booleans_written_as_text_are_read_as_such() -> None:
    policy = TurnPolicy.from_dict({"num_candidates": "3", "temperature": "0.5", "write_memory": "false",
                                   "force_retrieval": "true"})
    assert (policy.num_candidates, policy.temperature, policy.write_memory, policy.force_retrieval) == (3, 0.5, False,
                                                                                                      True)
    spread = TurnPolicy.from_dict({"temperature": 1.9, "temperature_spread": 0.3, "num_candidates": 3})
    assert [spread.candidate(i).temperature for i in range(3)] == [1.9, 2.0, 2.0]


def test_a_committing_turn_whose_graph_task_is_cancelled_takes_its_memory_write_back(runner, llm) -> None:
    """The runner waits for a committing turn instead of cancelling it; a second cancel (or the sidecar stopping)
    does cancel the graph, and then the memory write, which goes on in its worker thread, is taken back."""
    release = threading.Event()
    ports = default_ports()
    ports.memory = memory = WriteInAThread(delay=0.0, release=release)
    policy = TurnPolicy(llm_base_url=llm.base_url, force_retrieval=False)

    async def go() -> bool:
        entered = asyncio.Event()

        async def consume() -> None:
            async for ev in runner.run_turn("t/ns", "g9", "remember me", "user", policy, ports):
                if ev["type"] == "stage" and ev["name"] == "write_memory":
                    entered.set()

        consumer = asyncio.create_task(consume())
        await entered.wait()
        assert await asyncio.to_thread(memory.writing.wait, 10)
        consumer.cancel()
        await asyncio.sleep(0.1)
        waited_for_commit = not consumer.done()
        consumer.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        return waited_for_commit

    assert asyncio.run(go())
    assert memory.stored == {}
    assert asyncio.run(runner.get_thread("t/ns", "g9")).turns == 0
