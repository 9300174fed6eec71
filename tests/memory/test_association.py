"""GMM association: clusters, posterior-entropy multi-links, persisted edges, warm refits, engine wiring."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from core.embedding import create_embedder
from memory.association import AssociationConfig, AssociationManager
from memory.engine import MemoryEngine
from memory.index import NamespaceIndex
from memory.model import Granularity, MemoryMessage, MemoryUnit, SearchQuery
from memory.store import Change, InMemoryStore, MemoryStore, StoredUnit, unit_key

NS = "acme/chat"
DIM = 64


def topic_vectors(n_per: int, n_topics: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_topics, DIM)) * 3
    labels = np.repeat(np.arange(n_topics), n_per)
    x = centres[labels] + rng.standard_normal((len(labels), DIM)) * 0.5
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels, centres


def stored(i: int, vector: np.ndarray) -> StoredUnit:
    unit = MemoryUnit(f"s/turn/{i}", Granularity.TURN, f"unit {i}", (f"m{i}",), "s")
    return StoredUnit(unit, unit_key(NS, unit.id), vector, "test")


def build(store: MemoryStore, vectors: np.ndarray) -> tuple[NamespaceIndex, list[StoredUnit]]:
    units = [stored(i, v) for i, v in enumerate(vectors)]
    store.apply(NS, Change(insert_units=units))
    index = NamespaceIndex(DIM)
    index.apply((), units)
    return index, units


CONFIG = AssociationConfig(min_units=30, units_per_cluster=40, pca_dims=8, links_per_unit=4)


def test_units_link_inside_their_topic_and_edges_are_persisted() -> None:
    store = InMemoryStore()
    vectors, labels, _ = topic_vectors(40)
    index, units = build(store, vectors)
    manager = AssociationManager(store, CONFIG)
    model = manager.refit(NS, index)
    assert model is not None and manager.clusters(NS) == 3
    assert manager.due(NS, index)  # the units wait to be linked in bounded passes
    assert manager.backlog(NS, index) == len(units)  # what Stats reports as pending_links
    passes = 0
    while manager.due(NS, index):
        assert manager.step(NS, index) == "link"
        passes += 1
        assert manager.backlog(NS, index) == max(0, len(units) - passes * CONFIG.link_batch)
    assert passes == -(-len(units) // CONFIG.link_batch)  # ceil: each pass links at most link_batch units
    label_of = {u.key: int(lbl) for u, lbl in zip(units, labels, strict=True)}
    neighbours = index.neighbors([u.key for u in units])
    assert len(neighbours) == len(units)  # every unit got linked
    same = [label_of[k] == label_of[o] for k, links in neighbours.items() for o, _ in links]
    assert np.mean(same) > 0.95
    persisted = store.load_edges(NS)
    assert persisted and index.edge_count() == len(persisted)
    # a fresh index rebuilt from the store sees the same edges
    fresh = NamespaceIndex(DIM)
    fresh.apply((), units)
    fresh.set_edges(store.load_edges(NS))
    assert fresh.neighbors([units[0].key]) == index.neighbors([units[0].key])


def test_a_unit_between_topics_links_into_both() -> None:
    store = InMemoryStore()
    vectors, labels, _ = topic_vectors(40)
    index, units = build(store, vectors)
    manager = AssociationManager(store, CONFIG)
    manager.refit(NS, index)
    manager.link_backlog(NS, index, limit=10_000)
    label_of = {u.key: int(lbl) for u, lbl in zip(units, labels, strict=True)}
    # midway between the first two topics: the posterior is split, its entropy high
    between = vectors[labels == 0].mean(axis=0) + vectors[labels == 1].mean(axis=0)
    between = (between / np.linalg.norm(between)).astype(np.float32)
    clear = vectors[5] + 0.0
    new = [stored(1000, between), stored(1001, clear)]
    store.apply(NS, Change(insert_units=new))
    index.apply((), new)
    manager.link(NS, index, [u.key for u in new])
    topics_between = {label_of[o] for o, _ in index.neighbors([new[0].key])[new[0].key]}
    topics_clear = {label_of.get(o) for o, _ in index.neighbors([new[1].key])[new[1].key]}
    assert topics_between == {0, 1}
    assert topics_clear == {0}


def test_refit_is_warm_while_the_cluster_count_holds_and_bounded_by_the_sample_cap() -> None:
    store = InMemoryStore()
    vectors, _, _ = topic_vectors(60, seed=1)
    config = AssociationConfig(min_units=30, units_per_cluster=100, max_clusters=2, pca_dims=8, sample_cap=50)
    index, _ = build(store, vectors[:120])
    manager = AssociationManager(store, config)
    first = manager.refit(NS, index)
    manager.link_backlog(NS, index, limit=10_000)
    assert first is not None and not manager.due(NS, index)
    more = [stored(500 + i, v) for i, v in enumerate(vectors[120:])]
    index.apply((), more)
    assert manager.due(NS, index)  # grew by 50% > refit_growth
    second = manager.refit(NS, index)
    assert second is not None and second.gmm is first.gmm  # warm start reuses the fitted mixture
    assert second.gmm.warm_start  # type: ignore[attr-defined]


def test_too_small_a_namespace_is_not_clustered() -> None:
    store = InMemoryStore()
    vectors, _, _ = topic_vectors(5)
    index, _ = build(store, vectors)
    manager = AssociationManager(store, CONFIG)
    assert manager.refit(NS, index) is None and not manager.due(NS, index)
    assert manager.link(NS, index, index.unit_keys()) == 0


def _write_three_topics(engine: MemoryEngine) -> None:
    """Six sessions of eight turns over three topics: enough units for the mixture to fit and link."""
    topics = ["cats kittens whiskers purring", "jazz saxophone trumpet swing", "rust compiler borrow checker"]
    for s in range(6):
        engine.write(
            NS,
            f"s{s}",
            [MemoryMessage(f"m{s}-{i}", f"s{s}", "a", f"{topics[(s + i) % 3]} note {i} {s}") for i in range(8)],
        )


@pytest.mark.parametrize("background", [False, True])
def test_engine_consolidation_clusters_and_links_without_blocking_writes(background: bool) -> None:
    store = InMemoryStore()
    engine = MemoryEngine(
        store,
        create_embedder("hashing"),
        association=AssociationConfig(min_units=40, units_per_cluster=30),
        background=background,
    )
    _write_three_topics(engine)
    if background:
        assert engine.flush(timeout=120)
        stats = engine.stats(NS)
    else:
        report = engine.consolidate(NS)
        assert report.sessions_derived == 6 and report.refit
        stats = engine.stats(NS)
    assert stats.clusters >= 2 and stats.edges > 0 and stats.pending_sessions == 0
    assert engine.index(NS).edge_count() == stats.edges
    engine.close()


class _BlockedInTheWorker:
    """An embedder that holds the background worker inside its derivation's model pass until released."""

    def __init__(self) -> None:
        self.inner = create_embedder("hashing")
        self.entered = threading.Event()
        self.release = threading.Event()

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def name(self) -> str:
        return self.inner.name

    def embed(self, texts: list[str]) -> np.ndarray:
        if threading.current_thread().name == "memory-consolidation":
            self.entered.set()
            assert self.release.wait(60)
        return self.inner.embed(texts)


def test_writes_and_searches_go_on_while_consolidation_is_stuck_mid_derivation(store_factory) -> None:  # type: ignore[no-untyped-def]
    embedder = _BlockedInTheWorker()
    # Derived units embedded by the model (not composed), so derivation makes a model pass to hold it in.
    engine = MemoryEngine(store_factory(), embedder, background=True,
                          policy=lambda _ns: {"units": {"composed_vectors": False}})
    engine.load()
    engine.write(NS, "s1", [MemoryMessage(f"m{i}", "s1", "a", f"jazz saxophone note {i}") for i in range(6)])
    assert embedder.entered.wait(30)  # the worker is deriving s1, stuck in its model pass
    done: list[str] = []

    def more() -> None:
        engine.write(NS, "s1", [MemoryMessage("m6", "s1", "b", "the trumpet solo was the best part")])
        engine.write(NS, "s2", [MemoryMessage("n0", "s2", "c", "my cat Smokey sleeps on the piano")])
        done.extend(i for h in engine.search(NS, SearchQuery("Smokey piano")).hits for i in h.unit.message_ids)

    writer = threading.Thread(target=more)
    writer.start()
    writer.join(30)
    # Both Writes were acknowledged and read back while the derivation was still held.
    assert not writer.is_alive() and "n0" in done and not embedder.release.is_set()
    embedder.release.set()
    assert engine.flush(timeout=60)
    stats = engine.stats(NS)
    assert stats.messages == 8 and stats.pending_sessions == 0 and "exchange" in stats.units
    engine.close()


def test_delete_takes_the_association_edges_of_every_removed_unit(store_factory) -> None:  # type: ignore[no-untyped-def]
    engine = MemoryEngine(
        store_factory(),
        create_embedder("hashing"),
        association=AssociationConfig(min_units=40, units_per_cluster=30),
        background=False,
    )
    _write_three_topics(engine)
    engine.consolidate(NS)
    store = engine.store

    def edge_keys() -> set[int]:
        return {k for src, dst, _ in store.load_edges(NS) for k in (src, dst)}

    gone = {s.key for s in store.session_units(NS, ["s0"])} | {s.key for s in store.units_covering(NS, ["m1-3"])}
    assert gone & edge_keys()  # the units about to go are linked
    engine.delete(NS, session_id="s0")
    engine.delete(NS, message_ids=["m1-3"])
    stored = {s.key for batch in store.iter_units(NS) for s in batch}
    assert edge_keys() <= stored  # no edge left to a deleted unit
    assert store.counts(NS).edges == engine.stats(NS).edges == engine.index(NS).edge_count() > 0
    engine.close()


def test_backlog_passes_reuse_candidates_and_follow_units_added_and_removed_meanwhile() -> None:
    store = InMemoryStore()
    vectors, _, _ = topic_vectors(40)
    index, units = build(store, vectors[:100])
    manager = AssociationManager(store, AssociationConfig(**{**CONFIG.__dict__, "link_batch": 10}))
    model = manager.refit(NS, index)
    assert model is not None
    manager.step(NS, index)
    cached = manager.candidate_cache().entries
    assert cached and manager.candidate_cache().nbytes > 0  # kept for the next passes
    # Meanwhile one unit goes and new ones come (as Delete and Write do between passes).
    gone = units[50]
    index.apply([gone.key], ())
    late = [stored(1000 + i, v) for i, v in enumerate(vectors[100:])]
    store.apply(NS, Change(insert_units=late))
    index.apply((), late)
    manager.link(NS, index, [u.key for u in late])  # what the engine does for freshly derived units
    while manager.step(NS, index) != "idle":
        pass
    neighbours = index.neighbors([u.key for u in units + late if u.key != gone.key])
    assert len(neighbours) == len(units) + len(late) - 1  # every live unit linked, the late ones too
    assert all(o != gone.key for links in neighbours.values() for o, _ in links)
    # Kept once the backlog is done too: the Writes that follow link against them.
    assert manager.candidate_cache().entries >= cached


def _write_batches(vectors: np.ndarray, start: int, size: int) -> list[list[StoredUnit]]:
    return [[stored(start + i + j, vectors[i + j]) for j in range(min(size, len(vectors) - i))]
            for i in range(0, len(vectors), size)]


def test_cached_candidates_take_new_members_as_a_rebuild_would() -> None:
    """Linking Writes against the kept candidates (appended to as units are linked) gives the same edges as
    rebuilding every cluster's candidates from its members on every call (a zero cache budget)."""
    vectors, _, _ = topic_vectors(60)
    edges = []
    for budget in (64 * 1024 * 1024, 0):
        store = InMemoryStore()
        index, _ = build(store, vectors[:90])
        manager = AssociationManager(store, CONFIG, candidate_cache_bytes=budget)
        manager.refit(NS, index)
        while manager.step(NS, index) != "idle":
            pass
        for batch in _write_batches(vectors[90:], 1000, 5):
            store.apply(NS, Change(insert_units=batch))
            index.apply((), batch)
            manager.link(NS, index, [u.key for u in batch])
        edges.append(sorted(store.load_edges(NS)))
        cache = manager.candidate_cache()
        assert (cache.entries > 0) == (budget > 0)
        assert cache.nbytes <= cache.budget_bytes == budget
    assert edges[0] == edges[1]
    # The later Writes' units linked to each other, not only to the fitted ones.
    late = {unit_key(NS, f"s/turn/{i}") for i in range(1000, 1090)}
    assert any(a in late and b in late for a, b, _ in edges[0])


def test_candidate_cache_stays_within_its_budget_and_samples_beyond_the_cap() -> None:
    vectors, _, _ = topic_vectors(100)
    store = InMemoryStore()
    index, _ = build(store, vectors[:150])
    config = AssociationConfig(**{**CONFIG.__dict__, "candidate_cap": 20})
    one_cluster = 20 * DIM * 4 + 20 * 8
    manager = AssociationManager(store, config, candidate_cache_bytes=2 * one_cluster)
    manager.refit(NS, index)
    while manager.step(NS, index) != "idle":
        assert manager.candidate_cache().nbytes <= 2 * one_cluster
    assert 0 < manager.candidate_cache().entries <= 2
    for batch in _write_batches(vectors[150:], 2000, 10):
        store.apply(NS, Change(insert_units=batch))
        index.apply((), batch)
        manager.link(NS, index, [u.key for u in batch])
        cache = manager.candidate_cache()
        assert cache.nbytes <= 2 * one_cluster
        for sample in cache.samples.values():
            assert len(sample) == len(set(sample)) == 20  # a full cluster keeps a sample of cap distinct members
    # Later members made it into the samples (reservoir replacement), and a refit drops the namespace's.
    sampled = {k for sample in manager.candidate_cache().samples.values() for k in sample}
    assert sampled & {unit_key(NS, f"s/turn/{i}") for i in range(2000, 2150)}
    manager.refit(NS, index)
    assert manager.candidate_cache().entries == 0 and manager.candidate_cache().nbytes == 0


def test_vectorised_cluster_choice_matches_the_per_unit_rule() -> None:
    """Refits assign every unit with ``_cluster_mask``; links use ``_choose_clusters``: they must agree."""
    manager = AssociationManager(InMemoryStore(), AssociationConfig())
    rng = np.random.default_rng(3)
    rows = [rng.dirichlet(np.full(8, alpha)) for alpha in (0.05, 0.3, 1.0, 5.0) for _ in range(250)]
    # Edge cases: one-hot, an exact two-way tie, a three-way split under min_posterior, a tie at the cut.
    rows += [np.eye(8)[2], np.r_[0.5, 0.5, np.zeros(6)], np.full(8, 1 / 8), np.r_[0.15, 0.15, 0.7, np.zeros(5)]]
    post = np.vstack(rows)
    mask = manager._cluster_mask(post)
    multi = 0
    for row, expected in zip(mask, (manager._choose_clusters(p) for p in post), strict=True):
        assert set(np.flatnonzero(row).tolist()) == set(expected)
        multi += len(expected) > 1
    assert 0 < multi < len(post)  # both branches of the rule were exercised


def test_row_entropies_match_entropy_row_by_row() -> None:
    from core.entropy import entropy, row_entropies

    rng = np.random.default_rng(0)
    rows = np.vstack([rng.dirichlet(np.ones(5)) for _ in range(20)] + [np.zeros(5), np.r_[2.0, 0, 0, 0, 2.0]])
    np.testing.assert_allclose(row_entropies(rows), [entropy(r) for r in rows], atol=1e-12)
    with pytest.raises(ValueError):
        row_entropies(np.ones(3))


# -- background robustness (failures, Deletes and refits landing mid-pass) ---------------------------------------


class _FlakyEdges(InMemoryStore):
    """A store whose first non-empty ``upsert_edges`` raises, as a database hiccup would; records the source
    keys of the edges of that failed call."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_sources: set[int] = set()

    def upsert_edges(self, namespace: str, edges):  # type: ignore[no-untyped-def]
        if not self.failed_sources and edges:
            self.failed_sources = {int(s) for s, _, _ in edges} | {int(d) for _, d, _ in edges}
            raise OSError("database is locked")
        return super().upsert_edges(namespace, edges)


def test_a_batch_whose_edges_failed_to_commit_is_linked_by_the_next_pass() -> None:
    store = _FlakyEdges()
    vectors, _, _ = topic_vectors(40)
    index, units = build(store, vectors)
    manager = AssociationManager(store, CONFIG)
    manager.refit(NS, index)
    with pytest.raises(OSError):
        manager.step(NS, index)
    # Counted as linked before the commit, the batch stayed linked with no edge and the backlog shrank anyway.
    assert manager.backlog(NS, index) == len(units)
    while manager.step(NS, index) != "idle":
        pass
    assert manager.backlog(NS, index) == 0
    assert len(index.neighbors([u.key for u in units])) == len(units)


def _write_sessions(engine: MemoryEngine, sessions: int = 10, turns: int = 30) -> None:
    topics = ["cats kittens whiskers purring", "jazz saxophone trumpet swing", "rust compiler borrow checker",
              "tomato basil garden soil"]
    for s in range(sessions):
        engine.write(
            NS,
            f"s{s}",
            [MemoryMessage(f"m{s}-{i}", f"s{s}", "a", f"{topics[(s + i) % 4]} note {i} {s} {i * s}")
             for i in range(turns)],
        )


def test_one_failed_background_step_does_not_stop_the_backlog() -> None:
    store = _FlakyEdges()
    engine = MemoryEngine(store, create_embedder("hashing"), background=True)
    _write_sessions(engine)
    # flush() returns once the worker has no namespace queued: before, the failed step's namespace was never
    # queued again, and its backlog waited for the next Write.
    assert engine.flush(timeout=120)
    stats = engine.stats(NS)
    assert store.failed_sources and stats.clusters >= 2
    assert stats.pending_links == 0
    linked = engine.index(NS).linked_keys()
    assert store.failed_sources & set(engine.index(NS).unit_keys()) <= linked
    engine.close()


def test_a_consolidation_policy_that_fails_every_pass_does_not_stop_linking() -> None:
    # Refused at start-up, but a policy can still go bad at run time; linking is separate work.
    engine = MemoryEngine(
        InMemoryStore(), create_embedder("hashing"), policy=lambda _ns: {"consolidation": {"max_messages": "lots"}},
        background=True,
    )
    _write_sessions(engine)
    assert engine.flush(timeout=120)
    stats = engine.stats(NS)
    assert stats.clusters >= 2 and stats.edges > 0 and stats.pending_links == 0
    engine.close()


def test_units_deleted_after_linking_leave_the_backlog_count() -> None:
    engine = MemoryEngine(InMemoryStore(), create_embedder("hashing"), background=False)
    _write_sessions(engine)
    engine.flush()
    index = engine.index(NS)
    assert engine.association.refit(NS, index) is not None
    for _ in range(5):
        engine.association.link_backlog(NS, index)  # 500 of 660 units linked, sessions s0.. first

    def unlinked() -> int:  # units no pass has linked yet (a linked unit may have no edge left after a Delete)
        linked = engine.association._models[NS].linked
        return sum(1 for k in engine.index(NS).unit_keys() if k not in linked)

    for s in ("s0", "s1", "s2", "s3"):
        engine.delete(NS, session_id=s)
    assert unlinked() > 0
    # The deleted units were still counted as linked: pending_links read 0 and the worker stopped.
    assert engine.stats(NS).pending_links == unlinked()
    index = engine.index(NS)
    while engine.association.step(NS, index) != "idle":
        pass
    assert unlinked() == 0 and engine.stats(NS).pending_links == 0


def test_a_delete_of_everything_during_a_refit_leaves_no_model_of_the_dropped_data() -> None:
    engine = MemoryEngine(InMemoryStore(), create_embedder("hashing"), background=False)
    _write_sessions(engine)
    engine.flush()
    pause = engine.association._pause
    fired: list[bool] = []

    def delete_all_once() -> None:
        if not fired:
            fired.append(True)
            engine.delete(NS, everything=True)  # a client's Delete(all) lands while Consolidate refits
        pause()

    engine.association._pause = delete_all_once
    engine.consolidate(NS)
    engine.association._pause = pause
    assert fired
    stats = engine.stats(NS)
    assert (stats.messages, stats.clusters, stats.pending_links, stats.edges) == (0, 0, 0, 0)
    # The same conversation again: same unit keys, which the stale model counted as linked already.
    _write_sessions(engine)
    engine.flush()
    engine.consolidate(NS)
    index = engine.index(NS)
    assert engine.stats(NS).pending_links == 0
    assert all(k in index.linked_keys() for k in index.unit_keys())
    engine.close()


def test_a_refit_during_linking_caches_no_candidates_under_the_new_cluster_numbers() -> None:
    store = InMemoryStore()
    vectors, _, _ = topic_vectors(60, n_topics=6)
    first = [stored(i, v) for i, v in enumerate(vectors[:180])]  # topics 0-2
    store.apply(NS, Change(insert_units=first))
    index = NamespaceIndex(DIM)
    index.apply((), first)
    armed: list[bool] = []
    manager = AssociationManager(store, CONFIG, pause=lambda: refit_once())

    def refit_once() -> None:
        if armed:
            armed.clear()
            manager.refit(NS, index)  # the worker's (or Consolidate's) refit lands mid-link

    manager.refit(NS, index)
    while manager.link_backlog(NS, index):
        pass
    second = [stored(1000 + i, v) for i, v in enumerate(vectors[180:])]  # topics 3-5
    store.apply(NS, Change(insert_units=second))
    index.apply((), second)
    manager._candidates.drop(NS)  # cold: link builds the candidates it needs (as after any refit)
    armed.append(True)
    manager.link(NS, index, [s.key for s in second[:8]])  # a derived session's units
    assert not armed  # the refit ran between building a cluster's candidates and caching them
    model = manager._models[NS]
    for (_, cluster), keys in manager.candidate_cache().samples.items():
        assert set(keys) <= set(model.members.get(cluster, ())), cluster


def test_consolidate_links_the_whole_backlog() -> None:
    engine = MemoryEngine(InMemoryStore(), create_embedder("hashing"), background=False)
    _write_sessions(engine)  # 660 units: more than one background pass (link_batch 100) links
    report = engine.consolidate(NS)
    assert report.refit and engine.stats(NS).pending_links == 0
    engine.close()


@pytest.mark.parametrize("n", [1, 2])
def test_too_few_units_to_project_are_not_clustered_whatever_min_units(n: int) -> None:
    store = InMemoryStore()
    vectors, _, _ = topic_vectors(1, n_topics=2)
    index, _ = build(store, vectors[:n])
    manager = AssociationManager(store, AssociationConfig(min_units=1))
    # One unit left PCA with no component to fit, and the step raised on every background pass.
    assert manager.step(NS, index) == ("idle" if n == 1 else "refit")
    assert manager.due(NS, index) == (n == 2)  # nothing left to do with one unit: the worker does not spin


def test_other_replicas_receive_association_edges_through_the_change_feed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typing import Any

    from memory.store import SqlMemoryStore
    from tests.memory.conftest import sqlite_engine

    db = sqlite_engine(tmp_path / "memory.db")
    feed: list[tuple[str, dict[str, Any]]] = []
    embedder = create_embedder("hashing")
    linker = MemoryEngine(
        SqlMemoryStore(db, publisher=lambda _conn, ns, payload: feed.append((ns, payload))), embedder, background=False
    )
    replica = MemoryEngine(SqlMemoryStore(db), embedder, background=False)
    replica.index(NS)  # loaded before anything was written: it learns everything from the feed
    _write_sessions(linker, sessions=6, turns=12)
    linker.flush()
    linker.consolidate(NS)
    for ns, payload in feed:  # what the runtime's FeedTailer does with each row
        replica.apply_remote_change(ns, payload)
    edges = linker.index(NS).edge_count()
    assert edges > 0 and replica.index(NS).size() == linker.index(NS).size()
    assert replica.index(NS).edge_count() == edges
    unit = linker.index(NS).unit_keys()[0]
    assert replica.index(NS).neighbors([unit]) == linker.index(NS).neighbors([unit])
    linker.close()
    replica.close()
    db.dispose()
