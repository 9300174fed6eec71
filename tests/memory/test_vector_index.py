"""One battery for every VectorIndex (numpy reference, FAISS flat, HNSW/flat with tombstones, auto)."""

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
    create_vector_index,
)

DIM = 16

FACTORIES: dict[str, Callable[[], VectorIndex]] = {
    "numpy": lambda: NumpyVectorIndex(DIM),
    "faiss-flat": lambda: FaissVectorIndex(DIM),
    "tombstone-flat": lambda: TombstoneFaissIndex(DIM, "flat"),
    "tombstone-hnsw": lambda: TombstoneFaissIndex(DIM, "hnsw", ef_search=128),
    # tiny threshold: the battery crosses the flat -> HNSW migration
    "auto": lambda: AutoVectorIndex(DIM, hnsw_threshold=50, use_gpu=False),
    # The same battery on a GPU, where FAISS sees one (a FAISS GPU build on a GPU machine; skipped elsewhere,
    # CI has none): exact GPU flat with tombstones, and the auto index crossing into it at a tiny threshold.
    "tombstone-gpu-flat": lambda: TombstoneFaissIndex(DIM, "flat", gpu=True),
    "auto-gpu": lambda: AutoVectorIndex(DIM, gpu_threshold=50, use_gpu=True),
}
GPU_FACTORIES = {"tombstone-gpu-flat", "auto-gpu"}


def _faiss_sees_a_gpu() -> bool:
    import faiss

    return bool(faiss.get_num_gpus() > 0)


def factory_params() -> list[object]:
    """Every factory; the GPU ones skipped where FAISS sees no GPU."""
    no_gpu = not _faiss_sees_a_gpu()
    return [
        pytest.param(name, marks=pytest.mark.skipif(no_gpu, reason="FAISS sees no GPU here"))
        if name in GPU_FACTORIES
        else name
        for name in sorted(FACTORIES)
    ]


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(params=factory_params())
def index(request: pytest.FixtureRequest) -> VectorIndex:
    return FACTORIES[request.param]()


def exact_top(ids: np.ndarray, vecs: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    order = np.argsort(-(vecs @ query), kind="stable")[:k]
    return [int(ids[i]) for i in order]


def test_empty_index_returns_no_hits(index: VectorIndex) -> None:
    scores, ids = index.search(unit_vectors(2), 3)
    assert ids.shape == (2, 3) and (ids == -1).all() and np.isneginf(scores).all()
    assert len(index) == 0


def test_search_matches_exact_ranking(index: VectorIndex) -> None:
    ids = np.arange(100, 300, dtype=np.int64)
    vecs = unit_vectors(200)
    index.add(ids, vecs)
    assert len(index) == 200
    queries = unit_vectors(5, seed=1)
    scores, got = index.search(queries, 5)
    for row, q in enumerate(queries):
        expected = exact_top(ids, vecs, q, 5)
        # HNSW is approximate: on 200 points with ef 128 it finds the exact top-5 (at least 4 of them)
        assert len(set(got[row].tolist()) & set(expected)) >= 4
        assert got[row][0] == expected[0]
        assert np.all(np.diff(scores[row]) <= 1e-6)


def test_add_replaces_and_remove_deletes(index: VectorIndex) -> None:
    ids = np.arange(60, dtype=np.int64)
    vecs = unit_vectors(60)
    index.add(ids, vecs)
    # id 7 moves to where id 8 was: a query for vecs[8] now finds 7 and 8 at the top
    index.add(np.array([7], dtype=np.int64), vecs[8:9])
    assert len(index) == 60
    _, got = index.search(vecs[8:9], 2)
    assert set(got[0].tolist()) == {7, 8}
    assert index.remove(np.array([8, 999], dtype=np.int64)) == 1
    assert len(index) == 59
    _, got = index.search(vecs[8:9], 60)
    assert 8 not in got[0].tolist()
    assert got[0][0] == 7
    assert (got[0][:59] >= 0).all() and got[0][59] == -1


def test_removing_most_entries_keeps_results_correct(index: VectorIndex) -> None:
    ids = np.arange(120, dtype=np.int64)
    vecs = unit_vectors(120)
    index.add(ids, vecs)
    index.remove(ids[:100])
    assert len(index) == 20
    _, got = index.search(vecs[:5], 10)
    assert set(got.ravel().tolist()) <= set(range(100, 120))
    assert (got >= 0).all()


def test_tombstones_are_compacted_away() -> None:
    index = TombstoneFaissIndex(DIM, "hnsw", compact_ratio=0.2)
    index.add(np.arange(100, dtype=np.int64), unit_vectors(100))
    index.remove(np.arange(15, dtype=np.int64))
    assert index.tombstones == 15
    index.remove(np.arange(15, 30, dtype=np.int64))  # 30 dead > 20% of 100: compacted
    assert index.tombstones == 0 and len(index) == 70


def test_auto_index_migrates_to_hnsw_past_the_threshold() -> None:
    index = AutoVectorIndex(DIM, hnsw_threshold=50, use_gpu=False)
    vecs = unit_vectors(80)
    index.add(np.arange(40, dtype=np.int64), vecs[:40])
    assert index.backend == "flat"
    index.add(np.arange(40, 80, dtype=np.int64), vecs[40:])
    assert index.backend == "hnsw" and len(index) == 80
    _, got = index.search(vecs[:3], 1)
    assert got[:, 0].tolist() == [0, 1, 2]


def test_auto_index_on_a_gpu_host_is_hnsw_between_the_thresholds() -> None:
    # No GPU is needed below gpu_threshold: this runs on CPU hosts too.
    index = AutoVectorIndex(DIM, hnsw_threshold=20, gpu_threshold=10_000, use_gpu=True)
    vecs = unit_vectors(40)
    index.add(np.arange(10, dtype=np.int64), vecs[:10])
    assert index.backend == "flat"
    index.add(np.arange(10, 40, dtype=np.int64), vecs[10:])
    assert index.backend == "hnsw" and len(index) == 40
    _, got = index.search(vecs[:3], 1)
    assert got[:, 0].tolist() == [0, 1, 2]


def test_a_gpu_faiss_cannot_search_on_stays_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """FAISS counting a GPU it cannot search on (a build without kernels for it aborts the process at the first
    search): the check in a child process fails, and the indexes stay on the CPU instead of crashing the sidecar.
    Here the child's FAISS is this machine's build, which has no GPU to search on."""
    import faiss

    from core.vector_index import faiss_gpu_usable

    if faiss.get_num_gpus() > 0:
        pytest.skip("FAISS sees a real GPU here")
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    faiss_gpu_usable.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="core.vector_index"):
            assert faiss_gpu_usable() is False
            index = AutoVectorIndex(DIM, hnsw_threshold=20, gpu_threshold=30)
        assert "a GPU search failed" in caplog.text
        assert index.use_gpu is False
        index.add(np.arange(40, dtype=np.int64), unit_vectors(40))
        assert index.backend == "hnsw"
    finally:
        faiss_gpu_usable.cache_clear()


@pytest.mark.skipif(not _faiss_sees_a_gpu(), reason="FAISS sees no GPU here")
def test_faiss_gpu_usable_on_a_working_gpu() -> None:
    from core.vector_index import faiss_gpu_usable

    assert faiss_gpu_usable() is True
    assert AutoVectorIndex(DIM).use_gpu is True


@pytest.mark.skipif(not _faiss_sees_a_gpu(), reason="FAISS sees no GPU here")
def test_auto_index_moves_from_hnsw_to_the_gpu() -> None:
    index = AutoVectorIndex(DIM, hnsw_threshold=20, gpu_threshold=50, use_gpu=True)
    vecs = unit_vectors(80)
    index.add(np.arange(30, dtype=np.int64), vecs[:30])
    assert index.backend == "hnsw"
    index.remove(np.array([5], dtype=np.int64))
    index.add(np.arange(30, 80, dtype=np.int64), vecs[30:])
    assert index.backend == "gpu-flat" and len(index) == 79
    _, got = index.search(vecs[:8], 1)
    assert got[5, 0] != 5  # removed while HNSW: still gone on the GPU
    assert [int(got[i, 0]) for i in (0, 1, 2, 3, 4, 6, 7)] == [0, 1, 2, 3, 4, 6, 7]


def test_factory_names_and_unknown_backend() -> None:
    assert isinstance(create_vector_index(DIM, "numpy"), NumpyVectorIndex)
    assert isinstance(create_vector_index(DIM, "flat"), FaissVectorIndex)
    with pytest.raises(ValueError, match="auto, flat, hnsw or numpy"):
        create_vector_index(DIM, "annoy")


def test_gpu_index_is_refused_without_a_gpu() -> None:
    import faiss

    if faiss.get_num_gpus() > 0:
        index = AutoVectorIndex(DIM, gpu_threshold=10)
        index.add(np.arange(20, dtype=np.int64), unit_vectors(20))
        assert index.backend == "gpu-flat"
        index.remove(np.array([3], dtype=np.int64))
        _, got = index.search(unit_vectors(20)[3:4], 20)
        assert 3 not in got[0].tolist()
    else:
        with pytest.raises(ValueError, match="no GPU"):
            TombstoneFaissIndex(DIM, "flat", gpu=True)


@pytest.mark.skipif(not _faiss_sees_a_gpu(), reason="FAISS sees no GPU here")
def test_gpu_search_past_the_selection_limit_returns_what_the_gpu_can() -> None:
    from core.vector_index import GPU_MAX_K

    n = GPU_MAX_K + 500
    index = TombstoneFaissIndex(DIM, "flat", gpu=True)
    vectors = unit_vectors(n, seed=5)
    index.add(np.arange(n, dtype=np.int64), vectors)
    index.remove(np.arange(100, dtype=np.int64))
    scores, got = index.search(vectors[100:102], n)  # k over the GPU's limit: no error, the best GPU_MAX_K live
    assert got.shape == (2, n)
    found = got[0][got[0] >= 0]
    assert GPU_MAX_K - 100 <= len(found) <= GPU_MAX_K  # the 100 dead slots may take part of the fetch
    assert found[0] == 100 and not np.isin(np.arange(100), found).any()
    assert np.all(np.diff(scores[0][: len(found)]) <= 1e-6)
    assert exact_top(np.arange(100, n), vectors[100:], vectors[101], 10) == got[1][:10].tolist()


@pytest.mark.parametrize("name", factory_params())
def test_dump_and_restore_round_trip(name: str) -> None:
    index = FACTORIES[name]()
    vectors = unit_vectors(120, seed=7)
    ids = np.arange(1000, 1120, dtype=np.int64)
    index.add(ids, vectors)
    index.remove(ids[:15])  # tombstones (where the type has them) survive the round trip
    fresh = FACTORIES[name]()
    fresh.restore(index.dump())
    assert len(fresh) == len(index) == 105
    want_scores, want_ids = index.search(vectors[20:30], 5)
    got_scores, got_ids = fresh.search(vectors[20:30], 5)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5)
    assert not np.isin(ids[:15], fresh.search(vectors[:15], 10)[1]).any()
    # the restored index stays mutable
    fresh.add(ids[:1], vectors[:1])
    assert fresh.search(vectors[:1], 1)[1][0, 0] == ids[0]


def test_vector_index_dumps_round_trip_through_the_dumped_items(index: VectorIndex) -> None:
    from core.vector_index import dumped_items

    vectors = unit_vectors(60, seed=3)
    index.add(np.arange(60, dtype=np.int64), vectors)
    index.remove(np.arange(10, dtype=np.int64))
    ids, got = dumped_items(index.dump())
    order = np.argsort(ids)
    np.testing.assert_array_equal(ids[order], np.arange(10, 60))
    np.testing.assert_allclose(got[order], vectors[10:], rtol=1e-6)


def test_restore_refuses_a_dump_of_another_type_or_dimension() -> None:
    flat = FaissVectorIndex(DIM)
    flat.add(np.arange(5, dtype=np.int64), unit_vectors(5))
    with pytest.raises(ValueError, match="not a"):
        TombstoneFaissIndex(DIM, "hnsw").restore(flat.dump())
    with pytest.raises(ValueError, match="dimension"):
        FaissVectorIndex(DIM * 2).restore(flat.dump())
