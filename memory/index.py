"""In-memory search structures of one namespace: per-granularity FAISS and BM25 plus association edges.

A ``NamespaceIndex`` is a cache of the database (``memory/store.py``): the engine builds it from the
store on start, applies each committed change to it, and rebuilds it whenever its ``generation`` falls
behind the store's (a crash or failure between commit and index update). The retriever
(``memory/retrieval.py``) only reads it.

Reads need no lock: a search racing a write may see a key whose unit was just removed, so
``unit(key)`` returns ``None`` and callers skip such keys.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from core.lexical import BM25Index
from core.vector_index import VectorIndex, create_vector_index
from memory.model import Granularity, MemoryUnit
from memory.store import StoredUnit

VectorIndexFactory = Callable[[int], VectorIndex]


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

    # -- writes (engine only) ------------------------------------------------------------------------

    def apply(self, remove_keys: Iterable[int], add: Sequence[StoredUnit]) -> None:
        """Remove units by key, then add (or replace) the given stored units."""
        with self._lock:
            self._remove([k for k in remove_keys if k in self._units], drop_edges=True)
            # A replaced unit (same key) loses its old message links and vectors but keeps its edges.
            self._remove([s.key for s in add if s.key in self._units], drop_edges=False)
            add_by_gran: dict[Granularity, list[StoredUnit]] = {}
            for stored in {s.key: s for s in add}.values():
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

    def units_of_message(self, message_id: str) -> set[int]:
        """Keys of the units that cover a message."""
        return set(self._by_message.get(message_id, ()))

    def dense_search(self, granularity: Granularity, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (keys, cosine scores) of one granularity; empty arrays when it has no units."""
        index = self._dense.get(granularity)
        if index is None or k <= 0 or not len(index):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scores, ids = index.search(np.asarray(query, dtype=np.float32).reshape(1, -1), k)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

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
