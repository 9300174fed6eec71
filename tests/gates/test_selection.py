"""AnswerSelector: agreement default, semantic entropy, outcomes and the learned selector (real model)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Engine

from core.embedding import Embedder, create_embedder
from core.errors import InvalidArgumentError, NotFoundError
from runtime.db import create_db_engine
from runtime.gates import TokenStream
from runtime.selection import AnswerSelector, Candidate, cluster_answers, normalize_answer
from runtime.selection.schema import metadata

SCOPE = "default/ns"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return create_embedder()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_db_engine(db_url)
    metadata.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    eng = create_db_engine(f"sqlite:///{tmp_path / 's.db'}")
    metadata.create_all(eng)
    yield eng
    eng.dispose()


def tokens(level: float, n: int = 10, seed: int = 0) -> TokenStream:
    """Token stream whose mean entropy rises with ``level`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 5)) * (1.0 - level) * 10
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    lp = -np.sort(-np.log(p), axis=1)
    return TokenStream.from_lists(lp[:, 0].tolist(), lp.tolist())


@pytest.mark.parametrize(
    ("a", "b"),
    [("Answer: Paris.", "paris"), ("The answer is 1,000", "1000.0"), ("Final answer: the Beatles", "Beatles!")],
)
def test_normalisation_agrees(a: str, b: str) -> None:
    assert normalize_answer(a) == normalize_answer(b)


def test_short_answers_never_merge_by_embedding(embedder: Embedder) -> None:
    assert cluster_answers(["42", "43", "42."], embedder) == [[0, 2], [1]]


def test_long_paraphrases_merge(embedder: Embedder) -> None:
    answers = [
        "The meeting was moved to Friday because the manager was sick.",
        "They moved the meeting to Friday since the manager was ill.",
        "The meeting was cancelled because of budget cuts.",
    ]
    assert cluster_answers(answers, embedder) == [[0, 1], [2]]


def test_largest_cluster_wins_and_semantic_entropy(sqlite_engine: Engine, embedder: Embedder) -> None:
    sel = AnswerSelector(sqlite_engine, embedder)
    cands = [
        Candidate("Paris", tokens=tokens(0.9)),
        Candidate("Lyon", tokens=tokens(0.0)),
        Candidate("Answer: paris.", tokens=tokens(0.5)),
    ]
    s = sel.select(SCOPE, cands)
    assert s.method == "agreement"
    assert s.index == 2  # largest cluster; inside it, the lower mean entropy
    assert s.clusters == [[0, 2], [1]]
    assert s.confidence == pytest.approx(2 / 3)
    assert s.scores == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    expected = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert s.semantic_entropy == pytest.approx(expected)
    assert s.normalized_semantic_entropy == pytest.approx(expected / math.log(3))
    # Unanimity: zero semantic entropy, full confidence.
    same = sel.select(SCOPE, [Candidate("42"), Candidate("42.0")])
    assert same.semantic_entropy == 0.0 and same.confidence == 1.0


def test_ties_go_to_lower_mean_entropy(sqlite_engine: Engine) -> None:
    sel = AnswerSelector(sqlite_engine, None)
    s = sel.select(
        SCOPE,
        [Candidate("a1", tokens=tokens(0.8)), Candidate("b2", tokens=tokens(0.1)), Candidate("c3", tokens=tokens(0.5))],
    )
    assert s.index == 1
    assert s.semantic_entropy == pytest.approx(math.log(3))
    # Without any tokens the earliest candidate wins a tie.
    assert sel.select(SCOPE, [Candidate("x"), Candidate("y")]).index == 0
    # A candidate with tokens beats one without in a tie.
    assert sel.select(SCOPE, [Candidate("x"), Candidate("y", tokens=tokens(0.9))]).index == 1


def test_bad_input_is_rejected(sqlite_engine: Engine) -> None:
    sel = AnswerSelector(sqlite_engine, None)
    with pytest.raises(InvalidArgumentError):
        sel.select(SCOPE, [])
    bad = [{"logprob": -0.1, "top_logprobs": [{"logprob": float("nan")}]}]
    with pytest.raises(InvalidArgumentError) as err:
        sel.select(SCOPE, [Candidate("a"), Candidate("b", tokens=bad)])
    assert err.value.violations[0].field == "candidates[1].tokens[0].top_logprobs[0].logprob"


def test_outcomes_by_index_and_by_answer(engine: Engine) -> None:
    sel = AnswerSelector(engine, None)
    s = sel.select(SCOPE, [Candidate("Paris"), Candidate("Lyon"), Candidate("paris.")])
    assert sel.record_outcome(SCOPE, s.selection_id, correct_answer="Answer: Paris") == [True, False, True]
    assert sel.record_outcome(SCOPE, s.selection_id, correct_indices=[1]) == [False, True, False]
    with pytest.raises(InvalidArgumentError) as err:
        sel.record_outcome(SCOPE, s.selection_id, correct_indices=[7])
    assert err.value.violations[0].field == "correct_indices[0]"
    with pytest.raises(NotFoundError):
        sel.record_outcome("default/other", s.selection_id, correct_indices=[0])


def _synthetic_set(rng: np.random.Generator, i: int) -> tuple[list[Candidate], list[bool]]:
    """5 candidates; the right ones have low entropy but are often outvoted by a confident-looking wrong
    majority with high entropy peaks — a pattern only the learned selector can exploit."""
    wrong = f"wrong{i}"
    right = f"right{i}"
    n_right = int(rng.integers(1, 3))
    answers = [right] * n_right + [wrong] * (5 - n_right)
    cands = [
        Candidate(a, tokens=tokens(0.05 if a == right else 0.95, seed=int(rng.integers(1 << 30)))) for a in answers
    ]
    order = rng.permutation(5)
    return [cands[j] for j in order], [answers[j] == right for j in order]


def test_learned_selector_used_only_when_it_beats_default(sqlite_engine: Engine) -> None:
    sel = AnswerSelector(sqlite_engine, None, {"min_train_sets": 30, "retrain_every": 0})
    rng = np.random.default_rng(0)
    early = sel.train(SCOPE)
    assert not early.active and "only 0 labelled" in early.message
    for i in range(60):
        cands, labels = _synthetic_set(rng, i)
        s = sel.select(SCOPE, cands)
        assert s.method == "agreement"
        sel.record_outcome(SCOPE, s.selection_id, correct_indices=[j for j, ok in enumerate(labels) if ok])
    r = sel.train(SCOPE)
    assert r.active, r.message
    assert r.heldout_learned_accuracy > r.heldout_default_accuracy
    cands, labels = _synthetic_set(rng, 999)
    s = sel.select(SCOPE, cands)
    assert s.method == "learned" and labels[s.index]
    assert labels[s.default_index] is False or s.default_index == s.index
    # A fresh selector reads the active model from the database.
    assert AnswerSelector(sqlite_engine, None).select(SCOPE, cands).method == "learned"
    # Another namespace still uses the default.
    assert sel.select("default/other", cands).method == "agreement"


def test_learned_selector_not_activated_when_default_is_as_good(sqlite_engine: Engine) -> None:
    sel = AnswerSelector(sqlite_engine, None, {"min_train_sets": 30, "retrain_every": 0})
    rng = np.random.default_rng(1)
    for i in range(50):
        # The majority is always right: the default is perfect, a model cannot beat it.
        answers = [f"r{i}"] * 3 + [f"w{i}a", f"w{i}b"]
        cands = [Candidate(a, tokens=tokens(float(rng.uniform()), seed=i * 5 + j)) for j, a in enumerate(answers)]
        s = sel.select(SCOPE, cands)
        sel.record_outcome(SCOPE, s.selection_id, correct_answer=f"r{i}")
    r = sel.train(SCOPE)
    assert not r.active and r.heldout_default_accuracy == 1.0
    assert sel.select(SCOPE, [Candidate("x"), Candidate("x"), Candidate("y")]).method == "agreement"


def test_single_candidate(sqlite_engine: Engine) -> None:
    s = AnswerSelector(sqlite_engine, None).select(SCOPE, [Candidate("only")])
    assert (s.index, s.confidence, s.semantic_entropy, s.normalized_semantic_entropy) == (0, 1.0, 0.0, 0.0)


def test_select_now_only_when_nothing_is_left_to_load_or_embed(sqlite_engine: Engine, embedder: Embedder) -> None:
    """select_now decides on the calling thread only from what is in memory: the scope's learned model already
    read, and the long answers the clustering compares already embedded."""
    from core.embedding import CachingEmbedder

    cached = CachingEmbedder(embedder)
    learned = AnswerSelector(sqlite_engine, cached)
    short = [Candidate(answer=a, tokens=tokens(0.2, seed=i)) for i, a in enumerate(["Paris", "Paris", "Lyon"])]
    assert learned.select_now(SCOPE, short) is None  # the scope's model has not been read yet
    first = learned.select(SCOPE, short)
    now = learned.select_now(SCOPE, short)
    assert now is not None and (now.index, now.method) == (first.index, first.method)
    long = [Candidate(answer=a, tokens=tokens(0.2, seed=i)) for i, a in enumerate([
        "The meeting moved to Thursday afternoon at three.",
        "They moved the meeting to Thursday at 3 pm.",
        "The meeting was cancelled because the room flooded.",
    ])]
    assert learned.select_now(SCOPE, long) is None  # two long answers would be embedded
    cached.embed([c.answer for c in long])
    now = learned.select_now(SCOPE, long)
    assert now is not None and now.clusters == learned.select(SCOPE, long).clusters


def test_config_values_are_parsed_and_checked_naming_the_key() -> None:
    from runtime.selection.selector import SelectorConfig

    # AGENTRT_* environment variables give strings; bool("false") would be True.
    assert SelectorConfig.from_mapping({"learned": "false"}).learned is False
    assert SelectorConfig.from_mapping({"learned": "Yes", "min_train_sets": "12"}).min_train_sets == 12
    for data, field in [
        ({"learned": "maybe"}, "policies.select.learned"),
        ({"similarity": "high"}, "policies.select.similarity"),
        ({"similarity": 7}, "policies.select.similarity"),
        ({"heldout_fraction": 1.0}, "policies.select.heldout_fraction"),
        ({"min_train_sets": 1}, "policies.select.min_train_sets"),
        ({"retrain_every": -1}, "policies.select.retrain_every"),
    ]:
        with pytest.raises(InvalidArgumentError) as err:
            SelectorConfig.from_mapping(data)
        assert [v.field for v in err.value.violations] == [field]


def test_training_with_an_empty_train_split_keeps_the_default(sqlite_engine: Engine) -> None:
    sel = AnswerSelector(sqlite_engine, None, {"min_train_sets": 2, "heldout_fraction": 0.9, "retrain_every": 0})
    for _ in range(2):
        s = sel.select(SCOPE, [Candidate("a"), Candidate("b")])
        sel.record_outcome(SCOPE, s.selection_id, correct_indices=[0])
    r = sel.train(SCOPE)
    assert not r.active and "not enough data" in r.message


def test_a_failed_automatic_retrain_does_not_fail_record_outcome(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sel = AnswerSelector(sqlite_engine, None, {"min_train_sets": 2, "retrain_every": 1})

    def broken(scope: str, *, seed: int = 0) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(sel, "train", broken)
    for i in range(3):
        s = sel.select(SCOPE, [Candidate("a"), Candidate("b")])
        # The label is committed before the refit: the call reports it, not the refit's failure.
        assert sel.record_outcome(SCOPE, s.selection_id, correct_indices=[i % 2]) == [i % 2 == 0, i % 2 == 1]


def test_outcome_by_both_index_and_answer_is_rejected(sqlite_engine: Engine) -> None:
    sel = AnswerSelector(sqlite_engine, None)
    s = sel.select(SCOPE, [Candidate("Paris"), Candidate("Lyon")])
    with pytest.raises(InvalidArgumentError) as err:
        sel.record_outcome(SCOPE, s.selection_id, correct_indices=[1], correct_answer="Paris")
    assert err.value.violations[0].field == "correct_answer"
