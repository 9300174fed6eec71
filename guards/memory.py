"""The hierarchical guard memory of one namespace: root → category → cluster → leaf exemplars.

Scoring (``GuardMemory.score``) for a query embedding q within a stage group:

* leaves: FAISS top-k by cosine s_j, weights w = softmax(s / T_leaf), leaf harm = Σ w_j·y_j (y = 1 harmful);
* clusters: top-k centroids by cosine s_i, p_i ∝ max(s_i, ε)^(1/T) (SafeHarbor, T = 0.1); each cluster's
  smoothed harmful share r_i = (h_i + ½)/(n_i + 1); cluster harm = Σ p_i·r_i;
* neighbourhood harm = ½(leaf harm + cluster harm), the leaf share rising to 1 for a near-duplicate of a leaf
  (nearest cosine from ``duplicate_floor`` 0.85 to ``duplicate_full`` 0.95: a corrected verdict speaks for itself);
* learned boundary (request group): b = σ(k·(q·w + β)), a label-balanced logistic regression over the group's
  leaves, refitted when they change; harm = share·b + (1 − share)·neighbourhood harm, where the share falls
  from 1 to 0 as the nearest leaf goes from ``local_floor`` to ``local_full`` (a near-duplicate of a
  labelled leaf speaks for itself; a request unlike any leaf is placed by the boundary);
* benign prior (tool results, requests): harm = (1 − near)·prior + near·harm, near rising from 0 to 1 as the
  nearest leaf goes from the group's floor to its full similarity: content unlike every labelled leaf counts
  as ordinary;
* entropy = normalised binary entropy of (harm, 1 − harm);
* confidence c = clip((max leaf cosine − floor)/(full − floor), 0, 1): with no similar evidence the
  memory abstains and the namespace's default decision applies.

Evolution (``add_leaf``) places a new exemplar by the cluster distribution of its category: a new
cluster when nothing is close or the distribution is flat (normalised entropy above a threshold) — unlike
SafeHarbor, also when a category has one cluster only; otherwise it joins the nearest cluster. A cluster
whose label entropy rises above ``split_entropy`` splits in two by a 2-means seeded with its per-label
means (so the cut follows the labels); siblings with close centroids, the same majority label and low
joint label entropy merge. Every step is an event with before/after snapshots, so it can be undone.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from core.entropy import normalized_entropy
from core.errors import FailedPreconditionError, FieldViolation, InvalidArgumentError
from core.vector_index import FaissVectorIndex, NumpyVectorIndex, VectorIndex
from guards.model import Cluster, EvolutionEvent, Exemplar, Label, LeafSource
from guards.store import GuardStore

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class MemoryParams:
    """Tunable constants of scoring and evolution (documented in docs/guards.md)."""

    leaf_k: int = 8
    #: Share of the leaf-level harm in the final harm (the rest comes from the cluster level)...
    leaf_weight: float = 0.5
    #: ...rising to 1 as the nearest leaf goes from ``duplicate_floor`` to ``duplicate_full`` similar: a
    #: near-duplicate of a labelled leaf (above all a corrected verdict) is judged by the leaves, not diluted
    #: by its cluster's share. Feedback places a leaf in the nearest cluster whatever its labels, so one
    #: harmful correction in a cluster of 112 benign exemplars scored ½·1 + ½·0.01: the very text an operator
    #: had just marked BLOCK came back as REVIEW (requests) or, at TOOL_RESULT, ALLOW.
    duplicate_floor: float = 0.85
    duplicate_full: float = 0.95
    cluster_k: int = 3
    #: Softmax temperature over leaf cosines (small = the nearest leaves dominate).
    leaf_temperature: float = 0.05
    #: SafeHarbor's p_i ∝ s_i^(1/T) over cluster cosines.
    cluster_temperature: float = 0.1
    #: Share of the harm given by the group's learned boundary instead of the nearest leaves and clusters,
    #: when the nearest leaf is at most ``local_floor`` similar; it falls linearly to 0 at ``local_full``
    #: (a near-duplicate of a labelled leaf, e.g. a corrected verdict, speaks for itself).
    boundary_weight: float = 1.0
    #: Stage groups that learn a boundary. Tool results stay with the injection detectors and the nearest
    #: exemplars until a boundary there is measured on planted injections: a linear cut over a few dozen
    #: leaves may learn "imperative = injection" and flag requests between people ("please send me ...").
    boundary_groups: tuple[str, ...] = ("request",)
    local_floor: float = 0.45
    local_full: float = 0.75
    #: Groups whose content is benign unless shown otherwise: (group, prior harm, floor, full). The harm moves
    #: from the prior to the neighbourhood (and boundary) harm as the nearest leaf goes from ``floor`` to
    #: ``full`` similar.
    #: - Tool output is mostly ordinary text full of requests and imperatives ("reply STOP", "please pay by
    #:   the 30th"), and every sentence of it is scored: a harm of 0.9 from a sentence that is merely the least
    #:   unlike an injection exemplar (cosine 0.5) blocked 68% of realistic benign outputs in bench/data. Under
    #:   the prior only text close to a known injection (pack, operator, feedback) blocks; the injection
    #:   detectors cover the rest.
    #: - Requests: the boundary is a linear cut fitted on a few hundred exemplars, and far from all of them it
    #:   extrapolates to anything. Without the prior it blocked 27 of 920 LoCoMo chat turns ("Hey Caroline!
    #:   Missed you. Anything new? Spill the beans!", nearest exemplar at cosine 0.33, boundary harm 0.88). The
    #:   window starts where evidence starts to count (``similarity_floor``): AgentHarm's requests sit above it.
    #: - Answers: an agent's answers are ordinary conversation far more often than anything else, and the
    #:   output group's exemplars cannot cover all of it. Without the prior, the nearest exemplar decided alone
    #:   however far it was: 38 of 920 LoCoMo chat turns were blocked at OUTPUT and 28 sent to REVIEW ("Wow,
    #:   Caroline! Books have such an awesome power!"), and, with the exemplars of 2026-11-24 added, 129.
    harm_priors: tuple[tuple[str, float, float, float], ...] = (
        ("request", 0.0, 0.2, 0.4),
        ("tool_result", 0.0, 0.55, 0.75),
        ("output", 0.0, 0.3, 0.5),
    )
    #: L2 strength of the boundary (logistic regression over the group's leaves, labels balanced)...
    boundary_l2: float = 1.0
    #: ...and the factor on its logit: the regularised fit is under-confident on new text; 5-fold
    #: cross-validation on the default pack's own exemplars puts the log-loss optimum near 3 (requests).
    boundary_sharpness: float = 3.0
    #: Cosine below which a leaf is no evidence at all, and at which evidence counts fully.
    similarity_floor: float = 0.2
    similarity_full: float = 0.45
    #: Below this confidence the memory abstains (default decision applies).
    min_confidence: float = 0.25
    #: Normalised binary label entropy above which a verdict is REVIEW.
    review_entropy: float = 0.95
    #: Placement: a new cluster when the best centroid cosine is below this...
    new_cluster_similarity: float = 0.45
    #: ...or when the category's cluster distribution is flatter than this (and the best is not close).
    new_cluster_entropy: float = 0.9
    join_similarity: float = 0.6
    #: Split a cluster whose label entropy exceeds this, once it has enough leaves of each label.
    split_entropy: float = 0.7
    split_min_per_label: int = 2
    #: Merge siblings with centroid cosine ≥ this, same majority label and joint label entropy ≤ merge_entropy.
    merge_similarity: float = 0.85
    merge_entropy: float = 0.5
    faiss: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any] | None, path: str = "memory") -> MemoryParams:
        """Overrides from configuration (``path`` names it in errors). Raises InvalidArgumentError naming each
        unknown field and each ``harm_priors`` entry that is not ``[group, prior, floor, full]`` with
        floor < full: a typo would otherwise be a TypeError at start, or a prior that silently does nothing."""
        config = dict(config or {})
        known = {f.name for f in fields(cls)}
        errors = [
            FieldViolation(f"{path}.{key}", f"unknown field; known: {', '.join(sorted(known))}")
            for key in config
            if key not in known
        ]
        priors = config.get("harm_priors")
        if priors is not None:
            checked = []
            for i, entry in enumerate(priors if isinstance(priors, (list, tuple)) else [priors]):
                try:
                    group, prior, floor, full = entry
                    item = (str(group), float(prior), float(floor), float(full))
                    if not item[2] < item[3]:
                        raise ValueError("floor must be below full")
                    checked.append(item)
                except (TypeError, ValueError) as exc:
                    errors.append(
                        FieldViolation(f"{path}.harm_priors[{i}]", f"must be [group, prior, floor, full] ({exc})")
                    )
            config["harm_priors"] = tuple(checked)
        if errors:
            raise InvalidArgumentError(errors)
        return cls(**config)


@dataclass
class ScoreResult:
    """What the memory says about one query."""

    harm: float
    entropy: float
    confidence: float
    category: str
    #: (cluster, p_i, cosine) strongest first.
    clusters: list[tuple[Cluster, float, float]] = field(default_factory=list)
    #: (leaf, weight, cosine) strongest first.
    leaves: list[tuple[Exemplar, float, float]] = field(default_factory=list)


_STOP = set(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "by",
        "at",
        "from",
        "as",
        "is",
        "are",
        "be",
        "was",
        "were",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "i",
        "you",
        "he",
        "she",
        "we",
        "they",
        "me",
        "my",
        "your",
        "our",
        "their",
        "them",
        "his",
        "her",
        "can",
        "could",
        "would",
        "should",
        "will",
        "please",
        "first",
        "then",
        "also",
        "all",
        "any",
        "some",
        "into",
        "about",
        "how",
        "what",
        "which",
        "who",
        "when",
        "where",
        "using",
        "use",
        "make",
        "get",
        "out",
        "up",
        "so",
        "do",
        "does",
        "did",
        "not",
        "no",
        "if",
        "than",
        "more",
        "most",
        "such",
        "there",
        "here",
        "need",
        "want",
        "like",
        "just",
        "only",
        "via",
        "per",
        "each",
        "other",
        "been",
        "being",
        "have",
        "has",
        "had",
        "let",
        "us",
        "one",
        "two",
        "new",
    ]
)
_WORD = re.compile(r"[a-z][a-z'-]{2,}")


def keyphrases(texts: list[str], contrast: list[str] | None = None, top: int = 6) -> list[str]:
    """Words frequent in ``texts`` and rare in ``contrast`` (document-frequency difference)."""

    def df(items: list[str]) -> Counter[str]:
        c: Counter[str] = Counter()
        for t in items:
            c.update({w for w in _WORD.findall(t.lower()) if w not in _STOP})
        return c

    pos = df(texts)
    neg = df(contrast or [])
    n_pos, n_neg = max(len(texts), 1), max(len(contrast or []), 1)
    scored = sorted(pos, key=lambda w: (-(pos[w] / n_pos - neg[w] / n_neg), w))
    return scored[:top]


def fit_boundary(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[np.ndarray, float]:
    """Logistic regression of y (1 = harmful) on x: returns (w, b) of P(harmful) = σ(x·w + b).

    Each label carries half of the total weight whatever its count, so a memory with few benign leaves
    does not learn that everything is harmful; ``l2`` penalises ‖w‖² against the summed loss.
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    # A few hundred rows: BLAS threads only contend with the gRPC loop and the embedder on a small machine.
    with threadpool_limits(limits=1, user_api="blas"):
        model = LogisticRegression(C=1.0 / l2, class_weight="balanced", max_iter=500).fit(x, y)
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


def _cluster_ids(event: EvolutionEvent, key: str) -> list[int]:
    """Cluster ids an event created (``created``) or replaced (``before`` snapshots)."""
    items = event.payload.get(key, [])
    return [int(x["id"]) if isinstance(x, dict) else int(x) for x in items]


def label_entropy(harmful: int, benign: int) -> float:
    """Normalised entropy of a cluster's label counts (0 = pure, 1 = half and half)."""
    return normalized_entropy([harmful, benign]) if harmful + benign else 0.0


class GuardMemory:
    """In-process view of one scope's tree, rebuilt from the store, with FAISS indexes per stage group.

    Each evolution step (a seed, placing a leaf with the splits and merges it causes, a rollback) is one
    store transaction, serialised against the other steps of the scope in this process (``lock``) and in
    every replica sharing the store (``GuardStore.transaction``). It decides on the current tree: when
    the store's newest event is not the one this view was built from, another replica evolved the scope,
    and the view is reloaded inside the transaction first. Writes go to the store, then to this view; a
    failed step reloads the view from the store, which holds none of it.
    """

    def __init__(self, scope: str, store: GuardStore, dim: int, params: MemoryParams | None = None):
        self.scope = scope
        self.store = store
        self.dim = dim
        self.params = params or MemoryParams()
        self.lock = threading.RLock()
        self.leaves: dict[int, Exemplar] = {}
        self.vectors: dict[int, np.ndarray] = {}
        self.clusters: dict[int, Cluster] = {}
        self.include_pack = True
        #: Version of the newest event this view has seen (the one it was built from, or its own last step).
        self.version = 0
        #: Set when another replica changed the scope (``mark_stale``); the next ``refresh`` reloads.
        self.stale = False
        self._depth = 0  # nesting of ``_step`` on the thread holding ``lock``
        self._indexes: dict[str, VectorIndex] = {}
        self._centroids: dict[str, tuple[list[int], np.ndarray]] = {}
        #: Per group, aligned with its centroid matrix: each cluster's smoothed harmful share (h + ½)/(n + 1).
        self._rates: dict[str, np.ndarray] = {}
        self._stats: dict[int, tuple[int, int]] = {}
        #: Per group: the learned harmful/benign boundary (w, b) over its visible leaves, when it has both labels.
        self._boundaries: dict[str, tuple[np.ndarray, float]] = {}
        self._fitted: dict[str, tuple[tuple[tuple[int, ...], bytes], tuple[np.ndarray, float]]] = {}
        #: Visible leaf ids per active cluster (derived in ``_rebuild``).
        self._members: dict[int, list[int]] = {}
        #: Per group, the texts of its visible leaves (derived in ``_rebuild``).
        self._texts: dict[str, set[str]] = {}
        self.reload()

    # --- loading and derived state ------------------------------------------------------------------
    def reload(self) -> None:
        """Rebuild everything from the store (the store is the source of truth)."""
        with self.lock:
            self.stale = False
            # The version first: a step committing meanwhile makes the rows newer than it, never older, and
            # the next step then reloads again (inside a step the store's write lock keeps them equal).
            self.version = self.store.latest_version(self.scope)
            leaves, vectors = self.store.load_leaves(self.scope)
            clusters = self.store.load_clusters(self.scope)
            self.leaves = {leaf.id: leaf for leaf in leaves}
            self.vectors = {leaf.id: vectors[i] for i, leaf in enumerate(leaves)}
            self.clusters = {c.id: c for c, active in clusters if active}
            self._rebuild()

    def mark_stale(self) -> None:
        """Another replica changed the scope: the next ``refresh`` (or evolution step) reloads the view."""
        self.stale = True

    def refresh(self) -> None:
        """Reload the view if it was marked stale (after any step of this process in flight has committed)."""
        if self.stale:
            with self.lock:
                if self.stale:
                    self.reload()

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        """One evolution step: a store transaction holding the scope's write lock, on an up-to-date view."""
        with self.lock:
            if self._depth:
                yield  # a step within a step (a split after a placement): the same transaction
                return
            self._depth += 1
            try:
                with self.store.transaction(self.scope):
                    # Only a stale view pays for a reload: one version read when nothing else wrote.
                    if self.stale or self.store.latest_version(self.scope) != self.version:
                        self.reload()
                    yield
            except BaseException:
                # The view may hold what the rolled-back transaction wrote.
                try:
                    self.reload()
                except Exception:
                    log.warning("guard memory of %s: reload after a failed step failed", self.scope, exc_info=True)
                    self.stale = True
                raise
            finally:
                self._depth -= 1

    def _visible(self, leaf: Exemplar) -> bool:
        return leaf.active and (self.include_pack or leaf.source != LeafSource.PACK)

    def members(self, cluster_id: int) -> list[Exemplar]:
        """Visible leaves of a cluster."""
        return [self.leaves[i] for i in self._members.get(cluster_id, [])]

    def _rebuild(self) -> None:
        by_group: dict[str, list[int]] = {}
        for leaf in self.leaves.values():
            if self._visible(leaf):
                by_group.setdefault(leaf.stage_group, []).append(leaf.id)
        self._indexes = {}
        self._boundaries = {}
        self._texts = {group: {self.leaves[i].text for i in ids} for group, ids in by_group.items()}
        for group, ids in by_group.items():
            index: VectorIndex = FaissVectorIndex(self.dim) if self.params.faiss else NumpyVectorIndex(self.dim)
            x = np.stack([self.vectors[i] for i in ids])
            index.add(np.asarray(ids, dtype=np.int64), x)
            self._indexes[group] = index
            y = np.array([self.leaves[i].label == Label.HARMFUL for i in ids], dtype=np.float64)
            if self.params.boundary_weight > 0 and group in self.params.boundary_groups and 0 < y.sum() < len(y):
                # Most evolution steps touch one group (or only move leaves between clusters): refit only
                # a group whose labelled leaves changed.
                key = (tuple(ids), y.tobytes())
                cached = self._fitted.get(group)
                if cached is None or cached[0] != key:
                    cached = (key, fit_boundary(x, y, self.params.boundary_l2))
                    self._fitted[group] = cached
                self._boundaries[group] = cached[1]
        self._centroids = {}
        self._stats = {}
        members: dict[int, list[int]] = {}
        for leaf in self.leaves.values():
            if self._visible(leaf) and leaf.cluster_id in self.clusters:
                members.setdefault(leaf.cluster_id, []).append(leaf.id)
        self._members = members
        rows: dict[str, list[tuple[int, np.ndarray]]] = {}
        for cid, ids in members.items():
            cluster = self.clusters[cid]
            centroid = np.mean([self.vectors[i] for i in ids], axis=0)
            norm = float(np.linalg.norm(centroid))
            rows.setdefault(cluster.stage_group, []).append((cid, centroid / norm if norm > 0 else centroid))
            harmful = sum(1 for i in ids if self.leaves[i].label == Label.HARMFUL)
            self._stats[cid] = (harmful, len(ids) - harmful)
        self._rates = {}
        for group, items in rows.items():
            self._centroids[group] = ([cid for cid, _ in items], np.stack([v for _, v in items]).astype(np.float32))
            counts = [self._stats[cid] for cid, _ in items]
            self._rates[group] = np.array([(h + 0.5) / (h + b + 1.0) for h, b in counts])

    def is_leaf_text(self, group: str, text: str) -> bool:
        """Whether ``text`` is the text of a visible leaf of ``group`` (an exemplar, a corrected request)."""
        return text in self._texts.get(group, ())

    def stats(self, cluster_id: int) -> tuple[int, int]:
        """(harmful, benign) counts of a cluster's visible leaves."""
        return self._stats.get(cluster_id, (0, 0))

    def centroid(self, cluster_id: int) -> np.ndarray | None:
        """Normalised centroid of a cluster (None when it has no visible leaves)."""
        for ids, matrix in self._centroids.values():
            if cluster_id in ids:
                return matrix[ids.index(cluster_id)]
        return None

    # --- scoring -------------------------------------------------------------------------------------
    def score(self, query: np.ndarray, group: str) -> ScoreResult:
        """Harm, entropy and confidence of one normalised query vector in a stage group."""
        return self.score_many(query.reshape(1, -1), group)[0]

    def score_many(self, queries: np.ndarray, group: str) -> list[ScoreResult]:
        """``score`` for every row of ``queries`` (n, dim): one index search and one centroid product for all.

        The arithmetic runs on (n, k) arrays; Python only touches the k leaves and clusters of each row that
        are returned as evidence, never the whole memory.
        """
        p = self.params
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self.lock:
            index = self._indexes.get(group)
            centroids = self._centroids.get(group)
            if index is None or centroids is None or len(index) == 0:
                return [ScoreResult(harm=0.0, entropy=1.0, confidence=0.0, category="") for _ in queries]
            sims, ids = index.search(queries, p.leaf_k)
            cids, matrix = centroids
            rates = self._rates[group]
            boundary = self._boundaries.get(group)
            csims_all = queries @ matrix.T
            order = np.argsort(-csims_all, axis=1)[:, : p.cluster_k]
            leaves = [[self.leaves[int(i)] for i in row if i >= 0] for row in ids]
            clusters = [[self.clusters[cids[j]] for j in row] for row in order]
        found = ids >= 0
        # Search results come best first, so column 0 holds each row's largest cosine.
        weights = np.where(found, np.exp((np.where(found, sims, 0.0) - sims[:, :1]) / p.leaf_temperature), 0.0)
        weights /= weights.sum(axis=1, keepdims=True)
        labels = np.zeros(ids.shape)
        for r, row in enumerate(leaves):
            labels[r, : len(row)] = [leaf.label == Label.HARMFUL for leaf in row]
        leaf_harm = (weights * labels).sum(axis=1)
        csims = np.take_along_axis(csims_all, order, axis=1)
        # p_i ∝ s_i^(1/T) in the log domain: in float32, max(s, 1e-6)^10 underflows to 0 for a text unlike
        # every centroid (all cosines ≤ 0: code, another language), and 0/0 made the harm NaN.
        logp = np.log(np.maximum(csims.astype(np.float64), 1e-6)) / p.cluster_temperature
        pc = np.exp(logp - logp.max(axis=1, keepdims=True))
        pc /= pc.sum(axis=1, keepdims=True)
        cluster_harm = (pc * rates[order]).sum(axis=1)
        nearest_leaf = np.where(found[:, 0], sims[:, 0], 0.0)
        duplicate = np.clip(
            (nearest_leaf - p.duplicate_floor) / max(p.duplicate_full - p.duplicate_floor, 1e-6), 0.0, 1.0
        )
        leaf_share = p.leaf_weight + (1.0 - p.leaf_weight) * duplicate
        harm = leaf_share * leaf_harm + (1.0 - leaf_share) * cluster_harm
        if boundary is not None:
            learned = 1.0 / (1.0 + np.exp(-p.boundary_sharpness * (queries @ boundary[0] + boundary[1])))
            local = np.clip((sims[:, 0] - p.local_floor) / (p.local_full - p.local_floor), 0.0, 1.0)
            share = p.boundary_weight * (1.0 - local)
            harm = share * learned + (1.0 - share) * harm
        for prior_group, prior, floor, full in p.harm_priors:
            if prior_group == group:
                nearest = np.where(found[:, 0], sims[:, 0], 0.0)
                near = np.clip((nearest - floor) / (full - floor), 0.0, 1.0)
                harm = (1.0 - near) * prior + near * harm
        confidence = np.clip((sims[:, 0] - p.similarity_floor) / (p.similarity_full - p.similarity_floor), 0.0, 1.0)
        out = []
        for r in range(len(queries)):
            # The category is the one carrying most similarity mass among the top clusters.
            mass: dict[str, float] = {}
            for c, w in zip(clusters[r], pc[r], strict=True):
                mass[c.category] = mass.get(c.category, 0.0) + float(w)
            out.append(
                ScoreResult(
                    harm=float(harm[r]),
                    entropy=normalized_entropy([harm[r], 1.0 - harm[r]]),
                    confidence=float(confidence[r]),
                    category=max(mass, key=lambda k: mass[k]) if mass else "",
                    clusters=[(c, float(w), float(s)) for c, w, s in zip(clusters[r], pc[r], csims[r], strict=True)],
                    leaves=[
                        (leaf, float(w), float(s)) for leaf, w, s in zip(leaves[r], weights[r], sims[r], strict=False)
                    ],
                )
            )
        return out

    # --- evolution -------------------------------------------------------------------------------------
    def snapshot(self, cluster_id: int) -> dict[str, Any]:
        """JSON-able state of a cluster: what rollback restores."""
        c = self.clusters[cluster_id]
        leaf_ids = sorted(leaf.id for leaf in self.leaves.values() if leaf.cluster_id == cluster_id)
        return {
            "id": c.id,
            "category": c.category,
            "stage_group": c.stage_group,
            "rule_text": c.rule_text,
            "leaf_ids": leaf_ids,
        }

    def _event(self, kind: str, summary: str, payload: dict[str, Any]) -> EvolutionEvent:
        event = self.store.append_event(self.scope, kind, summary, payload)
        self.version = event.version
        return event

    def _new_cluster(self, category: str, group: str, rule_text: str, leaf_ids: list[int]) -> int:
        cid = self.store.add_cluster(self.scope, Cluster(0, category, group, rule_text))
        self.clusters[cid] = Cluster(cid, category, group, rule_text)
        self._assign(leaf_ids, cid)
        return cid

    def _assign(self, leaf_ids: list[int], cluster_id: int) -> None:
        if not leaf_ids:
            return
        self.store.update_leaves(self.scope, {i: {"cluster_id": cluster_id} for i in leaf_ids})
        for i in leaf_ids:
            self.leaves[i] = replace(self.leaves[i], cluster_id=cluster_id)

    def _deactivate_cluster(self, cluster_id: int) -> None:
        self.store.update_cluster(self.scope, cluster_id, active=False)
        self.clusters.pop(cluster_id, None)

    def seed(
        self,
        items: list[tuple[Exemplar, np.ndarray]],
        clusters: list[tuple[str, str, str, list[int]]],
        kind: str = "seed",
        summary: str = "",
        unless_source: LeafSource | None = None,
    ) -> EvolutionEvent | None:
        """Insert a batch of leaves grouped into given clusters (category, group, rule_text, item indexes).

        With ``unless_source``, nothing is inserted (None is returned) when the scope already has a leaf of
        that source: decided inside the step, so two replicas seeding a new scope at once seed it once.
        """
        with self._step():
            if unless_source is not None and any(leaf.source == unless_source for leaf in self.leaves.values()):
                return None
            ids = self.store.add_leaves(self.scope, [e for e, _ in items], np.stack([v for _, v in items]))
            for (leaf, vec), new_id in zip(items, ids, strict=True):
                self.leaves[new_id] = replace(leaf, id=new_id)
                self.vectors[new_id] = vec
            created = [self._new_cluster(cat, group, text, [ids[i] for i in idx]) for cat, group, text, idx in clusters]
            event = self._event(
                kind,
                summary or f"{len(ids)} exemplars in {len(created)} clusters",
                {"created": created, "before": [], "added_leaves": ids},
            )
            self._rebuild()
            return event

    def add_leaf(
        self,
        leaf: Exemplar,
        vector: np.ndarray,
        category: str | None = None,
        *,
        before_commit: Callable[[int, int, list[EvolutionEvent]], None] | None = None,
    ) -> tuple[int, int, list[EvolutionEvent]]:
        """Place a new exemplar, then split/merge as needed. Returns (leaf id, cluster id, events).

        ``before_commit(leaf id, cluster id, events)`` runs last inside the step's transaction (the view is at
        ``version`` then): what it writes to the store commits with the leaf, and an exception from it undoes
        the whole step. Feedback records itself on its verdict there.
        """
        p = self.params
        with self._step():
            group = leaf.stage_group
            cids, matrix = self._centroids.get(group, ([], np.zeros((0, self.dim), np.float32)))
            sims = matrix @ vector.astype(np.float32) if len(cids) else np.zeros(0)
            if not category:
                category = (
                    self.clusters[cids[int(np.argmax(sims))]].category if len(cids) else (leaf.category or "general")
                )
            leaf = replace(leaf, category=category)
            [leaf_id] = self.store.add_leaves(self.scope, [leaf], vector.reshape(1, -1))
            self.leaves[leaf_id] = replace(leaf, id=leaf_id)
            self.vectors[leaf_id] = vector.astype(np.float32)
            cand = [
                (cid, float(s)) for cid, s in zip(cids, sims, strict=True) if self.clusters[cid].category == category
            ]
            events: list[EvolutionEvent] = []
            best_id, best_s = max(cand, key=lambda x: x[1]) if cand else (0, -1.0)
            flat = 0.0
            if len(cand) > 1:
                pc = np.maximum(np.array([s for _, s in cand]), 1e-6) ** (1.0 / p.cluster_temperature)
                flat = normalized_entropy(pc / pc.sum())
            if (
                not cand
                or best_s < p.new_cluster_similarity
                or (flat > p.new_cluster_entropy and best_s < p.join_similarity)
            ):
                rule = "; ".join(keyphrases([leaf.text]))
                cid = self._new_cluster(category, group, rule, [leaf_id])
                events.append(
                    self._event(
                        "new_cluster",
                        f"leaf {leaf_id} opened cluster {cid} in {category!r} "
                        f"(best cosine {best_s:.2f}, placement entropy {flat:.2f})",
                        {"created": [cid], "before": [], "added_leaves": [leaf_id]},
                    )
                )
            else:
                cid = best_id
                self._assign([leaf_id], cid)
                # No "before" snapshot: joining changes nothing of the cluster but its leaf list, and undoing the
                # event hides the leaf (events are undone newest first, so the rest of the list is as it was).
                # A snapshot listed every leaf of the cluster: storage grew with the square of the feedback.
                events.append(
                    self._event(
                        "add_leaf",
                        f"leaf {leaf_id} joined cluster {cid} (cosine {best_s:.2f})",
                        {"created": [], "before": [], "added_leaves": [leaf_id], "cluster": cid},
                    )
                )
            self._rebuild()
            split = self.maybe_split(cid)
            if split is not None:
                events.append(split)
            events.extend(self.maybe_merge(category, group))
            placed = self.leaves[leaf_id].cluster_id
            if before_commit is not None:
                before_commit(leaf_id, placed, events)
            return leaf_id, placed, events

    def maybe_split(self, cluster_id: int) -> EvolutionEvent | None:
        """Split a cluster whose label entropy is too high into two purer ones (2-means seeded by label)."""
        with self._step():
            return self._split(cluster_id)

    def _split(self, cluster_id: int) -> EvolutionEvent | None:
        p = self.params
        harmful, benign = self.stats(cluster_id)
        if min(harmful, benign) < p.split_min_per_label or label_entropy(harmful, benign) <= p.split_entropy:
            return None
        members = self.members(cluster_id)
        ids = [m.id for m in members]
        x = np.stack([self.vectors[i] for i in ids])
        y = np.array([m.label == Label.HARMFUL for m in members])
        centers = np.stack([x[y].mean(0), x[~y].mean(0)])
        assign = y.astype(int) ^ 1  # 0 = harmful side, 1 = benign side
        for _ in range(10):
            new = np.argmax(x @ centers.T, axis=1)
            if len(set(new.tolist())) < 2 or (new == assign).all():
                break
            assign = new
            centers = np.stack([x[assign == k].mean(0) for k in (0, 1)])

        def joint(a: np.ndarray) -> float:
            total = 0.0
            for k in (0, 1):
                yk = y[a == k]
                total += len(yk) / len(y) * label_entropy(int(yk.sum()), int((~yk).sum()))
            return total

        # Geometry alone may cut across the labels; fall back to the label partition when it does not help.
        if len(set(assign.tolist())) < 2 or joint(assign) >= label_entropy(harmful, benign):
            assign = (~y).astype(int)
        before = self.snapshot(cluster_id)
        parent = self.clusters[cluster_id]
        sides = [[ids[i] for i in range(len(ids)) if assign[i] == k] for k in (0, 1)]
        texts = [[self.leaves[i].text for i in side] for side in sides]
        created = []
        for k in (0, 1):
            side_harm = sum(1 for i in sides[k] if self.leaves[i].label == Label.HARMFUL)
            majority = "block" if side_harm * 2 >= len(sides[k]) else "allow"
            phrases = ", ".join(keyphrases(texts[k], texts[1 - k]))
            # The parent's own rule (operator-written or the first keyphrases) plus this split's side only: each
            # split appending to the parent's whole text made rule text grow with every generation.
            base = parent.rule_text.split(" [", 1)[0] if parent.rule_text else ""
            text = f"{base} [{majority}: {phrases}]" if base else f"{majority}: {phrases}"
            created.append(self._new_cluster(parent.category, parent.stage_group, text, sides[k]))
        # Leaves of the parent that are hidden (pack switched off) follow the harmful side.
        hidden = [leaf.id for leaf in self.leaves.values() if leaf.cluster_id == cluster_id]
        self._assign(hidden, created[0])
        self._deactivate_cluster(cluster_id)
        self._rebuild()
        return self._event(
            "split",
            f"cluster {cluster_id} ({harmful} harmful / {benign} benign, label entropy "
            f"{label_entropy(harmful, benign):.2f}) split into {created[0]} and {created[1]}",
            {"created": created, "before": [before], "added_leaves": []},
        )

    def maybe_merge(self, category: str, group: str) -> list[EvolutionEvent]:
        """Merge sibling clusters that are close, agree on the majority label and stay pure together."""
        with self._step():
            return self._merge(category, group)

    def _merge(self, category: str, group: str) -> list[EvolutionEvent]:
        p = self.params
        events: list[EvolutionEvent] = []
        while True:
            cids, matrix = self._centroids.get(group, ([], np.zeros((0, self.dim))))
            idx = [i for i, cid in enumerate(cids) if self.clusters[cid].category == category]
            best: tuple[float, int, int] | None = None
            for a_pos, a in enumerate(idx):
                for b in idx[a_pos + 1 :]:
                    sim = float(matrix[a] @ matrix[b])
                    if sim < p.merge_similarity:
                        continue
                    ha, ba = self.stats(cids[a])
                    hb, bb = self.stats(cids[b])
                    if (ha >= ba) != (hb >= bb) or label_entropy(ha + hb, ba + bb) > p.merge_entropy:
                        continue
                    if best is None or sim > best[0]:
                        best = (sim, cids[a], cids[b])
            if best is None:
                return events
            sim, a_id, b_id = best
            before = [self.snapshot(a_id), self.snapshot(b_id)]
            ca, cb = self.clusters[a_id], self.clusters[b_id]
            text = ca.rule_text if len(ca.rule_text) >= len(cb.rule_text) else cb.rule_text
            leaf_ids = before[0]["leaf_ids"] + before[1]["leaf_ids"]
            self._deactivate_cluster(a_id)
            self._deactivate_cluster(b_id)
            merged = self._new_cluster(category, group, text, leaf_ids)
            self._rebuild()
            events.append(
                self._event(
                    "merge",
                    f"clusters {a_id} and {b_id} (cosine {sim:.2f}) merged into {merged}",
                    {"created": [merged], "before": before, "added_leaves": []},
                )
            )

    def undo(self, event: EvolutionEvent, *, rebuild: bool = True) -> None:
        """Reverse one event: drop what it created, restore what it replaced, hide the leaves it added (and
        show again the leaves it hid: a rollback hides leaves)."""
        with self._step():
            payload = event.payload
            for cid in payload.get("created", []):
                if cid in self.clusters:
                    self._deactivate_cluster(cid)
                else:
                    self.store.update_cluster(self.scope, cid, active=False)
            for snap in payload.get("before", []):
                self.store.update_cluster(self.scope, snap["id"], rule_text=snap["rule_text"], active=True)
                self.clusters[snap["id"]] = Cluster(
                    snap["id"], snap["category"], snap["stage_group"], snap["rule_text"]
                )
                self._assign(list(snap["leaf_ids"]), snap["id"])
            for key, active in (("added_leaves", False), ("hidden_leaves", True)):
                ids = [i for i in payload.get(key, []) if i in self.leaves]
                if ids:
                    self.store.update_leaves(self.scope, {i: {"active": active} for i in ids})
                    for i in ids:
                        self.leaves[i] = replace(self.leaves[i], active=active)
            if rebuild:
                self._rebuild()

    def _rollback_plan(self, events: list[EvolutionEvent], target_version: int) -> list[EvolutionEvent]:
        """The events to undo, newest first, to get from now to the state right after ``target_version``.

        A rollback event R to target t left the state right after t, so walking back past R (when t is not
        older than the goal) jumps to t. A rollback to a target older than the goal undid events the goal
        keeps: it is undone itself (its payload holds what it changed). The pack seed is never undone: the
        namespace's ``pack`` setting decides whether the pack is there.
        """
        versions = [e.version for e in events]
        by_version = {e.version: e for e in events}
        plan: list[EvolutionEvent] = []
        i = len(versions) - 1
        while i >= 0 and versions[i] > target_version:
            e = by_version[versions[i]]
            target = int(e.payload.get("target", -1)) if e.kind == "rollback" else -1
            if e.kind == "rollback" and target >= target_version:
                i = bisect.bisect_right(versions, target) - 1
                continue
            if e.kind == "rollback" and "hidden_leaves" not in e.payload:
                raise FailedPreconditionError(
                    f"version {target_version} was undone by the rollback at version {e.version}, which was "
                    "recorded without what it changed and cannot be reversed; roll back to a later version"
                )
            if e.kind != "seed":
                plan.append(e)
            i -= 1
        return plan

    def rollback(self, target_version: int) -> EvolutionEvent:
        """Restore the state right after event ``target_version`` (see ``_rollback_plan``); record it as an
        event whose payload holds what it changed, so that a later rollback can reverse it."""
        with self._step():
            events = self.store.list_events(self.scope, limit=1_000_000)
            plan = self._rollback_plan(events, target_version)
            clusters = sorted({c for e in plan for key in ("created", "before") for c in _cluster_ids(e, key)})
            leaves = sorted(
                {i for e in plan for key in ("added_leaves", "hidden_leaves") for i in e.payload.get(key, [])}
            )
            before = [self.snapshot(cid) for cid in clusters if cid in self.clusters]
            was_active = {i: self.leaves[i].active for i in leaves if i in self.leaves}
            for e in plan:
                self.undo(e, rebuild=False)
            self._rebuild()
            active_before = {snap["id"] for snap in before}
            return self._event(
                "rollback",
                f"rolled back to version {target_version} (undid {len(plan)} steps)",
                {
                    "target": target_version,
                    "undone": sorted(e.version for e in plan),
                    # What this rollback changed, in the shape ``undo`` reverses.
                    "created": [cid for cid in clusters if cid in self.clusters and cid not in active_before],
                    "before": before,
                    "added_leaves": [i for i, was in was_active.items() if not was and self.leaves[i].active],
                    "hidden_leaves": [i for i, was in was_active.items() if was and not self.leaves[i].active],
                },
            )
