"""GateEngine contracts on real SQLite and Postgres: decisions, policy versions, outcomes, calibration."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Engine, create_engine

from core.errors import InvalidArgumentError, NotFoundError
from runtime.db import create_db_engine
from runtime.gates import CalibrationObjective, GateEngine, GateKind, GatePolicy, Token, TokenStream, TopLogprob
from runtime.gates.schema import metadata

SCOPE = "default/ns"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_db_engine(db_url)
    metadata.create_all(eng)
    yield eng
    eng.dispose()


def stream(entropy_level: float, n: int = 12, k: int = 5, seed: int = 0) -> TokenStream:
    """Tokens whose top-k flatness grows with ``entropy_level`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    rows, sampled = [], []
    for _ in range(n):
        logits = rng.normal(size=k) * (1.0 - entropy_level) * 8
        p = np.exp(logits - logits.max())
        p /= p.sum()
        lp = np.sort(np.log(p))[::-1]
        rows.append(lp.tolist())
        sampled.append(float(lp[0]))
    return TokenStream.from_lists(sampled, rows)


def test_fire_iff_score_above_threshold(engine: Engine) -> None:
    g = GateEngine(engine)
    for level in np.linspace(0, 1, 9):
        d = g.decide(SCOPE, "retrieve", stream(float(level)))
        assert d.fire == (d.score > d.threshold)
        assert d.signals[d.signal] == d.score
        assert d.signal == "missing_mass.mean"
    # The exact boundary does not fire.
    st = stream(0.5)
    exact = g.decide(SCOPE, GateKind.CALL_TOOL, st, persist=False).score
    g.set_policy(SCOPE, "call_tool", {"threshold": exact})
    assert not g.decide(SCOPE, "call_tool", st).fire


def test_accepts_dataclasses_and_openai_dicts(engine: Engine) -> None:
    g = GateEngine(engine)
    toks = [Token("a", math.log(0.5), [TopLogprob("a", math.log(0.5)), TopLogprob("b", math.log(0.5))])] * 3
    dicts = [
        {
            "token": "a",
            "logprob": math.log(0.5),
            "top_logprobs": [{"token": "a", "logprob": math.log(0.5)}, {"token": "b", "logprob": math.log(0.5)}],
        }
    ] * 3
    a = g.decide(SCOPE, "retrieve", toks)
    b = g.decide(SCOPE, "retrieve", dicts)
    assert a.signals["renorm.mean"] == pytest.approx(math.log(2))
    assert a.signals == b.signals


def test_bad_logprobs_name_the_field(engine: Engine) -> None:
    g = GateEngine(engine)
    toks = [{"logprob": -0.1, "top_logprobs": [{"logprob": -0.1}, {"logprob": -2.0}]} for _ in range(4)]
    toks[3]["top_logprobs"][1]["logprob"] = float("nan")
    with pytest.raises(InvalidArgumentError) as err:
        g.decide(SCOPE, "retrieve", toks)
    assert err.value.violations[0].field == "tokens[3].top_logprobs[1].logprob"
    toks[3]["top_logprobs"][1]["logprob"] = -1.0
    toks[2]["logprob"] = float("inf")
    with pytest.raises(InvalidArgumentError) as err:
        g.decide(SCOPE, "retrieve", toks)
    assert err.value.violations[0].field == "tokens[2].logprob"


def test_policy_versions_and_rollback(engine: Engine) -> None:
    g = GateEngine(engine, {"retrieve": {"threshold": 0.7}})
    v0 = g.get_policy(SCOPE, "retrieve")
    assert (v0.version, v0.policy.threshold) == (0, 0.7)
    v1 = g.set_policy(SCOPE, "retrieve", {"threshold": 1.2, "aggregation": "max"})
    v2 = g.set_policy(SCOPE, "retrieve", {"variant": "epr"})
    assert (v1.version, v2.version) == (1, 2)
    assert v2.policy.aggregation == "max" and v2.policy.threshold == 1.2 and v2.policy.variant == "epr"
    v3 = g.rollback(SCOPE, "retrieve", 1)
    assert v3.version == 3 and v3.policy == v1.policy and "rollback" in v3.reason
    assert [v.version for v in g.list_policy_versions(SCOPE, "retrieve")] == [0, 1, 2, 3]
    # A fresh engine on the same database sees the same history (the database is the source of truth).
    assert GateEngine(engine).get_policy(SCOPE, "retrieve").policy == v1.policy
    # Other gates and namespaces are untouched.
    assert g.get_policy(SCOPE, "escalate").version == 0
    assert g.get_policy("default/other", "retrieve").version == 0
    with pytest.raises(NotFoundError):
        g.rollback(SCOPE, "retrieve", 42)
    with pytest.raises(InvalidArgumentError) as err:
        g.set_policy(SCOPE, "retrieve", {"variant": "nope"})
    assert err.value.violations[0].field == "policy.variant"


def test_hysteresis_keeps_gate_on_within_a_session(engine: Engine) -> None:
    g = GateEngine(engine)
    hi, mid = stream(1.0), stream(0.55)
    mid_score = g.decide(SCOPE, "escalate", mid, persist=False).score
    hi_score = g.decide(SCOPE, "escalate", hi, persist=False).score
    assert hi_score > mid_score
    g.set_policy(
        SCOPE,
        "escalate",
        {"aggregation": "mean", "threshold": (hi_score + mid_score) / 2, "hysteresis": (hi_score - mid_score)},
    )
    assert not g.decide(SCOPE, "escalate", mid, session_id="s1").fire
    assert g.decide(SCOPE, "escalate", hi, session_id="s1").fire
    on = g.decide(SCOPE, "escalate", mid, session_id="s1")
    assert on.fire and on.threshold < on.score  # stays on: threshold lowered while firing
    # Another session, and a fresh process reading the last decision from the database (decisions are
    # written behind; shutting down stores them).
    assert not g.decide(SCOPE, "escalate", mid, session_id="s2").fire
    g.close()
    assert GateEngine(engine).decide(SCOPE, "escalate", mid, session_id="s1").fire


def test_decisions_are_written_behind_and_stored_on_close(engine: Engine) -> None:
    from sqlalchemy import func, select

    from runtime.gates.schema import gate_decisions

    g = GateEngine(engine)
    first = g.decide(SCOPE, "retrieve", stream(0.9))
    # Labelling a decision straight away finds it: record_outcome stores the queue first.
    assert g.record_outcome(SCOPE, decision_id=first.decision_id, needed=True) == first.decision_id
    ids = {g.decide(SCOPE, "retrieve", stream(0.1 * (i % 10)), session_id=f"s{i}").decision_id for i in range(60)}
    g.close()  # shutdown: everything queued is stored
    with engine.connect() as conn:
        stored = conn.execute(
            select(func.count()).select_from(gate_decisions).where(gate_decisions.c.decision_id.in_(ids))
        ).scalar_one()
        label = conn.execute(
            select(gate_decisions.c.label).where(gate_decisions.c.decision_id == first.decision_id)
        ).scalar_one()
    assert stored == len(ids) and label is True
    with pytest.raises(RuntimeError):
        g.decide(SCOPE, "retrieve", stream(0.5))


def test_full_variant_needs_full_entropy(engine: Engine) -> None:
    g = GateEngine(engine)
    g.set_policy(SCOPE, "retrieve", {"variant": "full"})
    with pytest.raises(InvalidArgumentError, match="full_entropy"):
        g.decide(SCOPE, "retrieve", stream(0.5))
    toks = [{"logprob": -0.1, "top_logprobs": [{"logprob": -0.1}], "full_entropy": 2.0}] * 4
    d = g.decide(SCOPE, "retrieve", toks)
    assert d.score == pytest.approx(2.0) and d.fire


def test_calibration_with_too_few_outcomes_keeps_policy(engine: Engine) -> None:
    g = GateEngine(engine)
    for i in range(6):
        d = g.decide(SCOPE, "retrieve", stream(i / 6, seed=i))
        g.record_outcome(SCOPE, decision_id=d.decision_id, needed=i >= 3)
    r = g.calibrate(SCOPE, "retrieve")
    assert not r.updated
    assert "only 6 labelled outcomes" in r.message and "kept policy v0" in r.message
    assert r.policy.version == 0 and g.get_policy(SCOPE, "retrieve").version == 0


def _labelled(g: GateEngine, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        level = float(rng.uniform())
        d = g.decide(SCOPE, "retrieve", stream(level, seed=i))
        # Errors become likelier as entropy rises.
        g.record_outcome(SCOPE, decision_id=d.decision_id, needed=bool(rng.uniform() < level**2))


@pytest.mark.parametrize("kind", ["recall", "fire_rate", "logistic"])
def test_calibration_stores_a_new_version(engine: Engine, kind: str) -> None:
    g = GateEngine(engine)
    _labelled(g, 80)
    r = g.calibrate(SCOPE, "retrieve", CalibrationObjective(kind=kind, alpha=0.1, target_fire_rate=0.3))
    assert r.updated, r.message
    assert r.policy.version == 1 and g.get_policy(SCOPE, "retrieve") == r.policy
    assert r.signal == r.policy.policy.signal
    assert r.auroc[r.signal] == max(r.auroc.values()) > 0.6
    if kind == "recall":
        assert r.recall >= 0.9
    if kind == "fire_rate":
        assert r.fire_rate == pytest.approx(0.3, abs=0.05)
    if kind == "logistic":
        assert r.logistic_b > 0
    # The calibrated policy is what Decide now uses.
    d = g.decide(SCOPE, "retrieve", stream(0.9))
    assert d.signal == r.signal and d.threshold == r.policy.policy.threshold and d.policy_version == 1


def test_dry_run_and_bare_signal_outcomes(engine: Engine) -> None:
    g = GateEngine(engine)
    rng = np.random.default_rng(3)
    for _ in range(40):
        s = float(rng.uniform(0, 2))
        g.record_outcome(SCOPE, gate="retrieve", signals={"missing_mass.mean": s, "epr.max": -s}, needed=s > 1)
    r = g.calibrate(SCOPE, "retrieve", CalibrationObjective(dry_run=True))
    assert not r.updated and r.message.startswith("dry run")
    assert r.auroc["missing_mass.mean"] == pytest.approx(1.0) and r.auroc["epr.max"] == pytest.approx(0.0)
    assert g.get_policy(SCOPE, "retrieve").version == 0
    with pytest.raises(NotFoundError):
        g.record_outcome(SCOPE, decision_id="nope", needed=True)
    with pytest.raises(InvalidArgumentError):
        g.record_outcome(SCOPE, needed=True)


def test_decisions_do_not_leak_between_scopes(engine: Engine) -> None:
    g = GateEngine(engine)
    d = g.decide("t1/ns", "retrieve", stream(0.2))
    with pytest.raises(NotFoundError):
        g.record_outcome("t2/ns", decision_id=d.decision_id, needed=True)


def test_policy_from_config_is_validated() -> None:
    assert GatePolicy.from_dict({"threshold": "0.3"}).threshold == 0.3
    with pytest.raises(InvalidArgumentError) as err:
        GatePolicy.from_dict({"thresold": 1})
    assert err.value.violations[0].field == "policy.thresold"


def test_packed_tokens_equal_token_lists() -> None:
    rows = [[-0.1, -2.5, -3.0], [-0.7, -0.7], []]
    sampled = [-0.1, -0.7, -0.2]
    a = TokenStream.from_lists(sampled, rows)
    inf = float("-inf")
    b = TokenStream.from_packed(sampled, [-3.0, -0.1, -2.5, -0.7, -0.7, inf, inf, inf, inf], 3)
    assert np.array_equal(a.top, b.top) and np.array_equal(a.sampled, b.sampled)
    with pytest.raises(InvalidArgumentError) as err:
        TokenStream.from_packed([-0.1, float("nan")], [-0.1, float("inf")], 1)
    assert [v.field for v in err.value.violations] == ["packed_tokens.logprobs[1]", "packed_tokens.top_logprobs[1]"]
    with pytest.raises(InvalidArgumentError) as err:
        TokenStream.from_packed([-0.1], [-0.1, -0.2, -0.3], 2)
    assert err.value.violations[0].field == "packed_tokens.top_logprobs"


def test_bad_config_fails_validation() -> None:
    g = GateEngine(create_engine("sqlite://"), {"escalate": {"window": 0}})
    with pytest.raises(InvalidArgumentError) as err:
        g.validate_config()
    assert err.value.violations[0].field == "policies.gates.escalate.window"


def test_edge_inputs(engine: Engine) -> None:
    g = GateEngine(engine)
    # No alternatives at all: the sampled token is the only one known.
    bare = [{"logprob": math.log(0.5)}, {"logprob": 0.0}]
    d = g.decide(SCOPE, "retrieve", bare, persist=False)
    assert d.signals["renorm.mean"] == 0.0
    assert d.signals["missing_mass.max"] == pytest.approx(math.log(2))
    # API-style -9999 "probability zero" alternatives are fine.
    tiny = [{"logprob": -0.01, "top_logprobs": [{"logprob": -0.01}, {"logprob": -9999.0}]}]
    assert math.isfinite(g.decide(SCOPE, "retrieve", tiny, persist=False).score)


def test_can_decide_now_only_when_nothing_is_read_from_the_database(engine: Engine) -> None:
    g = GateEngine(engine)
    assert not g.can_decide_now(SCOPE, "escalate")  # the policy is not cached yet
    g.decide(SCOPE, "escalate", stream(0.5), persist=False)
    assert g.can_decide_now(SCOPE, "escalate") and g.can_decide_now(SCOPE, "escalate", "s1")
    g.set_policy(SCOPE, "escalate", {"hysteresis": 0.05})
    # With hysteresis a session's last decision matters: unknown until this process decided for it.
    assert g.can_decide_now(SCOPE, "escalate") and not g.can_decide_now(SCOPE, "escalate", "s1")
    g.decide(SCOPE, "escalate", stream(0.5), session_id="s1")
    # One process (SQLite) knows its sessions; on a shared database another replica may have decided since.
    shared = engine.dialect.name != "sqlite"
    assert g.can_decide_now(SCOPE, "escalate", "s1") is not shared
    assert not g.can_decide_now(SCOPE, "escalate", "s2")
    assert not g.can_decide_now("default/other", "escalate")
    g.close()


def test_calibrate_skips_stored_names_that_are_no_signal(engine: Engine) -> None:
    # Rows stored before RecordOutcome checked names: calibration must still work on the real signals.
    from sqlalchemy import update

    from runtime.gates.schema import gate_decisions

    g = GateEngine(engine)
    rng = np.random.default_rng(3)
    for _ in range(40):
        s = float(rng.uniform(0, 2))
        g.record_outcome(SCOPE, gate="retrieve", signals={"missing_mass.mean": s}, needed=s > 1)
    with engine.begin() as conn:
        conn.execute(update(gate_decisions).values(signals_json='{"missing_mass.mean": 1.5, "my_score": 9.0}'))
    r = g.calibrate(SCOPE, "retrieve", CalibrationObjective(dry_run=True))
    assert "my_score" not in r.auroc and r.signal in ("", "missing_mass.mean")
    with pytest.raises(InvalidArgumentError) as err:
        g.record_outcome(SCOPE, gate="retrieve", signals={"my_score": 1.0}, needed=True)
    assert err.value.violations[0].field == "signals[my_score]"
