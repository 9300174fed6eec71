"""The namespace's LLM API key: sent only to the URLs the configuration names, never kept in a thread's state,
and LLM clients bounded however many endpoints requests name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from agentrt.v1 import agent_pb2, common_pb2

from runtime.agent.ports import AllowAllGuard
from tests.agent.conftest import LookupTools, of, resume, turn
from tests.agent.openai_stub import OpenAIStub

SECRET = "sk-configured-secret-0451"


@pytest.fixture
def other_llm() -> Iterator[OpenAIStub]:
    """A second endpoint, standing for a server the client controls."""
    with OpenAIStub() as stub:
        yield stub


def _with_fakes(srv):  # type: ignore[no-untyped-def]
    tools = LookupTools()
    srv.rt.extras["agent_ports"] = {"tools": lambda rt, scope: tools, "guard": lambda rt, scope: AllowAllGuard()}
    return tools


def test_the_configured_key_goes_only_to_the_configured_urls(make_server, llm, other_llm) -> None:
    srv = make_server(embedding_model="hashing", policies={"defaults": {"agent": {
        "llm_base_url": llm.base_url, "api_key": SECRET,
        "candidates": [{"agent_id": "main"}, {"agent_id": "second", "base_url": other_llm.base_url + "/"}],
    }}})
    _with_fakes(srv)
    # The configured endpoint and the configured candidate's endpoint get the key.
    turn(srv.client, "keys", "k1", "hello", write_memory=False)
    assert llm.authorizations[-1] == f"Bearer {SECRET}"
    assert other_llm.authorizations[-1] == f"Bearer {SECRET}"
    # A request naming an endpoint of its own gets no key sent there, for the agent or for its candidates.
    with OpenAIStub() as theirs:
        turn(srv.client, "keys", "k2", "hello", write_memory=False, llm_base_url=theirs.base_url,
             candidates=[agent_pb2.CandidateSpec(agent_id="a"), agent_pb2.CandidateSpec(agent_id="b")])
        assert len(theirs.authorizations) == 2 and set(theirs.authorizations) == {None}


def test_the_key_is_never_checkpointed_and_a_resumed_turn_uses_the_current_one(make_server, llm) -> None:
    first = make_server(embedding_model="hashing", policies={"defaults": {"agent": {
        "llm_base_url": llm.base_url, "api_key": SECRET}}})
    tools = _with_fakes(first)
    events = turn(first.client, "keys", "r1", 'go [call:lookup {"q": "k"}]', tools=["lookup"],
                  approval_tools=["lookup"])
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_INTERRUPTED
    data_dir = Path(first.settings.storage.data_dir)
    first.stop()
    stored = [p for p in data_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert stored == []
    # The key is rotated while the turn is paused: the resumed turn sends the new one.
    second = make_server(data_dir=data_dir, embedding_model="hashing", policies={"defaults": {"agent": {
        "llm_base_url": llm.base_url, "api_key": "sk-rotated"}}})
    second.rt.extras["agent_ports"] = first.rt.extras["agent_ports"]
    events = resume(second.client, "keys", "r1", common_pb2.DECISION_ALLOW)
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED
    assert tools.calls == [("lookup", '{"q": "k"}')]
    assert llm.authorizations[-1] == "Bearer sk-rotated"


def test_llm_clients_are_bounded_however_many_endpoints_requests_name(make_server, llm) -> None:
    srv = make_server(embedding_model="hashing")
    _with_fakes(srv)
    host = llm.base_url.removeprefix("http://")
    for i in range(40):
        # Distinct base URLs of the one stub (a user name in the URL changes nothing it answers).
        turn(srv.client, "clients", f"c{i}", "hi", write_memory=False, llm_base_url=f"http://u{i}@{host}")
    assert len(srv.rt.agent.runner._clients) == 32
