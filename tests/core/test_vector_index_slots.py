"""Vector index defects found in review: identical vectors after the flat -> HNSW switch, snapshots FAISS cannot
read, a GPU host's snapshot on a CPU host, buffers after compaction, an id repeated within one ``add``.

The shared battery of every index type is ``tests/memory/test_vector_index.py``; these tests are about the slot
bookkeeping of ``TombstoneFaissIndex`` (one slot per distinct vector) and the restores.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from core.vector_index import (
    AutoVectorIndex,
    FaissVectorIndex,
    NumpyVectorIndex,
    TombstoneFaissIndex,
    VectorIndex,
    dumped_items,
)

DIM = 32


def unit_vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def chat_like(seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, vectors, distinct vectors): 600 distinct units and 600 more that are one of three short texts
    ("ok", "haha", "thanks": identical vectors), in an interleaved arrival order."""
    rng = np.random.default_rng(seed)
    distinct = unit_vectors(600, seed)
    few = unit_vectors(3, seed + 1)
    vectors = np.concatenate([distinct, few[rng.integers(0, 3, 600)]])
    order = rng.permutation(len(vectors))
    return np.arange(len(vectors), dtype=np.int64)[order], vectors[order], distinct


def test_every_unit_finds_itself_after_the_hnsw_switch_among_many_identical_vectors() -> None:
    # Before one slot per distinct vector, 276 of these 600 units were missing from their own top-10.
    ids, vectors, distinct = chat_like()
    index = AutoVectorIndex(DIM, hnsw_threshold=100, use_gpu=False)
    for chunk in np.array_split(np.arange(len(ids)), 20):
        index.add(ids[chunk], vectors[chunk])
    assert index.backend == "hnsw" and len(index) == 1200
    scores, got = index.search(distinct, 10)
    assert got[:, 0].tolist() == list(range(600))  # distinct units have ids 0..599
    np.testing.assert_allclose(scores[:, 0], 1.0, rtol=1e-5)


def test_identical_vectors_share_one_slot_and_a_search_lists_every_id_of_it() -> None:
    index = TombstoneFaissIndex(DIM, "hnsw")
    others = unit_vectors(50, seed=1)
    ok = unit_vectors(1, seed=2)
    index.add(np.arange(50, dtype=np.int64), others)
    index.add(np.arange(100, 110, dtype=np.int64), np.repeat(ok, 10, axis=0))
    index.add(np.array([110], dtype=np.int64), ok)  # a later add joins the same slot
    assert len(index) == 61 and index.slots == 51
    scores, got = index.search(ok, 20)
    assert set(got[0, :11].tolist()) == set(range(100, 111))  # they tie: all of them first
    np.testing.assert_allclose(scores[0, :11], 1.0, rtol=1e-5)
    assert got[0, 11] in range(50)
    # k smaller than the slot: k of its ids, no others
    _, few = index.search(ok, 3)
    assert set(few[0].tolist()) <= set(range(100, 111)) and len(set(few[0].tolist())) == 3


def test_an_id_leaves_its_shared_slot_on_remove_or_replace_and_the_slot_dies_with_its_last_id() -> None:
    index = TombstoneFaissIndex(DIM, "hnsw", compact_ratio=0.9)
    ok, other = unit_vectors(2, seed=3)
    index.add(np.arange(5, dtype=np.int64), np.repeat(ok[None], 5, axis=0))
    index.add(np.array([5], dtype=np.int64), other[None])
    assert index.remove(np.array([0, 1], dtype=np.int64)) == 2
    assert index.tombstones == 0  # ids 2..4 still live in the slot
    index.add(np.array([2], dtype=np.int64), other[None])  # replaced: now shares the other slot
    index.add(np.array([3], dtype=np.int64), ok[None])  # the same vector again: nothing changes
    assert index.tombstones == 0 and len(index) == 4
    _, got = index.search(ok[None], 4)
    assert sorted(got[0, :2].tolist()) == [3, 4] and sorted(got[0, 2:].tolist()) == [2, 5]
    index.remove(np.array([3, 4], dtype=np.int64))
    assert index.tombstones == 1 and len(index) == 2
    _, got = index.search(ok[None], 4)
    assert sorted(got[0, :2].tolist()) == [2, 5] and got[0, 2:].tolist() == [-1, -1]
    # a new id with the dead slot's vector opens a new slot (the dead one is never revived)
    index.add(np.array([9], dtype=np.int64), ok[None])
    assert index.search(ok[None], 1)[1][0, 0] == 9


def test_shared_slots_survive_compaction() -> None:
    index = TombstoneFaissIndex(DIM, "hnsw", compact_ratio=0.2)
    distinct = unit_vectors(100, seed=4)
    ok = unit_vectors(1, seed=5)
    index.add(np.arange(100, dtype=np.int64), distinct)
    index.add(np.arange(1000, 1040, dtype=np.int64), np.repeat(ok, 40, axis=0))
    index.remove(np.arange(60, dtype=np.int64))  # 60 of 101 slots dead: compacted
    assert index.tombstones == 0 and index.slots == 41 and len(index) == 80
    _, got = index.search(ok, 40)
    assert set(got[0].tolist()) == set(range(1000, 1040))
    _, got = index.search(distinct[60:], 1)
    assert got[:, 0].tolist() == list(range(60, 100))


@pytest.mark.parametrize("kind", ["hnsw", "flat"])
def test_shared_slots_survive_dump_and_restore(kind: str) -> None:
    index = TombstoneFaissIndex(DIM, kind)
    distinct = unit_vectors(30, seed=6)
    ok = unit_vectors(1, seed=7)
    index.add(np.arange(30, dtype=np.int64), distinct)
    index.add(np.arange(100, 108, dtype=np.int64), np.repeat(ok, 8, axis=0))
    index.remove(np.array([0, 100], dtype=np.int64))
    state = index.dump()
    ids, vectors = dumped_items(state)
    assert sorted(ids.tolist()) == list(range(1, 30)) + list(range(101, 108))
    np.testing.assert_array_equal(vectors[ids >= 100], np.repeat(ok, 7, axis=0))

    fresh = TombstoneFaissIndex(DIM, kind)
    fresh.restore(state)
    assert len(fresh) == 36 and fresh.slots == index.slots
    _, got = fresh.search(ok, 7)
    assert set(got[0].tolist()) == set(range(101, 108))
    fresh.add(np.array([200], dtype=np.int64), ok)  # still joins the slot after the restore
    assert fresh.slots == index.slots and set(fresh.search(ok, 8)[1][0].tolist()) == {*range(101, 108), 200}


def test_a_snapshot_holding_identical_vectors_in_separate_slots_is_regrouped() -> None:
    """A dump written before slots were shared: restoring it merges the copies (its graph is rebuilt)."""
    ids, vectors, distinct = chat_like(seed=8)
    live = vectors  # every slot live, one per id, as the old index kept them
    legacy = TombstoneFaissIndex(DIM, "hnsw")
    legacy_index = legacy._new_index()
    legacy_index.add(live)
    import faiss

    state = {
        "kind": np.array("tombstone-hnsw"),
        "slot_ids": ids,
        "vectors": live,
        "faiss": faiss.serialize_index(legacy_index),
    }
    restored = TombstoneFaissIndex(DIM, "hnsw")
    restored.restore(state)
    assert len(restored) == 1200 and restored.slots == 603
    _, got = restored.search(distinct, 10)
    assert got[:, 0].tolist() == list(range(600))


FACTORIES: dict[str, Callable[[], VectorIndex]] = {
    "numpy": lambda: NumpyVectorIndex(4),
    "faiss-flat": lambda: FaissVectorIndex(4),
    "tombstone-flat": lambda: TombstoneFaissIndex(4, "flat"),
    "tombstone-hnsw": lambda: TombstoneFaissIndex(4, "hnsw"),
    "auto": lambda: AutoVectorIndex(4, use_gpu=False),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_an_id_repeated_within_one_add_keeps_only_its_last_vector(name: str) -> None:
    index = FACTORIES[name]()
    eye = np.eye(4, dtype=np.float32)
    index.add(np.array([5, 6, 5], dtype=np.int64), eye[:3])
    assert len(index) == 2
    scores, got = index.search(eye[2:3], 3)
    assert got[0].tolist() == [5, 6, -1] and scores[0, 0] == pytest.approx(1.0)
    # the first vector of id 5 is gone, not kept beside the last one
    scores, got = index.search(eye[0:1], 3)
    assert sorted(got[0, :2].tolist()) == [5, 6] and got[0, 2] == -1 and scores[0, 0] == pytest.approx(0.0)


def test_compaction_gives_the_slot_buffers_back() -> None:
    index = TombstoneFaissIndex(DIM, "flat")
    index.add(np.arange(20_000, dtype=np.int64), unit_vectors(20_000, seed=9))
    assert index.capacity >= 20_000
    index.remove(np.arange(19_990, dtype=np.int64))
    assert len(index) == 10 and index.tombstones == 0
    assert index.capacity == 1024  # max(1024, 2 x live), not the 20k+ it grew to
    _, got = index.search(unit_vectors(20_000, seed=9)[-10:], 1)
    assert got[:, 0].tolist() == list(range(19_990, 20_000))


def test_a_gpu_hosts_snapshot_on_a_cpu_host_becomes_hnsw_past_the_threshold() -> None:
    vectors = unit_vectors(600, seed=10)
    gpu_like = TombstoneFaissIndex(DIM, "flat")  # what a GPU host dumps: kind "tombstone-flat"
    gpu_like.add(np.arange(600, dtype=np.int64), vectors)
    state = gpu_like.dump()

    big = AutoVectorIndex(DIM, hnsw_threshold=100, use_gpu=False)
    big.restore(state)
    assert big.backend == "hnsw" and isinstance(big._index, TombstoneFaissIndex) and big._index.kind == "hnsw"
    assert big.search(vectors[:5], 1)[1][:, 0].tolist() == [0, 1, 2, 3, 4]

    small = AutoVectorIndex(DIM, hnsw_threshold=10_000, use_gpu=False)
    small.restore(state)
    assert small.backend == "flat" and isinstance(small._index, FaissVectorIndex)  # exact, real deletes
    small.remove(np.array([3], dtype=np.int64))
    assert 3 not in small.search(vectors[3:4], 600)[1][0].tolist()


def test_a_cpu_tombstone_flat_index_is_labelled_flat() -> None:
    index = AutoVectorIndex(DIM, hnsw_threshold=100, use_gpu=False)
    index._index = TombstoneFaissIndex(DIM, "flat")
    assert index.backend == "flat"


def corrupt_blob(state: dict[str, np.ndarray]) -> None:
    blob = state["faiss"].copy()
    blob[:4] = np.frombuffer(b"IZZZ", np.uint8)  # an index type this FAISS does not know (a newer one's)
    state["faiss"] = blob


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("tombstone-hnsw", corrupt_blob),
        ("tombstone-hnsw", lambda s: s.update(member_slots=s["member_slots"][:-1])),
        ("tombstone-hnsw", lambda s: s.update(member_slots=np.full_like(s["member_slots"], 10**6))),
        ("tombstone-flat", lambda s: s.update(member_ids=np.full_like(s["member_ids"], 2))),  # an id twice
        ("faiss-flat", lambda s: s.update(ids=s["ids"][:-1])),
        ("faiss-flat", lambda s: s.update(ids=np.zeros_like(s["ids"]))),
        ("numpy", lambda s: s.update(ids=s["ids"][:-1])),
    ],
    ids=[
        "hnsw unreadable FAISS blob",
        "hnsw shared-slot arrays of other lengths",
        "hnsw shared-slot ids of missing slots",
        "tombstone-flat an id twice",
        "flat fewer ids than vectors",
        "flat an id twice",
        "numpy fewer ids than vectors",
    ],
)
def test_a_snapshot_the_index_cannot_use_is_refused_with_value_error(
    name: str, damage: Callable[[dict[str, np.ndarray]], None]
) -> None:
    """ValueError is what ``NamespaceIndex.load`` treats as "build this one from the database"; before, an
    unreadable FAISS blob raised RuntimeError and an id/vector mismatch an AssertionError from inside FAISS."""
    index = FACTORIES[name]()
    eye = np.eye(4, dtype=np.float32)
    index.add(np.arange(4, dtype=np.int64), eye)
    index.add(np.arange(10, 13, dtype=np.int64), np.repeat(eye[:1], 3, axis=0))  # a shared slot, where kept
    state = {key: np.asarray(value).copy() for key, value in index.dump().items()}
    damage(state)
    with pytest.raises(ValueError):
        FACTORIES[name]().restore(state)
