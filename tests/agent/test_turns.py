"""Whole turns over the wire: RunTurn, Resume, GetThread against the OpenAI-compatible stub server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import grpc
import pytest
from agentrt.v1 import agent_pb2, common_pb2
from grpc_status import rpc_status

from runtime.agent.graph import BLOCKED_ANSWER
from runtime.agent.ports import ALLOW, BLOCK, AllowAllGuard, GuardOutcome, NoMemory
from tests.agent.conftest import LookupTools, MarkerGuard, of, resume, stages, turn

NS = "agent-tests"


@pytest.fixture
def srv(shared_server):
    """The module's server with a fresh fake tool pipeline, an allow-all guard (the real guard engine on the
    hashing embedder has no meaningful verdicts; see test_real_components.py) and the real other components."""
    tools = LookupTools()
    shared_server.rt.extras["agent_ports"] = {"tools": lambda rt, scope: tools,
                                              "guard": lambda rt, scope: AllowAllGuard()}
    shared_server.tools_fake = tools
    yield shared_server
    shared_server.rt.extras.pop("agent_ports", None)


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


class _WriteInAThread(NoMemory):
    """A memory whose write commits in a worker thread after ``delay`` s, as the engine's does: cancelling the
    coroutine that awaits it does not stop it."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.stored: dict[str, str] = {}
        self.writing = threading.Event()

    async def write(self, session_id: str, messages: Any) -> list[str]:
        def commit() -> list[str]:
            self.writing.set()
            time.sleep(self.delay)
            self.stored.update({mid: text for mid, _speaker, text in messages})
            return [mid for mid, _speaker, _text in messages]

        return await asyncio.get_running_loop().run_in_executor(None, commit)

    async def delete(self, message_ids: Any) -> None:
        for mid in message_ids:
            self.stored.pop(mid, None)


def test_a_turn_cancelled_while_its_memory_write_runs_takes_the_write_back(srv, llm) -> None:
    memory = _WriteInAThread(delay=0.5)
    srv.rt.extras["agent_ports"]["memory"] = lambda rt, scope: memory
    request = agent_pb2.RunTurnRequest(namespace=NS, thread_id="t13b", message="remember me",
                                       policy=agent_pb2.TurnPolicy(llm_base_url=llm.base_url))
    call = srv.client.agent.RunTurn(request, timeout=30)
    for event in call:
        if event.WhichOneof("event") == "stage" and event.stage.name == "write_memory":
            break
    assert memory.writing.wait(10)
    call.cancel()
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    assert err.value.code() == grpc.StatusCode.CANCELLED
    time.sleep(1.0)  # past the write's commit (0.5 s after it started) and the take-back
    assert memory.stored == {}
    thread = srv.client.agent.GetThread(agent_pb2.GetThreadRequest(namespace=NS, thread_id="t13b"), timeout=10)
    assert thread.turns == 0
    # Not cancelled, the same memory keeps the turn.
    events = turn(srv.client, NS, "t13c", "keep me", llm_base_url=llm.base_url)
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED
    assert sorted(memory.stored.values()) == ["default: keep me", "keep me"]


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
