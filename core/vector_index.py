"""Vector indexes keyed by int64 ids, inner product over L2-normalised vectors (= cosine).

One interface, an exact numpy reference (``NumpyVectorIndex``) and FAISS (``FaissVectorIndex``).
Indexes are caches: the database is the source of truth and every index can be rebuilt from it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import subprocess
import sys
import threading
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

# A GPU flat search of a few vectors, in a child process: a FAISS build without kernels for this GPU fails
# with a C++ assertion that aborts the process (faiss-gpu-cu12 1.14.1 on an H100: "CUDA error 209 no kernel
# image is available"), which no Python handler can catch in the sidecar itself.
_GPU_PROBE = (
    "import faiss, numpy as np\n"
    "index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(8))\n"
    "index.add(np.eye(8, dtype='float32'))\n"
    "assert index.search(np.eye(8, dtype='float32')[:2], 2)[1][:, 0].tolist() == [0, 1]\n"
)


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


#: Most results a FAISS GPU index gives per query (its k-selection limit; a larger k raises there). A GPU
#: ``TombstoneFaissIndex`` fetches at most this many slots, so a query asking for more gets fewer results.
GPU_MAX_K = 2048


def _kind(state: dict[str, np.ndarray]) -> str:
    return str(state["kind"]) if "kind" in state else ""


def _check_dim(dim: int, vectors: np.ndarray) -> None:
    if vectors.ndim != 2 or (len(vectors) and vectors.shape[1] != dim):
        raise ValueError(f"snapshot holds vectors of shape {vectors.shape}, the index has dimension {dim}")


def _check_ids(ids: np.ndarray, vectors: np.ndarray) -> None:
    if ids.ndim != 1 or len(ids) != len(vectors):
        raise ValueError(f"snapshot holds {len(vectors)} vectors for ids of shape {ids.shape}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("snapshot lists an id twice")


def _last_per_id(ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` and ``vectors`` keeping only the last row of an id repeated in one ``add``: insert-or-replace
    means the later row replaces the earlier, as two single adds would."""
    unique, first_from_end = np.unique(ids[::-1], return_index=True)
    if len(unique) == len(ids):
        return ids, vectors
    rows = np.sort(len(ids) - 1 - first_from_end)
    return ids[rows], vectors[rows]


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
        ids, vectors = _last_per_id(ids, vectors)
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
        ids = np.asarray(state["ids"], dtype=np.int64)
        _check_dim(self.dim, vectors)
        _check_ids(ids, vectors)
        with self._lock:
            self._ids = ids.copy()
            self._vectors = vectors.reshape(len(ids), self.dim).copy()

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
        ids, vectors = _last_per_id(ids, vectors)
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
        ids = np.ascontiguousarray(state["ids"], dtype=np.int64)
        _check_dim(self.dim, vectors)
        _check_ids(ids, vectors)  # FAISS would assert (AssertionError) on a length mismatch
        index = self._faiss.IndexIDMap2(self._faiss.IndexFlatIP(self.dim))
        if len(vectors):
            index.add_with_ids(vectors, ids)
        with self._lock:
            self._index = index

    def __len__(self) -> int:
        return int(self._index.ntotal)


class TombstoneFaissIndex:
    """A FAISS index that cannot remove vectors (HNSW, any GPU index) made mutable with tombstones.

    Vectors live in append-only *slots*, one slot per distinct vector: ids whose vectors are identical
    (chat memory holds many "ok", "haha", boilerplate) share one slot, which lists them, and a search
    expands a slot into its ids (they tie, so all of them are a right answer). HNSW needs this: a cluster
    of identical points takes up the neighbour lists of the nodes around it (they are all at distance 0
    from one another, and the neighbour heuristic prunes every other direction), so greedy search gets
    stuck there and distinct units next to it become unreachable: 2,000 copies of three vectors among
    3,000 distinct ones hid 680 of those from their own top-10.

    ``add`` of a known id moves it out of its slot, ``remove`` does too; a slot whose last id goes is
    tombstoned, and ``search`` over-fetches and drops dead slots. Once dead slots exceed
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
        self._ids_buf = np.full((1024,), -1, dtype=np.int64)  # slot -> one of its ids, -1 = tombstone
        self._slot_of: dict[int, int] = {}  # id -> slot
        # Slots holding more than one id -> their ids, in arrival order (the one in _ids_buf among them).
        self._shared: dict[int, dict[int, None]] = {}
        # hash of a live slot's vector bytes -> the slot, to find the slot an identical vector joins.
        self._slot_by_hash: dict[int, int] = {}
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

    @property
    def slots(self) -> int:
        """Slots in the FAISS index, live or dead (fewer than ``len`` when ids share a vector)."""
        return self._n

    @property
    def capacity(self) -> int:
        """Slots the float32 copy has room for before it grows (compaction shrinks it to twice the live slots)."""
        return len(self._ids_buf)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        if len(ids) == 0:
            return
        with self._lock:
            # Later duplicates in one call win, as with repeated single adds.
            last = {int(i): row for row, i in enumerate(ids.tolist())}
            new_rows: list[int] = []  # rows of ``vectors`` that open a slot, in slot order from self._n
            new_ids: list[int] = []  # the first id of each of those slots
            new_by_hash: dict[int, int] = {}  # hash -> position in new_rows
            for doc_id, row in last.items():
                vector = vectors[row]
                old = self._slot_of.get(doc_id)
                if old is not None and np.array_equal(self._vec_buf[old], vector):
                    continue  # unchanged: nothing to tombstone
                self._detach(doc_id)
                key = hash(vector.tobytes())
                slot = self._slot_by_hash.get(key)
                if slot is not None and np.array_equal(self._vec_buf[slot], vector):
                    self._join(slot, doc_id, int(self._ids_buf[slot]))
                    continue
                pending = new_by_hash.get(key)
                if pending is not None and np.array_equal(vectors[new_rows[pending]], vector):
                    self._join(self._n + pending, doc_id, new_ids[pending])
                    continue
                if pending is None:  # (a hash collision of two distinct vectors keeps the first's entry)
                    new_by_hash[key] = len(new_rows)
                self._slot_of[doc_id] = self._n + len(new_rows)
                new_rows.append(row)
                new_ids.append(doc_id)
            if new_rows:
                fresh = np.ascontiguousarray(vectors[new_rows])
                start = self._n
                self._index.add(fresh)
                self._append(np.asarray(new_ids, dtype=np.int64), fresh)
                for key, position in new_by_hash.items():
                    self._slot_by_hash.setdefault(key, start + position)
            self._maybe_compact()

    def _join(self, slot: int, doc_id: int, first: int) -> None:
        """Add ``doc_id`` to ``slot``, whose vector equals its own (``first``: an id already there)."""
        members = self._shared.get(slot)
        if members is None:
            members = self._shared[slot] = {first: None}
        members[doc_id] = None
        self._slot_of[doc_id] = slot

    def _detach(self, doc_id: int) -> bool:
        """Take ``doc_id`` out of its slot; the slot is tombstoned when it was the last id there."""
        slot = self._slot_of.pop(doc_id, None)
        if slot is None:
            return False
        members = self._shared.get(slot)
        if members is not None:
            del members[doc_id]
            if self._ids_buf[slot] == doc_id:
                self._ids_buf[slot] = next(iter(members))
            if len(members) == 1:
                del self._shared[slot]
            return True
        self._ids_buf[slot] = -1
        self._dead += 1
        key = hash(self._vec_buf[slot].tobytes())
        if self._slot_by_hash.get(key) == slot:
            del self._slot_by_hash[key]
        return True

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

    def _install(self, index: Any, vectors: np.ndarray, slot_ids: np.ndarray, shared: dict[int, list[int]]) -> int:
        """Replace the whole state: ``index`` holds ``vectors`` (one per slot, ``slot_ids`` their first ids, -1
        dead), ``shared`` every id of the slots that hold several. Returns how many live slots repeat the
        vector of an earlier live slot (a snapshot written before slots were shared)."""
        n = len(slot_ids)
        # Sized to what is live, not to the largest the index ever was: compaction after mass deletes
        # gives the memory back.
        capacity = max(1024, 2 * n)
        vec_buf = np.zeros((capacity, self.dim), dtype=np.float32)
        ids_buf = np.full((capacity,), -1, dtype=np.int64)
        vec_buf[:n] = vectors
        ids_buf[:n] = slot_ids
        live = np.flatnonzero(slot_ids >= 0).tolist()
        slot_of = dict(zip(slot_ids[live].tolist(), live, strict=True))
        for slot, members in shared.items():
            for doc_id in members:
                slot_of[doc_id] = slot
        by_hash: dict[int, int] = {}
        repeats = 0
        for slot in live:
            key = hash(vec_buf[slot].tobytes())
            other = by_hash.setdefault(key, slot)
            if other != slot and np.array_equal(vec_buf[other], vec_buf[slot]):
                repeats += 1
        with self._lock:
            self._index = index
            self._n = n
            self._vec_buf, self._ids_buf = vec_buf, ids_buf
            self._slot_of = slot_of
            self._shared = {slot: dict.fromkeys(members) for slot, members in shared.items()}
            self._slot_by_hash = by_hash
            self._dead = n - len(live)
        return repeats

    def _build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the content by ``ids`` and ``vectors`` (ids unique), identical vectors sharing a slot."""
        rows: list[int] = []
        slot_ids: list[int] = []
        shared: dict[int, list[int]] = {}
        by_hash: dict[int, int] = {}
        for row, doc_id in enumerate(ids.tolist()):
            key = hash(vectors[row].tobytes())
            slot = by_hash.get(key)
            if slot is not None and np.array_equal(vectors[rows[slot]], vectors[row]):
                shared.setdefault(slot, [slot_ids[slot]]).append(doc_id)
                continue
            by_hash.setdefault(key, len(rows))
            rows.append(row)
            slot_ids.append(doc_id)
        distinct = np.ascontiguousarray(vectors[rows], dtype=np.float32).reshape(len(rows), self.dim)
        index = self._new_index()
        if len(rows):
            index.add(distinct)
        self._install(index, distinct, np.asarray(slot_ids, dtype=np.int64), shared)

    def remove(self, ids: np.ndarray) -> int:
        with self._lock:
            removed = sum(self._detach(int(i)) for i in np.asarray(ids, dtype=np.int64).tolist())
            self._maybe_compact()
            return removed

    def _maybe_compact(self) -> None:
        total = self._n
        if total and self._dead > self._compact_ratio * total:
            self.compact()

    def compact(self) -> None:
        """Rebuild the FAISS index from the live slots only (drops every tombstone)."""
        with self._lock:
            live = np.flatnonzero(self._slot_ids >= 0)
            new_slot = {int(old): new for new, old in enumerate(live.tolist())}
            shared = {new_slot[slot]: list(members) for slot, members in self._shared.items()}
            vectors, slot_ids = self._vec_buf[live].copy(), self._ids_buf[live].copy()
            index = self._new_index()
            if len(live):
                index.add(vectors)
            self._install(index, vectors, slot_ids, shared)

    def _expand(self, slots: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``k`` live ids (and scores) of one row of slot results, shared slots expanded."""
        slot_ids = np.where(slots >= 0, self._ids_buf[np.maximum(slots, 0)], -1)
        live = slot_ids >= 0
        ids, scores = slot_ids[live], scores[live]
        if self._shared:
            live_slots = slots[live].tolist()
            if any(slot in self._shared for slot in live_slots):
                out_ids: list[int] = []
                out_scores: list[float] = []
                for slot, doc_id, score in zip(live_slots, ids.tolist(), scores.tolist(), strict=True):
                    members = self._shared.get(slot)
                    taken = [doc_id] if members is None else list(itertools.islice(members, k - len(out_ids)))
                    out_ids += taken
                    out_scores += [score] * len(taken)
                    if len(out_ids) >= k:
                        break
                return np.asarray(out_ids, dtype=np.int64), np.asarray(out_scores, dtype=np.float32)
        return ids[:k], scores[:k]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        out_scores = np.full((len(queries), max(k, 0)), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), max(k, 0)), -1, dtype=np.int64)
        with self._lock:
            live_ids = len(self._slot_of)
            if k <= 0 or live_ids == 0:
                return out_scores, out_ids
            # A GPU index refuses k above its selection limit: past it a query gets fewer results.
            limit = min(self._n, GPU_MAX_K) if self.gpu else self._n
            want = min(k, live_ids)
            # Over-fetch by the share of dead slots; retried wider in the rare case it was not enough.
            fetch = min(limit, k + min(self._dead, 4 * k))
            while True:
                if self.kind == "hnsw":
                    self._index.hnsw.efSearch = max(self._ef_search, fetch)
                scores, slots = self._index.search(queries, fetch)
                rows = [self._expand(slots[row], scores[row], k) for row in range(len(queries))]
                if fetch >= limit or all(len(ids) >= want for ids, _ in rows):
                    break
                fetch = min(limit, fetch * 4)
        for row, (ids, row_scores) in enumerate(rows):
            out_ids[row, : len(ids)] = ids
            out_scores[row, : len(ids)] = row_scores
        return out_scores, out_ids

    def _members(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, slots) of every id of a shared slot other than the one in ``_ids_buf``."""
        ids: list[int] = []
        slots: list[int] = []
        for slot, members in self._shared.items():
            first = int(self._ids_buf[slot])
            for doc_id in members:
                if doc_id != first:
                    ids.append(doc_id)
                    slots.append(slot)
        return np.asarray(ids, dtype=np.int64), np.asarray(slots, dtype=np.int64)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every live entry (for moving the index elsewhere)."""
        with self._lock:
            live = self._slot_ids >= 0
            member_ids, member_slots = self._members()
            ids = np.concatenate([self._slot_ids[live], member_ids])
            vectors = np.concatenate([self._vectors[live], self._vec_buf[member_slots]])
            return ids, vectors

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every live entry; same as :meth:`vectors`."""
        return self.vectors()

    def dump(self) -> dict[str, np.ndarray]:
        with self._lock:
            member_ids, member_slots = self._members()
            state = {
                "kind": np.array(f"tombstone-{self.kind}"),
                "slot_ids": self._slot_ids.copy(),
                "vectors": self._vectors.copy(),
                # The other ids of shared slots (``dumped_items`` lists them too).
                "member_ids": member_ids,
                "member_slots": member_slots,
            }
            if self.kind == "hnsw":
                # The HNSW graph is what is slow to build (tens of seconds at 100k); a flat index is
                # rebuilt from the vectors.
                state["faiss"] = self._faiss.serialize_index(self._index)
            return state

    def restore(self, state: dict[str, np.ndarray]) -> None:
        if _kind(state) != f"tombstone-{self.kind}":
            raise ValueError(f"not a {self.kind} tombstone index snapshot: {_kind(state)!r}")
        slot_ids = np.asarray(state["slot_ids"], dtype=np.int64).reshape(-1)
        vectors = np.ascontiguousarray(state["vectors"], dtype=np.float32)
        _check_dim(self.dim, vectors)
        if len(vectors) != len(slot_ids):
            raise ValueError(f"snapshot holds {len(vectors)} vectors for {len(slot_ids)} slots")
        vectors = vectors.reshape(len(slot_ids), self.dim)
        member_ids = np.asarray(state.get("member_ids", np.zeros(0)), dtype=np.int64).reshape(-1)
        member_slots = np.asarray(state.get("member_slots", np.zeros(0)), dtype=np.int64).reshape(-1)
        if len(member_ids) != len(member_slots):
            raise ValueError(f"snapshot lists {len(member_ids)} shared-slot ids for {len(member_slots)} slots")
        if len(member_slots) and (
            member_slots.min() < 0 or member_slots.max() >= len(slot_ids) or (slot_ids[member_slots] < 0).any()
        ):
            raise ValueError("snapshot lists shared-slot ids of dead or missing slots")
        every_id = np.concatenate([slot_ids[slot_ids >= 0], member_ids])
        if len(np.unique(every_id)) != len(every_id):
            raise ValueError("snapshot lists an id twice")
        shared: dict[int, list[int]] = {}
        for doc_id, slot in zip(member_ids.tolist(), member_slots.tolist(), strict=True):
            shared.setdefault(slot, [int(slot_ids[slot])]).append(doc_id)
        if self.kind == "hnsw":
            try:
                # read_index (under deserialize_index) already returns the concrete class; wrapping it
                # again in downcast_index would leave a second owner of the same C++ object.
                index = self._faiss.deserialize_index(np.asarray(state["faiss"], np.uint8))
            except RuntimeError as exc:
                # FAISS raises RuntimeError on a blob it cannot read (another FAISS version, damage the
                # checksum cannot see): the snapshot is unusable, which callers handle as ValueError.
                raise ValueError(f"FAISS cannot read the snapshot's HNSW index: {str(exc).splitlines()[0]}") from None
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
        if self._install(index, vectors, slot_ids, shared):
            # Written before identical vectors shared a slot: its graph has the clusters that hide their
            # neighbours, so it is rebuilt once (the database would be the other way to rebuild it).
            self._build(*self.items())

    def __len__(self) -> int:
        return len(self._slot_of)


@functools.cache
def faiss_gpu_usable() -> bool:
    """Whether FAISS sees a GPU and a GPU flat search works there (checked once per process, in a child)."""
    import faiss

    if faiss.get_num_gpus() <= 0:
        return False
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _GPU_PROBE], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("FAISS sees a GPU but its check could not run (%s); vector indexes stay on the CPU", exc)
        return False
    if probe.returncode != 0:
        tail = (probe.stderr or probe.stdout).strip().splitlines()[-3:]
        log.warning(
            "FAISS sees a GPU but a GPU search failed (exit %s: %s); vector indexes stay on the CPU. A FAISS build "
            "with kernels for this GPU is needed (docs/gpu.md)",
            probe.returncode,
            " | ".join(tail),
        )
        return False
    return True


class AutoVectorIndex:
    """Exact flat FAISS while small; HNSW (CPU) or a GPU flat index beyond a size threshold.

    Flat search is exact and supports real deletes; past ``hnsw_threshold`` vectors a flat scan costs
    more than a query embedding, so the index migrates once to HNSW (sub-linear search, tombstone
    deletes). The threshold is low (4,096: a 6 MB scan, ~0.5 ms on one core) because a Search scans one
    index per granularity: at 100k units the 5k session and 11k fact units took 1.9 ms of flat scans
    per query on the sidecar's single FAISS thread, against 0.2 ms each as HNSW. Where
    :func:`faiss_gpu_usable` and the index reaches ``gpu_threshold``, it moves on to an exact GPU flat
    index (GPU indexes cannot remove either: same tombstones); between the two thresholds it is HNSW there too.
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
        self.dim = dim
        self.hnsw_threshold = hnsw_threshold
        self.gpu_threshold = gpu_threshold
        self.use_gpu = faiss_gpu_usable() if use_gpu is None else use_gpu
        self._hnsw_m = hnsw_m
        self._ef_search = ef_search
        self._lock = threading.RLock()
        self._index: FaissVectorIndex | TombstoneFaissIndex = FaissVectorIndex(dim)

    @property
    def backend(self) -> str:
        """``flat``, ``hnsw`` or ``gpu-flat``: what serves searches now."""
        if isinstance(self._index, FaissVectorIndex):
            return "flat"
        if self._index.gpu:
            return "gpu-flat"
        # A CPU tombstone flat index is a brute-force scan like FaissVectorIndex: "flat", so _migrate moves it
        # to HNSW past the threshold.
        return "hnsw" if self._index.kind == "hnsw" else "flat"

    def _migrate(self) -> None:
        n = len(self._index)
        if self.use_gpu and n >= self.gpu_threshold and self.backend != "gpu-flat":
            target = TombstoneFaissIndex(self.dim, "flat", gpu=True)
        elif n >= self.hnsw_threshold and self.backend == "flat" and not (self.use_gpu and n >= self.gpu_threshold):
            # On a GPU host too: between the two thresholds an index would otherwise stay a CPU flat scan (at
            # 100k units on the H100 host the exchange, fact and session indexes, ~46k vectors, stayed flat).
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
        if isinstance(target, TombstoneFaissIndex) and target.kind == "flat" and not target.gpu:
            # A GPU host's snapshot on a host without one: an exact flat index with real deletes, which
            # _migrate below turns into HNSW when it is past the threshold, as any flat index.
            flat = FaissVectorIndex(self.dim)
            flat.add(*target.items())
            target = flat
        with self._lock:
            self._index = target
            # The thresholds (or the GPU) may differ from the process that wrote the snapshot.
            self._migrate()

    def __len__(self) -> int:
        return len(self._index)


def dumped_items(state: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the live entries of a ``dump`` of any index type here."""
    if "slot_ids" in state:
        slot_ids = np.asarray(state["slot_ids"], dtype=np.int64)
        vectors = np.asarray(state["vectors"])
        live = slot_ids >= 0
        ids, live_vectors = slot_ids[live], vectors[live]
        if "member_ids" in state and len(state["member_ids"]):
            # The other ids of slots that several ids share (identical vectors).
            slots = np.asarray(state["member_slots"], dtype=np.int64)
            ids = np.concatenate([ids, np.asarray(state["member_ids"], dtype=np.int64)])
            live_vectors = np.concatenate([live_vectors, vectors[slots]])
        return ids, live_vectors
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
