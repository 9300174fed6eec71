"""Two sidecars on one Postgres: gate policies and learned selectors changed on one replica are served by the
other within the change feed's latency, a partial policy update on one builds on the other's, and policy
updates sent to both at once get unique, contiguous versions without losing a field."""

from __future__ import annotations

from typing import Any

import pytest
from agentrt.v1 import common_pb2, gate_pb2, select_pb2

from runtime.replication import wait_for
from tests.gates.concurrency import at_once, labelled_selections, partial_updates, policy_fields
from tests.gates.test_grpc import toks

NS = "ns"
KEY = {"namespace": NS, "gate": common_pb2.GATE_RETRIEVE}


@pytest.fixture
def pair(make_server: Any, pg_url: str, tmp_path: Any) -> tuple[Any, Any]:
    select_policy = {"defaults": {"select": {"min_train_sets": 20, "retrain_every": 0}}}
    a = make_server(db_url=pg_url, data_dir=tmp_path / "a", embedding_model="hashing", policies=select_policy)
    b = make_server(db_url=pg_url, data_dir=tmp_path / "b", embedding_model="hashing", policies=select_policy)
    return a, b


def _policy(server: Any) -> gate_pb2.GatePolicyVersion:
    return server.client.gate.GetPolicy(gate_pb2.GetGatePolicyRequest(**KEY), timeout=10)


def _decided_version(server: Any) -> int:
    request = gate_pb2.DecideRequest(**KEY, tokens=toks(0.5), dry_run=True)
    return int(server.client.gate.Decide(request, timeout=10).policy_version)


def test_policy_changes_and_rollbacks_reach_the_other_replica(pair: tuple[Any, Any]) -> None:
    a, b = pair
    assert _policy(b).version == 0 and _decided_version(b) == 0  # b has cached the configured default
    v1 = a.client.gate.SetPolicy(gate_pb2.SetGatePolicyRequest(**KEY, policy=gate_pb2.GatePolicy(threshold=0.123)))
    assert wait_for(lambda: _policy(b).version == v1.version, timeout=10)
    assert _policy(b).policy.threshold == pytest.approx(0.123) and _decided_version(b) == v1.version
    # A partial update on b overlays a's change, and a sees the result.
    v2 = b.client.gate.SetPolicy(gate_pb2.SetGatePolicyRequest(**KEY, policy=gate_pb2.GatePolicy(hysteresis=0.01)))
    assert v2.version == 2
    assert (v2.policy.threshold, v2.policy.hysteresis) == (pytest.approx(0.123), pytest.approx(0.01))
    assert wait_for(lambda: _policy(a).version == 2, timeout=10)
    assert _policy(a).policy == v2.policy
    v3 = a.client.gate.RollbackPolicy(gate_pb2.RollbackGatePolicyRequest(**KEY, version=0))
    assert wait_for(lambda: _policy(b).version == v3.version, timeout=10)
    assert _policy(b).policy == v3.policy == _policy(a).policy
    assert _policy(b).policy.threshold == pytest.approx(0.5) and _decided_version(b) == 3


def test_a_selector_trained_on_one_replica_is_used_by_the_other(pair: tuple[Any, Any]) -> None:
    a, b = pair
    labelled_selections(a.client, NS, 30, toks)
    probe = select_pb2.SelectRequest(
        namespace=NS,
        candidates=[
            select_pb2.Candidate(answer="fine", tokens=toks(0.05, seed=1)),
            select_pb2.Candidate(answer="noise", tokens=toks(0.95, seed=2)),
            select_pb2.Candidate(answer="noise", tokens=toks(0.95, seed=3)),
        ],
        dry_run=True,
    )
    assert b.client.select_service.Select(probe, timeout=10).method == "agreement"  # b has cached "no model"
    trained = a.client.select_service.Train(select_pb2.TrainSelectorRequest(namespace=NS), timeout=120)
    assert trained.active and trained.model_version == 1, trained.message
    assert a.client.select_service.Select(probe, timeout=10).method == "learned"
    assert wait_for(lambda: b.client.select_service.Select(probe, timeout=10).method == "learned", timeout=10)
    # Training on both at once: every model gets its own next version.
    trains = at_once(
        [
            lambda i=i: pair[i % 2].client.select_service.Train(
                select_pb2.TrainSelectorRequest(namespace=NS), timeout=120
            )
            for i in range(8)
        ]
    )
    assert sorted(t.model_version for t in trains) == list(range(2, 10))


def test_concurrent_policy_updates_on_both_replicas_keep_every_field(pair: tuple[Any, Any]) -> None:
    replicas = pair
    for server in replicas:
        _policy(server)  # both have cached the configured default
    done = 0
    for round_ in range(2):
        values = partial_updates(round_)
        replies = at_once(
            [
                lambda i=i, name=name, value=value: replicas[i % 2].client.gate.SetPolicy(
                    gate_pb2.SetGatePolicyRequest(**KEY, policy=gate_pb2.GatePolicy(**{name: value})), timeout=60
                )
                for i, (name, value) in enumerate(values.items())
            ]
        )
        assert sorted(r.version for r in replies) == list(range(done + 1, done + len(values) + 1))
        done += len(values)
        expected = policy_fields(gate_pb2.GatePolicy(**values), values)
        for server in replicas:
            assert wait_for(lambda server=server, done=done: _policy(server).version == done, timeout=10)
            assert policy_fields(_policy(server).policy, values) == expected


def test_an_outcome_recorded_on_the_other_replica_finds_a_decision_and_a_selection_made_a_moment_ago(
    pair: tuple[Any, Any],
) -> None:
    # Decisions and selections are written behind (runtime/write_behind.py): right after A hands out an id, its
    # row may still be in A's queue. B, asked about it at once (a load balancer's next pick), waits for it.
    a, b = pair
    for i in range(5):
        d = a.client.gate.Decide(gate_pb2.DecideRequest(**KEY, tokens=toks(0.5, seed=i)), timeout=10)
        b.client.gate.RecordOutcome(gate_pb2.RecordOutcomeRequest(namespace=NS, decision_id=d.decision_id,
                                                                  needed=True), timeout=10)
        candidates = [select_pb2.Candidate(answer=x, tokens=toks(0.2, seed=i)) for x in ("yes", "yes", "no")]
        s = a.client.select_service.Select(select_pb2.SelectRequest(namespace=NS, candidates=candidates), timeout=10)
        b.client.select_service.RecordOutcome(select_pb2.RecordSelectionOutcomeRequest(
            namespace=NS, selection_id=s.selection_id, correct_answer="yes"), timeout=10)
