"""Each error code of the spine, tenant isolation and namespace creation on first use, over the wire."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from agentrt.v1 import memory_pb2

from runtime import metrics
from tests.conftest import bad_fields

TOKENS = [
    {"token": "tok-acme", "tenant": "acme"},
    {"token": "tok-globex", "tenant": "globex"},
    {"token": "tok-acme-ro", "tenant": "acme", "read_only": True},
    {"token": "tok-acme-support", "tenant": "acme", "namespaces": ["support-*"]},
]


def _msg(i: int, text: str) -> dict:
    return {"id": f"m{i}", "speaker": "user", "text": text}


def test_tenants_never_see_each_others_data(make_server) -> None:
    srv = make_server(embedding_model="hashing", tokens=TOKENS)
    acme, globex = srv.new_client("tok-acme"), srv.new_client("tok-globex")
    acme.write("shared", "s1", [_msg(1, "acme secret launch plan for the rocket")])
    globex.write("shared", "s1", [_msg(2, "globex quarterly numbers")])

    acme_hits = acme.search("shared", "rocket launch plan quarterly numbers", top_k=10).hits
    globex_hits = globex.search("shared", "rocket launch plan quarterly numbers", top_k=10).hits
    assert {m for h in acme_hits for m in h.message_ids} == {"m1"}
    assert {m for h in globex_hits for m in h.message_ids} == {"m2"}
    # the other tenant's message id does not exist from here
    with pytest.raises(grpc.RpcError) as exc:
        globex.memory.Get(memory_pb2.GetRequest(namespace="shared", message_ids=["m1"]), timeout=10)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    # and cannot be deleted from here: acme's message survives globex deleting the whole namespace
    globex.memory.Delete(memory_pb2.DeleteRequest(namespace="shared", all=True), timeout=30)
    got = acme.memory.Get(memory_pb2.GetRequest(namespace="shared", message_ids=["m1"]), timeout=10)
    assert [m.text for m in got.messages] == ["acme secret launch plan for the rocket"]


def test_permission_denied_for_read_only_and_out_of_scope_tokens(make_server) -> None:
    srv = make_server(embedding_model="hashing", tokens=TOKENS)
    ro, support = srv.new_client("tok-acme-ro"), srv.new_client("tok-acme-support")
    with pytest.raises(grpc.RpcError) as exc:
        ro.write("ns", "s1", [_msg(1, "hello")])
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ro.search("ns", "hello").hits == []  # reading is allowed, and an unused namespace is empty
    with pytest.raises(grpc.RpcError) as exc:
        support.write("billing", "s1", [_msg(1, "hello")])
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    support.write("support-eu", "s1", [_msg(1, "hello")])


def test_invalid_argument_names_the_field(server) -> None:
    cases = [
        (memory_pb2.WriteRequest(namespace="bad/name", session_id="s"), "namespace"),
        (memory_pb2.WriteRequest(namespace="", session_id="s"), "namespace"),
        (memory_pb2.SearchRequest(namespace="ns", query="q", top_k=-1), "top_k"),
        (memory_pb2.SearchRequest(namespace="ns", query="q", token_budget=-5), "token_budget"),
    ]
    for request, field in cases:
        method = server.client.memory.Write if isinstance(request, memory_pb2.WriteRequest) \
            else server.client.memory.Search
        with pytest.raises(grpc.RpcError) as exc:
            method(request, timeout=10)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert field in bad_fields(exc.value), (request, bad_fields(exc.value))
    with pytest.raises(grpc.RpcError) as exc:
        server.client.write("ns", "s1", [_msg(1, "ok"), {"id": "m2", "speaker": "u", "text": ""}])
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(f.startswith("messages[1]") for f in bad_fields(exc.value))
    # a rejected write stored nothing, not even its valid first message
    with pytest.raises(grpc.RpcError) as exc:
        server.client.memory.Get(memory_pb2.GetRequest(namespace="ns", message_ids=["m1"]), timeout=10)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_reading_an_unknown_namespace_is_empty_not_an_error(server) -> None:
    assert list(server.client.search("never-written", "anything", top_k=5).hits) == []
    listed = server.client.memory.List(memory_pb2.ListRequest(namespace="never-written"), timeout=10)
    assert list(listed.messages) == []


def test_namespace_is_created_on_first_use(server) -> None:
    server.client.write("fresh-ns", "s1", [_msg(1, "first words")])
    assert "fresh-ns" in server.rt.db.list_namespaces("default")


def _wait_in_flight(minimum: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while metrics.RPC_IN_FLIGHT._value.get() < minimum:  # process-wide gauge of the in-process server
        if time.time() > deadline:
            raise TimeoutError("the slow call never started")
        time.sleep(0.005)


def test_overload_is_shed_with_resource_exhausted(make_server) -> None:
    srv = make_server(server={"max_concurrent_rpcs": 1})  # the real model: a big write is slow
    big = [_msg(i, f"message number {i} about topic {i % 17} and some more words") for i in range(1000)]
    results: list[object] = []
    srv.client.timeout = 600  # a loaded CI machine may take long; the test is about admission, not speed
    t = threading.Thread(target=lambda: results.append(srv.client.write("ns", "s1", big)))
    t.start()
    _wait_in_flight(1)
    with pytest.raises(grpc.RpcError) as exc:
        srv.new_client().search("ns", "topic", top_k=3)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    t.join(300)
    assert results and results[0].written == 1000  # the admitted call was not harmed


def test_client_deadline_is_honoured(make_server) -> None:
    srv = make_server()
    big = [_msg(i, f"message number {i} about topic {i % 17}") for i in range(1000)]
    req = memory_pb2.WriteRequest(namespace="ns", session_id="s1",
                                  messages=[memory_pb2.Message(**m) for m in big])
    with pytest.raises(grpc.RpcError) as exc:
        srv.client.memory.Write(req, timeout=0.05)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
