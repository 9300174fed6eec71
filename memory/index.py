"""In-memory search structures of one namespace: per-granularity FAISS and BM25 plus association edges.

A ``NamespaceIndex`` is a cache of the database (``memory/store.py``): the engine builds it from the
store on start, applies each committed change to it, and rebuilds it whenever its ``generation`` falls
behind the store's (a crash or failure between commit and index update). The retriever
(``memory/retrieval.py``) only reads it.

Reads need no lock: a search racing a write may see a key whose unit was just removed, so
``unit(key)`` returns ``None`` and callers skip such keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.cachefiles import MIN_FREE_BYTES, has_room, write_atomic
from core.lexical import BM25Index
from core.vector_index import VectorIndex, create_vector_index, dumped_items
from memory.model import Granularity, MemoryUnit
from memory.store import StoredUnit

log = logging.getLogger(__name__)

VectorIndexFactory = Callable[[int], VectorIndex]
DenseStates = dict[Granularity, dict[str, np.ndarray]]


class NamespaceIndex:
    """Dense + lexical indexes per granularity, the units by key, and the association adjacency."""

    def __init__(self, dim: int, vector_factory: VectorIndexFactory | None = None):
        self.dim = dim
        self._vector_factory = vector_factory or (lambda d: create_vector_index(d))
        self._units: dict[int, MemoryUnit] = {}
        self._vectors: dict[int, np.ndarray] = {}
        self._dense: dict[Granularity, VectorIndex] = {}
        self._lexical: dict[Granularity, BM25Index] = {}
        self._by_message: dict[str, set[int]] = {}
        self._edges: dict[int, dict[int, float]] = {}
        self._lock = threading.RLock()
        # The store generation this index reflects; the engine rebuilds when it falls behind.
        self.generation = 0
        # Granularities whose snapshot state ``load`` could not use: the snapshot must be written again, or
        # every start would rebuild them anew (an HNSW build is the slow part of a start).
        self.unrestored: set[Granularity] = set()
        # Bumped before and after every change of the units (not of edges): what the retriever's cache of
        # the units covering each message is keyed by. Odd while a change is in progress.
        self.units_version = 0

    # -- writes (engine only) ------------------------------------------------------------------------

    def apply(self, remove_keys: Iterable[int], add: Sequence[StoredUnit]) -> None:
        """Remove units by key, then add (or replace) the given stored units."""
        with self._lock:
            self.units_version += 1
            try:
                self._apply(remove_keys, add)
            finally:
                self.units_version += 1

    def _apply(self, remove_keys: Iterable[int], add: Sequence[StoredUnit]) -> None:
        # Called with the lock held (apply).
        self._remove([k for k in remove_keys if k in self._units], drop_edges=True)
        # A unit whose text, messages and vector are unchanged (consolidation changing its weight) is
        # updated in place: re-tokenising it and re-adding its vector (an HNSW tombstone each) was
        # most of a consolidation pass's time under the GIL.
        changed: list[StoredUnit] = []
        for stored in {s.key: s for s in add}.values():
            old = self._units.get(stored.key)
            old_vector = self._vectors.get(stored.key)
            if (
                old is not None
                and old_vector is not None
                and old.text == stored.unit.text
                and old.granularity == stored.unit.granularity
                and old.message_ids == stored.unit.message_ids
                and np.array_equal(old_vector, stored.vector)
            ):
                self._units[stored.key] = stored.unit
            else:
                changed.append(stored)
        # A replaced unit (same key) loses its old message links and vectors but keeps its edges.
        self._remove([s.key for s in changed if s.key in self._units], drop_edges=False)
        add_by_gran: dict[Granularity, list[StoredUnit]] = {}
        for stored in changed:
            add_by_gran.setdefault(stored.unit.granularity, []).append(stored)
        for gran, items in add_by_gran.items():
            dense = self._dense.get(gran)
            if dense is None:
                dense = self._dense[gran] = self._vector_factory(self.dim)
                self._lexical[gran] = BM25Index()
            keys = np.asarray([s.key for s in items], dtype=np.int64)
            dense.add(keys, np.stack([s.vector for s in items]).astype(np.float32, copy=False))
            lexical = self._lexical[gran]
            for stored in items:
                lexical.add(stored.key, stored.unit.text)
                self._units[stored.key] = stored.unit
                self._vectors[stored.key] = stored.vector
                for mid in stored.unit.message_ids:
                    self._by_message.setdefault(mid, set()).add(stored.key)

    def load(self, units: Iterable[StoredUnit], snapshot: Mapping[Granularity, dict[str, np.ndarray]]) -> int:
        """Fill an empty index with ``units`` (the database's), taking each granularity's vector index from
        ``snapshot`` (``dump_dense`` of an earlier process) where it has one, brought up to date with ``units``:
        snapshot entries the database no longer has are removed, and entries it lacks or holds with another
        vector are added. Returns how many vectors came from the snapshot unchanged.

        A snapshot state the index cannot be restored from (another backend configured, a FAISS blob this
        FAISS cannot read, inconsistent arrays) is ignored: that granularity is built from ``units``.
        """
        by_gran: dict[Granularity, dict[int, StoredUnit]] = {}
        for stored in units:
            by_gran.setdefault(stored.unit.granularity, {})[stored.key] = stored
        reused = 0
        with self._lock:
            self.units_version += 2  # an even step: loads happen before the index is searched
            for gran, items in by_gran.items():
                dense = self._vector_factory(self.dim)
                todo = list(items.values())
                state = snapshot.get(gran)
                if state is not None:
                    try:
                        dense.restore(state)
                        kept, todo, gone = self._reconcile(items, *dumped_items(state))
                        if gone:
                            dense.remove(np.asarray(gone, dtype=np.int64))
                        reused += kept
                    except Exception as exc:
                        # Any failure, not only the ValueError the indexes raise for a state they refuse: a
                        # snapshot is a cache, and one that cannot be read must not stop every start (FAISS
                        # raises RuntimeError, numpy IndexError, on content the checksum cannot vouch for).
                        log.warning("vector index snapshot of %s not usable (%r); building it", gran.value, exc)
                        self.unrestored.add(gran)
                        dense = self._vector_factory(self.dim)
                        todo = list(items.values())
                if todo:
                    dense.add(
                        np.asarray([s.key for s in todo], dtype=np.int64),
                        np.stack([s.vector for s in todo]).astype(np.float32, copy=False),
                    )
                self._dense[gran] = dense
                lexical = self._lexical[gran] = BM25Index()
                for stored in items.values():
                    lexical.add(stored.key, stored.unit.text)
                    self._units[stored.key] = stored.unit
                    self._vectors[stored.key] = stored.vector
                    for mid in stored.unit.message_ids:
                        self._by_message.setdefault(mid, set()).add(stored.key)
        return reused

    @staticmethod
    def _reconcile(
        wanted: dict[int, StoredUnit], ids: np.ndarray, vectors: np.ndarray
    ) -> tuple[int, list[StoredUnit], list[int]]:
        """(entries of the snapshot still right, units to add, snapshot ids to remove)."""
        row_of = {int(k): row for row, k in enumerate(ids.tolist())}
        gone = [k for k in row_of if k not in wanted]
        common = [s for s in wanted.values() if s.key in row_of]
        todo = [s for s in wanted.values() if s.key not in row_of]
        if common:
            ours = np.stack([s.vector for s in common]).astype(np.float32, copy=False)
            theirs = vectors[[row_of[s.key] for s in common]]
            same = np.all(ours == theirs, axis=1)
            todo += [s for s, ok in zip(common, same.tolist(), strict=True) if not ok]
            return int(same.sum()), todo, gone
        return 0, todo, gone

    def dump_dense(self) -> DenseStates:
        """Every granularity's vector index state (for ``IndexSnapshots.save``), one consistent cut."""
        with self._lock:
            return {gran: dense.dump() for gran, dense in self._dense.items()}

    def _remove(self, keys: list[int], *, drop_edges: bool) -> None:
        by_gran: dict[Granularity, list[int]] = {}
        for key in keys:
            unit = self._units.pop(key)
            self._vectors.pop(key, None)
            by_gran.setdefault(unit.granularity, []).append(key)
            for mid in unit.message_ids:
                linked = self._by_message.get(mid)
                if linked is not None:
                    linked.discard(key)
                    if not linked:
                        del self._by_message[mid]
            if drop_edges:
                for dst in self._edges.pop(key, {}):
                    self._edges.get(dst, {}).pop(key, None)
        for gran, gran_keys in by_gran.items():
            self._dense[gran].remove(np.asarray(gran_keys, dtype=np.int64))
            lexical = self._lexical[gran]
            for key in gran_keys:
                lexical.remove(key)

    def set_edges(self, edges: Iterable[tuple[int, int, float]], *, replace: bool = True) -> None:
        """Load association edges (undirected: each edge is usable from both ends)."""
        with self._lock:
            if replace:
                self._edges = {}
            for src, dst, weight in edges:
                if src in self._units and dst in self._units and src != dst:
                    self._edges.setdefault(src, {})[dst] = weight
                    self._edges.setdefault(dst, {})[src] = weight

    # -- reads (retriever) ---------------------------------------------------------------------------

    def granularities(self) -> list[Granularity]:
        """Granularities that hold at least one unit."""
        # list() copies atomically: a write may add a granularity while a search asks.
        return [g for g, idx in list(self._dense.items()) if len(idx)]

    def size(self, granularity: Granularity | None = None) -> int:
        """Number of units (of one granularity)."""
        if granularity is None:
            return len(self._units)
        index = self._dense.get(granularity)
        return len(index) if index is not None else 0

    def unit(self, key: int) -> MemoryUnit | None:
        """The unit under ``key`` (``None`` if it was removed meanwhile)."""
        return self._units.get(key)

    def vector(self, key: int) -> np.ndarray | None:
        """The stored embedding of a unit."""
        return self._vectors.get(key)

    def keys(self) -> list[int]:
        """Every unit key (snapshot); same as :meth:`unit_keys`."""
        return list(self._units)

    def unit_keys(self) -> list[int]:
        """Every unit key (snapshot)."""
        return list(self._units)

    def keys_of(self, granularity: Granularity) -> list[int]:
        """Keys of every unit of one granularity (snapshot)."""
        lexical = self._lexical.get(granularity)
        return lexical.doc_ids() if lexical is not None else []

    def unit_granularity(self, key: int) -> Granularity | None:
        """The granularity of the unit under ``key`` (``None`` if it is gone)."""
        unit = self._units.get(key)
        return unit.granularity if unit is not None else None

    def units_of_message(self, message_id: str) -> set[int]:
        """Keys of the units that cover a message."""
        return set(self._by_message.get(message_id, ()))

    def dense_search(self, granularity: Granularity, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (keys, cosine scores) of one granularity; empty arrays when it has no units."""
        ids, scores = self.dense_search_many(granularity, query, k)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def dense_search_many(self, granularity: Granularity, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (keys, cosine scores) of one granularity for each row of ``queries``, in one FAISS call
        (which releases the GIL and uses every core); rows are padded with key -1."""
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        index = self._dense.get(granularity)
        if index is None or k <= 0 or not len(index) or not len(queries):
            return np.full((len(queries), 0), -1, dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
        scores, ids = index.search(queries, k)
        return ids, scores

    def lexical_search(
        self, granularity: Granularity, query: str | Sequence[str], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (keys, BM25 scores) of one granularity; ``query`` is text or pre-tokenised terms."""
        index = self._lexical.get(granularity)
        if index is None or k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return index.search_arrays(query, k)

    def lexical(self, granularity: Granularity) -> BM25Index | None:
        """The BM25 index of a granularity (for scoring given keys)."""
        return self._lexical.get(granularity)

    def neighbors(self, keys: Iterable[int], limit: int = 8) -> dict[int, list[tuple[int, float]]]:
        """Association neighbours of each key, strongest first (at most ``limit`` each)."""
        out: dict[int, list[tuple[int, float]]] = {}
        for key in keys:
            adjacent = self._edges.get(int(key))
            if adjacent:
                out[int(key)] = sorted(adjacent.items(), key=lambda kv: -kv[1])[:limit]
        return out

    def linked_keys(self) -> set[int]:
        """Keys that have at least one association edge (snapshot)."""
        return set(list(self._edges))

    def edge_count(self) -> int:
        """Undirected association edges held."""
        return sum(len(v) for v in self._edges.values()) // 2

    def backends(self) -> dict[str, str]:
        """Which vector index type serves each granularity (``flat``, ``hnsw``, ``gpu-flat``)."""
        return {g.value: str(getattr(idx, "backend", type(idx).__name__)) for g, idx in list(self._dense.items())}


@dataclass(frozen=True)
class IndexSnapshot:
    """A namespace's vector indexes as saved, and the store generation they reflected then."""

    generation: int
    dense: DenseStates


def _faiss_version() -> str:
    import faiss  # imported by the vector indexes already; here lazily like there

    return str(faiss.__version__)


class SnapshotRejected(ValueError):
    """A snapshot file exists but cannot be used (corrupt, truncated, another model or format)."""


class IndexSnapshots:
    """Snapshot files of namespace vector indexes in one directory, so a restart need not rebuild them.

    The HNSW graphs are what makes a rebuild slow (tens of seconds at 100k units); the database stays the
    source of truth and a snapshot is only a head start: ``NamespaceIndex.load`` brings it up to date with
    the database, unit by unit. Per namespace there are two files, named by a hash of the namespace key:
    ``<h>.npz`` (every granularity's ``VectorIndex.dump``) and ``<h>.json``, the manifest (namespace,
    generation, model, dimension, format, FAISS version and the SHA-256 of the ``.npz``). Both are written to a
    temporary name, fsynced and renamed, the manifest last; a crash between the two leaves a checksum mismatch,
    which ``load`` reports like any corruption.
    """

    FORMAT = 1

    def __init__(self, directory: str | Path, *, min_free_bytes: int = MIN_FREE_BYTES):
        self.directory = Path(directory)
        self.min_free_bytes = min_free_bytes

    def _paths(self, namespace: str) -> tuple[Path, Path]:
        stem = hashlib.sha256(namespace.encode()).hexdigest()[:32]
        return self.directory / f"{stem}.npz", self.directory / f"{stem}.json"

    @staticmethod
    def _digest(path: Path) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    def save(self, namespace: str, generation: int, model: str, dim: int, dense: DenseStates) -> bool:
        """Write the snapshot of ``namespace`` (replacing the previous one); False when skipped for space.

        A snapshot is only a cache, so it never takes the room the database needs: it is skipped unless
        the disk keeps ``min_free_bytes`` plus twice its size free, and a write that fails midway (disk
        full) leaves no temporary file behind.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        data, manifest = self._paths(namespace)
        arrays = {f"{gran.value}.{name}": array for gran, state in dense.items() for name, array in state.items()}
        size = sum(int(np.asarray(a).nbytes) for a in arrays.values())
        if not has_room(self.directory, size, min_free=self.min_free_bytes):
            log.warning(
                "index snapshot skipped: %d MiB free, the snapshot needs %d MiB plus %d MiB kept free",
                shutil.disk_usage(self.directory).free >> 20,
                size >> 20,
                self.min_free_bytes >> 20,
                extra={"namespace": namespace},
            )
            return False
        # numpy's stub wants a bool for allow_pickle in savez's keywords
        write_atomic(data, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
        meta = {
            "format": self.FORMAT,
            "namespace": namespace,
            "generation": generation,
            "model": model,
            "dim": dim,
            "faiss": _faiss_version(),
            "sha256": self._digest(data),
        }
        write_atomic(manifest, json.dumps(meta).encode())
        return True

    def load(self, namespace: str, model: str, dim: int) -> IndexSnapshot | None:
        """The saved snapshot of ``namespace``; None when there is none.

        Raises SnapshotRejected when the files exist but are unusable (the caller rebuilds from the
        database and the next save replaces them).
        """
        data, manifest = self._paths(namespace)
        if not manifest.exists():
            return None
        try:
            meta = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise SnapshotRejected(f"unreadable manifest {manifest.name}: {exc}") from None
        # A serialised HNSW graph is FAISS's own format: another FAISS version may not read it (or read it
        # differently), so a snapshot is only used by the FAISS version that wrote it.
        expected = {
            "format": self.FORMAT,
            "namespace": namespace,
            "model": model,
            "dim": dim,
            "faiss": _faiss_version(),
        }
        for key, value in expected.items():
            if meta.get(key) != value:
                raise SnapshotRejected(f"snapshot {key} is {meta.get(key)!r}, expected {value!r}")
        if not data.exists():
            raise SnapshotRejected(f"{data.name} is missing")
        if self._digest(data) != meta.get("sha256"):
            raise SnapshotRejected(f"checksum mismatch of {data.name} (corrupt or partly written)")
        dense: DenseStates = {}
        try:
            with np.load(data, allow_pickle=False) as npz:
                for name in npz.files:
                    gran, _, field = name.partition(".")
                    dense.setdefault(Granularity(gran), {})[field] = npz[name]
        except (OSError, ValueError) as exc:
            raise SnapshotRejected(f"unreadable {data.name}: {exc}") from None
        return IndexSnapshot(int(meta.get("generation", 0)), dense)

    def remove(self, namespace: str) -> None:
        """Delete the snapshot of ``namespace`` if there is one."""
        for path in self._paths(namespace):
            path.unlink(missing_ok=True)
