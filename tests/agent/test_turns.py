"""Whole turns over the wire: RunTurn, Resume, GetThread against the OpenAI-compatible stub server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from typing import Any

import grpc
import pytest
from agentrt.v1 import agent_pb2, common_pb2, memory_pb2
from grpc_status import rpc_status

from runtime.agent.graph import BLOCKED_ANSWER
from runtime.agent.ports import ALLOW, BLOCK, AllowAllGuard, GuardOutcome
from tests.agent.conftest import LookupTools, MarkerGuard, WriteInAThread, of, resume, stages, turn

NS = "agent-tests"



def test_plain_turn_streams_every_stage_and_is_remembered(srv, llm) -> None:
    events = turn(srv.client, NS, "t1", "hello there", llm_base_url=llm.base_url)
    assert [e.seq for e in events] == list(range(len(events)))
    assert stages(events) == ["input_guard", "agent", "retrieve_gate", "candidates", "select", "output_guard",
                              "write_memory", "finish"]
    [gate] = of(events, "gate")
    assert gate.gate == common_pb2.GATE_RETRIEVE and not gate.fire  # confident answer: no retrieval
    [result] = of(events, "result")
    assert result.status == agent_pb2.TURN_STATUS_COMPLETED
    assert result.answer == "default: hello there"
    [written] = of(events, "memory_write")
    assert len(written.message_ids) == 2
    # The turn's messages are in memory (MemoryService) and in the thread (GetThread).
    hits = srv.client.search(NS, "hello there", top_k=5).hits
    assert any("hello there" in h.text for h in hits)
    thread = srv.client.agent.GetThread(agent_pb2.GetThreadRequest(namespace=NS, thread_id="t1"), timeout=10)
    assert thread.status == agent_pb2.THREAD_STATUS_IDLE and thread.turns == 1
    assert [(m.role, m.text) for m in thread.messages] == [("user", "hello there"),
                                                           ("assistant", "default: hello there")]
    assert thread.history and thread.history[0].step >= thread.history[-1].step


def test_second_turn_sees_the_conversation(srv, llm) -> None:
    turn(srv.client, NS, "t2", "first", llm_base_url=llm.base_url)
    turn(srv.client, NS, "t2", "second", llm_base_url=llm.base_url)
    last = llm.requests[-1]["messages"]
    assert [m["content"] for m in last if m["role"] in ("user", "assistant")] == [
        "first", "default: first", "second"]


def test_uncertain_answer_fires_retrieval_and_reanswers_with_memories(srv, llm) -> None:
    srv.client.write(NS, "old-session", [{"id": "m1", "speaker": "user", "text": "My cat is called Miso"}])
    events = turn(srv.client, NS, "t3", "[unsure] what is my cat called", llm_base_url=llm.base_url)
    assert stages(events)[:5] == ["input_guard", "agent", "retrieve_gate", "retrieve", "agent"]
    [gate] = of(events, "gate")
    assert gate.fire and gate.score > gate.threshold
    [retrieval] = of(events, "retrieval")
    assert any("Miso" in h.text for h in retrieval.hits)
    assert "Memories:" in llm.requests[-1]["messages"][0]["content"]
    [result] = of(events, "result")
    assert result.answer.startswith("default: remembers")


def test_tool_call_and_three_candidates(srv, llm) -> None:
    events = turn(srv.client, NS, "t4", 'look it up [call:lookup {"q": "the answer"}]',
                  llm_base_url=llm.base_url, tools=["lookup"], num_candidates=3)
    assert stages(events) == ["input_guard", "agent", "retrieve_gate", "tool_gate", "check_tools", "run_tools",
                              "agent", "candidates", "select", "output_guard", "write_memory", "finish"]
    [call] = of(events, "tool_call")
    assert call.tool_call.name == "lookup" and json.loads(call.tool_call.arguments_json) == {"q": "the answer"}
    [res] = of(events, "tool_result")
    assert json.loads(res.result_json) == {"answer": "the answer is 42"} and not res.error
    cands = of(events, "candidate")
    assert [c.agent_id for c in cands] == ["agent-0", "agent-1", "agent-2"]
    assert all("the answer is 42" in c.answer for c in cands)
    # Different temperatures give different confidences; selection picks one of them.
    assert len({round(c.mean_logprob, 6) for c in cands}) == 3
    [sel] = of(events, "selection")
    assert sel.answer == cands[sel.index].answer
    assert of(events, "result")[0].answer == sel.answer
    assert srv.tools_fake.calls == [("lookup", '{"q": "the answer"}')]


def test_tool_needing_approval_pauses_until_resume(srv, llm) -> None:
    msg = 'check [call:lookup {"q": "x"}]'
    events = turn(srv.client, NS, "t5", msg, llm_base_url=llm.base_url, tools=["lookup"], approval_tools=["lookup"])
    [result] = of(events, "result")
    assert result.status == agent_pb2.TURN_STATUS_INTERRUPTED
    assert result.interrupt.kind == agent_pb2.INTERRUPT_KIND_TOOL_APPROVAL
    assert result.interrupt.tool_call.name == "lookup"
    assert srv.tools_fake.calls == []
    thread = srv.client.agent.GetThread(agent_pb2.GetThreadRequest(namespace=NS, thread_id="t5"), timeout=10)
    assert thread.status == agent_pb2.THREAD_STATUS_INTERRUPTED
    assert thread.pending_interrupt.tool_call.name == "lookup"
    # A new turn on a paused thread is refused.
    with pytest.raises(grpc.RpcError) as err:
        turn(srv.client, NS, "t5", "another", llm_base_url=llm.base_url)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    events = resume(srv.client, NS, "t5", common_pb2.DECISION_ALLOW)
    assert srv.tools_fake.calls == [("lookup", '{"q": "x"}')]
    [result] = of(events, "result")
    assert result.status == agent_pb2.TURN_STATUS_COMPLETED and "x is 42" in result.answer


def test_two_calls_needing_approval_pause_twice(srv, llm) -> None:
    msg = 'both [call:lookup {"q": "a"}] [call:lookup {"q": "b"}]'
    events = turn(srv.client, NS, "t5b", msg, llm_base_url=llm.base_url, tools=["lookup"], approval_tools=["lookup"])
    first = of(events, "result")[0].interrupt
    events = resume(srv.client, NS, "t5b", common_pb2.DECISION_ALLOW)
    second = of(events, "result")[0].interrupt
    assert (json.loads(first.tool_call.arguments_json), json.loads(second.tool_call.arguments_json)) == (
        {"q": "a"}, {"q": "b"})
    events = resume(srv.client, NS, "t5b", common_pb2.DECISION_BLOCK)
    assert srv.tools_fake.calls == [("lookup", '{"q": "a"}')]
    results = {json.loads(c.tool_call.arguments_json)["q"]: r for c, r in zip(
        of(events, "tool_call"), of(events, "tool_result"), strict=True)}
    assert not results["a"].error and results["b"].error == "refused at review"
    [result] = of(events, "result")
    assert result.status == agent_pb2.TURN_STATUS_COMPLETED and "a is 42" in result.answer


def test_refused_tool_is_not_run(srv, llm) -> None:
    turn(srv.client, NS, "t6", 'go [call:lookup {"q": "y"}]', llm_base_url=llm.base_url, tools=["lookup"],
         approval_tools=["lookup"])
    events = resume(srv.client, NS, "t6", common_pb2.DECISION_BLOCK)
    [res] = of(events, "tool_result")
    assert res.error == "refused at review"
    assert srv.tools_fake.calls == []
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED


def test_review_verdicts_interrupt_input_and_output(srv, llm) -> None:
    srv.rt.extras["agent_ports"]["guard"] = lambda rt, scope: MarkerGuard()
    events = turn(srv.client, NS, "t7", "please [review] this", llm_base_url=llm.base_url)
    [result] = of(events, "result")
    assert result.interrupt.kind == agent_pb2.INTERRUPT_KIND_REVIEW
    assert result.interrupt.stage == common_pb2.STAGE_INPUT and result.interrupt.verdict_id == "v-input"
    # Allowed at input review, the echoed answer contains the marker too: the output review pauses again.
    events = resume(srv.client, NS, "t7", common_pb2.DECISION_ALLOW)
    [result] = of(events, "result")
    assert result.interrupt.stage == common_pb2.STAGE_OUTPUT
    events = resume(srv.client, NS, "t7", common_pb2.DECISION_BLOCK)
    [result] = of(events, "result")
    assert result.status == agent_pb2.TURN_STATUS_BLOCKED and result.answer == BLOCKED_ANSWER
    assert not of(events, "memory_write")
    # Nothing of the blocked turn reached memory.
    assert not [h for h in srv.client.search(NS, "please review this", top_k=5).hits if "please [review]" in h.text]


def test_paused_run_survives_a_restart(make_server, db_url, llm) -> None:
    first = make_server(db_url=db_url, embedding_model="hashing")
    tools = LookupTools()
    first.rt.extras["agent_ports"] = {"tools": lambda rt, scope: tools, "guard": lambda rt, scope: AllowAllGuard()}
    turn(first.client, NS, "t8", 'r [call:lookup {"q": "z"}]', llm_base_url=llm.base_url, tools=["lookup"],
         approval_tools=["lookup"])
    settings = first.settings
    first.stop()
    second = make_server(settings=settings)
    second.rt.extras["agent_ports"] = {"tools": lambda rt, scope: tools, "guard": lambda rt, scope: AllowAllGuard()}
    events = resume(second.client, NS, "t8", common_pb2.DECISION_ALLOW)
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED
    assert tools.calls == [("lookup", '{"q": "z"}')]


def test_endpoint_down_is_unavailable_naming_the_url(srv) -> None:
    with pytest.raises(grpc.RpcError) as err:
        turn(srv.client, NS, "t9", "hi", llm_base_url="http://127.0.0.1:9/v1")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "127.0.0.1:9" in err.value.details()


def test_no_logprobs_gates_fall_back_to_their_default(srv, llm) -> None:
    events = turn(srv.client, NS, "t10", "hi", llm_base_url=llm.base_url, model="no-logprobs")
    [gate] = of(events, "gate")
    assert gate.fire and "no logprobs" in gate.fallback_reason
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED


def test_missing_endpoint_is_invalid_argument(srv) -> None:
    with pytest.raises(grpc.RpcError) as err:
        turn(srv.client, NS, "t11", "hi")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "policy.llm_base_url" in str(rpc_status.from_call(err.value).details)


def _memory_texts(srv, words: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [h.text for h in srv.client.search(NS, words, top_k=5).hits if words.split()[0] in h.text]


def test_deadline_propagates_and_leaves_no_memory(srv, llm) -> None:
    before = len(llm.requests)
    with pytest.raises(grpc.RpcError) as err:
        turn(srv.client, NS, "t12", "slow one [slow:1.5]", llm_base_url=llm.base_url, timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Past the LLM's answer: had the graph run on, it would have made its next calls and written to memory by now.
    time.sleep(1.8)
    assert len(llm.requests) - before == 1
    assert not _memory_texts(srv, "slow one")
    # The thread is usable again.
    events = turn(srv.client, NS, "t12", "fast", llm_base_url=llm.base_url)
    assert of(events, "result")[0].answer == "default: fast"


def test_cancelled_turn_leaves_no_memory(srv, llm) -> None:
    before = len(llm.requests)
    request = agent_pb2.RunTurnRequest(namespace=NS, thread_id="t13", message="cancel me [slow:1.5]",
                                       policy=agent_pb2.TurnPolicy(llm_base_url=llm.base_url))
    call = srv.client.agent.RunTurn(request, timeout=30)
    first = next(call)  # the turn is running
    assert first.WhichOneof("event") == "stage"
    threading.Timer(0.3, call.cancel).start()
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    assert err.value.code() == grpc.StatusCode.CANCELLED
    time.sleep(1.8)
    assert len(llm.requests) - before == 1
    assert not _memory_texts(srv, "cancel me")
    thread = srv.client.agent.GetThread(agent_pb2.GetThreadRequest(namespace=NS, thread_id="t13"), timeout=10)
    assert thread.turns == 0


def _run_until_memory_write(srv, memory, llm_base_url: str, thread_id: str, message: str, *,  # type: ignore[no-untyped-def]
                            timeout: float = 30, turn_id: str = ""):
    """Start a turn and return its call once its memory write has begun (in the worker thread)."""
    srv.rt.extras["agent_ports"]["memory"] = lambda rt, scope: memory
    request = agent_pb2.RunTurnRequest(namespace=NS, thread_id=thread_id, message=message, turn_id=turn_id,
                                       policy=agent_pb2.TurnPolicy(llm_base_url=llm_base_url))
    call = srv.client.agent.RunTurn(request, timeout=timeout)
    for event in call:
        if event.WhichOneof("event") == "stage" and event.stage.name == "write_memory":
            break
    assert memory.writing.wait(10)
    return call


def _thread(srv, thread_id: str):  # type: ignore[no-untyped-def]
    return srv.client.agent.GetThread(agent_pb2.GetThreadRequest(namespace=NS, thread_id=thread_id), timeout=10)


def _wait_for_turns(srv, thread_id: str, turns: int) -> None:  # type: ignore[no-untyped-def]
    """Wait (at most 10 s) until the thread counts ``turns``: a turn the client gave up on finishes on its own."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(grpc.RpcError):  # NOT_FOUND until the first checkpoint
            if _thread(srv, thread_id).turns >= turns:
                return
        time.sleep(0.05)
    raise AssertionError(f"thread {thread_id} did not reach {turns} turns")


def test_a_turn_cancelled_while_its_memory_write_runs_finishes_whole(srv, llm) -> None:
    """Past the start of its memory write a turn is committing: cancelling the call no longer stops it halfway
    (memory written, thread not counting the turn), it runs to its end, memory and thread in agreement."""
    memory = WriteInAThread(delay=0.5)
    call = _run_until_memory_write(srv, memory, llm.base_url, "t13b", "remember me")
    call.cancel()
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    assert err.value.code() == grpc.StatusCode.CANCELLED
    _wait_for_turns(srv, "t13b", 1)
    assert sorted(memory.stored.values()) == ["default: remember me", "remember me"]
    thread = _thread(srv, "t13b")
    assert thread.turns == 1
    assert [m.text for m in thread.messages] == ["remember me", "default: remember me"]


def test_a_deadline_passing_during_the_memory_write_leaves_a_whole_turn_that_a_retry_replays(srv, llm) -> None:
    release = threading.Event()
    memory = WriteInAThread(delay=0.0, release=release)
    call = _run_until_memory_write(srv, memory, llm.base_url, "t13d", "late one", timeout=2.0, turn_id="client-turn-1")
    with pytest.raises(grpc.RpcError) as err:
        list(call)  # the write is held until the deadline has passed
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    release.set()
    _wait_for_turns(srv, "t13d", 1)
    assert sorted(memory.stored) == ["client-turn-1-a", "client-turn-1-u"]
    assert _thread(srv, "t13d").turns == 1
    # The client saw DEADLINE_EXCEEDED and retries with the same turn id: the finished turn is answered again.
    before = len(llm.requests)
    request = agent_pb2.RunTurnRequest(namespace=NS, thread_id="t13d", message="late one", turn_id="client-turn-1",
                                       policy=agent_pb2.TurnPolicy(llm_base_url=llm.base_url))
    events = list(srv.client.agent.RunTurn(request, timeout=30))
    result = of(events, "result")[0]
    assert (result.replayed, result.turn_id, result.answer) == (True, "client-turn-1", "default: late one")
    assert len(events) == 1 and len(llm.requests) == before
    assert _thread(srv, "t13d").turns == 1


def test_a_deadline_that_passes_before_the_memory_write_stops_the_turn_before_it(srv, llm) -> None:
    memory = WriteInAThread(delay=0.0)
    srv.rt.extras["agent_ports"]["memory"] = lambda rt, scope: memory
    with pytest.raises(grpc.RpcError) as err:
        turn(srv.client, NS, "t13e", "slow [slow:1.0]", llm_base_url=llm.base_url, timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(1.5)
    assert memory.stored == {} and not memory.writing.is_set()


def test_turn_ids_make_retries_safe(srv, llm) -> None:
    def run_turn(message: str, turn_id: str) -> list[agent_pb2.TurnEvent]:
        request = agent_pb2.RunTurnRequest(namespace=NS, thread_id="t13f", message=message, turn_id=turn_id,
                                           policy=agent_pb2.TurnPolicy(llm_base_url=llm.base_url))
        return list(srv.client.agent.RunTurn(request, timeout=30))

    first = of(run_turn("one", "a1"), "result")[0]
    assert (first.turn_id, first.replayed, first.answer) == ("a1", False, "default: one")
    stored = srv.client.memory.Get(memory_pb2.GetRequest(namespace=NS, message_ids=["a1-u", "a1-a"]), timeout=10)
    assert sorted(m.text for m in stored.messages) == ["default: one", "one"]
    again = of(run_turn("one", "a1"), "result")[0]
    assert (again.turn_id, again.replayed, again.answer) == ("a1", True, "default: one")
    # The same id with another message is a client bug, not a retry.
    with pytest.raises(grpc.RpcError) as err:
        run_turn("two", "a1")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "another message" in err.value.details()
    second = of(run_turn("two", "a2"), "result")[0]
    assert (second.turn_id, second.replayed) == ("a2", False)
    # An earlier turn's id is refused, not run a second time.
    with pytest.raises(grpc.RpcError) as err:
        run_turn("one", "a1")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "not its latest turn" in err.value.details()
    assert _thread(srv, "t13f").turns == 2
    # Without an id the sidecar picks a fresh one per turn.
    picked = [of(run_turn("three", ""), "result")[0].turn_id for _ in range(2)]
    assert len(set(picked)) == 2 and all(len(t) == 32 for t in picked)
    assert _thread(srv, "t13f").turns == 4


@pytest.mark.parametrize("bad", [" x", "x ", "a\nb", "x" * 101])
def test_a_bad_turn_id_is_refused_naming_the_field(srv, llm, bad: str) -> None:
    request = agent_pb2.RunTurnRequest(namespace=NS, thread_id="t13g", message="hi", turn_id=bad,
                                       policy=agent_pb2.TurnPolicy(llm_base_url=llm.base_url))
    with pytest.raises(grpc.RpcError) as err:
        list(srv.client.agent.RunTurn(request, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "turn_id" in str(rpc_status.from_call(err.value).details)


def test_threads_are_scoped_to_their_namespace(srv, llm) -> None:
    turn(srv.client, NS, "shared", "mine", llm_base_url=llm.base_url)
    with pytest.raises(grpc.RpcError) as err:
        srv.client.agent.GetThread(agent_pb2.GetThreadRequest(namespace="elsewhere", thread_id="shared"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_namespace_agent_policy_from_the_config_drives_turns_that_set_none(make_server, llm) -> None:
    unreachable = "http://127.0.0.1:9/v1"
    srv = make_server(embedding_model="hashing", policies={
        "defaults": {"agent": {"llm_base_url": unreachable}},
        "namespaces": {"bot": {"agent": {"llm_base_url": llm.base_url, "system_prompt": "Be brief.",
                                         "tools": ["lookup"], "approval_tools": ["lookup"]}}},
    })
    tools = LookupTools()
    srv.rt.extras["agent_ports"] = {"tools": lambda rt, scope: tools, "guard": lambda rt, scope: AllowAllGuard()}
    # "bot" runs on its own endpoint, prompt, tools and approval list; the request sets no policy at all.
    request = agent_pb2.RunTurnRequest(namespace="bot", thread_id="p1", message='look [call:lookup {"q": "x"}]')
    events = list(srv.client.agent.RunTurn(request, timeout=30))
    [result] = of(events, "result")
    assert result.status == agent_pb2.TURN_STATUS_INTERRUPTED
    assert result.interrupt.kind == agent_pb2.INTERRUPT_KIND_TOOL_APPROVAL and tools.calls == []
    assert llm.requests[-1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [t["function"]["name"] for t in llm.requests[-1]["tools"]] == ["lookup"]
    # A field the request sets wins over the namespace's.
    events = turn(srv.client, "bot", "p2", "hi", system_prompt="Be long.")
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED
    assert llm.requests[-1]["messages"][0]["content"] == "Be long."
    # Another namespace gets the defaults: an endpoint that is down, named in the error.
    with pytest.raises(grpc.RpcError) as err:
        turn(srv.client, "elsewhere", "p3", "hi")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "127.0.0.1:9" in (err.value.details() or "")


class _WaitsForTheLLM(MarkerGuard):
    """An input guard that, before it decides, waits (up to ``patience`` s) for the LLM to receive a request."""

    def __init__(self, llm: Any, decision: str, patience: float) -> None:
        self.llm, self.decision, self.patience = llm, decision, patience
        self.before = len(llm.requests)
        self.saw_the_llm_asked: bool | None = None

    async def check(self, stage: str, text: str, *, tool_call: Any = None, tools: Any = (),
                    thread_id: str = "") -> GuardOutcome:
        if stage != "input":
            return await super().check(stage, text, tool_call=tool_call, tools=tools, thread_id=thread_id)
        loop = asyncio.get_running_loop()
        until = loop.time() + self.patience
        while len(self.llm.requests) == self.before and loop.time() < until:
            await asyncio.sleep(0.01)
        self.saw_the_llm_asked = len(self.llm.requests) > self.before
        return GuardOutcome(self.decision, verdict_id="v-input", harm_score=1.0 if self.decision == BLOCK else 0.0)


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_input_guard_asks_the_llm_while_the_guard_checks(srv, llm, parallel) -> None:
    guard = _WaitsForTheLLM(llm, ALLOW, patience=5.0 if parallel else 0.5)
    srv.rt.extras["agent_ports"]["guard"] = lambda rt, scope: guard
    events = turn(srv.client, NS, f"pg-{parallel}", "hello in parallel", llm_base_url=llm.base_url,
                  parallel_input_guard=parallel)
    assert guard.saw_the_llm_asked is parallel
    [result] = of(events, "result")
    assert result.status == agent_pb2.TURN_STATUS_COMPLETED and result.answer == "default: hello in parallel"
    assert len(llm.requests) - guard.before == 1  # the early answer is the answer: no second call


def test_parallel_input_guard_drops_the_early_answer_of_a_blocked_message(srv, llm) -> None:
    guard = _WaitsForTheLLM(llm, BLOCK, patience=5.0)
    srv.rt.extras["agent_ports"]["guard"] = lambda rt, scope: guard
    msg = 'drop it [call:lookup {"q": "x"}]'
    events = turn(srv.client, NS, "pg-block", msg, llm_base_url=llm.base_url, tools=["lookup"],
                  parallel_input_guard=True)
    assert guard.saw_the_llm_asked
    [result] = of(events, "result")
    assert result.status == agent_pb2.TURN_STATUS_BLOCKED and result.answer == BLOCKED_ANSWER
    assert srv.tools_fake.calls == [] and not of(events, "tool_call") and not of(events, "memory_write")
    assert stages(events)[:1] == ["input_guard"] and "agent" not in stages(events)
    assert not _memory_texts(srv, "drop it")


def test_a_tool_the_turn_did_not_offer_is_never_run(srv, llm) -> None:
    # The policy offers no tools; the LLM asks for one anyway (as an injected instruction could make it).
    events = turn(srv.client, NS, "not-offered", 'hi [call:lookup {"q": "x"}]', llm_base_url=llm.base_url,
                  model="always-tools", max_tool_rounds=1)
    assert srv.tools_fake.calls == []
    [result] = of(events, "tool_result")
    assert "not offered" in result.error
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED


def test_max_tool_rounds_ends_an_llm_that_keeps_asking_for_tools(srv, llm) -> None:
    events = turn(srv.client, NS, "tool-loop", 'loop [call:lookup {"q": "x"}]', llm_base_url=llm.base_url,
                  model="always-tools", tools=["lookup"], max_tool_rounds=2, timeout=20)
    assert srv.tools_fake.calls == [("lookup", '{"q": "x"}')] * 2
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED


class _MalformedVerdicts(MarkerGuard):
    """A guard port whose verdict id is not a string: the event carrying it cannot be converted."""

    async def check(self, stage: str, text: str, *, tool_call: Any = None, tools: Any = (),
                    thread_id: str = "") -> GuardOutcome:
        return GuardOutcome(ALLOW, verdict_id=12345)  # type: ignore[arg-type]


def test_a_turn_that_fails_mid_stream_releases_its_thread(srv, llm) -> None:
    srv.rt.extras["agent_ports"]["guard"] = lambda rt, scope: _MalformedVerdicts()
    with pytest.raises(grpc.RpcError) as err:
        turn(srv.client, NS, "fails-mid-stream", "first", llm_base_url=llm.base_url, timeout=10)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    srv.rt.extras["agent_ports"]["guard"] = lambda rt, scope: AllowAllGuard()
    # The thread's lock was released with the failed run (not whenever the garbage collector gets to it).
    events = turn(srv.client, NS, "fails-mid-stream", "second", llm_base_url=llm.base_url, timeout=10)
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED


@pytest.fixture
def real_tools_srv(shared_server):
    """The module's server with its real tool pipeline (builtins such as ``memory.search``) and an allow-all
    guard."""
    shared_server.rt.extras["agent_ports"] = {"guard": lambda rt, scope: AllowAllGuard()}
    yield shared_server
    shared_server.rt.extras.pop("agent_ports", None)


def test_a_dotted_tool_on_the_approval_list_pauses_and_runs_under_its_own_name(real_tools_srv, llm) -> None:
    """The LLM calls ``memory__search`` (function names cannot hold dots): the approval list, the guard and the
    pipeline must still see ``memory.search``. It ran unapproved, and after a Resume it was invoked as
    ``memory.search`` only by luck of the name (``my__tool`` became ``my.tool``)."""
    srv = real_tools_srv
    msg = 'find it [call:memory__search {"query": "harbour"}]'
    events = turn(srv.client, NS, "t-dotted", msg, llm_base_url=llm.base_url, tools=["memory.search"],
                  approval_tools=["memory.search"])
    [result] = of(events, "result")
    assert result.status == agent_pb2.TURN_STATUS_INTERRUPTED
    assert result.interrupt.kind == agent_pb2.INTERRUPT_KIND_TOOL_APPROVAL
    assert result.interrupt.tool_call.name == "memory.search"
    assert not of(events, "tool_result")
    events = resume(srv.client, NS, "t-dotted", common_pb2.DECISION_ALLOW)
    [res] = of(events, "tool_result")
    assert not res.error, res.error
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED


def test_thread_keys_of_different_namespaces_never_meet() -> None:
    from runtime.agent.runner import checkpoint_thread_key

    assert checkpoint_thread_key("t/a", "b:c") != checkpoint_thread_key("t/a:b", "c")
    assert checkpoint_thread_key("t/a%3Ab", "c") != checkpoint_thread_key("t/a:b", "c")
    assert checkpoint_thread_key("default/agent-tests", "t1") == "default/agent-tests:t1"  # stored keys still read
