"""Proto <-> domain conversion of GateService and SelectService: every message round-trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from agentrt.v1 import common_pb2, gate_pb2, select_pb2

from core.errors import InvalidArgumentError
from runtime.convert import gate as cg
from runtime.convert import select as cs
from runtime.gates import CalibrationResult, GateDecision, GateKind, GatePolicy, PolicyVersion
from runtime.selection import Selection, TrainResult


def test_gate_enum_round_trip() -> None:
    for kind in GateKind:
        assert cg.gate_from_proto(cg.gate_to_proto(kind)) == kind


def test_policy_round_trip_and_partial_updates() -> None:
    p = GatePolicy(variant="epr", aggregation="window_max", threshold=0.7, hysteresis=0.1, top_k=5, window=4, d_min=3)
    assert GatePolicy.from_dict(cg.policy_from_proto(cg.policy_to_proto(p))) == p
    assert cg.policy_from_proto(gate_pb2.GatePolicy(threshold=0.0)) == {"threshold": 0.0}
    v = PolicyVersion(GateKind.ESCALATE, 3, p, "why", 1_700_000_000.5)
    msg = cg.version_to_proto(v)
    assert (msg.version, msg.reason, msg.gate) == (3, "why", common_pb2.GATE_ESCALATE)
    assert msg.created_at.ToNanoseconds() == 1_700_000_000_500_000_000


def test_decision_and_calibration_to_proto() -> None:
    d = GateDecision("id1", GateKind.RETRIEVE, True, 1.5, 1.0, {"a.mean": 1.5, "b.max": math.nan}, "a.mean", 2, 7)
    msg = cg.decision_to_proto(d)
    assert (msg.decision_id, msg.fire, msg.score, msg.threshold, msg.signal) == ("id1", True, 1.5, 1.0, "a.mean")
    assert dict(msg.signals) == {"a.mean": 1.5}
    assert cg.decision_to_proto(d, stored=False).decision_id == ""
    r = CalibrationResult(False, "kept", PolicyVersion(GateKind.RETRIEVE, 0, GatePolicy()), 3, 1)
    out = cg.calibration_to_proto(r)
    assert (out.updated, out.message, out.fire_rate, out.policy.version) == (False, "kept", 0.0, 0)


def test_objective_defaults_and_labels() -> None:
    o = cg.objective_from_proto(gate_pb2.CalibrateRequest(objective=gate_pb2.CALIBRATION_OBJECTIVE_LOGISTIC))
    assert (o.kind, o.alpha, o.min_outcomes) == ("logistic", 0.1, 30)
    assert cg.objective_from_proto(gate_pb2.CalibrateRequest()).kind == "recall"
    assert cg.outcome_from_proto(gate_pb2.RecordOutcomeRequest(needed=True)) is True
    assert cg.outcome_from_proto(gate_pb2.RecordOutcomeRequest(answer_correct=True)) is False


def test_tokens_and_packed_tokens_agree() -> None:
    rng = np.random.default_rng(0)
    lp = -np.sort(-np.log(rng.dirichlet(np.ones(6), size=4)), axis=1)
    msgs = [
        common_pb2.TokenLogprob(logprob=float(r[0]), top_logprobs=[common_pb2.TopLogprob(logprob=float(v)) for v in r])
        for r in lp
    ]
    msgs[2].full_entropy = 1.0
    a = cg.tokens_from_proto(msgs)
    b = cg.stream_from_proto([], cg.pack_tokens(msgs), True)
    assert np.array_equal(a.top, b.top) and np.array_equal(a.sampled, b.sampled)
    assert a.full_entropy is None  # only one token carried it


def test_selection_round_trip() -> None:
    s = Selection("sid", 1, "b", 0.5, [0.5, 0.5], [[0, 1]], 0.0, 0.0, "agreement", [0.1, math.nan], 0)
    msg = cs.selection_to_proto(s)
    assert (msg.index, msg.answer, msg.selection_id, msg.method) == (1, "b", "sid", "agreement")
    assert [list(c.indices) for c in msg.clusters] == [[0, 1]] and msg.clusters[0].share == 1.0
    req = select_pb2.SelectRequest(
        candidates=[select_pb2.Candidate(agent_id="x", answer="a", answer_span=common_pb2.TokenSpan(start=1, end=3))]
    )
    c = cs.candidates_from_proto(req)[0]
    assert (c.agent_id, c.answer, c.answer_span) == ("x", "a", (1, 3))
    t = cs.train_to_proto(TrainResult(False, "m", 3))
    assert (t.active, t.n_sets, t.heldout_default_accuracy) == (False, 3, 0.0)
    with pytest.raises(InvalidArgumentError, match="start <= end"):
        cs.candidates_from_proto(
            select_pb2.SelectRequest(
                candidates=[select_pb2.Candidate(answer="a", answer_span=common_pb2.TokenSpan(start=3, end=1))]
            )
        )
