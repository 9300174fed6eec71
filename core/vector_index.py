"""Vector indexes keyed by int64 ids, inner product over L2-normalised vectors (= cosine).

One interface, an exact numpy reference (``NumpyVectorIndex``) and FAISS (``FaissVectorIndex``).
Indexes are caches: the database is the source of truth and every index can be rebuilt from it.
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np


class VectorIndex(Protocol):
    """A mutable set of (id, vector) pairs searchable by inner product."""

    dim: int

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace vectors under ``ids`` (int64, shape (n,)); vectors float32 (n, dim)."""
        ...

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids that are present; returns how many were removed."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product per query row: (scores (q, k) float32, ids (q, k) int64, -1 = none)."""
        ...

    def dump(self) -> dict[str, np.ndarray]:
        """The index's whole state as named arrays, for a snapshot file (``restore`` reads it back)."""
        ...

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Replace the content by a ``dump`` of the same index type; ValueError if it is not one."""
        ...

    def __len__(self) -> int: ...


def _kind(state: dict[str, np.ndarray]) -> str:
    return str(state["kind"]) if "kind" in state else ""


def _check_dim(dim: int, vectors: np.ndarray) -> None:
    if vectors.ndim != 2 or (len(vectors) and vectors.shape[1] != dim):
        raise ValueError(f"snapshot holds vectors of shape {vectors.shape}, the index has dimension {dim}")


class NumpyVectorIndex:
    """Exact brute-force reference implementation; fine up to a few thousand vectors."""

    def __init__(self, dim: int):
        self.dim = dim
        self._ids = np.zeros((0,), dtype=np.int64)
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._lock = threading.Lock()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        with self._lock:
            keep = ~np.isin(self._ids, ids)
            self._ids = np.concatenate([self._ids[keep], ids])
            self._vectors = np.concatenate([self._vectors[keep], vectors])

    def remove(self, ids: np.ndarray) -> int:
        with self._lock:
            hit = np.isin(self._ids, np.asarray(ids, dtype=np.int64))
            self._ids = self._ids[~hit]
            self._vectors = self._vectors[~hit]
            return int(hit.sum())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            ids, vectors = self._ids, self._vectors
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        if len(ids) == 0 or k <= 0:
            return out_scores, out_ids
        scores = queries @ vectors.T
        take = min(k, len(ids))
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        for row in range(len(queries)):
            order = top[row][np.argsort(-scores[row, top[row]], kind="stable")]
            out_scores[row, :take] = scores[row, order]
            out_ids[row, :take] = ids[order]
        return out_scores, out_ids

    def dump(self) -> dict[str, np.ndarray]:
        with self._lock:
            return {"kind": np.array("numpy"), "ids": self._ids.copy(), "vectors": self._vectors.copy()}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        if _kind(state) != "numpy":
            raise ValueError(f"not a numpy index snapshot: {_kind(state)!r}")
        vectors = np.asarray(state["vectors"], dtype=np.float32)
        _check_dim(self.dim, vectors)
        with self._lock:
            self._ids = np.asarray(state["ids"], dtype=np.int64).copy()
            self._vectors = vectors.reshape(len(self._ids), self.dim).copy()

    def __len__(self) -> int:
        return len(self._ids)


class FaissVectorIndex:
    """FAISS exact inner-product index with id mapping (``IndexIDMap2(IndexFlatIP)``)."""

    def __init__(self, dim: int):
        import faiss

        self.dim = dim
        self._faiss = faiss
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._lock = threading.Lock()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        with self._lock:
            self._index.remove_ids(ids)  # type: ignore[arg-type]  # SWIG accepts an id array
            self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        with self._lock:
            return int(self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))  # type: ignore[arg-type]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if k <= 0 or self._index.ntotal == 0:
            return (
                np.full((len(queries), max(k, 0)), -np.inf, dtype=np.float32),
                np.full((len(queries), max(k, 0)), -1, dtype=np.int64),
            )
        with self._lock:
            scores, ids = self._index.search(queries, k)
        scores[ids < 0] = -np.inf
        return scores, ids

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every entry."""
        faiss = self._faiss
        with self._lock:
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            # IndexIDMap2.reconstruct_n takes external ids; read the flat storage by position instead.
            flat = faiss.downcast_index(self._index.index)
            vectors = flat.reconstruct_n(0, flat.ntotal) if flat.ntotal else np.zeros((0, self.dim), np.float32)
        return ids, vectors

    def dump(self) -> dict[str, np.ndarray]:
        # Ids and raw vectors rather than a FAISS file: re-adding them to a flat index is a copy.
        ids, vectors = self.items()
        return {"kind": np.array("flat"), "ids": ids, "vectors": vectors}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        if _kind(state) != "flat":
            raise ValueError(f"not a flat index snapshot: {_kind(state)!r}")
        vectors = np.ascontiguousarray(state["vectors"], dtype=np.float32)
        _check_dim(self.dim, vectors)
        index = self._faiss.IndexIDMap2(self._faiss.IndexFlatIP(self.dim))
        if len(vectors):
            index.add_with_ids(vectors, np.ascontiguousarray(state["ids"], dtype=np.int64))
        with self._lock:
            self._index = index

    def __len__(self) -> int:
        return int(self._index.ntotal)


class TombstoneFaissIndex:
    """A FAISS index that cannot remove vectors (HNSW, any GPU index) made mutable with tombstones.

    Vectors live in append-only *slots*; ``add`` of a known id tombstones its old slot, ``remove``
    tombstones it, and ``search`` over-fetches and drops dead slots. Once dead slots exceed
    ``compact_ratio`` of all slots the index is rebuilt from the live vectors (kept here as a float32
    copy, which also lets a CPU HNSW be moved to a GPU flat index and back).
    """

    def __init__(
        self,
        dim: int,
        kind: str = "hnsw",
        *,
        hnsw_m: int = 32,
        ef_search: int = 64,
        ef_construction: int = 80,
        compact_ratio: float = 0.2,
        gpu: bool = False,
    ):
        import faiss

        if kind not in ("hnsw", "flat"):
            raise ValueError(f"TombstoneFaissIndex kind must be 'hnsw' or 'flat', got {kind!r}")
        if gpu and faiss.get_num_gpus() <= 0:
            raise ValueError("gpu=True but faiss sees no GPU (install the 'gpu' extra on a GPU machine)")
        self.dim = dim
        self.kind = kind
        self.gpu = gpu
        self._faiss = faiss
        self._hnsw_m = hnsw_m
        self._ef_search = ef_search
        self._ef_construction = ef_construction
        self._compact_ratio = compact_ratio
        self._lock = threading.RLock()
        # Append-only slot buffers grown by doubling: an add must not copy every vector held.
        self._n = 0
        self._vec_buf = np.zeros((1024, dim), dtype=np.float32)
        self._ids_buf = np.full((1024,), -1, dtype=np.int64)  # slot -> id, -1 = tombstone
        self._slot_of: dict[int, int] = {}
        self._dead = 0
        self._index = self._new_index()

    def _new_index(self):  # type: ignore[no-untyped-def]  # faiss has no stubs
        faiss = self._faiss
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self._hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self._ef_construction
            index.hnsw.efSearch = self._ef_search
            return index
        index = faiss.IndexFlatIP(self.dim)
        if self.gpu:
            index = faiss.index_cpu_to_all_gpus(index)
        return index

    @property
    def tombstones(self) -> int:
        """Dead slots not yet compacted away."""
        return self._dead

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        if len(ids) == 0:
            return
        with self._lock:
            # Later duplicates in one call win, as with repeated single adds.
            last = {int(i): row for row, i in enumerate(ids)}
            rows = np.fromiter(last.values(), dtype=np.int64, count=len(last))
            ids, vectors = ids[rows], vectors[rows]
            for i in last:
                self._kill(i)
            start = self._n
            self._index.add(vectors)
            self._append(ids, vectors)
            for offset, i in enumerate(ids.tolist()):
                self._slot_of[i] = start + offset
            self._maybe_compact()

    @property
    def _vectors(self) -> np.ndarray:
        return self._vec_buf[: self._n]

    @property
    def _slot_ids(self) -> np.ndarray:
        return self._ids_buf[: self._n]

    def _append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        need = self._n + len(ids)
        if need > len(self._ids_buf):
            capacity = max(need, 2 * len(self._ids_buf))
            vec_buf = np.zeros((capacity, self.dim), dtype=np.float32)
            ids_buf = np.full((capacity,), -1, dtype=np.int64)
            vec_buf[: self._n] = self._vec_buf[: self._n]
            ids_buf[: self._n] = self._ids_buf[: self._n]
            self._vec_buf, self._ids_buf = vec_buf, ids_buf
        self._vec_buf[self._n : need] = vectors
        self._ids_buf[self._n : need] = ids
        self._n = need

    def _kill(self, doc_id: int) -> bool:
        slot = self._slot_of.pop(doc_id, None)
        if slot is None:
            return False
        self._slot_ids[slot] = -1
        self._dead += 1
        return True

    def remove(self, ids: np.ndarray) -> int:
        with self._lock:
            removed = sum(self._kill(int(i)) for i in np.asarray(ids, dtype=np.int64).tolist())
            self._maybe_compact()
            return removed

    def _maybe_compact(self) -> None:
        total = len(self._slot_ids)
        if total and self._dead > self._compact_ratio * total:
            self.compact()

    def compact(self) -> None:
        """Rebuild the FAISS index from the live vectors only (drops every tombstone)."""
        with self._lock:
            live = self._slot_ids >= 0
            vectors, ids = self._vectors[live].copy(), self._slot_ids[live].copy()
            self._index = self._new_index()
            if len(ids):
                self._index.add(np.ascontiguousarray(vectors))
            self._n = 0
            self._append(ids, vectors)
            self._slot_of = {int(i): s for s, i in enumerate(ids.tolist())}
            self._dead = 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        out_scores = np.full((len(queries), max(k, 0)), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), max(k, 0)), -1, dtype=np.int64)
        with self._lock:
            total = len(self._slot_ids)
            if k <= 0 or total == self._dead:
                return out_scores, out_ids
            # Over-fetch by the share of dead slots; retried wider in the rare case it was not enough.
            fetch = min(total, k + min(self._dead, 4 * k))
            while True:
                if self.kind == "hnsw":
                    self._index.hnsw.efSearch = max(self._ef_search, fetch)
                scores, slots = self._index.search(queries, fetch)
                slot_ids = np.where(slots >= 0, self._slot_ids[np.maximum(slots, 0)], -1)
                enough = (slot_ids >= 0).sum(axis=1) >= min(k, total - self._dead)
                if enough.all() or fetch >= total:
                    break
                fetch = min(total, fetch * 4)
        for row in range(len(queries)):
            live = slot_ids[row] >= 0
            take = min(k, int(live.sum()))
            out_ids[row, :take] = slot_ids[row][live][:take]
            out_scores[row, :take] = scores[row][live][:take]
        return out_scores, out_ids

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every live entry (for moving the index elsewhere)."""
        with self._lock:
            live = self._slot_ids >= 0
            return self._slot_ids[live].copy(), self._vectors[live].copy()

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every live entry; same as :meth:`vectors`."""
        return self.vectors()

    def dump(self) -> dict[str, np.ndarray]:
        with self._lock:
            state = {
                "kind": np.array(f"tombstone-{self.kind}"),
                "slot_ids": self._slot_ids.copy(),
                "vectors": self._vectors.copy(),
            }
            if self.kind == "hnsw":
                # The HNSW graph is what is slow to build (tens of seconds at 100k); a flat index is
                # rebuilt from the vectors.
                state["faiss"] = self._faiss.serialize_index(self._index)
            return state

    def restore(self, state: dict[str, np.ndarray]) -> None:
        if _kind(state) != f"tombstone-{self.kind}":
            raise ValueError(f"not a {self.kind} tombstone index snapshot: {_kind(state)!r}")
        slot_ids = np.asarray(state["slot_ids"], dtype=np.int64)
        vectors = np.ascontiguousarray(state["vectors"], dtype=np.float32)
        _check_dim(self.dim, vectors)
        if len(vectors) != len(slot_ids):
            raise ValueError(f"snapshot holds {len(vectors)} vectors for {len(slot_ids)} slots")
        if self.kind == "hnsw":
            # read_index (under deserialize_index) already returns the concrete class; wrapping it again in
            # downcast_index would leave a second owner of the same C++ object.
            index = self._faiss.deserialize_index(np.asarray(state["faiss"], np.uint8))
            if not isinstance(index, self._faiss.IndexHNSWFlat) or index.ntotal != len(slot_ids) or index.d != self.dim:
                raise ValueError(
                    f"snapshot's HNSW index holds {index.ntotal} vectors of dim {index.d}, expected "
                    f"{len(slot_ids)} of dim {self.dim}"
                )
            index.hnsw.efSearch = self._ef_search
        else:
            index = self._new_index()
            if len(vectors):
                index.add(vectors)
        with self._lock:
            self._index = index
            self._n = 0
            self._append(slot_ids, vectors)
            live = slot_ids >= 0
            self._slot_of = {
                int(i): int(s) for s, i in zip(np.flatnonzero(live).tolist(), slot_ids[live].tolist(), strict=True)
            }
            self._dead = int((~live).sum())

    def __len__(self) -> int:
        return len(self._slot_of)


class AutoVectorIndex:
    """Exact flat FAISS while small; HNSW (CPU) or a GPU flat index beyond a size threshold.

    Flat search is exact and supports real deletes; past ``hnsw_threshold`` vectors a flat scan costs
    more than a query embedding, so the index migrates once to HNSW (sub-linear search, tombstone
    deletes). The threshold is low (4,096: a 6 MB scan, ~0.5 ms on one core) because a Search scans one
    index per granularity: at 100k units the 5k session and 11k fact units took 1.9 ms of flat scans
    per query on the sidecar's single FAISS thread, against 0.2 ms each as HNSW. Where
    ``faiss.get_num_gpus() > 0`` and the index reaches ``gpu_threshold``, it moves to an exact GPU flat
    index instead (GPU indexes cannot remove either: same tombstones).
    """

    def __init__(
        self,
        dim: int,
        *,
        hnsw_threshold: int = 4_096,
        gpu_threshold: int = 50_000,
        use_gpu: bool | None = None,
        hnsw_m: int = 32,
        ef_search: int = 64,
    ):
        import faiss

        self.dim = dim
        self.hnsw_threshold = hnsw_threshold
        self.gpu_threshold = gpu_threshold
        self.use_gpu = faiss.get_num_gpus() > 0 if use_gpu is None else use_gpu
        self._hnsw_m = hnsw_m
        self._ef_search = ef_search
        self._lock = threading.RLock()
        self._index: FaissVectorIndex | TombstoneFaissIndex = FaissVectorIndex(dim)

    @property
    def backend(self) -> str:
        """``flat``, ``hnsw`` or ``gpu-flat``: what serves searches now."""
        if isinstance(self._index, FaissVectorIndex):
            return "flat"
        return "gpu-flat" if self._index.gpu else "hnsw"

    def _migrate(self) -> None:
        n = len(self._index)
        if self.use_gpu and n >= self.gpu_threshold and self.backend != "gpu-flat":
            target = TombstoneFaissIndex(self.dim, "flat", gpu=True)
        elif not self.use_gpu and n >= self.hnsw_threshold and self.backend == "flat":
            target = TombstoneFaissIndex(self.dim, "hnsw", hnsw_m=self._hnsw_m, ef_search=self._ef_search)
        else:
            return
        ids, vectors = self._index.items()
        target.add(ids, vectors)
        self._index = target

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        with self._lock:
            self._index.add(ids, vectors)
            self._migrate()

    def remove(self, ids: np.ndarray) -> int:
        with self._lock:
            return self._index.remove(ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._index  # a concurrent migration swaps the reference atomically
        return index.search(queries, k)

    def dump(self) -> dict[str, np.ndarray]:
        with self._lock:
            return self._index.dump()

    def restore(self, state: dict[str, np.ndarray]) -> None:
        kind = _kind(state)
        target: FaissVectorIndex | TombstoneFaissIndex
        if kind == "flat":
            target = FaissVectorIndex(self.dim)
        elif kind == "tombstone-hnsw":
            target = TombstoneFaissIndex(self.dim, "hnsw", hnsw_m=self._hnsw_m, ef_search=self._ef_search)
        elif kind == "tombstone-flat":
            # A GPU flat index is snapshotted as its vectors; it goes back to a GPU only if one is here.
            target = TombstoneFaissIndex(self.dim, "flat", gpu=self.use_gpu)
        else:
            raise ValueError(f"not a snapshot of an auto index: {kind!r}")
        target.restore(state)
        with self._lock:
            self._index = target
            # The thresholds (or the GPU) may differ from the process that wrote the snapshot.
            self._migrate()

    def __len__(self) -> int:
        return len(self._index)


def dumped_items(state: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the live entries of a ``dump`` of any index type here."""
    if "slot_ids" in state:
        live = np.asarray(state["slot_ids"]) >= 0
        return np.asarray(state["slot_ids"], dtype=np.int64)[live], np.asarray(state["vectors"])[live]
    return np.asarray(state["ids"], dtype=np.int64), np.asarray(state["vectors"])


def create_vector_index(dim: int, backend: str = "auto", **options: int | bool | None) -> VectorIndex:
    """Build the vector index named in configuration: ``auto`` (default), ``flat``, ``hnsw`` or ``numpy``."""
    if backend == "auto":
        return AutoVectorIndex(dim, **options)  # type: ignore[arg-type]
    if backend == "flat":
        return FaissVectorIndex(dim)
    if backend == "hnsw":
        return TombstoneFaissIndex(dim, "hnsw")
    if backend == "numpy":
        return NumpyVectorIndex(dim)
    raise ValueError(f"unknown vector index backend {backend!r}; choose auto, flat, hnsw or numpy")
