"""Ranking, entropy router, cues, association expansion and packing (memory/retrieval.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pytest

from core.embedding import Embedder, create_embedder
from core.entropy import entropy, softmax
from memory.index import NamespaceIndex
from memory.model import Granularity, MemoryMessage, SearchQuery
from memory.retrieval import RetrievalPolicy, router_weights, search, time_cues
from memory.store import StoredUnit, unit_key
from memory.units import derive_units

MAY = datetime(2023, 5, 8, tzinfo=UTC)
JUNE = datetime(2023, 6, 20, tzinfo=UTC)
SESSIONS: dict[str, tuple[datetime, list[tuple[str, str]]]] = {
    "s1": (
        MAY,
        [
            ("Caroline", "Hey Mel, good to see you! How have you been?"),
            ("Melanie", "Busy with the kids and work. What's new with you?"),
            ("Caroline", "I went to an LGBTQ support group yesterday and it was so powerful."),
            ("Melanie", "That sounds amazing. What did you take away from it?"),
            ("Caroline", "The transgender stories were inspiring, I want to work in counseling."),
            ("Melanie", "haha ok"),
        ],
    ),
    "s2": (
        JUNE,
        [
            ("Melanie", "We went camping at the beach with the kids last weekend."),
            ("Caroline", "Fun! Did you roast marshmallows by the campfire?"),
            ("Melanie", "Yes, and I painted a sunrise over the lake the next morning."),
            ("Caroline", "Your painting sounds beautiful. I started pottery classes too."),
            ("Melanie", "Pottery is relaxing, I made a bowl last year."),
        ],
    ),
}


def build(embedder: Embedder) -> NamespaceIndex:
    index = NamespaceIndex(embedder.dim)
    for sid, (when, turns) in SESSIONS.items():
        msgs = [MemoryMessage(f"{sid}:{i}", sid, spk, text, when) for i, (spk, text) in enumerate(turns)]
        units = derive_units(sid, msgs)
        vectors = embedder.embed([u.text for u in units])
        stored = [StoredUnit(u, unit_key("ns", u.id), v, embedder.name) for u, v in zip(units, vectors, strict=True)]
        index.apply([], stored)
    return index


@pytest.fixture(scope="module")
def hashing() -> tuple[NamespaceIndex, Embedder]:
    embedder = create_embedder("hashing")
    return build(embedder), embedder


def ask(
    index: NamespaceIndex, embedder: Embedder, text: str, policy: dict | None = None, **kw: object
) -> list[Sequence[str]]:
    query = SearchQuery(text, **({"top_k": 20} | kw))  # type: ignore[arg-type]
    result = search(index, query, embedder.embed([text])[0], policy or {})
    return [hit.unit.message_ids for hit in result.hits]


# -- router -------------------------------------------------------------------------------------------


def test_router_prefers_the_peaked_granularity() -> None:
    entropy_g, weight = router_weights({"turn": [0.9, 0.2, 0.1, 0.1], "session": [0.5, 0.5, 0.5, 0.5]}, 0.05)
    assert entropy_g["session"] == pytest.approx(1.0)
    assert entropy_g["turn"] < 0.2
    assert weight["turn"] > weight["session"] > 0
    assert sum(weight.values()) == pytest.approx(2.0)  # the priors' mass (1 each by default)


def test_router_all_high_entropy_keeps_priors_and_never_flips_sign() -> None:
    # Twenty near-equal candidates per granularity: every raw entropy is ~ln 20 = 3 nats > 1, where
    # MemGAS's 1 − H would be negative for all and favour the noisiest granularity.
    cos = {
        "turn": [0.50 + 0.001 * i for i in range(20)],
        "exchange": [0.50 + 0.002 * i for i in range(20)],
        "session": [0.50 + 0.0005 * i for i in range(20)],
    }
    raw_nats = {g: entropy(softmax(v, 0.05)) for g, v in cos.items()}
    assert all(1.0 - h < 0 for h in raw_nats.values())
    priors = {"turn": 1.0, "exchange": 0.3, "session": 0.5}
    ent, weight = router_weights(cos, 0.05, priors)
    assert all(0.95 < h <= 1.0 for h in ent.values())
    assert all(w > 0 for w in weight.values())
    assert weight["turn"] > weight["session"] > weight["exchange"]
    for g in cos:
        assert weight[g] == pytest.approx(priors[g], rel=0.1)
    # The least noisy granularity still gets (slightly) more than its prior share, never less.
    assert weight["exchange"] / priors["exchange"] >= weight["session"] / priors["session"]


def test_router_handles_empty_and_single_candidate_granularities() -> None:
    ent, weight = router_weights({"turn": [0.7], "fact": []}, 0.05)
    assert ent == {"turn": 0.0, "fact": 1.0}
    assert weight["fact"] == 0.0 and weight["turn"] == pytest.approx(1.0)


def test_policy_reads_temperature_and_rejects_bad_values() -> None:
    assert RetrievalPolicy.from_mapping({"router_temperature": 0.2}).temperature == 0.2
    pol = RetrievalPolicy.from_mapping({"retrieval": {"temperature": 0.1, "priors": {"fact": 0}}})
    assert pol.temperature == 0.1 and pol.priors["fact"] == 0 and pol.priors["turn"] == 1.0
    with pytest.raises(ValueError, match="temperature"):
        RetrievalPolicy.from_mapping({"temperature": 0})


# -- ranking and packing ------------------------------------------------------------------------------


def test_search_ranks_the_matching_turn_first_and_reports_routing(hashing) -> None:
    index, embedder = hashing
    result = search(index, SearchQuery("LGBTQ support group", top_k=5), embedder.embed(["LGBTQ support group"])[0], {})
    assert result.hits[0].unit.message_ids == ("s1:2",)
    assert result.hits[0].unit.granularity == Granularity.TURN
    assert set(result.routing.weight) == {g.value for g in Granularity}
    assert all(0.0 <= h <= 1.0 for h in result.routing.entropy.values())
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)


def test_packing_respects_budget_top_k_and_never_repeats_a_message(hashing) -> None:
    index, embedder = hashing
    for budget in (10, 25, 60):
        ids = ask(index, embedder, "painting pottery camping", token_budget=budget, top_k=50)
        result = search(
            index,
            SearchQuery("painting pottery camping", top_k=50, token_budget=budget),
            embedder.embed(["painting pottery camping"])[0],
            {},
        )
        assert sum(len(h.unit.text.split()) for h in result.hits) <= budget
        flat = [m for hit in ids for m in hit]
        assert len(flat) == len(set(flat))
    assert len(ask(index, embedder, "painting pottery camping", top_k=3)) == 3


def test_neighbour_context_lifts_the_answer_turn(hashing) -> None:
    index, embedder = hashing
    # "marshmallows" only occurs in s2:1; the neighbour smoothing pulls its context next.
    ids = ask(index, embedder, "marshmallows campfire")
    assert ids[0] == ("s2:1",)
    assert {("s2:0",), ("s2:2",)} & set(ids[1:4])


def test_every_candidate_is_scored_in_its_covering_units_not_only_the_best_ones(hashing) -> None:
    """route_units only decides which coarse units bring turns in; the context score of a turn is exact."""
    index, embedder = hashing
    text = "camping at the beach with the kids"
    vector = embedder.embed([text])[0]
    # Without session aggregation the score of a turn depends on nothing but itself and its context.
    fixed = {"session_aggregate": 0.0, "priors": {"exchange": 1.0}}

    def scores(route_units: int) -> dict[tuple[str, ...], float]:
        result = search(index, SearchQuery(text, top_k=100), vector, fixed | {"route_units": route_units})
        return {h.unit.message_ids: h.score for h in result.hits}

    narrow, wide = scores(1), scores(100)
    assert set(narrow) <= set(wide)
    for ids, score in narrow.items():
        assert score == pytest.approx(wide[ids])


def test_low_information_turn_is_ranked_below_its_neighbours(hashing) -> None:
    index, embedder = hashing
    ids = ask(index, embedder, "counseling haha ok", top_k=20)
    assert ids.index(("s1:4",)) < ids.index(("s1:5",))


def test_a_turn_that_asks_is_scored_below_one_that_tells(hashing) -> None:
    """question_penalty comes off every turn ending with a question, and off nothing else."""
    index, embedder = hashing
    text = "marshmallows campfire painting"
    vector = embedder.embed([text])[0]
    fixed = {"session_aggregate": 0.0}  # a turn's score then depends on itself and its context only

    def scores(penalty: float) -> dict[tuple[str, ...], float]:
        result = search(index, SearchQuery(text, top_k=100), vector, fixed | {"question_penalty": penalty})
        return {h.unit.message_ids: h.score for h in result.hits}

    off, on = scores(0.0), scores(0.8)
    asks = {(f"{sid}:{i}",) for sid, (_, turns) in SESSIONS.items()
            for i, (_, said) in enumerate(turns) if said.endswith("?")}
    assert ("s2:1",) in off and ("s2:1",) in asks and ("s2:2",) in off and ("s2:2",) not in asks
    for ids, score in off.items():
        assert on[ids] == pytest.approx(score - (0.8 if ids in asks else 0.0))
    assert RetrievalPolicy().question_penalty > 0  # on by default


def test_time_filter_and_time_cue(hashing) -> None:
    index, embedder = hashing
    ids = ask(index, embedder, "kids", time_start=datetime(2023, 6, 1, tzinfo=UTC))
    assert ids and all(m[0].startswith("s2:") for m in ids)
    ids = ask(index, embedder, "kids", time_end=datetime(2023, 5, 31, tzinfo=UTC))
    assert ids and all(m[0].startswith("s1:") for m in ids)
    assert time_cues("What did she do in June 2023?") == [(2023, 6)]
    assert time_cues("What happened in 2022?") == [(2022, None)]
    assert time_cues("May I ask what happened?") == []
    ids = ask(index, embedder, "What did Melanie say about the kids in June 2023?")
    assert ids[0][0].startswith("s2:")


def test_speaker_named_in_query_boosts_their_turns(hashing) -> None:
    index, embedder = hashing
    ids = ask(index, embedder, "What did Caroline say about painting?", {"speaker_boost": 3.0})
    assert ids[0] == ("s2:3",)  # Caroline's turn about painting, not Melanie's
    ids = ask(index, embedder, "What did Melanie say about painting?", {"speaker_boost": 3.0})
    assert ids[0] == ("s2:2",)


def test_session_and_granularity_restrictions(hashing) -> None:
    index, embedder = hashing
    ids = ask(index, embedder, "kids", session_ids=("s1",))
    assert ids and all(m[0].startswith("s1:") for m in ids)
    result = search(
        index,
        SearchQuery("pottery", top_k=5, granularities=(Granularity.SESSION,)),
        embedder.embed(["pottery"])[0],
        {},
    )
    assert result.hits and {h.unit.granularity for h in result.hits} == {Granularity.SESSION}


def test_association_expansion_brings_in_linked_units(hashing) -> None:
    index, embedder = hashing

    def key(message_ids: tuple[str, ...]) -> int:
        sid = message_ids[0].split(":")[0]
        return unit_key("ns", f"{sid}/turn/{message_ids[0]}")

    query = "LGBTQ support group"
    before = ask(index, embedder, query, {"association_weight": 0.0}, top_k=100)
    linked = ("s2:4",)  # pottery bowl: no word in common with the query
    index.set_edges([(key(("s1:2",)), key(linked), 1.0)], replace=True)
    try:
        after = ask(index, embedder, query, {"association_weight": 5.0}, top_k=100)
    finally:
        index.set_edges([], replace=True)
    assert after.index(linked) < (before.index(linked) if linked in before else math.inf)
    assert after.index(linked) <= 3


def test_empty_index_returns_no_hits() -> None:
    embedder = create_embedder("hashing")
    result = search(NamespaceIndex(embedder.dim), SearchQuery("anything"), embedder.embed(["anything"])[0], {})
    assert result.hits == [] and result.routing.weight == {}


def test_real_model_finds_paraphrased_evidence_over_the_lexical_decoy() -> None:
    embedder = create_embedder()
    index = build(embedder)
    text = "Which creative hobby did Melanie take up outdoors at dawn?"
    result = search(index, SearchQuery(text, top_k=3), embedder.embed([text])[0], {})
    top = [m for h in result.hits for m in h.unit.message_ids]
    assert "s2:2" in top  # "I painted a sunrise over the lake" shares no content word with the query
    assert np.isfinite([h.score for h in result.hits]).all()
