"""Consolidation (memory/consolidation.py through MemoryEngine.consolidate): forgetting by policy, fact
promotion and near-duplicate merging, with the real embedding model (similarity is what is tested)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.embedding import create_embedder
from memory.consolidation import ConsolidationPolicy, fact_topic
from memory.engine import MemoryEngine
from memory.model import Granularity, MemoryMessage, MemoryUnit, SearchQuery
from memory.store import Change, MemoryStore

NOW = datetime.now(UTC)
NS = "t/consolidation"


def make_engine(store: MemoryStore, consolidation: dict[str, Any]) -> MemoryEngine:
    return MemoryEngine(store, create_embedder(), policy=lambda _ns: {"consolidation": consolidation}, background=False)


def msg(mid: str, text: str, *, days_ago: float, speaker: str = "alice") -> MemoryMessage:
    return MemoryMessage(mid, "", speaker, text, NOW - timedelta(days=days_ago))


def turn_weights(engine: MemoryEngine) -> dict[str, float]:
    index = engine.index(NS)
    return {
        u.message_ids[0]: u.weight
        for key in index.unit_keys()
        if (u := index.unit(key)) is not None and u.granularity == Granularity.TURN
    }


def test_retention_forgets_old_and_excess_messages_with_everything_derived(
    store_factory: Callable[[], MemoryStore],
) -> None:
    engine = make_engine(store_factory(), {"max_age_days": 30, "max_messages": 2})
    engine.write(NS, "old", [msg("m-old", "The zeppelin museum trip was in spring", days_ago=90)])
    engine.write(NS, "mid", [msg("m-mid", "Bought a kayak for the lake", days_ago=10)])
    engine.write(
        NS,
        "new",
        [
            msg("m-new", "Kayak lessons every Sunday", days_ago=2),
            msg("m-newer", "The lake was frozen today", days_ago=1),
        ],
    )
    engine.flush()

    report = engine.consolidate(NS)

    assert report.messages_forgotten == 2  # m-old by age, then m-mid as the oldest beyond two messages
    assert {m.id for m in engine.list_messages(NS)[0]} == {"m-new", "m-newer"}
    hits = engine.search(NS, SearchQuery("zeppelin museum trip", top_k=20)).hits
    assert all("m-old" not in h.unit.message_ids and "m-mid" not in h.unit.message_ids for h in hits)
    assert not engine.index(NS).units_of_message("m-old")


def test_near_duplicate_turns_merge_into_the_newest_and_unmerge_when_it_goes(
    store_factory: Callable[[], MemoryStore],
) -> None:
    engine = make_engine(store_factory(), {"duplicate_cosine": 0.9, "duplicate_weight": 0.3})
    said = "I moved to Lisbon last month and I love living there"
    engine.write(NS, "s1", [msg("a1", said, days_ago=30), msg("b1", "Where is your flat?", days_ago=30, speaker="bob")])
    engine.write(NS, "s2", [msg("a2", said + "!", days_ago=20)])
    engine.write(NS, "s3", [msg("a3", said + ".", days_ago=10), msg("x3", "My sister visits in May", days_ago=10)])
    engine.write(NS, "s4", [msg("c4", said, days_ago=5, speaker="carol")])  # same words, another speaker
    engine.flush()

    report = engine.consolidate(NS)

    weights = turn_weights(engine)
    assert weights["a3"] == pytest.approx(1.0)  # the newest keeps its weight
    assert weights["a1"] == pytest.approx(0.3) and weights["a2"] == pytest.approx(0.3)
    assert weights["x3"] == pytest.approx(1.0) and weights["b1"] < 1.0 + 1e-9
    assert weights["c4"] == pytest.approx(1.0)  # not merged across speakers
    assert report.units_reweighted >= 2
    # the database agrees with the index (a restart rebuilds from it)
    stored = {
        s.unit.message_ids[0]: s.unit.weight
        for s in engine.store.session_units(NS, ["s1"])
        if s.unit.granularity == Granularity.TURN
    }
    assert stored["a1"] == pytest.approx(0.3)

    engine.delete(NS, message_ids=["a3"])
    engine.consolidate(NS)
    weights = turn_weights(engine)
    assert weights["a2"] == pytest.approx(1.0)  # now the newest of the group
    assert weights["a1"] == pytest.approx(0.3)


def test_facts_whose_topic_recurs_across_sessions_are_promoted(store_factory: Callable[[], MemoryStore]) -> None:
    engine = make_engine(store_factory(), {"promote_min_sessions": 3, "promote_weight": 1.5})
    pepper_news = ["My cat Pepper caught a mouse", "Bought Pepper a scratching post", "We think Pepper opens doors"]
    one_offs = ["Watched a documentary about volcanoes", "Baked sourdough bread twice", "Fixed the bicycle chain"]
    for i, (a, b) in enumerate(zip(pepper_news, one_offs, strict=True)):
        engine.write(NS, f"s{i}", [msg(f"p{i}", a, days_ago=10 - i), msg(f"q{i}", b, days_ago=10 - i)])
    engine.flush()
    engine.consolidate(NS)
    index = engine.index(NS)
    facts = [u for k in index.unit_keys() if (u := index.unit(k)) is not None and u.granularity == Granularity.FACT]
    pepper = [u for u in facts if fact_topic(u) == "pepper"]
    assert len({u.session_id for u in pepper}) == 3 and all(u.weight == pytest.approx(1.5) for u in pepper)
    assert any(u.weight == pytest.approx(1.0) for u in facts if fact_topic(u) != "pepper")


def test_fact_topic_reads_the_phrase_line() -> None:
    unit = MemoryUnit("s/fact/x", Granularity.FACT, "Pepper [8 May 2023]:\nalice: my cat Pepper", ("m1",), "s")
    assert fact_topic(unit) == "pepper"


def test_consolidation_policy_reads_its_section_and_refuses_a_non_mapping() -> None:
    policy = ConsolidationPolicy.from_mapping({"consolidation": {"max_age_days": "7", "unknown": 1}})
    assert policy.max_age_days == 7.0 and policy.max_messages == 0
    with pytest.raises(ValueError, match="consolidation"):
        ConsolidationPolicy.from_mapping({"consolidation": [1, 2]})


def test_merging_never_overwrites_a_unit_changed_elsewhere_meanwhile(store_factory: Callable[[], MemoryStore]) -> None:
    """The merge plan is made from the in-memory index; if the stored unit changed since (another replica
    re-derived it after a delete or an edit), only the database's version may stand."""
    store = store_factory()
    engine = make_engine(store, {"duplicate_cosine": 0.9})
    said = "I moved to Lisbon last month and I love living there"
    engine.write(NS, "s1", [msg("a1", said, days_ago=30)])
    engine.write(NS, "s2", [msg("a2", said + "!", days_ago=10)])
    engine.flush()
    (old,) = [s for s in store.session_units(NS, ["s1"]) if s.unit.granularity == Granularity.TURN]
    changed_elsewhere = replace(old, unit=replace(old.unit, text=old.unit.text + " (edited on another replica)"))
    store.apply(NS, Change(insert_units=[changed_elsewhere]))  # this engine's index does not know yet

    engine.consolidate(NS)

    (now,) = [s for s in store.session_units(NS, ["s1"]) if s.unit.granularity == Granularity.TURN]
    assert now.unit.text.endswith("(edited on another replica)")


def test_index_updates_a_weight_only_change_in_place() -> None:
    """Consolidation re-weights thousands of units: the index must keep their postings and vectors (no
    re-tokenising, no HNSW tombstone) yet serve the new weight, and still fully replace a changed text."""
    import numpy as np

    from memory.index import NamespaceIndex
    from memory.store import StoredUnit

    index = NamespaceIndex(4)
    vec = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
    unit = MemoryUnit("s/turn/a", Granularity.TURN, "ann: pepper the kitten", ("a",), "s")
    index.apply([], [StoredUnit(unit, 7, vec, "m")])
    lexical = index.lexical(Granularity.TURN)
    assert lexical is not None
    before = lexical.score(["pepper"], [7])
    assert before[0] > 0
    index.apply([], [StoredUnit(replace(unit, weight=0.3), 7, vec.copy(), "m")])
    reweighted = index.unit(7)
    assert reweighted is not None and reweighted.weight == 0.3
    np.testing.assert_array_equal(lexical.score(["pepper"], [7]), before)
    assert index.dense_search(Granularity.TURN, vec, 1)[0].tolist() == [7]
    # A changed text is a real replacement: the old terms are gone, the new ones are searchable.
    index.apply([], [StoredUnit(replace(unit, text="ann: saxophone lessons"), 7, vec, "m")])
    assert lexical.score(["pepper"], [7]).tolist() == [0.0]
    assert lexical.search("saxophone lessons", 1)[0][0] == 7
