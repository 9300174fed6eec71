"""A snapshot that passes its checksum but that the vector index cannot restore (a FAISS blob another FAISS
version wrote, arrays that do not fit together) is rebuilt from the database instead of failing every start;
and the manifest records the FAISS version, so another version's snapshot is rejected before it is read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from core.embedding import create_embedder
from core.vector_index import AutoVectorIndex
from memory.engine import MemoryEngine
from memory.index import IndexSnapshots, NamespaceIndex, SnapshotRejected
from memory.model import Granularity, MemoryMessage, MemoryUnit
from memory.store import InMemoryStore, StoredUnit

DIM = 16
NS = "acme/chat"


def hnsw_factory(dim: int) -> AutoVectorIndex:
    return AutoVectorIndex(dim, hnsw_threshold=8, use_gpu=False)  # tiny: the snapshot holds an HNSW graph


def stored_units(n: int) -> list[StoredUnit]:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        StoredUnit(MemoryUnit(f"u{i}", Granularity.TURN, f"text {i}", (f"m{i}",), "s"), 1000 + i, vectors[i], "m")
        for i in range(n)
    ]


def unreadable_blob(state: dict[str, np.ndarray]) -> None:
    blob = state["faiss"].copy()
    blob[:4] = np.frombuffer(b"IZZZ", np.uint8)  # an index type this FAISS does not know
    state["faiss"] = blob


def short_ids(state: dict[str, np.ndarray]) -> None:
    state["ids"] = state["ids"][:-1]


@pytest.mark.parametrize(
    ("units", "damage"),
    [(20, unreadable_blob), (5, short_ids)],  # 20 units: HNSW; 5: still a flat index
    ids=["unreadable HNSW blob", "fewer ids than vectors"],
)
def test_a_snapshot_the_index_cannot_restore_is_built_from_the_units(
    tmp_path: Path, units: int, damage: Callable[[dict[str, np.ndarray]], None]
) -> None:
    stored = stored_units(units)
    built = NamespaceIndex(DIM, hnsw_factory)
    built.load(stored, {})
    dense = built.dump_dense()
    damage(dense[Granularity.TURN])
    snapshots = IndexSnapshots(tmp_path)
    snapshots.save(NS, 1, "m", DIM, dense)  # self-consistent files: the checksum matches
    snapshot = snapshots.load(NS, "m", DIM)
    assert snapshot is not None

    fresh = NamespaceIndex(DIM, hnsw_factory)
    assert fresh.load(stored, snapshot.dense) == 0  # nothing reused, nothing raised
    assert fresh.size() == units
    for s in stored:
        keys, _ = fresh.dense_search(Granularity.TURN, s.vector, 1)
        assert keys.tolist() == [s.key]


def test_an_engine_restarts_from_the_database_when_its_snapshot_cannot_be_restored(tmp_path: Path) -> None:
    store = InMemoryStore()
    directory = tmp_path / "index"

    def engine() -> MemoryEngine:
        return MemoryEngine(
            store,
            create_embedder("hashing"),
            background=False,
            vector_factory=lambda dim: AutoVectorIndex(dim, hnsw_threshold=4, use_gpu=False),
            snapshots=IndexSnapshots(directory),
            snapshot_interval_s=0,
        )

    first = engine()
    first.load()
    t0 = datetime(2023, 5, 8, tzinfo=UTC)
    messages = [
        MemoryMessage(f"m{i}", "s1", "alice", f"message {i} about cats", t0 + timedelta(minutes=i)) for i in range(12)
    ]
    first.write(NS, "s1", messages)
    first.flush()
    units = first.index(NS).size()
    first.close()

    (data,) = directory.glob("*.npz")
    with np.load(data) as npz:
        arrays = {name: npz[name] for name in npz.files}
    blobs = [name for name in arrays if name.endswith(".faiss")]
    assert blobs  # the snapshot does hold HNSW graphs
    for name in blobs:
        arrays[name] = arrays[name].copy()
        arrays[name][:4] = np.frombuffer(b"IZZZ", np.uint8)
    with open(data, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    manifest = data.with_suffix(".json")
    meta = json.loads(manifest.read_text())
    meta["sha256"] = hashlib.sha256(data.read_bytes()).hexdigest()  # what FAISS cannot read, the checksum passes
    manifest.write_text(json.dumps(meta))

    for _ in range(2):  # before, every start raised (the file stays, so each restart failed alike)
        again = engine()
        again.load()
        assert again.index(NS).size() == units
        again._snapshots = None  # an abandoned "process": writes nothing at close
        again.close()


def test_the_manifest_names_the_faiss_version_and_another_versions_snapshot_is_rejected(tmp_path: Path) -> None:
    import faiss

    built = NamespaceIndex(DIM, hnsw_factory)
    built.load(stored_units(20), {})
    snapshots = IndexSnapshots(tmp_path)
    snapshots.save(NS, 1, "m", DIM, built.dump_dense())
    (manifest,) = tmp_path.glob("*.json")
    meta = json.loads(manifest.read_text())
    assert meta["faiss"] == faiss.__version__
    assert snapshots.load(NS, "m", DIM) is not None
    meta["faiss"] = "0.0.1"
    manifest.write_text(json.dumps(meta))
    with pytest.raises(SnapshotRejected, match=r"faiss is '0\.0\.1'"):
        snapshots.load(NS, "m", DIM)
