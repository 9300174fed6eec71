"""Acknowledged writes survive restarts, kill -9 and graceful shutdown, on SQLite and Postgres."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from agentrt.v1 import memory_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.client import AgentrtClient
from tests.conftest import free_port


def _all_ids(client: AgentrtClient) -> set[str]:
    ids: set[str] = set()
    token = ""
    while True:
        page = client.memory.List(memory_pb2.ListRequest(namespace="ns", page_size=1000, page_token=token),
                                  timeout=30)
        ids |= {m.id for m in page.messages}
        token = page.next_page_token
        if not token:
            return ids


def test_restart_keeps_writes_and_search_works_after(make_server, db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "d"
    first = make_server(db_url=db_url, data_dir=data, embedding_model="hashing")
    first.client.write("ns", "s1", [{"id": f"m{i}", "speaker": "a", "text": f"the colour of car {i} is red"}
                                    for i in range(20)])
    first.stop()
    second = make_server(db_url=db_url, data_dir=data, embedding_model="hashing")
    assert _all_ids(second.client) == {f"m{i}" for i in range(20)}
    hits = second.client.search("ns", "colour of car 7", top_k=5).hits
    assert any("m7" in h.message_ids for h in hits)


def test_kill9_loses_no_acknowledged_write(spawn_server, db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "d"
    env = {"AGENTRT_EMBEDDING__MODEL": "hashing"}
    srv = spawn_server(data_dir=data, db_url=db_url, env=env)
    acked: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with AgentrtClient(srv.target) as c:
            i = 0
            while not stop.is_set():
                ids = [f"w{i}-{j}" for j in range(5)]
                try:
                    c.write("ns", f"s{i % 7}", [{"id": x, "speaker": "a", "text": f"note {x}"} for x in ids])
                except grpc.RpcError:
                    return  # the server died mid-call: this batch was never acknowledged
                acked.extend(ids)
                i += 1

    t = threading.Thread(target=writer)
    t.start()
    deadline = time.time() + 60
    while len(acked) < 100 and time.time() < deadline:
        time.sleep(0.01)
    srv.kill9()
    stop.set()
    t.join(30)
    assert len(acked) >= 100

    again = spawn_server(data_dir=data, db_url=db_url, env=env)
    with AgentrtClient(again.target) as c:
        stored = _all_ids(c)
    assert set(acked) <= stored
    # batches are atomic: every stored batch is complete (no half-applied write visible)
    batches: dict[str, int] = {}
    for x in stored:
        batches[x.split("-")[0]] = batches.get(x.split("-")[0], 0) + 1
    assert set(batches.values()) == {5}


def test_sigterm_drains_an_in_flight_call(spawn_server, tmp_path: Path) -> None:
    data = tmp_path / "d"
    metrics_port = free_port()
    # a grace period long enough for the slow call even on a loaded machine
    srv = spawn_server(data_dir=data, extra_args=["--metrics-port", str(metrics_port)],
                       env={"AGENTRT_SERVER__SHUTDOWN_GRACE_S": "300"})
    msgs = [{"id": f"m{i}", "speaker": "a", "text": f"sentence {i} about a slow and careful shutdown"}
            for i in range(1000)]  # embedding 1,000 messages with MiniLM takes seconds on 2 cores
    result: list[object] = []

    def slow_write() -> None:
        with AgentrtClient(srv.target, timeout=300) as c:
            try:
                result.append(c.write("ns", "s1", msgs))
            except grpc.RpcError as exc:
                result.append(exc)

    t = threading.Thread(target=slow_write)
    t.start()
    import urllib.request

    deadline = time.time() + 60
    while time.time() < deadline:
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        if "agentrt_rpc_in_flight 1.0" in body:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the slow write never started")
    rc = srv.terminate(timeout=120)
    t.join(120)
    assert rc == 0, srv.log_tail()
    assert isinstance(result[0], memory_pb2.WriteResponse), result[0]
    assert result[0].written == 1000
    # after shutdown began, new calls are refused (the port is closed)
    with grpc.insecure_channel(srv.target) as ch, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
    again = spawn_server(data_dir=data)
    with AgentrtClient(again.target) as c:
        assert len(_all_ids(c)) == 1000


def test_durable_records_survive_kill9(spawn_server, db_url: str, tmp_path: Path) -> None:
    """With ``storage.durable_records`` every id a call hands out (guard verdict, gate decision, selection, tool
    invocation) is stored before the call answers: the calls that name them work after a kill -9 right after the
    last answer. (Written behind, the default, the last ones are still in the writers' queues then.)"""
    from agentrt.v1 import common_pb2, gate_pb2, guard_pb2, select_pb2, tool_pb2

    data = tmp_path / "d"
    env = {"AGENTRT_EMBEDDING__MODEL": "hashing", "AGENTRT_STORAGE__DURABLE_RECORDS": "true"}
    srv = spawn_server(data_dir=data, db_url=db_url, env=env)

    def tokens(n: int) -> list[common_pb2.TokenLogprob]:
        top = [common_pb2.TopLogprob(token=f"a{j}", logprob=-1.0 - j) for j in range(3)]
        return [common_pb2.TokenLogprob(token="t", logprob=-1.0, top_logprobs=top) for _ in range(n)]

    verdicts, decisions, selections, invocations = [], [], [], []
    with AgentrtClient(srv.target) as c:
        for i in range(5):
            invocations.append(c.tool.Invoke(tool_pb2.InvokeToolRequest(
                namespace="ns", name="echo", arguments_json=f'{{"n": {i}}}')).invocation_id)
            verdicts.append(c.guard.Check(guard_pb2.CheckRequest(
                namespace="ns", stage=common_pb2.STAGE_INPUT, text=f"please summarise report {i}")).verdict_id)
            decisions.append(c.gate.Decide(gate_pb2.DecideRequest(
                namespace="ns", gate=common_pb2.GATE_RETRIEVE, tokens=tokens(4))).decision_id)
            selections.append(c.select_service.Select(select_pb2.SelectRequest(namespace="ns", candidates=[
                select_pb2.Candidate(agent_id="a", answer=f"Paris {i}", tokens=tokens(3)),
                select_pb2.Candidate(agent_id="b", answer="Lyon", tokens=tokens(3)),
            ])).selection_id)
    srv.kill9()
    assert all(verdicts) and all(decisions) and all(selections) and all(invocations)

    again = spawn_server(data_dir=data, db_url=db_url, env=env)
    with AgentrtClient(again.target) as c:
        for vid in verdicts:
            c.guard.Feedback(guard_pb2.FeedbackRequest(namespace="ns", verdict_id=vid,
                                                       expected=common_pb2.DECISION_REVIEW))
        for did in decisions:
            c.gate.RecordOutcome(gate_pb2.RecordOutcomeRequest(namespace="ns", decision_id=did, needed=True))
        for sid in selections:
            c.select_service.RecordOutcome(select_pb2.RecordSelectionOutcomeRequest(
                namespace="ns", selection_id=sid, correct_answer="Lyon"))
        audit = c.tool.ListAudit(tool_pb2.ListToolAuditRequest(namespace="ns", tool_name="echo")).records
        assert set(invocations) <= {r.id for r in audit}
