"""Two sidecars on one Postgres: turns of one thread run one at a time (none of the concurrent turns is lost), and
concurrent StoreBatch puts of the same keys all succeed."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from agentrt.v1 import agent_pb2

from runtime.agent.ports import AllowAllGuard
from tests.agent.openai_stub import OpenAIStub


def _all_at_once(call: Callable[[int], None], n: int) -> None:
    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


@pytest.fixture
def llm():  # type: ignore[no-untyped-def]
    with OpenAIStub() as stub:
        yield stub


def test_concurrent_turns_on_one_thread_from_two_replicas_are_all_kept(make_server, pg_url: str, tmp_path,
                                                                      llm) -> None:
    replicas = [make_server(db_url=pg_url, data_dir=tmp_path / name, embedding_model="hashing") for name in "ab"]
    for srv in replicas:
        srv.rt.extras["agent_ports"] = {"guard": lambda rt, scope: AllowAllGuard()}
    failures: list[BaseException] = []

    def one_turn(i: int) -> None:
        # Each LLM answer takes 0.2 s: the turns overlap unless something serialises them.
        request = agent_pb2.RunTurnRequest(namespace="ns", thread_id="shared", message=f"turn {i} [slow:0.2]",
                                           policy=agent_pb2.TurnPolicy(llm_base_url=llm.base_url))
        try:
            events = list(replicas[i % 2].client.agent.RunTurn(request, timeout=60))
            assert events[-1].result.status == agent_pb2.TURN_STATUS_COMPLETED
        except BaseException as exc:
            failures.append(exc)

    _all_at_once(one_turn, 6)
    assert not failures, failures
    for srv in replicas:
        thread = srv.client.agent.GetThread(agent_pb2.GetThreadRequest(namespace="ns", thread_id="shared"))
        assert thread.turns == 6 and len(thread.messages) == 12
        users = sorted(m.text for m in thread.messages if m.role == "user")
        assert users == sorted(f"turn {i} [slow:0.2]" for i in range(6))


def test_concurrent_puts_of_the_same_keys_from_two_replicas_all_succeed(make_server, pg_url: str, tmp_path) -> None:
    replicas = [make_server(db_url=pg_url, data_dir=tmp_path / name, embedding_model="hashing") for name in "ab"]
    failures: list[BaseException] = []

    def put(i: int) -> None:
        ops = [agent_pb2.StoreOp(put=agent_pb2.StorePut(path=["shared"], key=f"k{j}", value_json=f'{{"by": {i}}}',
                                                        index_fields=["by"])) for j in range(5)]
        try:
            replicas[i % 2].client.agent.StoreBatch(agent_pb2.StoreBatchRequest(namespace="ns", ops=ops), timeout=60)
        except BaseException as exc:
            failures.append(exc)

    _all_at_once(put, 12)
    assert not failures, failures
    gets = [agent_pb2.StoreOp(get=agent_pb2.StoreGet(path=["shared"], key=f"k{j}")) for j in range(5)]
    for srv in replicas:
        got = srv.client.agent.StoreBatch(agent_pb2.StoreBatchRequest(namespace="ns", ops=gets), timeout=10)
        assert all(r.get.HasField("item") for r in got.results)
