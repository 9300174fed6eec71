"""Vector index snapshots (issue #8): a restart loads them instead of rebuilding, a stale one is caught up
with the database, and a corrupt one is detected and rebuilt from the database. On every store backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.embedding import create_embedder
from core.vector_index import AutoVectorIndex, NumpyVectorIndex
from memory.engine import MemoryEngine
from memory.index import IndexSnapshots, NamespaceIndex
from memory.model import Granularity, MemoryMessage
from memory.store import MemoryStore

NS = "acme/chat"
T0 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
TURNS = [
    ("alice", "I adopted a kitten named Pepper from the shelter last week"),
    ("bob", "Congrats! What breed is Pepper?"),
    ("alice", "A grey tabby, she loves chasing laser pointers"),
    ("bob", "My saxophone lessons start on Monday"),
    ("alice", "I will practise jazz standards every evening"),
    ("bob", "We hiked the Dolomites in July and camped by a lake"),
]


def conversation(session: str, prefix: str) -> list[MemoryMessage]:
    return [
        MemoryMessage(f"{prefix}{i}", session, spk, text, T0 + timedelta(minutes=i))
        for i, (spk, text) in enumerate(TURNS)
    ]


@pytest.fixture
def make_engine(store_factory: Callable[[], MemoryStore], tmp_path: Path) -> Iterator[Callable[..., MemoryEngine]]:
    """Engines over one database and one snapshot directory; each call is a new "process"."""
    engines: list[MemoryEngine] = []

    def factory(*, snapshots: bool = True, vector_factory: Callable[[int], Any] | None = None) -> MemoryEngine:
        engine = MemoryEngine(
            store_factory(),
            create_embedder("hashing"),
            background=False,
            # A tiny threshold, so the snapshot holds HNSW graphs as well as flat indexes.
            vector_factory=vector_factory or (lambda dim: AutoVectorIndex(dim, hnsw_threshold=8, use_gpu=False)),
            snapshots=IndexSnapshots(tmp_path / "index") if snapshots else None,
            snapshot_interval_s=0,
        )
        engine.load()
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        engine._snapshots = None  # teardown must not write snapshots of abandoned "processes"
        engine.close()


def same_content(got: NamespaceIndex, want: NamespaceIndex) -> None:
    """Same units, and every granularity's dense search returns the same keys for a few queries."""
    assert sorted(got.unit_keys()) == sorted(want.unit_keys())
    assert set(got.granularities()) == set(want.granularities())
    queries = [v for k in sorted(want.unit_keys())[:5] if (v := want.vector(k)) is not None]
    for gran in want.granularities():
        for q in queries:
            got_keys, got_scores = got.dense_search(gran, q, 50)
            want_keys, want_scores = want.dense_search(gran, q, 50)
            assert set(got_keys.tolist()) == set(want_keys.tolist())
            np.testing.assert_allclose(np.sort(got_scores), np.sort(want_scores), rtol=1e-5)


def populate(engine: MemoryEngine) -> None:
    engine.write(NS, "s1", conversation("s1", "a"))
    engine.write(NS, "s2", conversation("s2", "b"))
    engine.flush()


def test_restart_loads_the_snapshot_written_on_close(make_engine) -> None:  # type: ignore[no-untyped-def]
    first = make_engine()
    populate(first)
    assert first.index_source(NS) == "database"
    first.close()  # a clean shutdown writes the snapshot
    second = make_engine()
    assert second.index_source(NS).startswith("snapshot of generation")
    assert f"({second.index(NS).size()} vectors reused)" in second.index_source(NS)
    stats = second.stats(NS)
    assert stats.index_generation == stats.generation
    same_content(second.index(NS), make_engine(snapshots=False).index(NS))


def test_a_stale_snapshot_is_caught_up_with_the_database(make_engine) -> None:  # type: ignore[no-untyped-def]
    first = make_engine()
    populate(first)
    assert first.snapshot(NS)
    snapshot_generation = first.stats(NS).generation
    # Changes after the snapshot, then a "crash" (no close, so no new snapshot): a new session, an
    # edited message, a deleted one.
    first.write(NS, "s3", conversation("s3", "c"))
    first.update(NS, MemoryMessage("a3", "", "bob", "My trombone lessons start on Tuesday"))
    first.delete(NS, message_ids=["b5"])
    first.flush()
    second = make_engine()
    assert second.index_source(NS).startswith(f"snapshot of generation {snapshot_generation} ")
    stats = second.stats(NS)
    assert stats.generation > snapshot_generation
    assert stats.index_generation == stats.generation
    same_content(second.index(NS), make_engine(snapshots=False).index(NS))
    index = second.index(NS)
    edited = [index.unit(k) for k in index.units_of_message("a3")]
    assert edited and all(u is not None and "trombone" in u.text and "saxophone" not in u.text for u in edited)
    assert not index.units_of_message("b5")
    assert index.units_of_message("c0")


def test_a_corrupt_snapshot_is_detected_and_rebuilt_from_the_database(  # type: ignore[no-untyped-def]
    make_engine, tmp_path: Path
) -> None:
    first = make_engine()
    populate(first)
    first.close()
    (data,) = (tmp_path / "index").glob("*.npz")
    raw = bytearray(data.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 16] = bytes(b ^ 0xFF for b in raw[middle : middle + 16])
    data.write_bytes(bytes(raw))

    second = make_engine()
    assert second.index_source(NS).startswith("database (snapshot rejected: checksum mismatch")
    same_content(second.index(NS), make_engine(snapshots=False).index(NS))
    assert not data.exists()  # the bad file is gone, not re-checked at every start
    second.close()  # and the next clean shutdown writes a good one
    assert make_engine().index_source(NS).startswith("snapshot of generation")


def test_a_snapshot_this_process_cannot_use_is_written_again(make_engine) -> None:  # type: ignore[no-untyped-def]
    """A snapshot that passes its checks but holds index states this configuration cannot restore (here FAISS
    states where the index is numpy's) is rebuilt from the database, and then replaced at the next snapshot
    pass even though nothing changed: it used to stay, and every start rebuilt the indexes again."""
    first = make_engine()
    populate(first)
    first.close()
    second = make_engine(vector_factory=NumpyVectorIndex)
    assert second.index_source(NS).endswith("(0 vectors reused)")
    same_content(second.index(NS), make_engine(snapshots=False).index(NS))
    assert second.snapshot(NS)  # nothing changed, and still written
    third = make_engine(vector_factory=NumpyVectorIndex)
    assert f"({third.index(NS).size()} vectors reused)" in third.index_source(NS)
    assert not third.snapshot(NS)  # a snapshot it could use is not written again


def test_a_truncated_snapshot_or_one_of_another_model_is_rejected(  # type: ignore[no-untyped-def]
    make_engine, tmp_path: Path
) -> None:
    first = make_engine()
    populate(first)
    first.close()
    (data,) = (tmp_path / "index").glob("*.npz")
    snapshots = IndexSnapshots(tmp_path / "index")
    assert snapshots.load(NS, "hashing-384", 384) is not None
    with pytest.raises(ValueError, match="model is 'hashing-384', expected 'other-model'"):
        snapshots.load(NS, "other-model", 384)
    data.write_bytes(data.read_bytes()[:100])
    second = make_engine()
    assert second.index_source(NS).startswith("database (snapshot rejected")
    same_content(second.index(NS), make_engine(snapshots=False).index(NS))


def test_a_snapshot_never_takes_the_space_the_database_needs(tmp_path: Path) -> None:
    dense = {Granularity.TURN: {"ids": np.arange(4, dtype=np.int64), "vectors": np.ones((4, 8), np.float32)}}
    cramped = IndexSnapshots(tmp_path / "cramped", min_free_bytes=1 << 62)  # more than any disk has free
    assert cramped.save("t/ns", 3, "m", 8, dense) is False
    assert not list((tmp_path / "cramped").iterdir())  # nothing written, no temporary file left
    roomy = IndexSnapshots(tmp_path / "roomy")
    assert roomy.save("t/ns", 3, "m", 8, dense) is True
    assert sorted(p.suffix for p in (tmp_path / "roomy").iterdir()) == [".json", ".npz"]
