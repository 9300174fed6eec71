"""Resume over the wire: a Resume that fails part-way keeps the turn paused, and a Resume names the interrupt it
answers so that a retried or concurrent one never approves the next."""

from __future__ import annotations

import grpc
import pytest
from agentrt.v1 import agent_pb2, common_pb2

from tests.agent.conftest import of, resume, turn

NS = "agent-resume"



def _thread(srv, thread_id: str) -> agent_pb2.Thread:  # type: ignore[no-untyped-def]
    return srv.client.agent.GetThread(agent_pb2.GetThreadRequest(namespace=NS, thread_id=thread_id), timeout=10)


def _resume(srv, thread_id: str, interrupt_id: str = "", timeout: float = 30) -> list[agent_pb2.TurnEvent]:  # type: ignore[no-untyped-def]
    request = agent_pb2.ResumeRequest(namespace=NS, thread_id=thread_id, decision=common_pb2.DECISION_ALLOW,
                                      interrupt_id=interrupt_id)
    return list(srv.client.agent.Resume(request, timeout=timeout))


def test_a_resume_that_fails_after_its_first_step_leaves_the_turn_paused(srv, llm) -> None:
    # Every LLM answer takes 1.5 s: the Resume's 0.8 s deadline passes after the approved tool ran.
    events = turn(srv.client, NS, "lost", 'check [call:lookup {"q": "y"}] [slow:1.5]', llm_base_url=llm.base_url,
                  tools=["lookup"], approval_tools=["lookup"])
    [result] = of(events, "result")
    assert result.status == agent_pb2.TURN_STATUS_INTERRUPTED
    with pytest.raises(grpc.RpcError) as err:
        resume(srv.client, NS, "lost", common_pb2.DECISION_ALLOW, timeout=0.8)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Still paused on the same interrupt: GetThread says so, and a new turn is refused until it is resumed.
    view = _thread(srv, "lost")
    assert view.status == agent_pb2.THREAD_STATUS_INTERRUPTED
    assert view.pending_interrupt.interrupt_id == result.interrupt.interrupt_id
    with pytest.raises(grpc.RpcError) as err:
        turn(srv.client, NS, "lost", "another", llm_base_url=llm.base_url)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The retry finishes the turn (the approved tool runs again: at least once).
    events = _resume(srv, "lost", result.interrupt.interrupt_id)
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED
    assert srv.tools_fake.calls[-1] == ("lookup", '{"q": "y"}')
    assert _thread(srv, "lost").status == agent_pb2.THREAD_STATUS_IDLE


def test_a_resume_naming_an_interrupt_already_answered_is_refused(srv, llm) -> None:
    events = turn(srv.client, NS, "twice", 'pay [call:lookup {"q": "seen"}] [call:lookup {"q": "unseen"}]',
                  llm_base_url=llm.base_url, tools=["lookup"], approval_tools=["lookup"])
    [first] = of(events, "result")
    assert first.interrupt.interrupt_id and of(events, "interrupt")[0].interrupt_id == first.interrupt.interrupt_id
    [second] = of(_resume(srv, "twice", first.interrupt.interrupt_id), "result")
    assert second.status == agent_pb2.TURN_STATUS_INTERRUPTED
    assert second.interrupt.interrupt_id not in ("", first.interrupt.interrupt_id)
    # The same approval again (a retry, a second reviewer): refused, and the call nobody saw does not run.
    with pytest.raises(grpc.RpcError) as err:
        _resume(srv, "twice", first.interrupt.interrupt_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "interrupt_id" in (err.value.details() or "")
    assert srv.tools_fake.calls == []
    assert _thread(srv, "twice").pending_interrupt.interrupt_id == second.interrupt.interrupt_id
    [done] = of(_resume(srv, "twice", second.interrupt.interrupt_id), "result")
    assert done.status == agent_pb2.TURN_STATUS_COMPLETED
    assert sorted(srv.tools_fake.calls) == [("lookup", '{"q": "seen"}'), ("lookup", '{"q": "unseen"}')]
