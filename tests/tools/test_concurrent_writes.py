"""Concurrent ToolService writes, over the wire, on SQLite and Postgres: every call succeeds and none is lost.

Many clients start the same kind of write at once (a barrier releases them together). Register of one name,
SetPolicy and partial SetPolicy updates of different fields are read-modify-writes of one key; the store
serialises them (``core/sqlwrite.py``), so none fails on a unique key and none overwrites another's field.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from agentrt.v1 import tool_pb2

from runtime.client import AgentrtClient
from runtime.replication import wait_for
from tests.conftest import RunningServer

T = TypeVar("T")
N = 16
NS = "conc"
# One partial update per field, each away from its default; together they are the policy every round must end
# with. Each is sent twice so more writers race for the same row.
PATCHES = [
    tool_pb2.ToolPolicy(guard_calls=False),
    tool_pb2.ToolPolicy(guard_results=False),
    tool_pb2.ToolPolicy(memory_write=True),
    tool_pb2.ToolPolicy(memory_session_id="mine"),
] * 2
MERGED = tool_pb2.ToolPolicy(guard_calls=False, guard_results=False, memory_write=True, memory_session_id="mine")


def at_once(clients: list[AgentrtClient], n: int, call: Callable[[AgentrtClient, int], T]) -> list[T]:
    """Run ``call(client, i)`` for i < n in n threads released together; the results in order of i.

    Fails the test with every error's status and message when any call failed.
    """
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[str] = []

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call(clients[i % len(clients)], i)
        except grpc.RpcError as err:
            errors.append(f"call {i}: {err.code().name} {err.details()}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return results


def http_tool(description: str) -> tool_pb2.Tool:
    return tool_pb2.Tool(
        name="shared",
        description=description,
        input_schema_json='{"type": "object"}',
        http=tool_pb2.HttpToolExecutor(url="http://127.0.0.1:9/"),
    )


def register(client: AgentrtClient, i: int) -> tool_pb2.RegisterToolResponse:
    return client.tool.Register(tool_pb2.RegisterToolRequest(namespace=NS, tool=http_tool(f"variant {i}")))


def get_policy(client: AgentrtClient, ns: str) -> tool_pb2.ToolPolicy:
    return client.tool.GetPolicy(tool_pb2.GetToolPolicyRequest(namespace=ns))


def patch_policy(ns: str) -> Callable[[AgentrtClient, int], tool_pb2.ToolPolicy]:
    """A call for ``at_once``: call i sends ``PATCHES[i]`` to namespace ``ns``."""

    def call(client: AgentrtClient, i: int) -> tool_pb2.ToolPolicy:
        return client.tool.SetPolicy(tool_pb2.SetToolPolicyRequest(namespace=ns, policy=PATCHES[i]))

    return call


@pytest.fixture
def server(make_server: Callable[..., RunningServer], db_url: str, tmp_path: Path) -> RunningServer:
    return make_server(db_url=db_url, data_dir=tmp_path / "d", embedding_model="hashing")


@pytest.fixture
def clients(server: RunningServer) -> Iterator[list[AgentrtClient]]:
    """Four clients (channels) of one server."""
    extra = [server.new_client() for _ in range(3)]
    yield [server.client, *extra]
    for c in extra:
        c.close()


def test_concurrent_registers_of_one_name_all_get_contiguous_versions(clients: list[AgentrtClient]) -> None:
    replies = at_once(clients, N, register)

    assert all(r.created for r in replies)
    assert sorted(r.tool.version for r in replies) == list(range(1, N + 1))
    got = clients[0].tool.Get(tool_pb2.GetToolRequest(namespace=NS, name="shared"))
    assert list(got.versions) == list(range(1, N + 1))
    # The latest version is the one whose Register was given version N.
    assert got.tool.description == next(r.tool.description for r in replies if r.tool.version == N)


def test_concurrent_set_policy_calls_all_succeed(clients: list[AgentrtClient]) -> None:
    get_policy(clients[0], NS)

    def set_session(client: AgentrtClient, i: int) -> tool_pb2.ToolPolicy:
        policy = tool_pb2.ToolPolicy(memory_session_id=f"s{i}")
        return client.tool.SetPolicy(tool_pb2.SetToolPolicyRequest(namespace=NS, policy=policy))

    replies = at_once(clients, N, set_session)

    final = get_policy(clients[0], NS)
    assert final.memory_session_id in {r.memory_session_id for r in replies}


def test_concurrent_partial_set_policy_updates_all_survive(clients: list[AgentrtClient]) -> None:
    for rnd in range(8):
        ns = f"{NS}{rnd}"
        for c in clients:
            get_policy(c, ns)  # a cached policy to merge into is what lost updates before

        at_once(clients, len(PATCHES), patch_policy(ns))

        assert get_policy(clients[0], ns) == MERGED, f"round {rnd}"


@pytest.mark.postgres
def test_two_replicas_write_concurrently_and_see_each_others_writes(
    make_server: Callable[..., RunningServer], pg_url: str, tmp_path: Path
) -> None:
    a, b = (make_server(db_url=pg_url, data_dir=tmp_path / n, embedding_model="hashing") for n in "ab")
    replicas = [a.client, b.client]

    replies = at_once(replicas, N, register)

    assert sorted(r.tool.version for r in replies) == list(range(1, N + 1))
    latest = next(r.tool.description for r in replies if r.tool.version == N)
    for c in replicas:

        def sees_latest(c: AgentrtClient = c) -> bool:
            return c.tool.Get(tool_pb2.GetToolRequest(namespace=NS, name="shared")).tool.description == latest

        assert wait_for(sees_latest, timeout=10)

    for rnd in range(4):
        ns = f"{NS}{rnd}"
        for c in replicas:
            get_policy(c, ns)
        at_once(replicas, len(PATCHES), patch_policy(ns))
        for c in replicas:

            def sees_merged(c: AgentrtClient = c, ns: str = ns) -> bool:
                return get_policy(c, ns) == MERGED

            assert wait_for(sees_merged, timeout=10), f"round {rnd}"


def test_concurrent_unregisters_of_one_name_remove_it_once(clients: list[AgentrtClient]) -> None:
    register(clients[0], 0)
    outcomes: list[str] = []

    def unregister(client: AgentrtClient, i: int) -> None:
        try:
            client.tool.Unregister(tool_pb2.UnregisterToolRequest(namespace=NS, name="shared"))
            outcomes.append("removed")
        except grpc.RpcError as err:
            outcomes.append(err.code().name)

    at_once(clients, N, unregister)

    assert sorted(outcomes) == ["NOT_FOUND"] * (N - 1) + ["removed"]
