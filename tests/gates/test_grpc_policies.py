"""Gate policies over the wire (real servers on port 0): configuration precedence and types, calibration on
matching signal parameters, hysteresis across replicas, and following the configuration again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agentrt.v1 import common_pb2, gate_pb2

from core.errors import InvalidArgumentError
from runtime.replication import wait_for
from tests.gates.test_grpc import toks

NS = "gates-policies"
KEY = {"namespace": NS, "gate": common_pb2.GATE_RETRIEVE}


def get(srv: Any, namespace: str = NS, gate: int = common_pb2.GATE_RETRIEVE) -> gate_pb2.GatePolicyVersion:
    return srv.client.gate.GetPolicy(gate_pb2.GetGatePolicyRequest(namespace=namespace, gate=gate))


def test_a_namespace_common_key_beats_a_defaults_per_gate_key(make_server: Any) -> None:
    """Merged into one mapping, the defaults' ``retrieve: {threshold}`` beat the namespace's ``threshold``."""
    srv = make_server(
        embedding_model="hashing",
        policies={
            "defaults": {"gates": {"top_k": 10, "retrieve": {"threshold": 0.5, "top_k": 12}}},
            "namespaces": {
                "ns1": {"gates": {"threshold": 0.3}},
                "ns2": {"gates": {"threshold": 0.3, "retrieve": {"threshold": 0.4}}},
            },
        },
    )
    # namespace common > defaults per-gate > defaults common
    assert get(srv, "ns1").policy.threshold == pytest.approx(0.3)
    assert get(srv, "ns1").policy.top_k == 12
    assert get(srv, "ns1", common_pb2.GATE_CALL_TOOL).policy.top_k == 10
    # namespace per-gate > namespace common
    assert get(srv, "ns2").policy.threshold == pytest.approx(0.4)
    assert get(srv, "ns2", common_pb2.GATE_CALL_TOOL).policy.threshold == pytest.approx(0.3)
    assert get(srv, "other").policy.threshold == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("gates", "field"),
    [
        ({"top_k": 2.7}, "policies.gates.retrieve.top_k"),
        ({"top_k": True}, "policies.gates.retrieve.top_k"),
        ({"threshold": True}, "policies.gates.retrieve.threshold"),
        ({"escalate": {"window": 5.9}}, "policies.gates.escalate.window"),
        ({"threshold": "abc"}, "policies.gates.retrieve.threshold"),
        ({"retrieve": {"threshold": None}}, "policies.gates.retrieve.threshold"),
        ({"retrieve": 5}, "policies.gates.retrieve"),
        ({"variant": 123}, "policies.gates.retrieve.variant"),
    ],
)
def test_configured_gate_values_are_checked_never_cast(make_server: Any, gates: dict[str, Any], field: str) -> None:
    """``top_k: 2.7`` became 2 and ``true`` became 1; some errors named no key, ``retrieve: 5`` was a TypeError."""
    with pytest.raises(InvalidArgumentError) as err:
        make_server(embedding_model="hashing", policies={"defaults": {"gates": gates}})
    assert err.value.violations[0].field == field


def test_configured_values_of_the_right_type_still_load(make_server: Any) -> None:
    srv = make_server(
        embedding_model="hashing", policies={"defaults": {"gates": {"top_k": 4.0, "retrieve": {"threshold": 1}}}}
    )
    p = get(srv).policy
    assert (p.top_k, p.threshold) == (4, pytest.approx(1.0))


def _label(srv: Any, n: int, seed: int) -> None:
    g = srv.client.gate
    rng = np.random.default_rng(seed)
    for i in range(n):
        level = float(rng.uniform())
        d = g.Decide(gate_pb2.DecideRequest(**KEY, tokens=toks(level, seed=seed * 1000 + i)))
        g.RecordOutcome(gate_pb2.RecordOutcomeRequest(namespace=NS, decision_id=d.decision_id, needed=level > 0.5))


def test_calibrate_fits_only_decisions_computed_under_the_policys_parameters(make_server: Any, db_url: str) -> None:
    """Outcomes recorded under top_k 20 were fitted after top_k became 2, and the threshold stored with k = 2:
    re-deciding the same cases under it gave recall 0 where the reply promised 0.93."""
    from sqlalchemy import update

    from runtime.db import create_db_engine
    from runtime.gates.schema import gate_decisions

    srv = make_server(db_url=db_url, embedding_model="hashing")
    g = srv.client.gate
    _label(srv, 60, seed=1)
    g.SetPolicy(gate_pb2.SetGatePolicyRequest(**KEY, policy=gate_pb2.GatePolicy(top_k=2)))
    r = g.Calibrate(gate_pb2.CalibrateRequest(**KEY, alpha=0.1, signal="missing_mass.mean"))
    assert not r.updated and r.n_outcomes == 0
    assert "60 labelled outcomes computed under other signal parameters" in r.message
    _label(srv, 60, seed=2)
    # Rows stored before decisions carried the fingerprint count under the policy version they recorded.
    srv.rt.gates.flush()
    engine = create_db_engine(srv.rt.db.url)
    try:
        with engine.begin() as conn:
            conn.execute(update(gate_decisions).values(signal_params=None))
    finally:
        engine.dispose()
    r = g.Calibrate(gate_pb2.CalibrateRequest(**KEY, alpha=0.1, signal="missing_mass.mean"))
    assert r.updated, r.message
    assert r.n_outcomes == 60 and r.policy.policy.top_k == 2
    # The promise holds when the same kind of cases are decided under the stored policy.
    rng = np.random.default_rng(2)
    fired = []
    for i in range(60):
        level = float(rng.uniform())
        d = g.Decide(gate_pb2.DecideRequest(**KEY, tokens=toks(level, seed=2000 + i), dry_run=True))
        if level > 0.5:
            fired.append(d.fire)
    assert np.mean(fired) == pytest.approx(r.recall)


def test_hysteresis_state_is_the_same_on_every_replica(make_server: Any, pg_url: str, tmp_path: Path) -> None:
    """Each replica kept its own last-fire cache: after B switched the session's gate off, A still used the
    lowered threshold."""
    a = make_server(db_url=pg_url, data_dir=tmp_path / "a", embedding_model="hashing")
    b = make_server(db_url=pg_url, data_dir=tmp_path / "b", embedding_model="hashing")
    key = {"namespace": NS, "gate": common_pb2.GATE_RETRIEVE}
    a.client.gate.SetPolicy(
        gate_pb2.SetGatePolicyRequest(
            **key, policy=gate_pb2.GatePolicy(variant="surprisal", aggregation="mean", threshold=1.5, hysteresis=1.0)
        )
    )
    assert wait_for(lambda: get(b).version == 1, timeout=10)

    def req(logprob: float, dry_run: bool = False) -> gate_pb2.DecideRequest:
        tokens = [common_pb2.TokenLogprob(logprob=logprob)] * 4
        return gate_pb2.DecideRequest(**key, session_id="s1", tokens=tokens, dry_run=dry_run)

    assert a.client.gate.Decide(req(-3.0)).fire  # on: threshold 1.5 − 1.0 from now, on every replica
    on_b = b.client.gate.Decide(req(-1.0))
    assert on_b.fire and on_b.threshold == pytest.approx(0.5)
    assert not b.client.gate.Decide(req(-0.1)).fire  # off again
    for srv in (a, b):
        mid = srv.client.gate.Decide(req(-1.0, dry_run=True))
        assert (mid.fire, mid.threshold) == (False, pytest.approx(1.5))
    assert not a.client.gate.Decide(req(-1.0)).fire


def test_reset_policy_follows_the_configuration_again(make_server: Any, db_url: str, tmp_path: Path) -> None:
    """RollbackPolicy(0) froze the configuration of the day: a later configuration never applied."""
    first = {"defaults": {"gates": {"retrieve": {"threshold": 0.5}}}}
    srv = make_server(db_url=db_url, data_dir=tmp_path / "one", embedding_model="hashing", policies=first)
    g = srv.client.gate
    g.SetPolicy(gate_pb2.SetGatePolicyRequest(**KEY, policy=gate_pb2.GatePolicy(threshold=0.9)))
    reset = g.ResetPolicy(gate_pb2.ResetGatePolicyRequest(**KEY))
    assert (reset.version, reset.follows_config, reset.policy.threshold) == (2, True, pytest.approx(0.5))
    assert g.Decide(gate_pb2.DecideRequest(**KEY, tokens=toks(0.5))).policy_version == 2
    g.SetPolicy(gate_pb2.SetGatePolicyRequest(**KEY, policy=gate_pb2.GatePolicy(threshold=0.9)))
    back = g.RollbackPolicy(gate_pb2.RollbackGatePolicyRequest(**KEY, version=0))  # version 0 is a reset too
    assert (back.version, back.follows_config) == (4, True)
    srv.stop()
    second = {"defaults": {"gates": {"retrieve": {"threshold": 0.2}}}}
    srv = make_server(db_url=db_url, data_dir=tmp_path / "two", embedding_model="hashing", policies=second)
    now = get(srv)
    assert (now.version, now.follows_config, now.policy.threshold) == (4, True, pytest.approx(0.2))
    listed = srv.client.gate.ListPolicyVersions(gate_pb2.ListGatePolicyVersionsRequest(**KEY)).versions
    assert [v.follows_config for v in listed] == [True, False, True, False, True]
    assert listed[1].policy.threshold == pytest.approx(0.9)  # snapshots stay snapshots


def test_reset_reaches_the_other_replica(make_server: Any, pg_url: str, tmp_path: Path) -> None:
    a = make_server(db_url=pg_url, data_dir=tmp_path / "a", embedding_model="hashing")
    b = make_server(db_url=pg_url, data_dir=tmp_path / "b", embedding_model="hashing")
    a.client.gate.SetPolicy(gate_pb2.SetGatePolicyRequest(**KEY, policy=gate_pb2.GatePolicy(threshold=0.9)))
    assert wait_for(lambda: get(b).version == 1, timeout=10)
    b.client.gate.ResetPolicy(gate_pb2.ResetGatePolicyRequest(**KEY, reason="back to the YAML"))
    assert wait_for(lambda: get(a).version == 2, timeout=10)
    now = get(a)
    assert (now.follows_config, now.reason, now.policy.threshold) == (True, "back to the YAML", pytest.approx(0.5))
