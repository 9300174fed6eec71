"""GateService and SelectService over the wire: real servers on port 0, SQLite and Postgres."""

from __future__ import annotations

import math
from typing import Any

import grpc
import numpy as np
import pytest
from agentrt.v1 import common_pb2, gate_pb2, select_pb2

from tests.conftest import bad_fields
from tests.gates.concurrency import at_once, labelled_selections, partial_updates, policy_fields

NS = "gates-test"




def toks(level: float, n: int = 16, k: int = 20, seed: int = 0) -> list[common_pb2.TokenLogprob]:
    """Tokens whose top-k flatness rises with ``level`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        logits = rng.normal(size=k) * (1.0 - level) * 8
        lp = logits - np.log(np.exp(logits).sum())
        lp = np.sort(lp)[::-1]
        out.append(
            common_pb2.TokenLogprob(
                token="t",
                logprob=float(lp[0]),
                top_logprobs=[common_pb2.TopLogprob(token=f"a{j}", logprob=float(v)) for j, v in enumerate(lp)],
            )
        )
    return out


@pytest.fixture
def srv(make_server: Any, db_url: str) -> Any:
    return make_server(
        db_url=db_url, embedding_model="hashing", policies={"defaults": {"gates": {"retrieve": {"threshold": 0.8}}}}
    )


def decide(srv: Any, level: float, gate: int = common_pb2.GATE_RETRIEVE, **kw: Any) -> gate_pb2.GateDecision:
    return srv.client.gate.Decide(gate_pb2.DecideRequest(namespace=NS, gate=gate, tokens=toks(level), **kw))


def test_decide_fire_iff_score_above_threshold(srv: Any) -> None:
    fired = set()
    for level in np.linspace(0, 1, 7):
        d = decide(srv, float(level))
        assert d.fire == (d.score > d.threshold)
        assert d.threshold == pytest.approx(0.8)  # from the configured policy
        assert d.signals[d.signal] == pytest.approx(d.score)
        assert d.decision_id and d.n_tokens == 16 and d.gate == common_pb2.GATE_RETRIEVE
        fired.add(d.fire)
    assert fired == {True, False}
    # Uniform top-20 over the wire: renormalised entropy is ln 20.
    uniform = [
        common_pb2.TokenLogprob(
            logprob=math.log(1 / 20),
            top_logprobs=[common_pb2.TopLogprob(token=str(j), logprob=math.log(1 / 20)) for j in range(20)],
        )
    ]
    d = srv.client.gate.Decide(gate_pb2.DecideRequest(namespace=NS, gate=common_pb2.GATE_RETRIEVE, tokens=uniform))
    assert d.signals["renorm.mean"] == pytest.approx(math.log(20))
    assert d.signals["one_minus_p.max"] == pytest.approx(0.95)


def test_decide_rejects_non_finite_logprobs_naming_the_field(srv: Any) -> None:
    tokens = toks(0.5, n=5)
    tokens[3].top_logprobs[1].logprob = float("nan")
    with pytest.raises(grpc.RpcError) as err:
        srv.client.gate.Decide(gate_pb2.DecideRequest(namespace=NS, gate=common_pb2.GATE_RETRIEVE, tokens=tokens))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["tokens[3].top_logprobs[1].logprob"]
    tokens = toks(0.5, n=5)
    tokens[0].logprob = float("-inf")
    with pytest.raises(grpc.RpcError) as err:
        srv.client.gate.Decide(gate_pb2.DecideRequest(namespace=NS, gate=common_pb2.GATE_RETRIEVE, tokens=tokens))
    assert bad_fields(err.value) == ["tokens[0].logprob"]
    # An explicit NaN entropy is a bad value, not an absent one (absent is the field left unset).
    for bad in (float("nan"), float("inf"), -1.0):
        tokens = toks(0.5, n=5)
        tokens[2].full_entropy = bad
        with pytest.raises(grpc.RpcError) as err:
            srv.client.gate.Decide(gate_pb2.DecideRequest(namespace=NS, gate=common_pb2.GATE_RETRIEVE, tokens=tokens))
        assert bad_fields(err.value) == ["tokens[2].full_entropy"]
    with pytest.raises(grpc.RpcError) as err:
        srv.client.gate.Decide(gate_pb2.DecideRequest(namespace=NS, gate=99, tokens=toks(0.5)))  # type: ignore[arg-type]
    assert bad_fields(err.value) == ["gate"]
    # Leaving the gate out means RETRIEVE.
    assert (
        srv.client.gate.Decide(gate_pb2.DecideRequest(namespace=NS, tokens=toks(0.5))).gate == common_pb2.GATE_RETRIEVE
    )
    with pytest.raises(grpc.RpcError) as err:
        srv.client.gate.Decide(gate_pb2.DecideRequest(namespace=NS, gate=common_pb2.GATE_RETRIEVE))
    assert bad_fields(err.value) == ["tokens"]


def test_policy_versions_over_rpc(srv: Any) -> None:
    g = srv.client.gate
    key = {"namespace": NS, "gate": common_pb2.GATE_ESCALATE}
    v0 = g.GetPolicy(gate_pb2.GetGatePolicyRequest(**key))
    assert v0.version == 0 and v0.policy.aggregation == "window_max"
    v1 = g.SetPolicy(gate_pb2.SetGatePolicyRequest(**key, policy=gate_pb2.GatePolicy(threshold=0.1)))
    assert v1.version == 1 and v1.policy.threshold == pytest.approx(0.1)
    assert v1.policy.aggregation == "window_max"  # unset fields keep their value
    v2 = g.SetPolicy(
        gate_pb2.SetGatePolicyRequest(
            **key, policy=gate_pb2.GatePolicy(variant="epr", aggregation="max"), reason="try epr"
        )
    )
    assert (v2.version, v2.policy.variant, v2.reason) == (2, "epr", "try epr")
    d = decide(srv, 0.5, gate=common_pb2.GATE_ESCALATE)
    assert d.signal == "epr.max" and d.policy_version == 2 and d.threshold == pytest.approx(0.1)
    v3 = g.RollbackPolicy(gate_pb2.RollbackGatePolicyRequest(**key, version=1))
    assert v3.version == 3 and v3.policy == v1.policy
    listed = g.ListPolicyVersions(gate_pb2.ListGatePolicyVersionsRequest(**key))
    assert [v.version for v in listed.versions] == [0, 1, 2, 3]
    assert listed.versions[3].created_at.seconds > 0
    with pytest.raises(grpc.RpcError) as err:
        g.RollbackPolicy(gate_pb2.RollbackGatePolicyRequest(**key, version=9))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        g.SetPolicy(gate_pb2.SetGatePolicyRequest(**key, policy=gate_pb2.GatePolicy(window=0)))
    assert bad_fields(err.value) == ["policy.window"]


def test_outcomes_and_calibration_over_rpc(srv: Any) -> None:
    g = srv.client.gate
    # Too few outcomes: the policy is kept and the reply says so.
    for i in range(5):
        d = decide(srv, i / 5)
        g.RecordOutcome(gate_pb2.RecordOutcomeRequest(namespace=NS, decision_id=d.decision_id, needed=i > 2))
    r = g.Calibrate(gate_pb2.CalibrateRequest(namespace=NS, gate=common_pb2.GATE_RETRIEVE))
    assert not r.updated and "only 5 labelled outcomes" in r.message and r.policy.version == 0
    # Enough outcomes: a new version is stored and used.
    rng = np.random.default_rng(7)
    for _ in range(60):
        level = float(rng.uniform())
        d = decide(srv, level)
        g.RecordOutcome(
            gate_pb2.RecordOutcomeRequest(
                namespace=NS, decision_id=d.decision_id, answer_correct=bool(rng.uniform() >= level**2)
            )
        )
    r = g.Calibrate(
        gate_pb2.CalibrateRequest(
            namespace=NS, gate=common_pb2.GATE_RETRIEVE, objective=gate_pb2.CALIBRATION_OBJECTIVE_RECALL, alpha=0.2
        )
    )
    assert r.updated, r.message
    assert r.policy.version == 1 and r.n_outcomes == 65 and r.recall >= 0.8
    assert r.auroc[r.signal] == pytest.approx(max(r.auroc.values()))
    assert decide(srv, 0.5).policy_version == 1
    with pytest.raises(grpc.RpcError) as err:
        g.RecordOutcome(gate_pb2.RecordOutcomeRequest(namespace=NS, decision_id="missing", needed=True))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        g.RecordOutcome(gate_pb2.RecordOutcomeRequest(namespace=NS, decision_id=d.decision_id))
    assert bad_fields(err.value) == ["label"]


def test_select_over_rpc(srv: Any) -> None:
    s = srv.client.select_service
    req = select_pb2.SelectRequest(
        namespace=NS,
        candidates=[
            select_pb2.Candidate(agent_id="a", answer="Paris", tokens=toks(0.9)),
            select_pb2.Candidate(agent_id="b", answer="Lyon", tokens=toks(0.0)),
            select_pb2.Candidate(agent_id="c", answer="Answer: paris.", tokens=toks(0.3)),
        ],
    )
    sel = s.Select(req)
    assert (sel.index, sel.answer, sel.method) == (2, "Answer: paris.", "agreement")
    assert sel.confidence == pytest.approx(2 / 3)
    assert [list(c.indices) for c in sel.clusters] == [[0, 2], [1]]
    assert sel.semantic_entropy == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert len(sel.scores) == 3 and sel.selection_id
    out = s.RecordOutcome(
        select_pb2.RecordSelectionOutcomeRequest(namespace=NS, selection_id=sel.selection_id, correct_answer="paris")
    )
    assert list(out.correct) == [True, False, True]
    tr = s.Train(select_pb2.TrainSelectorRequest(namespace=NS))
    assert not tr.active and "only 1 labelled" in tr.message
    req.candidates[1].tokens[2].top_logprobs[0].logprob = float("nan")
    with pytest.raises(grpc.RpcError) as err:
        s.Select(req)
    assert bad_fields(err.value) == ["candidates[1].tokens[2].top_logprobs[0].logprob"]
    with pytest.raises(grpc.RpcError) as err:
        s.Select(select_pb2.SelectRequest(namespace=NS))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT



def test_records_written_behind_survive_a_clean_shutdown(srv: Any) -> None:
    from sqlalchemy import func, select

    from runtime.db import create_db_engine
    from runtime.gates.schema import gate_decisions
    from runtime.selection.schema import select_selections

    ids = {decide(srv, 0.1 * (i % 10)).decision_id for i in range(40)}
    req = select_pb2.SelectRequest(
        namespace=NS,
        candidates=[select_pb2.Candidate(agent_id=a, answer=a, tokens=toks(0.5)) for a in ("x", "y")],
    )
    sel_ids = {srv.client.select_service.Select(req).selection_id for _ in range(10)}
    url = srv.rt.db.url
    srv.stop()  # the gate and select services store what is still queued before the database closes
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            n_decisions = conn.execute(
                select(func.count()).select_from(gate_decisions).where(gate_decisions.c.decision_id.in_(ids))
            ).scalar_one()
            n_selections = conn.execute(
                select(func.count())
                .select_from(select_selections)
                .where(select_selections.c.selection_id.in_(sel_ids))
            ).scalar_one()
    finally:
        engine.dispose()
    assert (n_decisions, n_selections) == (len(ids), len(sel_ids))

def test_client_helper_accepts_openai_dicts(srv: Any) -> None:
    tokens = [
        {
            "token": "x",
            "logprob": math.log(0.5),
            "top_logprobs": [{"token": "x", "logprob": math.log(0.5)}, {"token": "y", "logprob": math.log(0.5)}],
        }
    ]
    d = srv.client.decide(NS, common_pb2.GATE_RETRIEVE, tokens)
    assert d.signals["renorm.mean"] == pytest.approx(math.log(2))


def test_packed_tokens_match_token_messages(srv: Any) -> None:
    from runtime.convert.gate import pack_tokens

    tokens = toks(0.6, n=32)
    plain = srv.client.gate.Decide(gate_pb2.DecideRequest(namespace=NS, gate=common_pb2.GATE_RETRIEVE, tokens=tokens))
    packed = srv.client.gate.Decide(
        gate_pb2.DecideRequest(namespace=NS, gate=common_pb2.GATE_RETRIEVE, packed_tokens=pack_tokens(tokens))
    )
    assert dict(packed.signals) == pytest.approx(dict(plain.signals))
    assert packed.fire == plain.fire
    with pytest.raises(grpc.RpcError) as err:
        srv.client.gate.Decide(
            gate_pb2.DecideRequest(
                namespace=NS, gate=common_pb2.GATE_RETRIEVE, tokens=tokens, packed_tokens=pack_tokens(tokens)
            )
        )
    assert bad_fields(err.value) == ["packed_tokens"]
    bad = pack_tokens(tokens)
    bad.top_logprobs[7] = float("nan")
    with pytest.raises(grpc.RpcError) as err:
        srv.client.gate.Decide(gate_pb2.DecideRequest(namespace=NS, gate=common_pb2.GATE_RETRIEVE, packed_tokens=bad))
    assert bad_fields(err.value) == ["packed_tokens.top_logprobs[7]"]
    sel = srv.client.select_service.Select(
        select_pb2.SelectRequest(
            namespace=NS,
            candidates=[
                select_pb2.Candidate(answer="x", packed_tokens=pack_tokens(toks(0.9))),
                select_pb2.Candidate(answer="y", packed_tokens=pack_tokens(toks(0.1))),
            ],
        )
    )
    assert sel.index == 1


def test_tenants_are_isolated_and_read_only_tokens_store_nothing(make_server: Any) -> None:
    srv = make_server(
        embedding_model="hashing",
        tokens=[
            {"token": "tok-a", "tenant": "acme"},
            {"token": "tok-b", "tenant": "globex"},
            {"token": "tok-ro", "tenant": "acme", "read_only": True},
        ],
    )
    a, b, ro = srv.new_client("tok-a"), srv.new_client("tok-b"), srv.new_client("tok-ro")
    req = gate_pb2.DecideRequest(namespace=NS, gate=common_pb2.GATE_RETRIEVE, tokens=toks(0.5))
    d = a.gate.Decide(req)
    with pytest.raises(grpc.RpcError) as err:
        b.gate.RecordOutcome(gate_pb2.RecordOutcomeRequest(namespace=NS, decision_id=d.decision_id, needed=True))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    key = {"namespace": NS, "gate": common_pb2.GATE_RETRIEVE}
    a.gate.SetPolicy(gate_pb2.SetGatePolicyRequest(**key, policy=gate_pb2.GatePolicy(threshold=2.5)))
    assert b.gate.GetPolicy(gate_pb2.GetGatePolicyRequest(**key)).version == 0
    # Read-only: a decision, but nothing stored and no policy changes.
    r = ro.gate.Decide(req)
    assert r.decision_id == "" and r.threshold == pytest.approx(2.5)
    with pytest.raises(grpc.RpcError) as err:
        ro.gate.SetPolicy(gate_pb2.SetGatePolicyRequest(**key, policy=gate_pb2.GatePolicy(threshold=1.0)))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for c in (a, b, ro):
        c.close()


def test_namespace_config_overlays_defaults_per_key(make_server: Any) -> None:
    srv = make_server(
        embedding_model="hashing",
        policies={
            "defaults": {"gates": {"top_k": 10, "retrieve": {"variant": "epr", "threshold": 0.9}}},
            "namespaces": {"special": {"gates": {"retrieve": {"threshold": 0.1}}}},
        },
    )
    get = srv.client.gate.GetPolicy
    plain = get(gate_pb2.GetGatePolicyRequest(namespace="plain", gate=common_pb2.GATE_RETRIEVE)).policy
    special = get(gate_pb2.GetGatePolicyRequest(namespace="special", gate=common_pb2.GATE_RETRIEVE)).policy
    assert (plain.variant, plain.threshold, plain.top_k) == ("epr", pytest.approx(0.9), 10)
    assert (special.variant, special.threshold, special.top_k) == ("epr", pytest.approx(0.1), 10)


def test_concurrent_partial_policy_updates_keep_every_field(srv: Any) -> None:
    """Partial SetPolicy calls of different fields at once: each gets its own next version and none of the
    fields is lost (each update is merged on the version committed before it, not on a cached read)."""
    g = srv.client.gate
    key = {"namespace": NS, "gate": common_pb2.GATE_CALL_TOOL}
    done = 0
    for round_ in range(3):
        values = partial_updates(round_)
        replies = at_once(
            [
                lambda name=name, value=value: g.SetPolicy(
                    gate_pb2.SetGatePolicyRequest(**key, policy=gate_pb2.GatePolicy(**{name: value})), timeout=60
                )
                for name, value in values.items()
            ]
        )
        assert sorted(r.version for r in replies) == list(range(done + 1, done + len(values) + 1))
        done += len(values)
        current = g.GetPolicy(gate_pb2.GetGatePolicyRequest(**key))
        assert current.version == done
        assert policy_fields(current.policy, list(values)) == policy_fields(gate_pb2.GatePolicy(**values), values)
    rollbacks = at_once(
        [
            lambda v=v: g.RollbackPolicy(gate_pb2.RollbackGatePolicyRequest(**key, version=v), timeout=60)
            for v in range(8)
        ]
    )
    assert sorted(r.version for r in rollbacks) == list(range(done + 1, done + 9))
    listed = g.ListPolicyVersions(gate_pb2.ListGatePolicyVersionsRequest(**key))
    assert [v.version for v in listed.versions] == list(range(done + 9))


def test_concurrent_training_numbers_models_one_after_another(make_server: Any, db_url: str) -> None:
    srv = make_server(
        db_url=db_url,
        embedding_model="hashing",
        policies={"defaults": {"select": {"min_train_sets": 20, "retrain_every": 0}}},
    )
    s = srv.client.select_service
    labelled_selections(srv.client, NS, 30, toks)
    replies = at_once([lambda: s.Train(select_pb2.TrainSelectorRequest(namespace=NS), timeout=120)] * 8)
    assert sorted(r.model_version for r in replies) == list(range(1, 9))
    assert all(r.active for r in replies), replies[0].message


def test_dry_run_and_read_only_decisions_leave_hysteresis_alone(make_server: Any) -> None:
    srv = make_server(
        embedding_model="hashing",
        tokens=[{"token": "rw", "tenant": "acme"}, {"token": "ro", "tenant": "acme", "read_only": True}],
        token="rw",
    )
    g, ro = srv.client.gate, srv.new_client("ro")
    g.SetPolicy(
        gate_pb2.SetGatePolicyRequest(
            namespace=NS,
            policy=gate_pb2.GatePolicy(variant="surprisal", aggregation="mean", threshold=1.0, hysteresis=0.8),
        )
    )

    def req(logprob: float, dry_run: bool = False) -> gate_pb2.DecideRequest:
        return gate_pb2.DecideRequest(
            namespace=NS, session_id="s1", dry_run=dry_run, tokens=[common_pb2.TokenLogprob(logprob=logprob)]
        )

    assert g.Decide(req(-2.0)).fire  # the session's gate is on: threshold 1.0 - 0.8 from now
    # Neither stores a decision, so neither may switch the session's gate off.
    assert not ro.gate.Decide(req(0.0)).fire
    assert not g.Decide(req(0.0, dry_run=True)).fire
    d = g.Decide(req(-0.5))
    assert d.threshold == pytest.approx(0.2) and d.fire
    ro.close()


def test_calibrate_errors_name_the_request_fields(srv: Any) -> None:
    g = srv.client.gate
    cases = [
        ({"alpha": -0.5}, ["alpha"]),
        ({"target_fire_rate": 2.0, "objective": gate_pb2.CALIBRATION_OBJECTIVE_FIRE_RATE}, ["target_fire_rate"]),
        ({"min_outcomes": 1}, ["min_outcomes"]),
    ]
    for kw, fields in cases:
        with pytest.raises(grpc.RpcError) as err:
            g.Calibrate(gate_pb2.CalibrateRequest(namespace=NS, **kw))
        assert bad_fields(err.value) == fields
    for i in range(40):
        g.RecordOutcome(
            gate_pb2.RecordOutcomeRequest(
                namespace=NS, gate=common_pb2.GATE_RETRIEVE, signals={"missing_mass.mean": i / 40}, needed=i >= 20
            )
        )
    with pytest.raises(grpc.RpcError) as err:
        g.Calibrate(gate_pb2.CalibrateRequest(namespace=NS, signal="nope"))
    assert bad_fields(err.value) == ["signal"]


def test_bare_signals_must_be_signal_names(srv: Any) -> None:
    g = srv.client.gate
    with pytest.raises(grpc.RpcError) as err:
        g.RecordOutcome(
            gate_pb2.RecordOutcomeRequest(
                namespace=NS, gate=common_pb2.GATE_RETRIEVE, signals={"my_score": 1.0}, needed=True
            )
        )
    assert bad_fields(err.value) == ["signals[my_score]"]


def test_answer_span_must_lie_inside_the_tokens(srv: Any) -> None:
    g, s = srv.client.gate, srv.client.select_service
    three = toks(0.5, n=3)
    for start, end in [(10, 20), (1, 1), (2, 4)]:
        span = common_pb2.TokenSpan(start=start, end=end)
        with pytest.raises(grpc.RpcError) as err:
            g.Decide(gate_pb2.DecideRequest(namespace=NS, tokens=three, answer_span=span))
        assert bad_fields(err.value) == ["answer_span"]
    ok = g.Decide(gate_pb2.DecideRequest(namespace=NS, tokens=three, answer_span=common_pb2.TokenSpan(start=1, end=3)))
    assert "renorm.span_mean" in ok.signals
    # An all-zero span is what a proto3 client sends for "unset": the whole generation, no span signal.
    unset = g.Decide(gate_pb2.DecideRequest(namespace=NS, tokens=three, answer_span=common_pb2.TokenSpan()))
    assert "renorm.span_mean" not in unset.signals
    cands = [
        select_pb2.Candidate(answer="a", tokens=toks(0.1, n=2)),
        select_pb2.Candidate(answer="b", tokens=toks(0.1, n=2), answer_span=common_pb2.TokenSpan(start=5, end=7)),
    ]
    with pytest.raises(grpc.RpcError) as err:
        s.Select(select_pb2.SelectRequest(namespace=NS, candidates=cands))
    assert bad_fields(err.value) == ["candidates[1].answer_span"]


def test_contradictory_outcome_fields_are_rejected(srv: Any) -> None:
    g = srv.client.gate
    d = decide(srv, 0.5)
    contradictions = [({"gate": common_pb2.GATE_ESCALATE}, "gate"), ({"signals": {"renorm.mean": 1.0}}, "signals")]
    for kw, field in contradictions:
        with pytest.raises(grpc.RpcError) as err:
            g.RecordOutcome(gate_pb2.RecordOutcomeRequest(namespace=NS, decision_id=d.decision_id, needed=True, **kw))
        assert bad_fields(err.value) == [field]
    # The matching gate (or none) labels the decision.
    r = g.RecordOutcome(
        gate_pb2.RecordOutcomeRequest(
            namespace=NS, decision_id=d.decision_id, gate=common_pb2.GATE_RETRIEVE, needed=True
        )
    )
    assert r.decision_id == d.decision_id
    s = srv.client.select_service
    sel = s.Select(
        select_pb2.SelectRequest(
            namespace=NS, candidates=[select_pb2.Candidate(answer="Paris"), select_pb2.Candidate(answer="Lyon")]
        )
    )
    with pytest.raises(grpc.RpcError) as err:
        s.RecordOutcome(
            select_pb2.RecordSelectionOutcomeRequest(
                namespace=NS, selection_id=sel.selection_id, correct_indices=[1], correct_answer="Paris"
            )
        )
    assert bad_fields(err.value) == ["correct_answer"]
