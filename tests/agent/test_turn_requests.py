"""What RunTurn and Resume refuse before any work: malformed endpoints, fields memory could not store, every bad
policy field at once; what an LLM answering a NUL gets blamed for; configured policies out of range."""

from __future__ import annotations

import asyncio

import grpc
import psycopg
import pytest
from agentrt.v1 import agent_pb2, common_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from core.errors import FailedPreconditionError
from runtime.agent.llm import ChatClient
from runtime.errors import to_rpc_error
from runtime.server import PolicyError
from tests.agent.conftest import of, resume, turn

NS = "agent-requests"



def _violations(err: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)
    assert status is not None
    found = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update({v.field: v.description for v in bad.field_violations})
    return found


@pytest.mark.parametrize("url", ["http://", "http://[::1/v1", "http://127.0.0.1:99999/v1", "https://exa mple.com/v1",
                                 "ftp://127.0.0.1/v1"])
def test_a_malformed_base_url_is_invalid_argument_naming_the_field(srv, llm, url: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        turn(srv.client, NS, "u1", "hello", llm_base_url=url, timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "policy.llm_base_url" in _violations(err.value)


def test_chat_client_reports_an_invalid_url_as_not_retryable() -> None:
    client = ChatClient("http://[::1/v1")

    async def call() -> None:
        try:
            await client.complete([{"role": "user", "content": "hi"}], model="m", timeout_s=5)
        finally:
            await client.aclose()

    with pytest.raises(FailedPreconditionError, match="not a valid URL"):
        asyncio.run(call())


@pytest.mark.parametrize(("fields", "named"), [
    ({"speaker": "bob\x00"}, "speaker"),
    ({"speaker": "x" * 300}, "speaker"),
    ({"message": "hello\x00there"}, "message"),
    ({"thread_id": "v1 "}, "thread_id"),
    ({"thread_id": " v1"}, "thread_id"),
])
def test_fields_memory_cannot_store_are_refused_before_the_turn_runs(srv, llm, fields, named: str) -> None:
    before = len(llm.requests)
    values = {"namespace": NS, "thread_id": "v1", "message": 'hello [call:lookup {"q": "v"}]', **fields}
    request = agent_pb2.RunTurnRequest(**values, policy=agent_pb2.TurnPolicy(llm_base_url=llm.base_url,
                                                                            tools=["lookup"]))
    with pytest.raises(grpc.RpcError) as err:
        list(srv.client.agent.RunTurn(request, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(_violations(err.value)) == [named]
    # Refused up front: no LLM call, no tool run.
    assert len(llm.requests) == before and srv.tools_fake.calls == []


def test_every_bad_policy_field_is_named_at_once(srv, llm) -> None:
    with pytest.raises(grpc.RpcError) as err:
        turn(srv.client, NS, "v2", "hi", llm_base_url=llm.base_url, temperature=5, top_logprobs=50)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(_violations(err.value)) == {"policy.temperature", "policy.top_logprobs"}


def test_an_llm_answer_holding_a_nul_blames_the_endpoint(srv, llm) -> None:
    for write_memory in (True, False):
        with pytest.raises(grpc.RpcError) as err:
            turn(srv.client, NS, f"n{write_memory}", "hello", llm_base_url=llm.base_url, model="fixed:ok\x00",
                 write_memory=write_memory)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert llm.base_url in (err.value.details() or "") and "NUL" in (err.value.details() or "")
    # The thread is usable afterwards.
    events = turn(srv.client, NS, "nFalse", "again", llm_base_url=llm.base_url, write_memory=False)
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED


def test_a_value_postgres_refuses_through_psycopg_is_invalid_argument_not_internal() -> None:
    exc = psycopg.errors.UntranslatableCharacter("unsupported Unicode escape sequence")
    assert isinstance(exc, psycopg.errors.DataError)
    assert to_rpc_error(exc, "RunTurn").code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(("agent", "located"), [
    ({"temperature": 5}, "policies.namespaces.demo.agent.temperature"),
    ({"max_tool_rounds": 50}, "policies.namespaces.demo.agent.max_tool_rounds"),
    ({"llm_base_url": "http://[::1/v1"}, "policies.namespaces.demo.agent.llm_base_url"),
    ({"candidates": [{"base_url": "http://h:99999/v1"}]}, "policies.namespaces.demo.agent.candidates[0].base_url"),
])
def test_an_out_of_range_configured_agent_policy_fails_the_start(make_server, agent, located: str) -> None:
    with pytest.raises(PolicyError) as err:
        make_server(embedding_model="hashing", policies={"namespaces": {"demo": {"agent": agent}}})
    assert located in str(err.value)


def test_resume_in_an_unknown_namespace_is_not_found_and_creates_nothing(srv) -> None:
    with pytest.raises(grpc.RpcError) as err:
        resume(srv.client, "never-used-ns", "p", common_pb2.DECISION_ALLOW)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not srv.rt.db.is_known("default/never-used-ns")


def _turn_with_id(srv, llm, thread_id: str, message: str, turn_id: str) -> list[agent_pb2.TurnEvent]:  # type: ignore[no-untyped-def]
    request = agent_pb2.RunTurnRequest(namespace=NS, thread_id=thread_id, message=message, turn_id=turn_id,
                                       policy=agent_pb2.TurnPolicy(llm_base_url=llm.base_url, force_retrieval=False))
    return list(srv.client.agent.RunTurn(request, timeout=30))


def test_a_turn_id_another_thread_used_is_refused_before_the_turn_runs(srv, llm) -> None:
    _turn_with_id(srv, llm, "ids-alice", "alice likes green tea", "shared-turn")
    before = len(llm.requests)
    with pytest.raises(grpc.RpcError) as err:
        _turn_with_id(srv, llm, "ids-bob", "bob likes coffee", "shared-turn")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and "turn_id" in (err.value.details() or "")
    assert len(llm.requests) == before


def test_a_turn_id_reused_on_its_thread_past_the_kept_ids_is_refused(srv, llm) -> None:
    from runtime.agent.graph import TURN_IDS_KEPT

    _turn_with_id(srv, llm, "ids-carol", "carol was born in Lisbon", "c-0")
    for i in range(1, TURN_IDS_KEPT + 1):
        _turn_with_id(srv, llm, "ids-carol", f"filler {i}", f"c-{i}")
    with pytest.raises(grpc.RpcError) as err:
        _turn_with_id(srv, llm, "ids-carol", "carol moved to Oslo", "c-0")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and "turn_id" in (err.value.details() or "")
    hits = srv.client.search(NS, "carol born Lisbon", top_k=5).hits
    assert any("Lisbon" in h.text for h in hits) and not any("Oslo" in h.text for h in hits)
