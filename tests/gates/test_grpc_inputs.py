"""GateService and SelectService inputs over the wire (real server on port 0): tokens without alternatives,
extreme and oversized logprobs, answer normalisation, empty answers, stored rows that predate the checks."""

from __future__ import annotations

import json
import math
from typing import Any

import grpc
import numpy as np
import pytest
from agentrt.v1 import common_pb2, gate_pb2, select_pb2

from runtime.gates.types import MAX_PADDED_VALUES, MAX_TOP_LOGPROBS
from tests.conftest import bad_fields
from tests.gates.test_grpc import toks

NS = "gates-inputs"


@pytest.fixture
def srv(make_server: Any) -> Any:
    return make_server(
        embedding_model="hashing",
        policies={"defaults": {"select": {"min_train_sets": 4, "retrain_every": 0, "heldout_fraction": 0.5}}},
    )


def bare(logprob: float, n: int = 8) -> list[common_pb2.TokenLogprob]:
    """Tokens sent without top_logprobs (what a client that asks only for logprobs gets)."""
    return [common_pb2.TokenLogprob(token="x", logprob=logprob)] * n


def alternatives(n: int, logprob: float = -5.0) -> list[common_pb2.TopLogprob]:
    return [common_pb2.TopLogprob(token=str(j), logprob=logprob) for j in range(n)]


def test_tokens_without_alternatives_are_scored_by_their_surprisal(srv: Any) -> None:
    """With its sampled logprob as the only alternative, a token's entropy was a binary entropy near 0 for
    p → 0 as for p → 1: a token of probability 1e-6 read as confident, RETRIEVE stayed shut and Select
    preferred that answer."""
    g = srv.client.gate
    previous = -1.0
    for p in (0.99, 0.5, 0.1, 1e-3, 1e-6):
        d = g.Decide(gate_pb2.DecideRequest(namespace=NS, tokens=bare(math.log(p)), dry_run=True))
        # −ln p: an unbiased one-sample estimate of the entropy of the distribution the token was drawn from.
        assert d.signals["missing_mass.mean"] == pytest.approx(-math.log(p))
        assert d.signals["epr.mean"] == pytest.approx(-math.log(p))
        assert d.signals["renorm.mean"] == 0.0  # documented: no information without alternatives
        assert d.signals["missing_mass.mean"] > previous  # less likely tokens read as more uncertain
        previous = d.signals["missing_mass.mean"]
        assert d.fire == (p < math.exp(-0.5))  # default threshold 0.5 nats
    sel = srv.client.select_service.Select(
        select_pb2.SelectRequest(
            namespace=NS,
            dry_run=True,
            candidates=[
                select_pb2.Candidate(answer="Paris", tokens=bare(math.log(1e-6))),
                select_pb2.Candidate(answer="Lyon", tokens=bare(math.log(0.5))),
            ],
        )
    )
    assert (sel.index, sel.answer) == (1, "Lyon")
    assert list(sel.mean_entropy) == pytest.approx([-math.log(1e-6), -math.log(0.5)])


def test_extreme_logprobs_and_entropies_are_refused_naming_the_field(srv: Any) -> None:
    """Finite but extreme values overflowed the aggregations: a NaN score silently meant "do not fire"."""
    g, s = srv.client.gate, srv.client.select_service
    cases = [
        (gate_pb2.DecideRequest(namespace=NS, tokens=bare(-1e308, 2)), ["tokens[0].logprob", "tokens[1].logprob"]),
        (
            gate_pb2.DecideRequest(
                namespace=NS, tokens=[common_pb2.TokenLogprob(logprob=-0.1, top_logprobs=alternatives(2, -1e6))]
            ),
            ["tokens[0].top_logprobs[0].logprob", "tokens[0].top_logprobs[1].logprob"],
        ),
        (
            gate_pb2.DecideRequest(
                namespace=NS, packed_tokens=common_pb2.PackedTokens(logprobs=[-0.1], top_k=1, top_logprobs=[-1e6])
            ),
            ["packed_tokens.top_logprobs[0]"],
        ),
        (
            gate_pb2.DecideRequest(namespace=NS, tokens=[common_pb2.TokenLogprob(logprob=-0.1, full_entropy=1e308)]),
            ["tokens[0].full_entropy"],
        ),
    ]
    for request, fields in cases:
        with pytest.raises(grpc.RpcError) as err:
            g.Decide(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_fields(err.value) == fields
    with pytest.raises(grpc.RpcError) as err:
        s.Select(
            select_pb2.SelectRequest(
                namespace=NS, candidates=[select_pb2.Candidate(answer="a", tokens=bare(-1e308, 1))]
            )
        )
    assert bad_fields(err.value) == ["candidates[0].tokens[0].logprob"]
    # The probability-zero marker APIs send (-9999) is fine, and so is a full entropy of a real vocabulary.
    ok = g.Decide(
        gate_pb2.DecideRequest(
            namespace=NS,
            tokens=[common_pb2.TokenLogprob(logprob=-9999.0, top_logprobs=alternatives(2, -9999.0), full_entropy=12.0)],
            dry_run=True,
        )
    )
    assert all(math.isfinite(v) for v in ok.signals.values())


def test_train_skips_selections_stored_with_non_finite_features(srv: Any) -> None:
    """One selection stored with -1e308 logprobs (before the floor) made every later Train INTERNAL."""
    from sqlalchemy import select, update

    from runtime.db import create_db_engine
    from runtime.selection.schema import select_selections

    s = srv.client.select_service
    for i in range(8):
        sel = s.Select(
            select_pb2.SelectRequest(
                namespace=NS,
                candidates=[
                    select_pb2.Candidate(answer="x", tokens=toks(0.1 * (i % 3), seed=i)),
                    select_pb2.Candidate(answer="y", tokens=toks(0.9, seed=100 + i)),
                ],
            )
        )
        s.RecordOutcome(
            select_pb2.RecordSelectionOutcomeRequest(
                namespace=NS, selection_id=sel.selection_id, correct_indices=[i % 2]
            )
        )
    srv.rt.selector.flush()
    engine = create_db_engine(srv.rt.db.url)
    try:
        with engine.begin() as conn:
            first, features = conn.execute(
                select(select_selections.c.selection_id, select_selections.c.features_json).limit(1)
            ).one()
            poisoned = np.array(json.loads(features))
            poisoned[0, 1:4] = 1e308  # what -1e308 logprobs gave: finite, but x.mean() overflows
            poisoned[1, 5] = math.nan
            conn.execute(
                update(select_selections)
                .where(select_selections.c.selection_id == first)
                .values(features_json=json.dumps(poisoned.tolist()))
            )
    finally:
        engine.dispose()
    r = s.Train(select_pb2.TrainSelectorRequest(namespace=NS))
    assert r.n_sets == 7 and "1 with non-finite or out-of-range features left out" in r.message


def test_wide_and_ragged_tokens_are_refused_before_anything_is_allocated(srv: Any) -> None:
    """One token with 300k alternatives among 1.5M bare tokens asked numpy for 3.27 TiB (INTERNAL)."""
    g, s = srv.client.gate, srv.client.select_service
    wide = common_pb2.TokenLogprob(logprob=-0.1, top_logprobs=alternatives(MAX_TOP_LOGPROBS + 1))
    with pytest.raises(grpc.RpcError) as err:
        g.Decide(gate_pb2.DecideRequest(namespace=NS, tokens=[common_pb2.TokenLogprob(logprob=-0.1), wide]))
    assert bad_fields(err.value) == ["tokens[1].top_logprobs"]
    packed = common_pb2.PackedTokens(
        logprobs=[-0.1], top_k=MAX_TOP_LOGPROBS + 1, top_logprobs=[-5.0] * (MAX_TOP_LOGPROBS + 1)
    )
    with pytest.raises(grpc.RpcError) as err:
        g.Decide(gate_pb2.DecideRequest(namespace=NS, packed_tokens=packed))
    assert bad_fields(err.value) == ["packed_tokens.top_k"]
    with pytest.raises(grpc.RpcError) as err:
        s.Select(
            select_pb2.SelectRequest(
                namespace=NS,
                candidates=[
                    select_pb2.Candidate(answer="a"),
                    select_pb2.Candidate(answer="b", first_round_tokens=[wide]),
                ],
            )
        )
    assert bad_fields(err.value) == ["candidates[1].first_round_tokens[0].top_logprobs"]
    # Many bare tokens padded to one full-width row: refused by size, naming the field, not allocated.
    full_row = common_pb2.TokenLogprob(logprob=-0.1, top_logprobs=alternatives(MAX_TOP_LOGPROBS))
    many = [full_row] + [common_pb2.TokenLogprob(logprob=-0.1)] * (MAX_PADDED_VALUES // MAX_TOP_LOGPROBS)
    with pytest.raises(grpc.RpcError) as err:
        s.Select(select_pb2.SelectRequest(namespace=NS, candidates=[select_pb2.Candidate(answer="a", tokens=many)]))
    assert bad_fields(err.value) == ["candidates[0].tokens"]
    # Decide keeps the policy's top_k (20 by default) per token before padding: the same tokens fit.
    d = g.Decide(gate_pb2.DecideRequest(namespace=NS, tokens=many, dry_run=True))
    assert d.n_tokens == len(many)
    # Truncating while converting gives the signals of the tokens cut to top_k by the client.
    rng = np.random.default_rng(0)
    rows = [np.sort(np.log(rng.dirichlet(np.ones(50))))[::-1] for _ in range(6)]

    def tokens(width: int) -> list[common_pb2.TokenLogprob]:
        return [
            common_pb2.TokenLogprob(
                logprob=float(r[0]), top_logprobs=[common_pb2.TopLogprob(logprob=float(v)) for v in r[:width]]
            )
            for r in rows
        ]

    long, cut = tokens(50), tokens(20)
    a = g.Decide(gate_pb2.DecideRequest(namespace=NS, tokens=long, dry_run=True))
    b = g.Decide(gate_pb2.DecideRequest(namespace=NS, tokens=cut, dry_run=True))
    assert dict(a.signals) == pytest.approx(dict(b.signals))


def test_answers_merge_only_when_they_are_the_same_answer(srv: Any) -> None:
    """"1, 2" agreed with "12" and "3 4" with "34"; only thousands separators compare by value."""
    s = srv.client.select_service

    def clusters(*answers: str) -> list[list[int]]:
        sel = s.Select(
            select_pb2.SelectRequest(
                namespace=NS, dry_run=True, candidates=[select_pb2.Candidate(answer=a) for a in answers]
            )
        )
        return [list(c.indices) for c in sel.clusters]

    assert clusters("1, 2", "12", "3") == [[0], [1], [2]]
    assert clusters("3 4", "34") == [[0], [1]]
    assert clusters("1,000", "1000.0", "The answer is 1,000.") == [[0, 1, 2]]
    assert clusters("$5", "5.", "5 6") == [[0, 1], [2]]


def test_empty_answers_never_agree_and_never_win(srv: Any) -> None:
    """["", "  ", "Paris"] chose "": two empty answers agreed with each other and outvoted the real one."""
    s = srv.client.select_service
    for empties in (["", "  "], ["?", "..."]):
        sel = s.Select(
            select_pb2.SelectRequest(
                namespace=NS,
                dry_run=True,
                candidates=[select_pb2.Candidate(answer=a) for a in [*empties, "Paris"]],
            )
        )
        assert (sel.index, sel.answer) == (2, "Paris")
        assert [list(c.indices) for c in sel.clusters] == [[2], [0], [1]]  # empty answers last, each alone
        assert sel.normalized_semantic_entropy == pytest.approx(1.0)
    # All empty: one of them is still returned (the earliest), each its own cluster.
    sel = s.Select(
        select_pb2.SelectRequest(
            namespace=NS, dry_run=True, candidates=[select_pb2.Candidate(answer=a) for a in ("", " ")]
        )
    )
    assert sel.index == 0 and [list(c.indices) for c in sel.clusters] == [[0], [1]]


def test_small_input_checks_name_their_field(srv: Any) -> None:
    g = srv.client.gate
    # An unknown signal fails at once, not only once 30 outcomes exist.
    with pytest.raises(grpc.RpcError) as err:
        g.Calibrate(gate_pb2.CalibrateRequest(namespace=NS, signal="bogus.x"))
    assert bad_fields(err.value) == ["signal"]
    # Empty packed tokens name the field that was sent.
    with pytest.raises(grpc.RpcError) as err:
        g.Decide(gate_pb2.DecideRequest(namespace=NS, packed_tokens=common_pb2.PackedTokens()))
    assert bad_fields(err.value) == ["packed_tokens"]
