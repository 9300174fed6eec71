"""Consolidation (memory/consolidation.py through MemoryEngine.consolidate): forgetting by policy, fact
promotion and near-duplicate merging, with the real embedding model (similarity is what is tested)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.embedding import create_embedder
from core.errors import InvalidArgumentError
from memory.consolidation import MAX_AGE_DAYS, ConsolidationPolicy, fact_topic, retention_cutoff
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


def _write_pepper_sessions(engine: MemoryEngine) -> None:
    """Three sessions, each with a turn about the cat Pepper (a recurring topic) and a one-off, consolidated."""
    pepper_news = ["My cat Pepper caught a mouse", "Bought Pepper a scratching post", "We think Pepper opens doors"]
    one_offs = ["Watched a documentary about volcanoes", "Baked sourdough bread twice", "Fixed the bicycle chain"]
    for i, (a, b) in enumerate(zip(pepper_news, one_offs, strict=True)):
        engine.write(NS, f"s{i}", [msg(f"p{i}", a, days_ago=10 - i), msg(f"q{i}", b, days_ago=10 - i)])
    engine.flush()
    engine.consolidate(NS)


def test_facts_whose_topic_recurs_across_sessions_are_promoted(store_factory: Callable[[], MemoryStore]) -> None:
    engine = make_engine(store_factory(), {"promote_min_sessions": 3, "promote_weight": 1.5})
    _write_pepper_sessions(engine)
    index = engine.index(NS)
    facts = [u for k in index.unit_keys() if (u := index.unit(k)) is not None and u.granularity == Granularity.FACT]
    pepper = [u for u in facts if fact_topic(u) == "pepper"]
    assert len({u.session_id for u in pepper}) == 3 and all(u.weight == pytest.approx(1.5) for u in pepper)
    assert any(u.weight == pytest.approx(1.0) for u in facts if fact_topic(u) != "pepper")


def test_fact_topic_reads_the_phrase_line() -> None:
    unit = MemoryUnit("s/fact/x", Granularity.FACT, "Pepper [8 May 2023]:\nalice: my cat Pepper", ("m1",), "s")
    assert fact_topic(unit) == "pepper"


def test_consolidation_policy_reads_its_section_and_refuses_a_non_mapping() -> None:
    policy = ConsolidationPolicy.from_mapping({"consolidation": {"max_age_days": 7, "max_messages": 2.0, "unknown": 1}})
    assert policy.max_age_days == 7.0 and policy.max_messages == 2 and isinstance(policy.max_messages, int)
    with pytest.raises(ValueError, match="consolidation"):
        ConsolidationPolicy.from_mapping({"consolidation": [1, 2]})


def test_consolidation_policy_names_every_value_a_pass_could_not_use() -> None:
    bad = {
        "max_age_days": float("nan"),
        "max_messages": True,  # YAML "yes": kept one message
        "batch": "lots",
        "neighbours": 0,
        "promote_min_sessions": 2.9,
        "duplicate_cosine": 7,
        "duplicate_weight": -1,
        "promote_weight": 0,
    }
    problems = dict(ConsolidationPolicy.problems({"consolidation": bad}))
    assert set(problems) == set(bad)
    assert "True" in problems["max_messages"] and "whole number" in problems["max_messages"]
    with pytest.raises(InvalidArgumentError) as err:
        ConsolidationPolicy.from_mapping({"consolidation": bad})
    assert {v.field for v in err.value.violations} == {f"consolidation.{name}" for name in bad}
    assert ConsolidationPolicy.problems({"consolidation": [1]}) == [("", "must be a mapping, got [1]")]
    good = {"max_age_days": 1_000_000, "max_messages": 0, "duplicate_cosine": 0, "duplicate_weight": 1, "batch": 1}
    assert ConsolidationPolicy.problems({"consolidation": good}) == []
    assert ConsolidationPolicy.problems({"consolidation": {"max_age_days": MAX_AGE_DAYS * 2}})


def test_an_age_limit_reaching_before_year_one_keeps_every_message(store_factory: Callable[[], MemoryStore]) -> None:
    # now - 1,000,000 days is before year 1: the cutoff overflowed and every Consolidate failed (INTERNAL).
    engine = MemoryEngine(
        store_factory(), create_embedder("hashing"), policy=lambda _ns: {"consolidation": {"max_age_days": 1_000_000}},
        background=False,
    )
    engine.write(NS, "s", [msg("ancient", "the first note", days_ago=700_000), msg("new", "a new note", days_ago=1)])
    engine.flush()
    assert engine.consolidate(NS).messages_forgotten == 0
    assert engine.stats(NS).messages == 2
    assert retention_cutoff(ConsolidationPolicy(max_age_days=1_000_000)) is None
    engine.close()


def _hashing_engine(store: MemoryStore, consolidation: dict[str, Any]) -> MemoryEngine:
    return MemoryEngine(
        store, create_embedder("hashing"), policy=lambda _ns: {"consolidation": consolidation}, background=False
    )


def test_a_background_pass_reads_only_the_messages_retention_forgets(
    store_factory: Callable[[], MemoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_factory()
    engine = _hashing_engine(store, {"max_messages": 1_000_000, "max_age_days": 365, "batch": 10})
    for s in range(4):
        engine.write(NS, f"s{s}", [msg(f"m{s}-{i}", f"note {i} of session {s}", days_ago=1) for i in range(50)])
    engine.flush()
    listed: list[int] = []
    asked: list[int] = []
    list_messages, candidates = store.list_messages, store.retention_candidates

    def counting_list(*args: Any, **kwargs: Any) -> Any:
        page = list_messages(*args, **kwargs)
        listed.append(len(page))
        return page

    def counting_candidates(*args: Any, **kwargs: Any) -> Any:
        asked.append(1)
        return candidates(*args, **kwargs)

    monkeypatch.setattr(store, "list_messages", counting_list)
    monkeypatch.setattr(store, "retention_candidates", counting_candidates)

    assert engine._consolidate_units(NS)[0] == 0  # the worker's pass: nothing to forget
    # Every message of the namespace was listed on every pass before (200 rows here, 100k in production).
    assert sum(listed) == 0 and len(asked) == 1
    engine._consolidate_units(NS)  # the next pass, seconds later: retention waits for its own interval
    assert len(asked) == 1
    engine.close()


def test_retention_deletes_one_session_at_a_time(store_factory: Callable[[], MemoryStore]) -> None:
    store = store_factory()
    engine = _hashing_engine(store, {"max_age_days": 30})
    for s in range(3):
        engine.write(
            NS,
            f"s{s}",
            [msg(f"old{s}-{i}", f"old remark {i} in {s}", days_ago=90) for i in range(3)]
            + [msg(f"new{s}", f"recent remark in {s}", days_ago=1)],
        )
    engine.flush()
    committed: list[set[str]] = []
    apply = store.apply

    def recording_apply(namespace: str, change: Change) -> int:
        generation = apply(namespace, change)
        if change.delete_messages:
            committed.append({mid.split("-")[0] for mid in change.delete_messages})
        return generation

    store.apply = recording_apply  # type: ignore[method-assign]
    forgotten, _ = engine._consolidate_units(NS)
    # One Delete (one commit, its sessions re-derived under the namespace lock) per session: a Write to
    # another session waits for one session's re-derivation at most, not for all of them.
    assert forgotten == 9
    assert sorted(committed, key=sorted) == [{"old0"}, {"old1"}, {"old2"}]
    assert {m.id for m in engine.list_messages(NS)[0]} == {"new0", "new1", "new2"}
    engine.close()


def test_a_background_pass_revokes_a_promotion_after_a_delete(store_factory: Callable[[], MemoryStore]) -> None:
    engine = _hashing_engine(store_factory(), {"promote_min_sessions": 3, "promote_weight": 1.5})
    _write_pepper_sessions(engine)

    def pepper() -> dict[str, float]:
        index = engine.index(NS)
        return {
            u.session_id: u.weight
            for k in index.unit_keys()
            if (u := index.unit(k)) is not None and u.granularity == Granularity.FACT and fact_topic(u) == "pepper"
        }

    assert pepper() == {"s0": 1.5, "s1": 1.5, "s2": 1.5}
    engine.delete(NS, session_id="s2")
    engine._consolidate_units(NS)  # a background pass (no freshly derived facts)
    assert pepper() == {"s0": 1.0, "s1": 1.0}  # two sessions are below promote_min_sessions
    engine.close()


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
