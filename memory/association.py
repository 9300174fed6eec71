"""Association of memory units: a per-namespace Gaussian mixture over unit embeddings, and edges.

Each namespace gets a ``GaussianMixture`` (scikit-learn, diagonal covariances) fitted on a PCA
projection of its unit embeddings. A unit's posterior over the clusters decides where it links:

    H(u) = −Σ_c p(c | u) ln p(c | u)                  (posterior entropy, core.entropy)
    clusters(u) = {argmax p}                          if exp H(u) < multi_link_perplexity
                = {c : p(c | u) ≥ min_posterior}      otherwise (at most max_clusters_per_unit)

where p(c | u) is the mixture's posterior with its variances tied (see ``_posteriors``) and exp H is
the posterior's effective number of clusters (1 = certain, 2 = split evenly between two).

and inside each chosen cluster it links to its ``links_per_unit`` most similar members (cosine of the
full embeddings, members sampled to at most ``candidate_cap``), skipping units that cover the same
messages (those are already tied by the packer). A unit sitting between topics (high posterior entropy)
therefore links into several clusters. Edges are undirected, weighted by cosine, persisted in
``memory_edges`` and mirrored in the namespace index, where ``NamespaceIndex.neighbors(keys)`` serves
the retriever's association expansion.

Cost is bounded whatever the namespace size: the GMM is fitted on at most ``sample_cap`` units, warm
started from the previous fit while the number of clusters is unchanged (the PCA basis is kept until
the namespace quadruples), refits happen only after ``refit_growth`` growth, and one pass links at
most ``link_batch`` not-yet-linked units. Everything runs on the background worker, never in Write.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.entropy import entropy, row_entropies
from memory.index import NamespaceIndex
from memory.model import MemoryUnit
from memory.store import MemoryStore

log = logging.getLogger(__name__)


# Most bytes of member vectors the candidate cache keeps, over all namespaces (see ``_CandidateCache``).
# The default holds every cluster of one 100k-unit namespace at the largest K (64 clusters x candidate_cap
# 2,000 x 384 float32 = 197 MB at most); at 128 MiB a third of the clusters were rebuilt on every pass of a
# 100k-unit backlog.
CANDIDATE_CACHE_BYTES = 256 * 1024 * 1024
# Units a linking pass links between two chances for foreground work to run (about 3 ms of work).
PAUSE_EVERY_UNITS = 8
# Units whose vectors a refit gathers between two chances for foreground work to run.
GATHER_CHUNK = 10_000
# Serial numbers of fitted models: what tags the candidate cache's entries with the model they came from.
_MODEL_SERIALS = itertools.count(1)


@dataclass(frozen=True)
class AssociationConfig:
    """Knobs of the association graph (per process; defaults suit 1k–100k units per namespace)."""

    min_units: int = 64
    """No mixture below this many units (nothing to cluster yet)."""
    units_per_cluster: int = 250
    """K = clamp(n / units_per_cluster, 2, max_clusters)."""
    max_clusters: int = 64
    sample_cap: int = 4000
    """The mixture is fitted on at most this many units (uniform sample, fixed seed)."""
    pca_dims: int = 32
    max_iter: int = 30
    refit_growth: float = 0.25
    """Refit once the namespace grew by this share since the last fit."""
    multi_link_perplexity: float = 1.5
    """exp(H) of the posterior (its effective number of clusters) from which a unit links into several
    clusters. Perplexity rather than H / ln K, so the rule does not drift as K grows with the namespace."""
    posterior_temperature: float = 1.0
    """T of the posterior (tied isotropic variance scaled by T); higher = more multi-links."""
    min_posterior: float = 0.15
    max_clusters_per_unit: int = 3
    links_per_unit: int = 4
    candidate_cap: int = 2000
    """Members of a cluster compared against a new unit (sampled beyond this)."""
    link_batch: int = 100
    """Most not-yet-linked units one pass links (the rest wait for the next pass). Small, so one pass holds
    the GIL for a short stretch and a Search arriving meanwhile waits little; passes start in the gaps
    between foreground calls."""
    seed: int = 0


@dataclass
class _Model:
    mean: np.ndarray
    components: np.ndarray  # (pca_dims, dim)
    gmm: Any  # sklearn GaussianMixture (untyped)
    k: int
    fitted_n: int
    pca_n: int
    members: dict[int, list[int]] = field(default_factory=dict)
    linked: set[int] = field(default_factory=set)
    refit_seconds: float = 0.0
    #: Units ``link`` added after the fit (not part of ``fitted_n``).
    linked_since_fit: int = 0
    #: Keys the last scan found unlinked and no pass has taken yet (taken from the end).
    pending: list[int] = field(default_factory=list)
    #: Which fit this is (cluster numbers mean something else in every fit; see ``_CandidateCache``).
    serial: int = field(default_factory=lambda: next(_MODEL_SERIALS))


class _Candidates:
    """The sampled members of one cluster and their vectors, in buffers that grow by appending."""

    __slots__ = ("counted", "dead", "keys", "matrix", "n", "serial")

    def __init__(self, keys: np.ndarray, matrix: np.ndarray, serial: int = 0):
        self.keys = keys
        self.matrix = matrix
        self.n = len(keys)
        #: The serial of the model whose cluster this is.
        self.serial = serial
        #: Times a ranked candidate turned out removed from the index (rebuilt once past a tenth of ``n``).
        self.dead = 0
        #: Bytes the cache counts for this entry (its buffers may grow before the cache hears of it).
        self.counted = 0

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes + self.keys.nbytes)

    def add(self, key: int, vector: np.ndarray, members: int, cap: int, rng: np.random.Generator) -> int:
        """Take a new member of the cluster, which now has ``members`` members; returns the bytes added.

        Below ``cap`` every member is a candidate; beyond it, reservoir sampling keeps the candidates a
        uniform sample of the members (the new one replaces a random candidate with probability
        cap / members), as a rebuild would draw.
        """
        if self.n < cap:
            grown = 0
            if self.n == len(self.keys):
                capacity = min(cap, max(16, self.n + self.n // 2))
                before = self.nbytes
                matrix = np.empty((capacity, self.matrix.shape[1]), dtype=np.float32)
                matrix[: self.n] = self.matrix[: self.n]
                keys = np.empty(capacity, dtype=np.int64)
                keys[: self.n] = self.keys[: self.n]
                self.matrix, self.keys = matrix, keys
                grown = self.nbytes - before
            self.keys[self.n] = key
            self.matrix[self.n] = vector
            self.n += 1
            return grown
        if rng.random() < cap / max(members, 1):
            slot = int(rng.integers(self.n))
            self.keys[slot] = key
            self.matrix[slot] = vector
        return 0


@dataclass(frozen=True)
class CandidateCacheStats:
    """What the linking candidate cache holds (:meth:`AssociationManager.candidate_cache`): its entries, the
    bytes they take against the budget, and each (namespace, cluster) entry's unit keys in slot order."""

    entries: int
    nbytes: int
    budget_bytes: int
    samples: dict[tuple[str, int], tuple[int, ...]]


class _CandidateCache:
    """Per (namespace, cluster), the candidates a new unit is compared against, least recently used
    dropped first beyond a byte budget shared by all namespaces.

    Building a cluster's candidates (a dict lookup and a copy per member vector, up to ``candidate_cap``)
    was most of the linking cost: rebuilt on every call, linking the 10 new units of a Write into a
    100k-unit namespace took 54 ms, 48 of them rebuilding the ~13 clusters it touched. Entries are kept
    across calls and passes, take new members as they are linked, and are dropped when the namespace is
    refitted (clusters are renumbered) or forgotten. A removed unit's stale row is skipped when ranked; a
    unit whose vector changed is ranked by its old vector but weighted by its current one.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.nbytes = 0
        self._entries: OrderedDict[tuple[str, int], _Candidates] = OrderedDict()
        # Per namespace, the serial of its newest model: entries of older models are refused. A linking pass
        # builds an entry from the model it started with; a refit landing before the entry is put renumbers the
        # clusters, and the entry put then would hold one cluster's members under another cluster's number.
        self._serials: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, namespace: str, cluster: int, serial: int) -> _Candidates | None:
        """The entry of ``cluster`` of the model numbered ``serial`` (None if the cached one is another's)."""
        with self._lock:
            entry = self._entries.get((namespace, cluster))
            if entry is None or entry.serial != serial:
                return None
            self._entries.move_to_end((namespace, cluster))
            return entry

    def reset(self, namespace: str, serial: int) -> None:
        """The namespace's clusters are now those of the model numbered ``serial``: drop every entry, and
        refuse entries of older models from now on."""
        with self._lock:
            self._serials[namespace] = max(serial, self._serials.get(namespace, 0))
            for key in [k for k in self._entries if k[0] == namespace]:
                self._drop(key)

    def put(self, namespace: str, cluster: int, entry: _Candidates) -> None:
        with self._lock:
            if entry.serial < self._serials.get(namespace, 0):
                return
            self._drop((namespace, cluster))
            if entry.nbytes > self.budget_bytes:
                return
            self._entries[(namespace, cluster)] = entry
            entry.counted = entry.nbytes
            self.nbytes += entry.counted
            self._evict()

    def grew(self, namespace: str, cluster: int, entry: _Candidates, nbytes: int) -> None:
        """``entry``'s buffers grew by ``nbytes`` (counted only while it is the cached entry)."""
        with self._lock:
            if self._entries.get((namespace, cluster)) is entry:
                entry.counted += nbytes
                self.nbytes += nbytes
                self._evict()

    def drop(self, namespace: str, cluster: int | None = None) -> None:
        """Drop one cluster's entry, or every entry of the namespace."""
        with self._lock:
            if cluster is not None:
                self._drop((namespace, cluster))
                return
            for key in [k for k in self._entries if k[0] == namespace]:
                self._drop(key)

    def snapshot(self) -> CandidateCacheStats:
        with self._lock:
            samples = {key: tuple(e.keys[: e.n].tolist()) for key, e in self._entries.items()}
            return CandidateCacheStats(len(samples), self.nbytes, self.budget_bytes, samples)

    def _drop(self, key: tuple[str, int]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.counted

    def _evict(self) -> None:
        while self.nbytes > self.budget_bytes and self._entries:
            _, entry = self._entries.popitem(last=False)
            self.nbytes -= entry.counted


class AssociationManager:
    """Fits, refits and applies the per-namespace mixtures and keeps edges in the store and index."""

    def __init__(
        self,
        store: MemoryStore,
        config: AssociationConfig | None = None,
        pause: Callable[[], None] | None = None,
        candidate_cache_bytes: int = CANDIDATE_CACHE_BYTES,
    ):
        self.store = store
        self.config = config or AssociationConfig()
        # Called every few units of a linking pass, so foreground work can run in between.
        self._pause = pause or (lambda: None)
        self._models: dict[str, _Model] = {}
        # Bumped by ``forget`` (the namespace's data was dropped): a refit or linking pass that started before
        # stores nothing, else it put back a model and edges of the data just deleted. Guarded by ``_lock``,
        # which also guards ``_models`` and the ``linked`` set of a stored model against concurrent pruning.
        self._epochs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._candidates = _CandidateCache(candidate_cache_bytes)
        self._rng = np.random.default_rng(self.config.seed)

    # -- introspection -------------------------------------------------------------------------------

    def clusters(self, namespace: str) -> int:
        """Number of mixture components of the namespace's current model (0 before the first fit)."""
        model = self._models.get(namespace)
        return model.k if model else 0

    def candidate_cache(self) -> CandidateCacheStats:
        """A copy of what the linking candidate cache holds now (diagnostics and tests)."""
        return self._candidates.snapshot()

    def last_refit_seconds(self, namespace: str) -> float:
        """Wall time of the namespace's last refit."""
        model = self._models.get(namespace)
        return model.refit_seconds if model else 0.0

    def forget(self, namespace: str) -> None:
        """Drop the namespace's model (its data was deleted); passes running meanwhile store nothing."""
        with self._lock:
            self._models.pop(namespace, None)
            self._epochs[namespace] = self._epochs.get(namespace, 0) + 1
        self._candidates.drop(namespace)

    def units_removed(self, namespace: str, keys: Iterable[int]) -> None:
        """Units left the namespace's index (a Delete, a re-derivation): they no longer count as linked.

        Without this the backlog (fitted units + units linked since, minus linked ones) counted deleted
        keys as linked, so ``pending_links`` read 0 and the worker stopped while live units were unlinked.
        """
        with self._lock:
            model = self._models.get(namespace)
            if model is not None:
                model.linked.difference_update(keys)

    def units_kept(self, namespace: str, keys: set[int]) -> None:
        """The namespace's index was rebuilt and holds exactly ``keys``: forget linked units outside them."""
        with self._lock:
            model = self._models.get(namespace)
            if model is not None:
                model.linked.intersection_update(keys)

    def _current(self, namespace: str) -> tuple[_Model | None, int]:
        """The namespace's model and its epoch, read together."""
        with self._lock:
            return self._models.get(namespace), self._epochs.get(namespace, 0)

    def due(self, namespace: str, index: NamespaceIndex) -> bool:
        """Whether a background step (a refit, or a pass linking not-yet-linked units) is worth running."""
        return self._needs_refit(namespace, index) or self.backlog(namespace, index) > 0

    @property
    def _min_units(self) -> int:
        # A projection needs two points (one unit left PCA with zero components, which raised on every pass).
        return max(2, self.config.min_units)

    def _needs_refit(self, namespace: str, index: NamespaceIndex) -> bool:
        n = index.size()
        model = self._models.get(namespace)
        if model is None:
            return n >= self._min_units
        return n >= model.fitted_n * (1 + self.config.refit_growth)

    def backlog(self, namespace: str, index: NamespaceIndex) -> int:
        """How many units of the namespace wait to be linked (0 before the first fit)."""
        model = self._models.get(namespace)
        if model is None:
            return 0
        # Units that ``link`` placed since the fit are linked on top of the fitted ones: without counting
        # them, they would use up the backlog's count and leave as many fitted units unlinked.
        return max(0, min(index.size(), model.fitted_n + model.linked_since_fit) - len(model.linked))

    def link_backlog(self, namespace: str, index: NamespaceIndex, limit: int | None = None) -> int:
        """Link up to ``limit`` (default ``link_batch``) units not linked yet; returns how many were handled."""
        model, epoch = self._current(namespace)
        if model is None:
            return 0
        batch = limit or self.config.link_batch
        unlinked: list[int] = []
        scanned = False
        while len(unlinked) < batch:
            if not model.pending:
                if scanned:
                    break
                # One O(n) scan per backlog, not one per pass: the scan is what a 100-unit pass would
                # otherwise spend most of its time on at 100k units. Keys are re-checked when popped
                # (a unit removed or linked meanwhile is skipped).
                alive = set(index.unit_keys())
                model.linked &= alive
                model.pending = [k for k in alive if k not in model.linked]
                model.pending.reverse()  # popped from the end
                scanned = True
                self._pause()
                continue
            key = model.pending.pop()
            if key not in model.linked and index.unit(key) is not None:
                unlinked.append(key)
        if unlinked:
            self._link_keys(namespace, index, model, epoch, unlinked)
        else:
            model.fitted_n = min(model.fitted_n, index.size())
        return len(unlinked)

    def step(self, namespace: str, index: NamespaceIndex) -> str:
        """One bounded unit of background work: a refit when due, else one linking pass.

        Returns ``"refit"``, ``"link"`` or ``"idle"``.
        """
        if self._needs_refit(namespace, index):
            return "refit" if self.refit(namespace, index) is not None else "idle"
        if self.backlog(namespace, index) > 0 and self.link_backlog(namespace, index):
            return "link"
        return "idle"

    def _cluster_candidates(self, namespace: str, index: NamespaceIndex, model: _Model, cluster: int) -> _Candidates:
        """The cluster's candidates from the cache, or built from its members (sampled to candidate_cap)."""
        entry = self._candidates.get(namespace, cluster, model.serial)
        if entry is not None:
            return entry
        pool = np.asarray(model.members.get(cluster, []), dtype=np.int64)
        if len(pool) > self.config.candidate_cap:
            pool = self._rng.choice(pool, self.config.candidate_cap, replace=False)
        alive_keys: list[int] = []
        alive_vectors: list[np.ndarray] = []
        for member in pool.tolist():
            member_vector = index.vector(member)
            if member_vector is not None:
                alive_keys.append(member)
                alive_vectors.append(member_vector)
        matrix = (
            np.stack(alive_vectors).astype(np.float32)
            if alive_vectors
            else np.zeros((0, index.dim), dtype=np.float32)
        )
        entry = _Candidates(np.asarray(alive_keys, dtype=np.int64), matrix, model.serial)
        self._pause()  # building a matrix (up to 2,000 lookups and a stack) is a long stretch
        self._candidates.put(namespace, cluster, entry)
        return entry

    def _links_into(
        self,
        namespace: str,
        cluster: int,
        entry: _Candidates,
        index: NamespaceIndex,
        key: int,
        vector: np.ndarray,
        own: set[str],
        share: int,
    ) -> list[tuple[int, int, float]]:
        """Edges from ``key`` to its ``share`` most similar live candidates of one cluster, skipping units that
        cover one of its messages (``own``)."""
        if not entry.n:
            return []
        sims = entry.matrix[: entry.n] @ vector
        top = share * 4 + 1
        if len(sims) > top:
            best = np.argpartition(-sims, top)[:top]
            order = best[np.argsort(-sims[best])]
        else:
            order = np.argsort(-sims)
        edges: list[tuple[int, int, float]] = []
        for j in order[: share * 4]:
            other = int(entry.keys[j])
            if other == key:
                continue
            other_unit, other_vector = index.unit(other), index.vector(other)
            if other_unit is None or other_vector is None:
                entry.dead += 1
                if entry.dead * 10 > entry.n:
                    self._candidates.drop(namespace, cluster)  # rebuilt on next use
                continue
            if own.intersection(other_unit.message_ids):
                continue
            edges.append((min(key, other), max(key, other), float(other_vector @ vector)))
            if len(edges) >= share:
                break
        return edges

    # -- math ----------------------------------------------------------------------------------------

    def _n_clusters(self, n: int) -> int:
        c = self.config
        return int(min(c.max_clusters, max(2, round(n / c.units_per_cluster))))

    def _project(self, model: _Model, vectors: np.ndarray) -> np.ndarray:
        return np.asarray((vectors - model.mean) @ model.components.T, dtype=np.float64)

    def _posteriors(self, model: _Model, vectors: np.ndarray) -> np.ndarray:
        """Posterior p(c | u) ∝ π_c · exp(−‖u − μ_c‖² / (2 T σ̄²)) of the fitted mixture, with its
        per-component diagonal variances replaced by their mean σ̄² (tied, isotropic).

        With per-component variances the posterior of a point between two topics is still one-hot:
        far in the tails, tiny differences of variance swing the log likelihood by hundreds of nats.
        Tying the variance keeps the means and weights the mixture learned and makes a point
        equidistant from two means split its posterior between them, which is what the
        entropy-based multi-link needs.
        """
        x = self._project(model, vectors)
        gmm = model.gmm
        means = np.asarray(gmm.means_)  # type: ignore[attr-defined]
        var = float(np.mean(gmm.covariances_))  # type: ignore[attr-defined]
        log_w = np.log(np.asarray(gmm.weights_))  # type: ignore[attr-defined]
        # ‖x − μ‖² = ‖x‖² − 2 x·μ + ‖μ‖²: a matrix product instead of an (n, K, d) temporary.
        dist = (x * x).sum(axis=1)[:, None] - 2.0 * (x @ means.T) + (means * means).sum(axis=1)[None, :]
        z = log_w[None, :] - dist / (2.0 * self.config.posterior_temperature * var)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return np.asarray(p / p.sum(axis=1, keepdims=True))

    def _cluster_mask(self, post: np.ndarray) -> np.ndarray:
        """:meth:`_choose_clusters` of every row of ``post`` at once, as a boolean (units, clusters) mask."""
        c = self.config
        n, k = post.shape
        order = np.argsort(-post, axis=1, kind="stable")[:, : c.max_clusters_per_unit]
        top = np.take_along_axis(post, order, axis=1)
        keep = top >= c.min_posterior
        single = np.exp(row_entropies(post)) < c.multi_link_perplexity
        keep[single] = False
        keep[:, 0] |= ~keep.any(axis=1)  # the most likely cluster when nothing else qualifies
        mask = np.zeros((n, k), dtype=bool)
        rows = np.broadcast_to(np.arange(n)[:, None], order.shape)
        mask[rows[keep], order[keep]] = True
        return mask

    def _choose_clusters(self, post: np.ndarray) -> list[int]:
        c = self.config
        order = np.argsort(-post)
        if math.exp(entropy(post)) < c.multi_link_perplexity:
            return [int(order[0])]
        chosen = [int(i) for i in order[: c.max_clusters_per_unit] if post[i] >= c.min_posterior]
        return chosen or [int(order[0])]

    # -- fitting -------------------------------------------------------------------------------------

    def refit(self, namespace: str, index: NamespaceIndex) -> _Model | None:
        """Fit (or warm-refit) the namespace's mixture and reassign every unit to its clusters.

        Linking the units not linked yet is left to :meth:`step` / :meth:`link_backlog` (bounded passes).

        Returns the model, or None when the namespace is too small to cluster.
        """
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        c = self.config
        old, epoch = self._current(namespace)
        # Gathered in chunks with a chance for foreground work in between: at 100k units one pass over
        # every key and one np.stack of 100k vectors held the GIL for hundreds of milliseconds, and
        # Searches arriving meanwhile waited for it (p99 over 250 ms in bench memory-latency).
        all_keys = index.unit_keys()
        key_parts: list[list[int]] = []
        vector_parts: list[np.ndarray] = []
        for start in range(0, len(all_keys), GATHER_CHUNK):
            chunk = [
                (key, vector)
                for key in all_keys[start : start + GATHER_CHUNK]
                if (vector := index.vector(key)) is not None
            ]
            if chunk:
                key_parts.append([key for key, _ in chunk])
                vector_parts.append(np.stack([vector for _, vector in chunk]).astype(np.float32))
            self._pause()
        keys = np.asarray([key for part in key_parts for key in part], dtype=np.int64)
        n = len(keys)
        if n < self._min_units:
            return None
        all_vectors = np.concatenate(vector_parts)
        started = time.perf_counter()
        rng = np.random.default_rng(c.seed)
        # Same draw as choosing among the keys themselves: Generator.choice picks positions either way.
        sample = all_vectors if n <= c.sample_cap else all_vectors[rng.choice(n, c.sample_cap, replace=False)]
        k = self._n_clusters(n)
        if old is not None and abs(k - old.k) <= 0.25 * old.k:
            # Keep K (and so the warm start) until the target drifts by more than a quarter.
            k = old.k
        k = min(k, len(sample))  # a mixture has at most one component per point
        dims = min(c.pca_dims, sample.shape[1], len(sample) - 1)
        if old is not None and n < 4 * old.pca_n and old.components.shape[0] == dims:
            mean, components, pca_n = old.mean, old.components, old.pca_n
        else:
            pca = PCA(n_components=dims, svd_solver="randomized", random_state=c.seed).fit(sample)
            mean, components, pca_n = pca.mean_.astype(np.float32), pca.components_.astype(np.float32), n
        projected = np.asarray((sample - mean) @ components.T, dtype=np.float64)
        warm = old is not None and old.k == k and old.components is components
        if warm:
            gmm = old.gmm  # type: ignore[union-attr]
            gmm.set_params(warm_start=True, max_iter=max(5, c.max_iter // 3))  # type: ignore[attr-defined]
        else:
            gmm = GaussianMixture(
                n_components=k,
                covariance_type="diag",
                max_iter=c.max_iter,
                init_params="k-means++",
                reg_covar=1e-4,
                random_state=c.seed,
            )
        gmm.fit(projected)  # type: ignore[attr-defined]
        model = _Model(mean, components, gmm, k, n, pca_n)
        # Reassign every unit (vectorised, O(n)) and keep who is linked already.
        membership = self._cluster_mask(self._posteriors(model, all_vectors))
        self._pause()
        for cluster in np.flatnonzero(membership.any(axis=0)).tolist():
            model.members[int(cluster)] = keys[membership[:, cluster]].tolist()
        with self._lock:
            if self._epochs.get(namespace, 0) != epoch:
                return None  # the namespace was dropped meanwhile: this model is of data that is gone
            # Units deleted during the fit were pruned from the old model's linked set, and are not in the index.
            alive = set(index.unit_keys())
            if old is not None:
                model.linked = old.linked & alive
            else:
                # After a restart the edges are loaded from the database: units that have some are linked.
                model.linked = index.linked_keys() & alive
            self._models[namespace] = model
        self._candidates.reset(namespace, model.serial)  # the clusters were renumbered
        model.refit_seconds = time.perf_counter() - started
        log.info(
            "association refit",
            extra={
                "namespace": namespace,
                "units": n,
                "clusters": k,
                "warm": warm,
                "seconds": model.refit_seconds,
            },
        )
        return model

    # -- linking -------------------------------------------------------------------------------------

    def link(self, namespace: str, index: NamespaceIndex, keys: list[int]) -> int:
        """Link newly added units into the current model's clusters; returns edges written.

        Before the first fit this does nothing: the first refit links everything.
        """
        model, epoch = self._current(namespace)
        keys = [k for k in dict.fromkeys(keys) if model is not None and k not in model.linked]
        if model is None or not keys:
            return 0
        model.linked_since_fit += len(keys)
        return self._link_keys(namespace, index, model, epoch, keys, add_members=True)

    def _link_keys(
        self,
        namespace: str,
        index: NamespaceIndex,
        model: _Model,
        epoch: int,
        keys: list[int],
        add_members: bool = False,
    ) -> int:
        """Link ``keys`` into ``model`` (the namespace's model at ``epoch``); returns the edges written.

        The keys count as linked only once their edges are committed: marked before, a batch whose
        ``upsert_edges`` raised (a database hiccup) counted as linked with no edge, and was never linked.
        """
        c = self.config
        present: list[tuple[int, np.ndarray, MemoryUnit]] = []
        for key in keys:
            vector, unit = index.vector(key), index.unit(key)
            if vector is not None and unit is not None:
                present.append((key, vector, unit))
        if not present:
            self._mark_linked(namespace, index, model, epoch, keys)
            return 0
        vectors = np.stack([v for _, v, _ in present]).astype(np.float32)
        post = self._posteriors(model, vectors)
        edges: list[tuple[int, int, float]] = []
        for i, ((key, vector, unit), row) in enumerate(zip(present, post, strict=True)):
            if i % PAUSE_EVERY_UNITS == PAUSE_EVERY_UNITS - 1:
                self._pause()
            chosen = self._choose_clusters(row)
            share = max(1, math.ceil(c.links_per_unit / len(chosen)))
            own = set(unit.message_ids)
            for cluster in chosen:
                entry = self._cluster_candidates(namespace, index, model, cluster)
                edges += self._links_into(namespace, cluster, entry, index, key, vector, own, share)
                if add_members:
                    members = model.members.setdefault(cluster, [])
                    members.append(key)
                    grown = entry.add(key, vector, len(members), c.candidate_cap, self._rng)
                    if grown:
                        self._candidates.grew(namespace, cluster, entry, grown)
        if edges:
            if self._current(namespace)[1] != epoch:
                return 0  # the namespace was dropped meanwhile (its units are gone from the store too)
            self.store.upsert_edges(namespace, edges)
            index.set_edges(edges, replace=False)
        # Every requested key counts as handled, even one removed meanwhile, so backlogs always drain.
        self._mark_linked(namespace, index, model, epoch, keys)
        return len(edges)

    def _mark_linked(
        self, namespace: str, index: NamespaceIndex, model: _Model, epoch: int, keys: list[int]
    ) -> None:
        """Count ``keys`` as linked in ``model`` and in the namespace's current model (a refit may have replaced
        it meanwhile), unless the namespace was dropped since ``epoch``. A key already removed from the index
        is left out: a Delete pruned it (``units_removed``), and counting it again would hide a live unit from
        the backlog."""
        with self._lock:
            if self._epochs.get(namespace, 0) != epoch:
                return
            live = [k for k in keys if index.unit(k) is not None]
            model.linked.update(live)
            current = self._models.get(namespace)
            if current is not None and current is not model:
                current.linked.update(live)
