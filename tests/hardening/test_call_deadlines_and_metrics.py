"""The call wrapper's deadlines and error accounting over the wire: the server's stream deadline firing while a
slow client reads (the call ended with no status at all), client deadlines and cancellations and replies over
``server.max_message_bytes`` (missing from ``agentrt_rpc_errors_total``), retry advice on RESOURCE_EXHAUSTED and
pool exhaustion, the request id of an INTERNAL error, and stop() keeping to its grace period."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from agentrt.v1 import agent_pb2, agent_pb2_grpc, memory_pb2
from prometheus_client import REGISTRY
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from runtime import logs
from runtime.client import AgentrtClient, error_details
from runtime.errors import REQUEST_ID_KEY
from runtime.services.agent import AgentServiceServicer

RUN_TURN = "/agentrt.v1.AgentService/RunTurn"
SEARCH = "/agentrt.v1.MemoryService/Search"
TURN = agent_pb2.RunTurnRequest(namespace="ns", message="hi", thread_id="t1")


def errors_counted(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("agentrt_rpc_errors_total", {"method": method, "code": code}) or 0.0


def wait_for_count(method: str, code: str, at_least: float, timeout: float = 10.0) -> float:
    """The counter once it reaches ``at_least`` (the server counts after the client has its status)."""
    end = time.monotonic() + timeout
    while (value := errors_counted(method, code)) < at_least and time.monotonic() < end:
        time.sleep(0.05)
    return value


def slow_search(srv: Any, seconds: float) -> None:
    def search(*_args: Any, **_kwargs: Any) -> Any:
        time.sleep(seconds)
        raise RuntimeError("the client is gone by now")

    srv.rt.memory.search = search


def test_the_stream_deadline_ends_a_call_whose_slow_client_is_still_reading(make_server: Any,
                                                                            monkeypatch: Any) -> None:
    """The deadline fired while gRPC was writing an event to a client reading slowly: the cancellation landed
    in gRPC's write, and the client got no status at all (it hung until it cancelled the call itself)."""

    async def flood(self: Any, request: Any, context: Any) -> AsyncIterator[agent_pb2.TurnEvent]:
        for _ in range(30):
            yield agent_pb2.TurnEvent(thread_id="x" * (4 << 20))

    monkeypatch.setattr(AgentServiceServicer, "RunTurn", flood)
    srv = make_server(embedding_model="hashing", server={"stream_deadline_s": 1.0})
    before = errors_counted(RUN_TURN, "DEADLINE_EXCEEDED")
    with AgentrtClient(srv.target, max_message_bytes=64 << 20) as client:
        events = client.agent.RunTurn(TURN)  # no client deadline: the server's stream_deadline_s applies
        watchdog = threading.Timer(25, events.cancel)  # so a regression fails instead of hanging
        watchdog.start()
        started = time.monotonic()
        try:
            with pytest.raises(grpc.RpcError) as err:
                for _ in events:
                    time.sleep(0.5)
        finally:
            watchdog.cancel()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value.details()
    assert time.monotonic() - started < 15
    assert wait_for_count(RUN_TURN, "DEADLINE_EXCEEDED", before + 1) == before + 1


def test_the_stream_deadline_still_ends_a_handler_waiting_on_its_own_work(make_server: Any,
                                                                          monkeypatch: Any) -> None:
    async def stuck(self: Any, request: Any, context: Any) -> AsyncIterator[agent_pb2.TurnEvent]:
        yield agent_pb2.TurnEvent()
        await asyncio.sleep(30)
        yield agent_pb2.TurnEvent()

    monkeypatch.setattr(AgentServiceServicer, "RunTurn", stuck)
    srv = make_server(embedding_model="hashing", server={"stream_deadline_s": 1.0})
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        list(agent_pb2_grpc.AgentServiceStub(srv.channel).RunTurn(TURN))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10


def test_client_deadlines_and_cancellations_are_counted(make_server: Any) -> None:
    srv = make_server(embedding_model="hashing")
    slow_search(srv, 1.5)
    req = memory_pb2.SearchRequest(namespace="ns", query="hello")
    deadlines, cancels = errors_counted(SEARCH, "DEADLINE_EXCEEDED"), errors_counted(SEARCH, "CANCELLED")

    with pytest.raises(grpc.RpcError) as err:
        srv.client.memory.Search(req, timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for_count(SEARCH, "DEADLINE_EXCEEDED", deadlines + 1) == deadlines + 1

    call = srv.client.memory.Search.future(req, timeout=30)
    time.sleep(0.3)
    call.cancel()
    assert wait_for_count(SEARCH, "CANCELLED", cancels + 1) == cancels + 1
    assert errors_counted(SEARCH, "DEADLINE_EXCEEDED") == deadlines + 1


def test_a_stream_the_client_cancels_while_an_event_is_written_is_counted(make_server: Any,
                                                                          monkeypatch: Any) -> None:
    async def flood(self: Any, request: Any, context: Any) -> AsyncIterator[agent_pb2.TurnEvent]:
        for _ in range(30):
            yield agent_pb2.TurnEvent(thread_id="x" * (4 << 20))

    monkeypatch.setattr(AgentServiceServicer, "RunTurn", flood)
    srv = make_server(embedding_model="hashing")
    before = errors_counted(RUN_TURN, "CANCELLED")
    with AgentrtClient(srv.target, max_message_bytes=64 << 20) as client:
        events = client.agent.RunTurn(TURN, timeout=60)
        next(events)
        time.sleep(0.5)  # the server is blocked writing the next events
        events.cancel()
    assert wait_for_count(RUN_TURN, "CANCELLED", before + 1) == before + 1


def test_a_reply_over_the_message_limit_is_counted_and_logged(make_server: Any, caplog: Any) -> None:
    srv = make_server(embedding_model="hashing", server={"max_message_bytes": 20_000})
    for i in range(10):
        srv.client.memory.Write(memory_pb2.WriteRequest(namespace="ns", session_id="s", messages=[
            memory_pb2.Message(id=f"m{i}", speaker="u", text=f"{i} " + "lorem ipsum " * 250)]), timeout=30)
    method = "/agentrt.v1.MemoryService/Get"
    before = errors_counted(method, "RESOURCE_EXHAUSTED")
    with caplog.at_level(logging.WARNING, logger="runtime.server"), \
            AgentrtClient(srv.target, max_message_bytes=1 << 24) as client, pytest.raises(grpc.RpcError) as err:
        client.memory.Get(memory_pb2.GetRequest(namespace="ns", message_ids=[f"m{i}" for i in range(10)]),
                          timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert wait_for_count(method, "RESOURCE_EXHAUSTED", before + 1) == before + 1
    logged = [r for r in caplog.records if "max_message_bytes" in r.getMessage()]
    assert logged and getattr(logged[0], "method", "") == method and getattr(logged[0], "reply_bytes", 0) > 20_000


def test_a_call_shed_at_the_concurrency_cap_carries_retry_advice(make_server: Any) -> None:
    srv = make_server(embedding_model="hashing", server={"max_concurrent_rpcs": 1})
    slow_search(srv, 1.5)
    req = memory_pb2.SearchRequest(namespace="ns", query="hello")
    busy = srv.client.memory.Search.future(req, timeout=30)
    time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as err:
        srv.client.memory.Stats(memory_pb2.StatsRequest(namespace="ns"), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = error_details(err.value).retry_after_s
    assert retry is not None and 0 < retry <= 1
    with pytest.raises(grpc.RpcError):
        busy.result()


def test_an_exhausted_connection_pool_is_unavailable_with_retry_advice(make_server: Any) -> None:
    srv = make_server(embedding_model="hashing")

    def pool_timeout(*_args: Any, **_kwargs: Any) -> Any:
        raise PoolTimeoutError("QueuePool limit of size 10 overflow 10 reached, connection timed out, timeout 30.00")

    srv.rt.memory.search = pool_timeout
    with pytest.raises(grpc.RpcError) as err:
        srv.client.memory.Search(memory_pb2.SearchRequest(namespace="ns", query="hello"), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_details(err.value).retry_after_s == pytest.approx(1.0)


class _RequestIds(logging.Handler):
    """Remembers the request id in effect when each record was logged (the JSON log's ``request_id``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("unexpected error"):
            self.ids.append(logs.request_id.get())


def test_an_internal_error_tells_the_client_the_request_id_of_its_log_line(make_server: Any) -> None:
    srv = make_server(embedding_model="hashing")

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    srv.rt.memory.search = broken
    handler = _RequestIds()
    logging.getLogger("runtime.errors").addHandler(handler)
    try:
        with pytest.raises(grpc.RpcError) as err:
            srv.client.memory.Search(memory_pb2.SearchRequest(namespace="ns", query="hello"), timeout=30)
    finally:
        logging.getLogger("runtime.errors").removeHandler(handler)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    trailers = dict(err.value.trailing_metadata() or ())
    assert handler.ids and trailers.get(REQUEST_ID_KEY) == handler.ids[0] != ""


def test_stop_keeps_to_its_grace_period_while_a_worker_is_still_busy(make_server: Any) -> None:
    """executor.shutdown(wait=True) held the event loop until a cut-off call's worker finished."""
    srv = make_server(embedding_model="hashing")
    slow_search(srv, 10.0)
    call = srv.client.memory.Search.future(memory_pb2.SearchRequest(namespace="ns", query="hello"), timeout=30)
    time.sleep(0.3)
    started = time.monotonic()
    srv.stop(1.0)
    assert time.monotonic() - started < 6.0  # the grace and the components' own stops; the worker needs 10 s
    with pytest.raises(grpc.RpcError):
        call.result()
