"""``MemoryEngine``: the memory component the runtime puts on ``rt.memory``.

Transport-neutral: it takes domain values, raises ``core.errors``, and never touches grpc/protobuf.

Write path (the database is the source of truth):
  1. validate; assign ids to messages without one; compare content hashes (same id + same content =
     unchanged, so resending is a no-op);
  2. derive the *turn* units of the new or changed messages (``memory.units.turn_units``), embed them
     (outside the namespace lock), and commit messages + turn units + a "session pending" mark in one
     transaction, shared with the other Writes queued meanwhile (group commit, ``_commit``);
  3. apply the committed change to the in-memory indexes and reply. Raw turns are searchable as soon
     as Write returns (read-your-writes);
  4. a background worker re-derives pending sessions (exchange, session and fact units, whose vectors are
     composed from their turns' vectors: ``compose_vectors``), commits them together with clearing the
     mark, links new units into the association graph and refits the GMM when the namespace has grown
     enough. Several writes to one session coalesce into one re-derive.

Foreground first: Write, Search and Delete go before background work, which starts each chunk or
association step only in a quiet moment and yields every few units inside one (``_Priority``).

Crash safety: the index remembers the store generation it reflects; if an index update fails after
the commit it is rebuilt from the database on the next access, and on start every index is built from
its snapshot file caught up with the database (``memory.index.IndexSnapshots``) or from the database,
and every still-pending session is re-derived.

Interface with the unit and retrieval modules (called with exactly these signatures; tests may inject
others):

  memory.units.derive_units(session_id: str, messages: Sequence[MemoryMessage],
                            policy: UnitPolicy) -> list[MemoryUnit]
      Every unit of one session, from its messages in arrival order; ``policy`` is
      ``UnitPolicy.from_mapping(<namespace memory policy>)``. Unit ids must be deterministic (same
      messages -> same ids) and unique within a namespace (e.g. prefixed by the session id). A turn
      unit must depend on its own message only: Write derives turn units from just the new messages.
  memory.retrieval.search(index: NamespaceIndex, query: SearchQuery, query_vector: np.ndarray,
                          policy: Mapping[str, Any]) -> SearchResult
      Ranks and packs; reads ``index`` only (dense_search, lexical_search, unit, vector, neighbors).
      ``policy`` is the namespace's memory policy from configuration (e.g. router temperature).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from core.coordination import LeaseManager, LocalLeases
from core.embedding import Embedder, answered_from_cache
from core.errors import FieldViolation, InvalidArgumentError, NotFoundError
from memory.association import AssociationConfig, AssociationManager
from memory.consolidation import (
    RETENTION_BATCH,
    ConsolidationPolicy,
    merged_weights,
    messages_to_forget,
    promoted_weights,
    weight_changes,
)
from memory.index import IndexSnapshot, IndexSnapshots, NamespaceIndex, SnapshotRejected, VectorIndexFactory
from memory.model import Granularity, MemoryMessage, MemoryUnit, SearchQuery, SearchResult
from memory.retrieval import lexical_stage as _lexical_stage
from memory.retrieval import search as _retrieval_search
from memory.store import (
    Change,
    MemoryStore,
    MessageState,
    StaleChange,
    StoredMessage,
    StoredUnit,
    content_hash,
    unit_key,
)
from memory.units import (
    UnitPolicy,
    derive_segment,
    derive_units,
    embedding_text,
    policy_enricher,
    segment_digest_id,
    session_segments,
    turn_embedding_text,
    turn_text,
    turn_units,
)

log = logging.getLogger(__name__)

DeriveFn = Callable[[str, Sequence[MemoryMessage], Mapping[str, Any]], list[MemoryUnit]]
RetrieveFn = Callable[[NamespaceIndex, SearchQuery, np.ndarray, Mapping[str, Any]], SearchResult]

MAX_ID_LEN = 255
MAX_TEXT_CHARS = 100_000
MAX_TOP_K = 1000
DEFAULT_TOP_K = 10
# Least seconds between two background re-checks of old turns (near-duplicates) of a namespace.
CONSOLIDATION_INTERVAL_S = 5.0
# Least seconds between two background retention passes of a namespace (forgetting by age and count). Its
# query reads the namespace's messages in the database (to find the expired ones and the count limit's
# threshold), so it does not run with every consolidation pass; a pass that hit RETENTION_BATCH runs again
# at once.
RETENTION_INTERVAL_S = 60.0
# Seconds a namespace whose background association step failed waits before the next try, doubling with each
# failure in a row up to the most.
ASSOCIATION_RETRY_S = 0.5
ASSOCIATION_RETRY_MAX_S = 30.0
# Most seconds the admin Consolidate spends linking the backlog (the rest is left to the background worker).
CONSOLIDATE_LINK_BUDGET_S = 60.0
# A session derivation waits for agent turns in flight, and its linking for foreground work (each at most
# 1 s), only while fewer sessions than this are queued behind it: under a steady load (many busy threads,
# writers back to back) waiting would let the backlog grow by a second or two per session.
YIELD_MAX_QUEUED = 4
# How long Consolidate waits for the association lease held elsewhere (the worker's step, another replica's
# Consolidate) before leaving refit and linking to its holder.
CONSOLIDATE_LEASE_WAIT_S = 30.0
# Granularities committed inside Write itself; the rest are derived in the background.
SYNC_GRANULARITIES = frozenset({Granularity.TURN})


def checked_derive_duty(value: object) -> float:
    """``value`` as a ``derive_duty`` (see MemoryEngine): a number in (0, 1], else ValueError saying why."""
    try:
        duty = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        duty = math.nan
    if not 0.0 < duty <= 1.0:
        raise ValueError(f"derive_duty must be a number in (0, 1], got {value!r}")
    return duty


def _default_derive() -> DeriveFn:
    """``memory.units.derive_units`` with the namespace's memory policy turned into its ``UnitPolicy``."""
    return lambda sid, msgs, policy: derive_units(sid, msgs, UnitPolicy.from_mapping(policy))


@dataclass
class _SegmentPrints:
    """Segment fingerprints of a session: ``known`` from its last committed pass, ``learned`` by this one;
    ``hashes``: the stored content hash of each message of the session, in order (what they are made of)."""

    known: Mapping[int, str]
    hashes: Sequence[str]
    learned: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteResult:
    """Outcome of one Write: ids in request order, and how many messages were new/changed or unchanged."""

    message_ids: list[str]
    written: int
    unchanged: int


@dataclass(frozen=True)
class DeleteResult:
    """Outcome of one Delete."""

    messages: int
    units: int
    sessions_rederived: int


@dataclass(frozen=True)
class ConsolidationReport:
    """What one consolidation pass did."""

    sessions_derived: int
    units_added: int
    units_removed: int
    clusters: int
    edges: int
    refit: bool
    seconds: float
    messages_forgotten: int = 0
    units_reweighted: int = 0


@dataclass(frozen=True)
class MemoryStats:
    """Sizes and state of one namespace."""

    messages: int
    sessions: int
    units: dict[str, int]
    edges: int
    generation: int
    index_generation: int
    pending_sessions: int
    clusters: int
    index_backends: dict[str, str] = field(default_factory=dict)
    last_refit_seconds: float = 0.0
    pending_links: int = 0


_STALE = "stale"

def _fingerprint(stored: StoredMessage | None) -> MessageState:
    return None if stored is None else (stored.message.session_id, stored.content_hash)


@dataclass
class _Commit:
    """One Write's planned change, queued for the namespace's next (group) commit."""

    change: Change
    seen: dict[str, MessageState]
    """The stored state of each of its messages when it was planned; the plan is stale once one differs."""
    outcome: bool | str | BaseException | None = None
    """None while queued; True once committed, ``_STALE`` to plan again, or the exception of the commit."""


@dataclass
class _Namespace:
    index: NamespaceIndex
    lock: threading.RLock = field(default_factory=threading.RLock)
    dirty: bool = False
    # Writes planned and waiting for the namespace's next commit (group commit), guarded by queue_lock.
    queued: list[_Commit] = field(default_factory=list)
    queue_lock: threading.Lock = field(default_factory=threading.Lock)
    # Generation of the index as last saved to (or loaded from) its snapshot file; -1 = none.
    snapshot_generation: int = -1
    # Where the index came from at its last load (Stats, logs, tests).
    source: str = "database"


def compose_vectors(
    units: Sequence[MemoryUnit], stored: Iterable[StoredUnit], model: str
) -> tuple[list[tuple[MemoryUnit, np.ndarray]], list[MemoryUnit]]:
    """Vectors of derived units from the vectors of the turns they quote, among the ``stored`` units of
    ``model``: ((unit, vector) pairs, units left to embed).

    A derived unit (exchange window, session digest, fact) quotes whole turns, whose vectors Write has
    already computed. Its vector is the normalised mean of those turn vectors weighted by the square root
    of each turn's word count: composing costs microseconds where a model pass over the unit's 100-300
    tokens costs 10-40 ms of a core, which was most of the background derivation's CPU and competed with
    foreground Writes and Searches (LoCoMo dev, in-process: derivation 79.6 s -> 2.6 s). Retrieval quality
    held: budget-recall@100/200/400/800 0.492 / 0.647 / 0.743 / 0.815 against 0.492 / 0.646 / 0.746 /
    0.816 with every unit embedded (weights linear in word count: 0.642 at 200; equal weights: 0.643).
    Only the dense channel loses the words outside the turns (a digest's keyphrases, a fact's label); the
    lexical channel still reads the whole unit text. Turn units, and units whose turns have no vector under
    the current model, are left to embed.
    """
    turn_of = {
        s.unit.message_ids[0]: s
        for s in stored
        if s.unit.granularity == Granularity.TURN and s.model == model and s.unit.message_ids
    }
    composed: list[tuple[MemoryUnit, np.ndarray]] = []
    rest: list[MemoryUnit] = []
    for unit in units:
        turns = [turn_of.get(mid) for mid in unit.message_ids]
        if unit.granularity == Granularity.TURN or not turns or any(t is None for t in turns):
            rest.append(unit)
            continue
        found = [t for t in turns if t is not None]
        # Words of each turn as units quote it ("<speaker>: <text>").
        weights = np.sqrt(np.asarray([max(1, len(t.unit.text.split())) for t in found], dtype=np.float32))
        vector = (weights[:, None] * np.stack([t.vector for t in found])).sum(axis=0)
        norm = float(np.linalg.norm(vector))
        if norm < 1e-9:
            rest.append(unit)
            continue
        composed.append((unit, (vector / norm).astype(np.float32)))
    return composed, rest


def _clean_id(value: str) -> bool:
    """Whether a session or message id has no control characters and no spaces at either end."""
    return value == value.strip() and all(ord(c) >= 32 for c in value)


def _utc(value: datetime | None, field: str = "time") -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # an aware time at the edge of year 1 or 9999 whose UTC value is outside both
        raise InvalidArgumentError(field, "is outside the years 1-9999 in UTC") from None


class _Priority:
    """Foreground calls (Write, Search, Delete) go first; background work (derivation embeddings, linking,
    refits) fills the gaps between them.

    The embedder encodes one call at a time, so a background call embedding a whole session (digest and
    window texts, several times longer than a turn) would make every Write and Search queue behind all of
    it, and a linking pass holds the GIL in long stretches. Background embeddings are cut into chunks of
    ``chunk`` texts, and each chunk or association step starts only once no foreground call has run for
    ``quiet_s`` (a client writing turn after turn leaves gaps of a few milliseconds, which must not be
    filled with long background work). A background step waits at most ``max_yield_s``, so a steady
    foreground load slows consolidation down but cannot stop it.
    """

    def __init__(self, embedder: Embedder, chunk: int, quiet_s: float = 0.02, max_yield_s: float = 1.0):
        self._embedder = embedder
        self.chunk = max(1, chunk)
        self.quiet_s = quiet_s
        self.max_yield_s = max_yield_s
        self._foreground = 0
        self._last_foreground = 0.0
        # Interactive work outside the engine (agent turns in flight), a subset of the foreground.
        self._interactive = 0
        self._last_interactive = 0.0
        self._cv = threading.Condition()

    @contextlib.contextmanager
    def foreground(self, *, interactive: bool = False) -> Iterator[None]:
        """Marks a foreground call for its whole duration. ``interactive``: work outside the engine (an agent
        turn), which session derivation also waits for (see :meth:`wait_interactive`)."""
        with self._cv:
            self._foreground += 1
            self._interactive += interactive
        try:
            yield
        finally:
            with self._cv:
                now = time.monotonic()
                self._foreground -= 1
                self._last_foreground = now
                if interactive:
                    self._interactive -= 1
                    self._last_interactive = now
                self._cv.notify_all()

    def wait_interactive(self) -> None:
        """Before a session derivation: block while interactive work is in flight or ended less than
        ``quiet_s`` ago (at most ``max_yield_s``).

        Derivation (pure Python, tens of milliseconds for a long session) does not wait for Writes and
        Searches, so that a client writing turn after turn does not starve it; but the derivation that an
        agent turn's memory write queues would otherwise run during the next turn and share the GIL with
        its guard checks and its search. Under a steady stream of turns a derivation still starts within
        ``max_yield_s``, and covers every Write queued for its session meanwhile.
        """
        self._wait_for_quiet(interactive_only=True, quiet_s=self.quiet_s, max_wait_s=self.max_yield_s)

    def wait_quiet(self) -> None:
        """Block until no foreground call has run for ``quiet_s`` (at most ``max_yield_s``)."""
        self._wait_for_quiet(interactive_only=False, quiet_s=self.quiet_s, max_wait_s=self.max_yield_s)

    def yield_to_foreground(self, quiet_s: float = 0.005, max_wait_s: float = 0.1) -> None:
        """Called between small pieces of long background work: returns at once unless a foreground call
        ran in the last ``quiet_s``, else waits for that much quiet (at most ``max_wait_s``). A Search then
        gets the GIL to itself instead of alternating with a linking pass in 5 ms switch intervals (which
        doubled its latency), and a client issuing calls back to back is not interleaved with background
        work between two calls. The bound is short, unlike :meth:`wait_quiet`'s: under a steady stream of
        Writes a pass that yields dozens of times would otherwise stall for a second at each yield (four
        concurrent writers left 26.7 s of derivation behind their last Write)."""
        if not self._foreground and time.monotonic() - self._last_foreground >= quiet_s:
            return  # racy reads are fine: a miss only delays the yield to the next piece
        self._wait_for_quiet(interactive_only=False, quiet_s=quiet_s, max_wait_s=max_wait_s)

    def _wait_for_quiet(self, *, interactive_only: bool, quiet_s: float, max_wait_s: float) -> None:
        """Block while foreground (or only interactive) work runs or ended less than ``quiet_s`` ago, at most
        ``max_wait_s``."""
        deadline = time.monotonic() + max_wait_s
        with self._cv:
            while (now := time.monotonic()) < deadline:
                busy = self._interactive if interactive_only else self._foreground
                last = self._last_interactive if interactive_only else self._last_foreground
                if busy:
                    self._cv.wait(deadline - now)
                elif now - last < quiet_s:
                    self._cv.wait(min(deadline, last + quiet_s) - now)
                else:
                    return

    def embed_background(self, texts: list[str]) -> np.ndarray:
        parts: list[np.ndarray] = []
        for start in range(0, len(texts), self.chunk):
            self.wait_quiet()
            parts.append(self._embedder.embed(texts[start : start + self.chunk]))
        if not parts:
            return np.zeros((0, self._embedder.dim), dtype=np.float32)
        return np.concatenate(parts)


class MemoryEngine:
    """Durable conversation memory of many namespaces over one ``MemoryStore`` and one embedder."""

    def __init__(
        self,
        store: MemoryStore,
        embedder: Embedder,
        *,
        policy: Callable[[str], Mapping[str, Any]] | None = None,
        vector_factory: VectorIndexFactory | None = None,
        association: AssociationConfig | None = None,
        derive: DeriveFn | None = None,
        retrieve: RetrieveFn | None = None,
        background: bool = True,
        settle_s: float = 0.0,
        max_delay_s: float = 2.0,
        derive_duty: float = 0.25,
        leases: LeaseManager | None = None,
        background_embed_batch: int = 1,
        snapshots: IndexSnapshots | None = None,
        snapshot_interval_s: float = 300.0,
    ):
        self.store = store
        # With replicas on one database, association work (GMM refits, linking) of a namespace runs on the
        # one replica holding its lease; the others receive the resulting edges through the change feed.
        self._leases: LeaseManager = leases or LocalLeases()
        self.embedder = embedder
        self._priority = _Priority(embedder, background_embed_batch)
        self._policy = policy or (lambda _ns: {})
        self._vector_factory = vector_factory
        self._derive: DeriveFn = derive or _default_derive()
        self._derive_is_default = derive is None
        self._retrieve: RetrieveFn = retrieve or _retrieval_search
        # Embeds Search queries while the searching thread does the lexical stage (see search()).
        self._query_embedding = ThreadPoolExecutor(2, thread_name_prefix="memory-query-embedding")
        self.association = AssociationManager(
            store, association or AssociationConfig(), pause=self._priority.yield_to_foreground
        )
        self._namespaces: dict[str, _Namespace] = {}
        self._registry_lock = threading.Lock()
        # Background queue of (namespace, session_id) to re-derive -> (first, last) enqueue time. A
        # session is taken once it has been quiet for settle_s (or waited max_delay_s), so a burst of
        # Writes to one session costs one re-derivation, and the worker does not compete with a
        # conversation that is still being written.
        self._queue: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self.settle_s = settle_s
        self.max_delay_s = max_delay_s
        # Re-deriving a session reads and derives all of it, so its cost grows with the session; an agent
        # thread writing a turn every second into a session of a thousand messages would keep a core busy.
        # After a derivation that took c seconds of the worker's CPU, the session is not derived again for
        # c * (1 / derive_duty - 1) seconds: at most derive_duty of a core goes to any one session, Writes
        # arriving meanwhile coalesce, and derived units lag by about c / derive_duty at most (raw turns are
        # searchable at once whatever the lag). 1.0 derives at once every time.
        self.derive_duty = checked_derive_duty(derive_duty)
        # (namespace, session_id) -> monotonic time before which the session is not re-derived.
        self._derive_hold: dict[tuple[str, str], float] = {}
        self._flushing = 0
        self.background_pause_s = 0.05
        self._refit_due: set[str] = set()
        # Consolidation bookkeeping: unit keys of sessions derived since the last pass (checked first),
        # and per namespace the last turn key a pass checked (the rest are re-checked round robin).
        self._fresh_keys: dict[str, set[int]] = {}
        # Per long session: the segment fingerprints its last committed background derivation saw (see
        # _changed_segments); and how many segments background passes derived or reused (diagnostics).
        self._segment_prints: dict[tuple[str, str], dict[int, str]] = {}
        self.segment_passes: collections.Counter[str] = collections.Counter()
        self._next_consolidation: dict[str, float] = {}
        self._next_retention: dict[str, float] = {}
        # Namespaces where units were deleted since the last consolidation pass: fact promotion is re-decided
        # (a Delete may leave a topic in fewer sessions than promote_min_sessions).
        self._facts_changed: set[str] = set()
        # Namespaces whose association step failed: failures in a row, and when the next try may start.
        self._association_failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._turn_cursor: dict[str, int] = {}
        self._fact_topics: dict[str, dict[int, tuple[str, str]]] = {}
        self._cv = threading.Condition()
        self._busy = 0
        self._closed = False
        self._worker: threading.Thread | None = None
        if background:
            self._worker = threading.Thread(target=self._run_worker, name="memory-consolidation", daemon=True)
            self._worker.start()
        # Vector index snapshots (None = off): saved every snapshot_interval_s (0 = only on close) for
        # namespaces that changed, and on close.
        self._snapshots = snapshots
        self.snapshot_interval_s = snapshot_interval_s
        self._snapshot_lock = threading.Lock()
        self._snapshot_stop = threading.Event()
        self._snapshotter: threading.Thread | None = None
        if snapshots is not None and snapshot_interval_s > 0:
            self._snapshotter = threading.Thread(target=self._run_snapshots, name="memory-snapshots", daemon=True)
            self._snapshotter.start()

    # -- lifecycle -----------------------------------------------------------------------------------

    def load(self) -> int:
        """Build every namespace's index (on start): from its snapshot brought up to date with the database
        where there is a usable one, else from the database; queue pending sessions.

        Returns how many units were indexed.
        """
        total = 0
        for ns in self.store.namespaces():
            total += self._load_namespace(ns, use_snapshot=True)
        return total

    def rebuild(self, namespace: str) -> int:
        """Rebuild one namespace's indexes from the database; returns how many units were indexed."""
        return self._load_namespace(namespace, use_snapshot=False)

    def _load_namespace(self, namespace: str, *, use_snapshot: bool) -> int:
        state = self._state(namespace, load=False)
        snapshot: IndexSnapshot | None = None
        source = "database"
        if use_snapshot and self._snapshots is not None:
            try:
                snapshot = self._snapshots.load(namespace, self.embedder.name, self.embedder.dim)
            except SnapshotRejected as exc:
                log.warning("index snapshot rejected; rebuilding from the database: %s", exc)
                self._snapshots.remove(namespace)
                source = f"database (snapshot rejected: {exc})"
        with state.lock:
            state.index, reused = self._build_index(namespace, snapshot)
            state.dirty = False
            if snapshot is not None:
                # A snapshot with a part this process could not use is written again at the next snapshot pass.
                state.snapshot_generation = -1 if state.index.unrestored else snapshot.generation
                source = f"snapshot of generation {snapshot.generation} ({reused} vectors reused)"
            state.source = source
        log.info("memory index loaded", extra={"namespace": namespace, "units": state.index.size(), "source": source})
        for sid in self.store.pending_sessions(namespace):
            self._enqueue(namespace, sid)
        return state.index.size()

    def _build_index(self, namespace: str, snapshot: IndexSnapshot | None = None) -> tuple[NamespaceIndex, int]:
        """The namespace's index from the database (vector indexes taken from ``snapshot`` where it is still
        right), and how many vectors came from the snapshot."""
        index = NamespaceIndex(self.embedder.dim, self._vector_factory)
        generation = self.store.generation(namespace)
        units: list[StoredUnit] = []
        stale: list[StoredUnit] = []
        for batch in self.store.iter_units(namespace):
            for s in batch:
                fresh = s.model == self.embedder.name and len(s.vector) == self.embedder.dim
                (units if fresh else stale).append(s)
        if stale:
            # Vectors of another model are useless to this one: re-embed and persist them.
            log.info("re-embedding units of another model", extra={"namespace": namespace, "units": len(stale)})
            # Not yielding to foreground calls: this runs under the namespace lock they may be waiting for.
            # Turns first; derived units are then composed from the turns' new vectors like any derivation.
            turns = [s for s in stale if s.unit.granularity == Granularity.TURN]
            derived = [s for s in stale if s.unit.granularity != Granularity.TURN]
            turn_vectors = self.embedder.embed([embedding_text(s.unit) for s in turns])
            redone = [replace(s, vector=v, model=self.embedder.name) for s, v in zip(turns, turn_vectors, strict=True)]
            if derived and UnitPolicy.from_mapping(self._policy(namespace)).composed_vectors:
                composed, derived_left = compose_vectors([s.unit for s in derived], units + redone, self.embedder.name)
                by_id = {s.unit.id: s for s in derived}
                redone += [replace(by_id[u.id], vector=v, model=self.embedder.name) for u, v in composed]
                derived = [by_id[u.id] for u in derived_left]
            if derived:
                vectors = self.embedder.embed([embedding_text(s.unit) for s in derived])
                redone += [
                    replace(s, vector=v, model=self.embedder.name) for s, v in zip(derived, vectors, strict=True)
                ]
            change = self._rewrite(namespace, redone)
            try:
                generation = self.store.apply(namespace, change)
            except StaleChange:
                # A message was deleted meanwhile (another replica): read the units again.
                return self._build_index(namespace, snapshot)
            units += change.insert_units
        reused = index.load(units, snapshot.dense if snapshot is not None else {})
        index.set_edges(self.store.load_edges(namespace))
        index.generation = generation
        # Units deleted by a change this replica did not mirror no longer count as linked, and may have been facts.
        self.association.units_kept(namespace, set(index.unit_keys()))
        self._units_deleted(namespace)
        return index, reused

    def snapshot(self, namespace: str) -> bool:
        """Save the namespace's vector indexes to its snapshot file; False when there is nothing to do
        (no snapshot directory, namespace not loaded, or unchanged since the last snapshot)."""
        state = self._namespaces.get(namespace)
        if self._snapshots is None or state is None:
            return False
        with self._snapshot_lock:
            # One consistent cut under the namespace lock (copies of the arrays); the file is written
            # after it is released, so Writes wait only for the copy.
            with state.lock:
                if state.dirty or state.index.generation == state.snapshot_generation:
                    return False
                generation = state.index.generation
                dense = state.index.dump_dense()
            if not self._snapshots.save(namespace, generation, self.embedder.name, self.embedder.dim, dense):
                return False
            state.snapshot_generation = generation
        return True

    def snapshot_all(self) -> int:
        """Snapshot every loaded namespace that changed since its last snapshot; returns how many were saved."""
        saved = 0
        for namespace in list(self._namespaces):
            try:
                saved += self.snapshot(namespace)
            except Exception:
                log.exception("index snapshot failed", extra={"namespace": namespace})
        return saved

    def _run_snapshots(self) -> None:
        while not self._snapshot_stop.wait(self.snapshot_interval_s):
            self.snapshot_all()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the background worker (pending work stays marked in the database) and snapshot the indexes."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._snapshot_stop.set()
        if self._worker is not None:
            self._worker.join(timeout)
        if self._snapshotter is not None:
            self._snapshotter.join(timeout)
        self._query_embedding.shutdown(wait=False)
        self.snapshot_all()

    def _state(self, namespace: str, *, load: bool = True) -> _Namespace:
        state = self._namespaces.get(namespace)
        if state is None:
            with self._registry_lock:
                state = self._namespaces.get(namespace)
                if state is None:
                    state = _Namespace(NamespaceIndex(self.embedder.dim, self._vector_factory), dirty=load)
                    self._namespaces[namespace] = state
        if state.dirty and load:
            with state.lock:
                if state.dirty:
                    state.index, _ = self._build_index(namespace)
                    state.dirty = False
        return state

    def index_source(self, namespace: str) -> str:
        """Where the namespace's index came from at its last load: ``database``, ``snapshot of generation
        G (N vectors reused)``, or ``database (snapshot rejected: why)``."""
        return self._state(namespace).source

    def index(self, namespace: str) -> NamespaceIndex:
        """The namespace's current in-memory index (built from the database if needed)."""
        return self._state(namespace).index

    # -- validation ----------------------------------------------------------------------------------

    def validate_messages(self, session_id: str, messages: Sequence[MemoryMessage]) -> list[MemoryMessage]:
        """``messages`` as Write would store them (ids filled in, times in UTC); raises InvalidArgumentError naming
        every field Write would refuse. Stores nothing (the admin import checks a whole file with it first)."""
        violations: list[FieldViolation] = []
        if len(session_id) > MAX_ID_LEN:
            violations.append(FieldViolation("session_id", f"longer than {MAX_ID_LEN} characters"))
        elif not _clean_id(session_id):
            violations.append(FieldViolation("session_id", "must not contain control characters or edge spaces"))
        if not messages:
            violations.append(FieldViolation("messages", "at least one message is required"))
        out: list[MemoryMessage] = []
        first_index: dict[str, int] = {}
        for i, m in enumerate(messages):
            mid = m.id or uuid.uuid4().hex
            if len(mid) > MAX_ID_LEN:
                violations.append(FieldViolation(f"messages[{i}].id", f"longer than {MAX_ID_LEN} characters"))
            elif not _clean_id(mid):
                violations.append(
                    FieldViolation(f"messages[{i}].id", "must not contain control characters or edge spaces")
                )
            if mid in first_index:
                violations.append(
                    FieldViolation(f"messages[{i}].id", f"duplicates messages[{first_index[mid]}].id {mid!r}")
                )
            first_index.setdefault(mid, i)
            if not m.text.strip():
                violations.append(FieldViolation(f"messages[{i}].text", "must not be empty"))
            elif len(m.text) > MAX_TEXT_CHARS:
                violations.append(FieldViolation(f"messages[{i}].text", f"longer than {MAX_TEXT_CHARS} characters"))
            elif "\x00" in m.text:
                # Postgres text cannot hold NUL; refused on every backend so a namespace can move between them.
                violations.append(FieldViolation(f"messages[{i}].text", "must not contain NUL characters"))
            if len(m.speaker) > MAX_ID_LEN:
                violations.append(FieldViolation(f"messages[{i}].speaker", f"longer than {MAX_ID_LEN} characters"))
            elif "\x00" in m.speaker:
                violations.append(FieldViolation(f"messages[{i}].speaker", "must not contain NUL characters"))
            for key, value in m.metadata.items():
                if "\x00" in key or "\x00" in value:
                    violations.append(
                        FieldViolation(f"messages[{i}].metadata[{key!r}]", "must not contain NUL characters")
                    )
            try:
                when = _utc(m.time, f"messages[{i}].time")
            except InvalidArgumentError as exc:
                violations.extend(exc.violations)
                when = None
            out.append(replace(m, id=mid, session_id=session_id, time=when, metadata=dict(m.metadata)))
        if violations:
            raise InvalidArgumentError(violations)
        return out

    # -- derivation ----------------------------------------------------------------------------------

    def _plan_units(
        self,
        namespace: str,
        session_id: str,
        session: Sequence[MemoryMessage],
        granularities: frozenset[Granularity] | None,
        *,
        background: bool,
        segments: _SegmentPrints | None = None,
    ) -> tuple[list[str], list[StoredUnit]]:
        """Diff the session's derived units against the stored ones: (unit ids to delete, units to insert).

        Only units whose text changed are embedded; a unit with the same text keeps its vector.
        ``segments`` (background passes with the default derivation): the segment fingerprints of the last
        pass committed for this session; segments whose fingerprint is unchanged and whose digest is stored
        are neither derived nor diffed, and ``segments.learned`` receives every segment's fingerprint.
        """
        policy = self._policy(namespace)
        parts = self._changed_segments(namespace, session_id, session, policy, segments)
        if parts is None:
            stored = self.store.session_units(namespace, [session_id])
            derived = self._derive(session_id, list(session), policy) if session else []
        else:
            unit_policy = UnitPolicy.from_mapping(policy)
            enricher = policy_enricher(unit_policy)  # as derive_units would use
            derived = [u for k, part in parts for u in derive_segment(session_id, k, part, unit_policy, enricher)]
            # Units of the unchanged segments stay as they are and are not even read (at 1,000 messages, reading
            # all of the session's units was 58% of a pass): the units over a derived segment's messages are
            # diffed, among them any whose first message is gone (a unit covers one segment's messages).
            owned = {m.id for _, part in parts for m in part}
            present = {m.id for m in session}
            stored = [
                s
                for s in self.store.units_covering(namespace, list(owned))
                if s.unit.session_id == session_id
                and (not s.unit.message_ids or s.unit.message_ids[0] in owned or s.unit.message_ids[0] not in present)
            ]
        if granularities is not None:
            derived = [u for u in derived if u.granularity in granularities]
        old = {s.unit.id: s for s in stored if granularities is None or s.unit.granularity in granularities}
        new_ids = {u.id for u in derived}
        delete = [uid for uid in old if uid not in new_ids]
        keep: list[StoredUnit] = []
        embed: list[MemoryUnit] = []
        for unit in derived:
            prev = old.get(unit.id)
            if prev is not None and prev.model == self.embedder.name:
                if prev.unit == unit:
                    continue
                if prev.unit.text == unit.text:
                    keep.append(replace(prev, unit=unit))
                    continue
            embed.append(unit)
        inserted = keep
        if embed and UnitPolicy.from_mapping(policy).composed_vectors:
            composed, embed = compose_vectors(embed, stored, self.embedder.name)
            inserted = keep + [StoredUnit(u, unit_key(namespace, u.id), v, self.embedder.name) for u, v in composed]
        if embed:
            texts = [embedding_text(u) for u in embed]
            vectors = self._priority.embed_background(texts) if background else self.embedder.embed(texts)
            inserted = inserted + [
                StoredUnit(u, unit_key(namespace, u.id), v, self.embedder.name)
                for u, v in zip(embed, vectors, strict=True)
            ]
        return delete, inserted

    def _rewrite(self, namespace: str, units: Sequence[StoredUnit]) -> Change:
        """A change writing stored ``units`` again (a new weight, a new vector) that the store refuses once a
        message they cover is deleted (another replica's Delete); units over a message already gone are left
        out (the Delete removed them)."""
        ids = list(dict.fromkeys(mid for s in units for mid in s.unit.message_ids))
        found = self.store.get_messages(namespace, ids)
        kept = [s for s in units if all(mid in found for mid in s.unit.message_ids)]
        return Change(insert_units=kept, expect_messages={mid: _fingerprint(found[mid]) for mid in ids if mid in found})

    def _apply(self, namespace: str, state: _Namespace, change: Change) -> int:
        """Commit ``change`` and mirror it in the index (caller holds the namespace lock); raises StaleChange,
        committing nothing, when the store finds the plan stale."""
        generation = self.store.apply(namespace, change)
        # After the commit: the store adds the units that still covered a deleted message.
        removed_keys = [unit_key(namespace, uid) for uid in change.delete_units]
        try:
            if state.dirty or state.index.generation != generation - 1:
                # Someone else (another replica) changed the namespace, or an earlier update failed.
                state.index, _ = self._build_index(namespace)
            else:
                self._mirror(state.index, removed_keys, change.insert_units)
                state.index.generation = generation
                self._units_gone(namespace, removed_keys, change.insert_units)
        except Exception:
            # The commit stands; the index is a cache and is rebuilt from the database on next use.
            state.dirty = True
            log.exception("index update failed after commit; rebuilding on next access")
        return generation

    def _units_gone(self, namespace: str, removed_keys: Sequence[int], inserted: Sequence[StoredUnit]) -> None:
        """After a mirrored change: units it removed for good (not stored again under their key) leave the
        association's linked set, and the next consolidation pass re-decides fact promotion."""
        gone = set(removed_keys).difference(s.key for s in inserted)
        if gone:
            self.association.units_removed(namespace, gone)
            self._units_deleted(namespace)

    def _units_deleted(self, namespace: str) -> None:
        with self._cv:
            self._facts_changed.add(namespace)

    def _mirror(self, index: NamespaceIndex, removed_keys: list[int], inserted: list[StoredUnit]) -> None:
        """Apply a committed unit change to an index (separate so tests can simulate a crash here)."""
        index.apply(removed_keys, inserted)

    # -- public API ----------------------------------------------------------------------------------

    def write(self, namespace: str, session_id: str, messages: Sequence[MemoryMessage]) -> WriteResult:
        """Store messages of one session; idempotent per message id. Returns after the commit.

        Raises InvalidArgumentError naming the field (``messages[2].id``) for malformed input, or when
        a message id is already stored in another session.
        """
        return self._write(namespace, session_id, messages)

    def _write(
        self, namespace: str, session_id: str, messages: Sequence[MemoryMessage], *, must_exist: bool = False
    ) -> WriteResult:
        """``write``; with ``must_exist`` (Update) every message must be stored when the plan is made and still be
        when it commits, so a Delete that commits in between makes it NotFoundError instead of a new message."""
        session_id = session_id or "default"
        msgs = self.validate_messages(session_id, messages)
        state = self._state(namespace)
        # Reading and embedding run without the namespace lock, so a background commit is not held up by
        # an embedding Write, nor a Write by a background commit, and concurrent Writes embed while
        # another one commits. A plan whose messages changed before its commit is made again; from the
        # third attempt on it is made under the lock, where only another replica can still interfere.
        with self._priority.foreground():
            for attempt in itertools.count():
                with state.lock if attempt >= 2 else contextlib.nullcontext():
                    if attempt == 0 and not must_exist and self._unseen(state, msgs):
                        # New messages (an agent turn's, a conversation's next ones) skip this read: the commit
                        # re-reads them anyway, and a message stored meanwhile (another replica's) makes the
                        # plan stale, so the next attempt reads.
                        existing: Mapping[str, StoredMessage] = {}
                    else:
                        existing = self.store.get_messages(namespace, [m.id for m in msgs])
                    if must_exist and (gone := [m.id for m in msgs if m.id not in existing]):
                        raise NotFoundError("message", gone[0])
                    changed, unchanged = self._changed_messages(session_id, msgs, existing)
                    if not changed:
                        break
                    delete, insert = self._plan_turns(namespace, state.index, session_id, changed)
                    change = Change(
                        upsert_messages=changed, delete_units=delete, insert_units=insert, mark_pending=[session_id]
                    )
                    if self._commit(
                        namespace, state, _Commit(change, {m.id: _fingerprint(existing.get(m.id)) for m in changed})
                    ):
                        break
        if changed:
            self._enqueue(namespace, session_id)
        return WriteResult([m.id for m in msgs], len(changed), unchanged)

    @staticmethod
    def _unseen(state: _Namespace, msgs: Sequence[MemoryMessage]) -> bool:
        """Whether no message of ``msgs`` has a unit in the namespace's index (which mirrors every commit of
        this process): then they are almost surely not stored yet."""
        return not state.dirty and not any(state.index.units_of_message(m.id) for m in msgs)

    def _commit(self, namespace: str, state: _Namespace, ticket: _Commit) -> bool:
        """Commit a Write's plan together with every other Write's plan queued meanwhile: one transaction
        and one fsync for all of them (group commit). Returns only once the plan is committed (True) or
        found stale (False: plan again); raises what the commit raised.

        Whoever gets the namespace lock first commits the whole queue, so under concurrent Writes the
        commits (each an fsync of the SQLite WAL) are shared instead of queueing one after another.
        """
        with state.queue_lock:
            state.queued.append(ticket)
        with state.lock:
            if ticket.outcome is None:
                self._commit_queued(namespace, state)
        if isinstance(ticket.outcome, BaseException):
            raise ticket.outcome
        return ticket.outcome is True

    def _commit_queued(self, namespace: str, state: _Namespace) -> None:
        """Commit the queued plans that are still valid, in one change (caller holds the namespace lock).

        A plan is valid if none of its messages changed since it was read (checked against the database,
        so changes of other replicas count too, and checked again by the store inside the commit) and no
        other plan of the group writes the same message.
        """
        with state.queue_lock:
            group, state.queued = state.queued, []
        try:
            current = self.store.get_messages(namespace, [mid for t in group for mid in t.seen])
            taken: set[str] = set()
            for t in group:
                if taken.isdisjoint(t.seen) and all(_fingerprint(current.get(m)) == fp for m, fp in t.seen.items()):
                    taken.update(t.seen)
                else:
                    t.outcome = _STALE
            group = [t for t in group if t.outcome is None]
            if group:
                self._apply(
                    namespace,
                    state,
                    Change(
                        upsert_messages=[m for t in group for m in t.change.upsert_messages],
                        delete_units=[u for t in group for u in t.change.delete_units],
                        insert_units=[u for t in group for u in t.change.insert_units],
                        mark_pending=sorted({sid for t in group for sid in t.change.mark_pending}),
                        # Checked again inside the commit: another replica may commit after the read above.
                        expect_messages={m: fp for t in group for m, fp in t.seen.items()},
                    ),
                )
        except StaleChange:
            # Another replica wrote one of the messages between the check above and the commit (the same
            # id resent to both, say): the whole group plans again, and an identical resend is "unchanged".
            for t in group:
                t.outcome = _STALE
            return
        except Exception as exc:
            if len(group) == 1:
                group[0].outcome = exc
                return
            # One plan the store refuses (a value the database cannot hold) must not fail the Writes that
            # happened to be queued with it: each plan is committed on its own, and only the failing one raises.
            for t in group:
                try:
                    self._apply(namespace, state, replace(t.change, expect_messages=dict(t.seen)))
                    t.outcome = True
                except StaleChange:
                    t.outcome = _STALE
                except Exception as alone:
                    t.outcome = alone
            return
        except BaseException as exc:  # interrupted: nothing of the group is known to be committed
            for t in group:
                if t.outcome is None:
                    t.outcome = exc
            raise
        for t in group:
            t.outcome = True

    @staticmethod
    def _changed_messages(
        session_id: str, msgs: list[MemoryMessage], existing: Mapping[str, StoredMessage]
    ) -> tuple[list[MemoryMessage], int]:
        """(messages that are new or changed, how many are unchanged resends); raises InvalidArgumentError
        for an id already stored in another session."""
        changed: list[MemoryMessage] = []
        unchanged = 0
        violations: list[FieldViolation] = []
        for i, m in enumerate(msgs):
            old = existing.get(m.id)
            if old is not None and old.message.session_id != session_id:
                violations.append(
                    FieldViolation(
                        f"messages[{i}].id",
                        f"{m.id!r} is already stored in session {old.message.session_id!r}",
                    )
                )
            elif old is not None and old.content_hash == content_hash(m):
                unchanged += 1
            else:
                changed.append(m)
        if violations:
            raise InvalidArgumentError(violations)
        return changed, unchanged

    def _plan_turns(
        self, namespace: str, index: NamespaceIndex, session_id: str, changed: list[MemoryMessage]
    ) -> tuple[list[str], list[StoredUnit]]:
        """The synchronous part of a Write: turn units of the changed messages only.

        Relies on the derivation contract that a turn unit depends on its own message alone, so
        deriving from just the changed messages gives the same turn units as the whole session, with
        no read of the session. Old turn units of changed messages are found through the index.
        """
        policy = self._policy(namespace)
        if self._derive_is_default:
            # Only the turn units: deriving windows, digest and facts of the new messages here (and then
            # dropping them) was a tenth of the GIL time of a Write.
            derived = turn_units(session_id, changed, UnitPolicy.from_mapping(policy))
        else:
            derived = [u for u in self._derive(session_id, changed, policy) if u.granularity in SYNC_GRANULARITIES]
        old: dict[str, tuple[int, MemoryUnit]] = {}
        for m in changed:
            for key in index.units_of_message(m.id):
                unit = index.unit(key)
                if unit is not None and unit.granularity in SYNC_GRANULARITIES:
                    old[unit.id] = (key, unit)
        new_ids = {u.id for u in derived}
        delete = [uid for uid in old if uid not in new_ids]
        insert: list[StoredUnit] = []
        embed: list[MemoryUnit] = []
        for unit in derived:
            prev = old.get(unit.id)
            vector = index.vector(prev[0]) if prev is not None else None
            if prev is not None and vector is not None and prev[1].text == unit.text:
                insert.append(StoredUnit(unit, prev[0], vector, self.embedder.name))
            else:
                embed.append(unit)
        if embed:
            vectors = self.embedder.embed([embedding_text(u) for u in embed])
            insert += [
                StoredUnit(u, unit_key(namespace, u.id), v, self.embedder.name)
                for u, v in zip(embed, vectors, strict=True)
            ]
        return delete, insert

    def _changed_segments(
        self,
        namespace: str,
        session_id: str,
        session: Sequence[MemoryMessage],
        policy: Mapping[str, Any],
        segments: _SegmentPrints | None,
    ) -> list[tuple[int, list[MemoryMessage]]] | None:
        """The (index, messages) of the segments to derive, or None to derive the whole session (no
        fingerprints given, a custom derivation, or a session of one segment)."""
        if segments is None or not self._derive_is_default:
            return None
        unit_policy = UnitPolicy.from_mapping(policy)
        parts = session_segments(session, unit_policy)
        if len(parts) < 2:
            return None
        stored_ids = set(self.store.get_units(namespace, [segment_digest_id(session_id, k) for k in range(len(parts))]))
        changed: list[tuple[int, list[MemoryMessage]]] = []
        start = 0
        for k, part in enumerate(parts):
            # The policy is part of the fingerprint: a changed unit policy re-derives every segment.
            digest = hashlib.blake2b(repr(unit_policy).encode(), digest_size=16)
            for m, hashed in zip(part, segments.hashes[start : start + len(part)], strict=True):
                digest.update(m.id.encode() + b"\x1f" + hashed.encode() + b"\x1e")
            start += len(part)
            print_ = f"{k}:{digest.hexdigest()}"
            segments.learned[k] = print_
            # A digest that is gone (the namespace was dropped, the session deleted) means the segment's units
            # are gone too, whatever the fingerprint says.
            if segments.known.get(k) != print_ or segment_digest_id(session_id, k) not in stored_ids:
                changed.append((k, part))
        self.segment_passes["reused"] += len(parts) - len(changed)
        self.segment_passes["derived"] += len(changed)
        return changed

    def interactive(self) -> contextlib.AbstractContextManager[None]:
        """Context manager marking latency-sensitive work outside the engine (an agent turn in flight).

        While it is open, background steps (session derivation, linking, refits, consolidation) wait for it
        to end, at most ``max_yield_s`` (1 s) per step, instead of sharing the cores and the GIL with it.
        """
        return self._priority.foreground(interactive=True)

    def prefetch(self, queries: Sequence[str] = (), messages: Sequence[MemoryMessage] = ()) -> int:
        """Embed, ahead of time, what a coming Search (``queries``) and Write (the turn units of ``messages``)
        will ask the embedder for; returns how many texts were embedded. Nothing is stored.

        Only useful with a caching embedder (the runtime's is one): an agent turn calls this while it waits
        on its guard and its LLM, so the search and the memory write later find their vectors ready.
        """
        if not hasattr(self.embedder, "is_cached"):
            return 0
        # One call: the texts it has to embed run as one batch (split over both cores), and a text another
        # thread is embedding right now (the guard checking the same message) is waited for, not redone.
        turns = [turn_embedding_text(turn_text(m)) for m in messages]
        texts = list(dict.fromkeys(turns + [q for q in queries if q.strip()]))
        if texts:
            self.embedder.embed(texts)
        return len(texts)

    def search(self, namespace: str, query: SearchQuery) -> SearchResult:
        """Ranked, budget-packed hits for ``query``; an empty namespace gives no hits, not an error."""
        violations: list[FieldViolation] = []
        if not query.query.strip():
            violations.append(FieldViolation("query", "must not be empty"))
        if query.top_k < 0 or query.top_k > MAX_TOP_K:
            violations.append(FieldViolation("top_k", f"must be between 0 and {MAX_TOP_K}"))
        if query.token_budget < 0:
            violations.append(FieldViolation("token_budget", "must be >= 0"))
        start, end = _utc(query.time_start, "time_start"), _utc(query.time_end, "time_end")
        if start and end and start > end:
            violations.append(FieldViolation("time_end", "is before time_start"))
        if violations:
            raise InvalidArgumentError(violations)
        query = replace(query, top_k=query.top_k or DEFAULT_TOP_K, time_start=start, time_end=end)
        index = self._state(namespace).index
        if index.size() == 0:
            from memory.model import RoutingDiagnostics

            return SearchResult([], RoutingDiagnostics({}, {}))
        policy = self._policy(namespace)
        with self._priority.foreground():
            if self._retrieve is not _retrieval_search or answered_from_cache(self.embedder, [query.query]):
                vector = self.embedder.embed([query.query])[0]
                return self._retrieve(index, query, vector, policy)
            # The model runs without the GIL: the BM25 half of the search runs on the other core meanwhile
            # (at 100k units: ~2.5 ms of the ~13 ms pipeline hidden behind a 6 ms one-thread embedding).
            pending = self._query_embedding.submit(self.embedder.embed, [query.query])
            try:
                lexical = _lexical_stage(index, query, policy)
            finally:
                vector = pending.result()[0]
            return _retrieval_search(index, query, vector, policy, lexical)

    def get(self, namespace: str, message_ids: Sequence[str]) -> list[MemoryMessage]:
        """Messages by id in the given order; raises NotFoundError for the first missing id."""
        found = self.store.get_messages(namespace, list(message_ids))
        for mid in message_ids:
            if mid not in found:
                raise NotFoundError("message", mid)
        return [found[mid].message for mid in message_ids]

    def list_messages(
        self, namespace: str, *, session_id: str | None = None, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[MemoryMessage], str]:
        """A page of messages in arrival order and the token of the next page ("" at the end)."""
        if page_size <= 0 or page_size > 1000:
            raise InvalidArgumentError("page_size", "must be between 1 and 1000")
        # A token is the decimal arrival number of the last message of the previous page, exactly as List wrote it.
        if page_token and not (page_token.isascii() and page_token.isdigit() and len(page_token) <= 18):
            raise InvalidArgumentError("page_token", "is not a token returned by List")
        after = int(page_token) if page_token else -1
        rows = self.store.list_messages(namespace, session_id=session_id or None, after_seq=after, limit=page_size + 1)
        more = len(rows) > page_size
        rows = rows[:page_size]
        return [r.message for r in rows], (str(rows[-1].seq) if more else "")

    def sessions(self, namespace: str) -> list[str]:
        """Ids of the sessions holding messages."""
        return self.store.list_sessions(namespace)

    def update(self, namespace: str, message: MemoryMessage) -> WriteResult:
        """Replace the content of a stored message (its session cannot change).

        Raises NotFoundError when the id is unknown.
        """
        if not message.id:
            raise InvalidArgumentError("message.id", "is required")
        found = self.store.get_messages(namespace, [message.id])
        if message.id not in found:
            raise NotFoundError("message", message.id)
        session_id = found[message.id].message.session_id
        try:
            return self._write(namespace, session_id, [message], must_exist=True)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(
                [FieldViolation(v.field.replace("messages[0]", "message"), v.description) for v in exc.violations]
            ) from None

    def delete(
        self,
        namespace: str,
        *,
        message_ids: Sequence[str] = (),
        session_id: str = "",
        everything: bool = False,
    ) -> DeleteResult:
        """Delete messages (by id, by session or the whole namespace) and every unit that covered them.

        Affected sessions are re-derived from their remaining messages before this returns, and the
        indexes drop the removed units: nothing derived from a deleted message stays searchable.
        Deleting ids that do not exist is not an error (deletes are idempotent).
        """
        return self._delete(namespace, message_ids=message_ids, session_id=session_id, everything=everything)

    def _delete(
        self,
        namespace: str,
        *,
        message_ids: Sequence[str] = (),
        session_id: str = "",
        everything: bool = False,
        foreground: bool = True,
    ) -> DeleteResult:
        """``delete``; ``foreground=False`` (retention, on the background worker) does not count as a foreground
        call, so the background work that follows it does not wait for itself."""
        if not (message_ids or session_id or everything):
            raise InvalidArgumentError("message_ids", "give message_ids, session_id or all")
        if everything and (message_ids or session_id):
            # A client that meant some ids must not lose the whole namespace to a stray flag.
            raise InvalidArgumentError("all", "deletes the whole namespace: leave message_ids and session_id empty")
        state = self._state(namespace)
        with self._priority.foreground() if foreground else contextlib.nullcontext(), state.lock:
            if everything:
                before = self.store.counts(namespace)
                n = self.store.drop_namespace(namespace)
                state.index, _ = self._build_index(namespace)
                state.dirty = False
                self.association.forget(namespace)
                for key in [k for k in self._segment_prints if k[0] == namespace]:
                    del self._segment_prints[key]
                # The cache does not know which namespace a text came from: empty it (a cost of speed only).
                self._forget_texts(None)
                return DeleteResult(n, sum(before.units.values()), 0)
            # The namespace lock keeps this process's Writes out; another replica's Write to one of the sessions
            # committed after the reads below makes the plan stale, and it is made again.
            while True:
                targets: dict[str, StoredMessage] = {}
                if session_id:
                    targets.update({s.message.id: s for s in self.store.session_messages(namespace, session_id)})
                if message_ids:
                    targets.update(self.store.get_messages(namespace, list(message_ids)))
                if not targets:
                    return DeleteResult(0, 0, 0)
                change = Change(delete_messages=list(targets))
                sessions = sorted({s.message.session_id for s in targets.values()})
                removed_units = 0
                for sid in sessions:
                    session = self.store.session_messages(namespace, sid)
                    change.expect_sessions[sid] = [(s.message.id, s.content_hash) for s in session]
                    remaining = [s.message for s in session if s.message.id not in targets]
                    delete, insert = self._plan_units(namespace, sid, remaining, None, background=False)
                    change.delete_units += delete
                    change.insert_units += insert
                    change.clear_pending.append(sid)
                    removed_units += len(delete)
                covering = self.store.units_covering(namespace, list(targets))
                planned = len(change.delete_units)
                try:
                    self._apply(namespace, state, change)
                except StaleChange:
                    continue
                # Units another replica derived over the deleted messages after the plan read them.
                removed_units += len(change.delete_units) - planned
                for sid in sessions:
                    # Re-derived in full here; the next background pass fingerprints it afresh.
                    self._segment_prints.pop((namespace, sid), None)
                break
        # The embedder's cache holds recent texts as keys: a deleted message's words must not outlive it there.
        self._forget_texts(
            [s.message.text for s in targets.values()] + [embedding_text(s.unit) for s in covering]
        )
        return DeleteResult(len(targets), removed_units, len(sessions))

    def _forget_texts(self, texts: list[str] | None) -> None:
        """Drop ``texts`` (None: everything) from the embedder's cache, where it has one."""
        if texts is None:
            clear = getattr(self.embedder, "clear", None)
            if clear is not None:
                clear()
            return
        forget = getattr(self.embedder, "forget", None)
        if forget is not None:
            forget(texts)

    def consolidate(self, namespace: str, *, refit: bool = True) -> ConsolidationReport:
        """Run consolidation now, in the caller's thread: re-derive pending sessions, link, refit."""
        started = time.perf_counter()
        added = removed = 0
        sessions = self.store.pending_sessions(namespace)
        for sid in sessions:
            a, r = self._derive_session(namespace, sid)
            added += a
            removed += r
        index = self._state(namespace).index
        forgotten = reweighted = 0
        fit = None
        # Like the background worker, under the namespace's association lease: two replicas refitting and
        # linking one namespace at once wrote the same edges (a unique violation) and overwrote each other.
        with self._association_lease(namespace, CONSOLIDATE_LEASE_WAIT_S) as held:
            if held:
                forgotten, reweighted = self._consolidate_units(namespace, every_turn=True)
                index = self._state(namespace).index
                fit = self.association.refit(namespace, index) if refit else None
                # The whole backlog, not one background-sized batch (which left "link" undone on any namespace
                # of more than link_batch new units), within a time budget; the worker links what is left.
                deadline = time.monotonic() + CONSOLIDATE_LINK_BUDGET_S
                while self.association.link_backlog(namespace, index) and time.monotonic() < deadline:
                    pass
        return ConsolidationReport(
            sessions_derived=len(sessions),
            units_added=added,
            units_removed=removed,
            clusters=self.association.clusters(namespace),
            edges=index.edge_count(),
            refit=fit is not None,
            seconds=time.perf_counter() - started,
            messages_forgotten=forgotten,
            units_reweighted=reweighted,
        )

    @contextlib.contextmanager
    def _association_lease(self, namespace: str, wait_s: float) -> Iterator[bool]:
        """Hold the namespace's association lease, waiting up to ``wait_s`` for its holder (this process's
        worker, another replica) to let it go; yields whether it is held."""
        deadline = time.monotonic() + wait_s
        while True:
            with self._leases.hold(f"memory-association:{namespace}") as held:
                if held or time.monotonic() >= deadline:
                    yield held
                    return
            time.sleep(0.05)

    def _consolidate_units(self, namespace: str, *, every_turn: bool = False) -> tuple[int, int]:
        """Forgetting, fact promotion and near-duplicate merging (``memory/consolidation.py``).

        Checks the turns of recently derived sessions first, then the next ``batch`` turns in key order
        (a cursor that wraps), so every turn is re-checked over time at a bounded cost per pass;
        ``every_turn`` checks them all (the admin Consolidate). Returns (messages forgotten, units
        whose weight changed).
        """
        policy = self._policy(namespace)
        rules = ConsolidationPolicy.from_mapping(policy)
        with self._cv:
            fresh = self._fresh_keys.pop(namespace, set())
            facts_changed = namespace in self._facts_changed
            self._facts_changed.discard(namespace)
        forgotten = self._forget_by_policy(namespace, rules, every=every_turn)
        with self._cv:
            # Retention's own Deletes: promotion is re-decided in this pass.
            self._facts_changed.discard(namespace)
        facts_changed = facts_changed or forgotten > 0
        state = self._state(namespace)
        index = state.index
        # Per-granularity key lists and a numpy sort: a pass at 100k units used to spend ~270 ms of GIL
        # looking at every unit in Python, more than the checks themselves.
        turns = index.keys_of(Granularity.TURN)
        facts = index.keys_of(Granularity.FACT)
        if every_turn:
            batch = turns
        else:
            fresh_turns = [k for k in fresh if index.unit_granularity(k) == Granularity.TURN]
            ordered = np.sort(np.asarray(turns, dtype=np.int64))
            if fresh:
                ordered = ordered[~np.isin(ordered, np.fromiter(fresh, dtype=np.int64, count=len(fresh)))]
            start = int(np.searchsorted(ordered, self._turn_cursor.get(namespace, -1), side="right"))
            wrapped = np.concatenate([ordered[start:], ordered[:start]])[: max(0, rules.batch - len(fresh_turns))]
            batch = fresh_turns + wrapped.tolist()
            if len(wrapped):
                self._turn_cursor[namespace] = int(wrapped[-1])
        wanted = merged_weights(
            index, batch, rules, UnitPolicy.from_mapping(policy), pause=self._priority.yield_to_foreground
        )
        # Recurrence only changes when facts come or go, and those arrive with freshly derived sessions.
        # A Delete (or retention) may leave a topic in fewer sessions: facts_changed re-decides promotion too.
        fresh_facts = any(index.unit_granularity(k) == Granularity.FACT for k in fresh)
        if every_turn or fresh_facts or facts_changed:
            topics = self._fact_topics.setdefault(namespace, {})
            wanted.update(promoted_weights(index, facts, rules, topics, pause=self._priority.yield_to_foreground))
        changes = weight_changes(index, wanted)
        if not changes:
            return forgotten, 0
        with state.lock:
            stored = self.store.get_units(namespace, [u.id for _, u in changes])
            # Only the weight may change here: a unit re-derived or deleted since the plan was made (a
            # Write, a Delete, another replica) keeps what the database has now.
            insert = [
                replace(stored[u.id], unit=u)
                for _, u in changes
                if u.id in stored and replace(stored[u.id].unit, weight=u.weight) == u
            ]
            if insert:
                change = self._rewrite(namespace, insert)
                insert = change.insert_units
                try:
                    self._apply(namespace, state, change)
                except StaleChange:
                    # A message of one of them was deleted since (another replica): the next pass decides.
                    return forgotten, 0
        return forgotten, len(insert)

    def _forget_by_policy(self, namespace: str, rules: ConsolidationPolicy, *, every: bool) -> int:
        """Retention: delete the messages the policy no longer keeps; returns how many were deleted.

        In the background it runs every RETENTION_INTERVAL_S (its query reads the namespace's messages in the
        database) and deletes at most RETENTION_BATCH messages a pass; ``every`` (the admin Consolidate) runs
        it now, until nothing is left to forget. Messages are deleted one session at a time, each its own
        Delete, with a chance for foreground work in between: one Delete of every expired message re-derived
        every affected session under the namespace lock, and Writes to unrelated sessions waited for all of it.
        """
        if rules.max_age_days <= 0 and rules.max_messages <= 0:
            return 0
        if not every and time.monotonic() < self._next_retention.get(namespace, 0.0):
            return 0
        forgotten = 0
        while True:
            ids = messages_to_forget(self.store, namespace, rules, limit=RETENTION_BATCH)
            by_session: dict[str, list[str]] = {}
            for mid, stored in self.store.get_messages(namespace, ids).items():
                by_session.setdefault(stored.message.session_id, []).append(mid)
            round_forgotten = 0
            for session_ids in by_session.values():
                self._priority.yield_to_foreground()
                round_forgotten += self._delete(namespace, message_ids=session_ids, foreground=False).messages
            forgotten += round_forgotten
            if len(ids) < RETENTION_BATCH or not every or not round_forgotten:
                break
        # A full batch may leave more to forget: the next pass runs again at once.
        more = len(ids) >= RETENTION_BATCH
        self._next_retention[namespace] = 0.0 if more else time.monotonic() + RETENTION_INTERVAL_S
        return forgotten

    def stats(self, namespace: str) -> MemoryStats:
        """Counts, index state and association state of a namespace."""
        counts = self.store.counts(namespace)
        state = self._state(namespace)
        return MemoryStats(
            messages=counts.messages,
            sessions=counts.sessions,
            units=counts.units,
            edges=counts.edges,
            generation=counts.generation,
            index_generation=state.index.generation,
            pending_sessions=len(self.store.pending_sessions(namespace)),
            clusters=self.association.clusters(namespace),
            index_backends=state.index.backends(),
            last_refit_seconds=self.association.last_refit_seconds(namespace),
            pending_links=self.association.backlog(namespace, state.index),
        )

    def apply_remote_change(self, namespace: str, payload: Mapping[str, Any]) -> None:
        """Apply a change another replica committed to the shared database (its change-feed payload).

        Idempotent: a change the index already reflects (by generation) is skipped. A namespace this
        replica has not loaded yet is left alone (it is built from the database on first use).
        """
        state = self._namespaces.get(namespace)
        if state is None:
            return
        if "edges" in payload:
            # Association edges another replica linked (they change no unit, so carry no generation). A dirty
            # index is rebuilt from the database, edges included; an edge to a unit this index lacks is skipped.
            with state.lock:
                if not state.dirty:
                    edges = [(int(s), int(d), float(w)) for s, d, w in payload["edges"]]
                    state.index.set_edges(edges, replace=bool(payload.get("replace")))
            return
        with state.lock:
            generation = int(payload.get("generation", 0))
            if state.dirty or generation <= state.index.generation:
                return
            if payload.get("drop") or generation != state.index.generation + 1:
                # A gap (a change we missed) or a whole-namespace drop: rebuild from the database.
                state.index, _ = self._build_index(namespace)
                return
            removed = [unit_key(namespace, uid) for uid in payload.get("delete_units", ())]
            inserted = list(self.store.get_units(namespace, list(payload.get("insert_units", ()))).values())
            try:
                self._mirror(state.index, removed, inserted)
                state.index.generation = generation
                self._units_gone(namespace, removed, inserted)
            except Exception:
                state.dirty = True
                log.exception("applying a remote memory change failed; rebuilding on next access")

    def sizes(self) -> dict[str, float]:
        """In-memory sizes for the metrics endpoint (no database access)."""
        states = list(self._namespaces.values())
        return {
            "memory_namespaces_loaded": len(states),
            "memory_units_indexed": sum(st.index.size() for st in states),
            "memory_edges_indexed": sum(st.index.edge_count() for st in states),
            "memory_sessions_queued": len(self._queue),
        }

    # -- background consolidation ----------------------------------------------------------------------

    def _enqueue(self, namespace: str, session_id: str) -> None:
        now = time.monotonic()
        with self._cv:
            first, _ = self._queue.get((namespace, session_id), (now, now))
            self._queue[(namespace, session_id)] = (first, now)
            self._cv.notify_all()

    def _pick(self, now: float) -> tuple[tuple[str, str] | None, float]:
        """The first queued session that is ready, else None and how long until one is (lock held)."""
        wait = float("inf")
        for key, (first, last) in self._queue.items():
            ready_at = max(min(last + self.settle_s, first + self.max_delay_s), self._derive_hold.get(key, 0.0))
            if self._flushing or ready_at <= now:
                return key, 0.0
            wait = min(wait, ready_at - now)
        return None, wait

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until the background queue is drained, skipping the settle delay (tests, benchmarks,
        Consolidate); False on timeout. Without a background worker, drains it in the caller's thread.
        """
        if self._worker is None:
            while self._queue:
                (ns, sid), _ = self._queue.popitem(last=False)
                self._derive_session(ns, sid)
            return True
        deadline = time.monotonic() + timeout
        with self._cv:
            self._flushing += 1
            self._cv.notify_all()
            try:
                while self._queue or self._busy or self._refit_due:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cv.wait(remaining)
            finally:
                self._flushing -= 1
        return True

    def _next_task(self) -> tuple[str, str | None] | None:
        """Block until there is work: (namespace, session) to derive or (namespace, None) to refit/link."""
        with self._cv:
            while not self._closed:
                key, wait = self._pick(time.monotonic())
                if key is not None:
                    del self._queue[key]
                    self._busy += 1
                    return key
                if self._refit_due:
                    now = time.monotonic()
                    ready = next((ns for ns in self._refit_due if self._retry_at.get(ns, 0.0) <= now), None)
                    if ready is not None:
                        self._refit_due.discard(ready)
                        self._busy += 1
                        return ready, None
                    # Every due namespace is backing off after a failed step.
                    wait = min(wait, min(self._retry_at[ns] for ns in self._refit_due) - now)
                self._cv.wait(None if wait == float("inf") else wait)
            return None

    def _run_worker(self) -> None:
        while (task := self._next_task()) is not None:
            ns, session_id = task
            failed = False
            try:
                if session_id is not None:
                    cpu = time.thread_time()
                    self._derive_session(ns, session_id)
                    self._hold_session(ns, session_id, time.thread_time() - cpu)
                else:
                    failed = self._association_task(ns)
            except Exception:
                failed = session_id is None
                log.exception("background consolidation failed", extra={"namespace": ns})
            finally:
                # Whatever happened, a namespace with work left stays queued: re-queued only on success, one
                # failed step (a database hiccup) left its linking backlog waiting for the next Write.
                self._requeue(ns, failed, association_task=session_id is None)

    def _association_task(self, ns: str) -> bool:
        """One background association step of a namespace, then its consolidation pass when one is due;
        returns whether the association step failed. A failing consolidation pass (a retention Delete that
        raised, a policy changed to a bad value) is logged and does not stop linking, nor the reverse."""
        self._priority.wait_quiet()
        started = time.monotonic()
        failed = False
        with self._association_lease(ns, 0.0) as held:
            if held:
                try:
                    self.association.step(ns, self._state(ns).index)
                except Exception:
                    failed = True
                    log.exception("background association step failed", extra={"namespace": ns})
                # The re-check of old turns is slow maintenance: while a backlog is being linked it runs
                # every few seconds, not after every linking pass; freshly derived sessions are checked at once.
                if self._fresh_keys.get(ns) or time.monotonic() >= self._next_consolidation.get(ns, 0.0):
                    try:
                        self._priority.wait_quiet()
                        self._consolidate_units(ns)
                    except Exception:
                        log.exception("background consolidation pass failed", extra={"namespace": ns})
                        with self._cv:
                            # Re-checked by the round robin of later passes; kept, they re-queued it forever.
                            self._fresh_keys.pop(ns, None)
                    finally:
                        self._next_consolidation[ns] = time.monotonic() + CONSOLIDATION_INTERVAL_S
        # Association work is the lowest priority: pause as long as the step ran (at most half of a core, and
        # the GIL, go to it) so Writes and Searches keep their share.
        with self._cv:
            self._cv.wait(max(self.background_pause_s, time.monotonic() - started))
        return failed

    def _requeue(self, ns: str, failed: bool, *, association_task: bool) -> None:
        """After a background task of ``ns``: queue its association work again while some is left (after a
        failed step, once its back-off is over), and release the worker's busy mark."""
        try:
            due = failed or self.association.due(ns, self._state(ns).index) or bool(self._fresh_keys.get(ns))
        except Exception:
            log.exception("background consolidation failed", extra={"namespace": ns})
            due = failed = True
        with self._cv:
            if failed:
                tries = self._association_failures[ns] = self._association_failures.get(ns, 0) + 1
                delay = min(ASSOCIATION_RETRY_MAX_S, ASSOCIATION_RETRY_S * 2 ** (tries - 1))
                self._retry_at[ns] = time.monotonic() + delay
            elif association_task:
                self._association_failures.pop(ns, None)
                self._retry_at.pop(ns, None)
            if due:
                self._refit_due.add(ns)
            self._busy -= 1
            self._cv.notify_all()

    def _hold_session(self, namespace: str, session_id: str, cpu_s: float) -> None:
        """Keep the session from being re-derived until its share of the worker is back under derive_duty."""
        if self.derive_duty >= 1.0:
            return
        now = time.monotonic()
        with self._cv:
            if len(self._derive_hold) >= 4096:  # bounded: forget the holds that are over
                self._derive_hold = {k: t for k, t in self._derive_hold.items() if t > now}
            self._derive_hold[(namespace, session_id)] = now + cpu_s * (1.0 / self.derive_duty - 1.0)

    def _derive_session(self, namespace: str, session_id: str) -> tuple[int, int]:
        """Bring one session's derived units up to date; returns (units inserted, units deleted).

        Derivation and embedding run without the namespace lock (they are the expensive part), on a
        snapshot of the session; the commit checks the snapshot (in the store's transaction, against every
        replica) and it retries if a write changed the session meanwhile.
        """
        if not self._flushing and len(self._queue) < YIELD_MAX_QUEUED:
            self._priority.wait_interactive()
        key = (namespace, session_id)
        for _ in range(5):
            snapshot = self.store.session_messages(namespace, session_id)
            messages = [s.message for s in snapshot]
            segments = _SegmentPrints(self._segment_prints.get(key, {}), [s.content_hash for s in snapshot])
            delete, insert = self._plan_units(
                namespace, session_id, messages, None, background=True, segments=segments
            )
            state = self._state(namespace)
            with state.lock:
                # Units may have been changed by the sync path meanwhile: drop what is already there.
                stored = self.store.get_units(namespace, [s.unit.id for s in insert])
                insert = [s for s in insert if s.unit.id not in stored or stored[s.unit.id].unit != s.unit]
                # The store commits only if the session is still the snapshot: checked in the commit, since a
                # Delete or Write of another replica can commit at any time (the namespace lock is this
                # process's); derived from a stale snapshot, the units would cover deleted messages.
                change = Change(
                    delete_units=delete,
                    insert_units=insert,
                    clear_pending=[session_id],
                    expect_sessions={session_id: [(s.message.id, s.content_hash) for s in snapshot]},
                )
                try:
                    self._apply(namespace, state, change)
                except StaleChange:
                    continue
                if segments.learned:
                    self._segment_prints[key] = segments.learned
                else:
                    self._segment_prints.pop(key, None)
            # New units of the session, and its turns (committed by Write, not linked yet).
            session_keys = [s.key for s in insert]
            for m in messages:
                session_keys.extend(state.index.units_of_message(m.id))
            if len(self._queue) < YIELD_MAX_QUEUED:
                self._priority.wait_quiet()
            self.association.link(namespace, state.index, session_keys)
            with self._cv:
                self._fresh_keys.setdefault(namespace, set()).update(session_keys)
            return len(insert), len(delete)
        self._enqueue(namespace, session_id)
        return 0, 0
