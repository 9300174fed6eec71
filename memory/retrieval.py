"""Per-query ranking: hybrid candidates per granularity, an entropy router, context and packing.

``search(index, query, query_vector, policy)`` reads a :class:`RetrievalIndex` (``memory.index.
NamespaceIndex`` implements it) and returns hits packed under the word budget, best first.

Pipeline (every step touches only candidates, never every unit):

1. **Candidates** per granularity g: top-K by dense cosine (FAISS) ∪ top-K by BM25. Both raw scores
   are computed exactly for every candidate (stored vectors, BM25 postings), z-scored over the
   candidate pool, and summed: ``s_g(u) = w_dense·z_dense(u) + w_lex·z_lex(u) + penalty·ln weight(u)``.
2. **Entropy router** (MemGAS, with its sign bug fixed): for each granularity g, over its top-n dense
   candidates, ``p = softmax(cos / T)``, ``H_g = −Σ p ln p / ln n`` ∈ [0, 1], and
   ``w_g = prior_g · (ε + 1 − H_g) / Σ_h prior_h · (ε + 1 − H_h) · Σ_h prior_h``.
   Normalising by ln n keeps 1 − H_g ≥ 0, so when every granularity is uncertain the weights fall
   back to the priors instead of flipping sign and favouring the noisiest one. T is the namespace
   policy's ``temperature``.
3. **Projection to turns**: the turns carry the words, the coarser units route. A turn's score is
   ``w_turn · (s_turn(t) + Σ_d λ_d Σ_{|t'−t|=d} s_turn(t')) + Σ_{g≠turn} w_g · max_{u∋t} s_g(u)
   + w_agg · agg(session(t))`` where the neighbour term smooths over conversation order (evidence
   comes in runs), ``u∋t`` ranges over every unit of g covering t, scored exactly (z against g's
   candidate pool) even when it is not among g's candidates, so each turn is also judged in its
   exchange window; a session unit routes all the turns of its session; and ``agg`` is the mean of
   the best three turn scores of the session (session-level routing). Candidates are the turn pool
   plus the turns of each coarse granularity's ``route_units`` best units.
4. **Cues**: a speaker named in the query boosts that speaker's turns; a month/year named in the query
   boosts turns of that time; "latest/recently" adds a small recency term; time filters drop units
   outside ``[time_start, time_end]``.
5. **Association expansion** (off unless ``association_weight`` > 0): the top seeds spread
   ``α · edge weight`` of their score to their association neighbours (GMM links from
   ``index.neighbors``), one step of personalised PageRank.
6. **Packing**: best first, skip a unit whose messages are already packed, skip one that would
   overflow ``token_budget`` (a shorter one may still fit), stop at ``top_k`` hits.
"""

from __future__ import annotations

import functools
import math
import re
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import numpy as np

from core.entropy import normalized_entropy, softmax
from core.lexical import BM25Index, tokenize
from memory.model import (
    Granularity,
    MemoryUnit,
    RoutingDiagnostics,
    SearchHit,
    SearchQuery,
    SearchResult,
)
from memory.units import speaker_of


class RetrievalIndex(Protocol):
    """What the retriever reads of a namespace (``memory.index.NamespaceIndex`` implements it)."""

    def granularities(self) -> list[Granularity]:
        """Granularities holding at least one unit."""
        ...

    def unit(self, key: int) -> MemoryUnit | None:
        """The unit under ``key``, ``None`` if it is gone."""
        ...

    def vector(self, key: int) -> np.ndarray | None:
        """The stored (L2-normalised) embedding of a unit."""
        ...

    def units_of_message(self, message_id: str) -> set[int]:
        """Keys of every unit covering a message."""
        ...

    def dense_search(self, granularity: Granularity, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (keys, cosines) of one granularity."""
        ...

    def lexical_search(
        self, granularity: Granularity, query: str | Sequence[str], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (keys, BM25 scores) of one granularity."""
        ...

    def lexical(self, granularity: Granularity) -> BM25Index | None:
        """The BM25 index of one granularity (to score given keys)."""
        ...

    def neighbors(self, keys: Iterable[int], limit: int = 8) -> dict[int, list[tuple[int, float]]]:
        """Association neighbours (key, weight) of each key, strongest first."""
        ...


# The exchange window is the context a turn is scored in (LoCoMo dev: evidence often answers a question
# the previous turn asked), so it weighs as much as the turn itself; digests and facts only route.
_DEFAULT_PRIORS = {"turn": 1.0, "exchange": 1.0, "session": 0.1, "fact": 0.1}


@dataclass(frozen=True)
class RetrievalPolicy:
    """Ranking knobs; read from the namespace memory policy (``retrieval`` section or top level)."""

    # Router softmax temperature over cosines (cosines live in [-1, 1]: 0.05 makes a 0.1 gap e^2).
    temperature: float = 0.05
    # Candidates per channel for the turn granularity; coarser granularities take half. Measured on LoCoMo
    # dev (budget-recall@200/800) and at 100k units (in-process retrieval p50): 100 → 0.646/0.815, 10.2 ms;
    # 80 → 0.646/0.813, 8.8 ms; 60 → 0.643/0.811, 7.8 ms. Raise it for recall at a latency cost.
    candidates: int = 80
    # Top dense candidates whose softmax entropy the router measures.
    router_candidates: int = 10
    # ε in the router weights: keeps every granularity's weight > 0.
    router_floor: float = 0.1
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    # Weight of turns at distance 1, 2, ... in conversation order.
    neighbor_weights: tuple[float, ...] = (0.3, 0.15)
    priors: Mapping[str, float] = field(default_factory=lambda: dict(_DEFAULT_PRIORS))
    # Session-level routing from the session's best turn scores.
    session_aggregate: float = 0.5
    # Added to the fused score (a sum of z-scores): a speaker named in the question said 82% of the
    # LoCoMo dev evidence turns.
    speaker_boost: float = 1.0
    # Multiplier of ln(weight) for low-information units.
    low_info_penalty: float = 1.0
    # Subtracted from a turn that ends with a question: a question is rarely the memory a question looks for.
    # In LoCoMo dev 13% of such turns are evidence against 29% of the others; they match the question's words
    # and took budget from the answers next to them (which still get their neighbour share of its score).
    question_penalty: float = 0.8
    time_boost: float = 1.0
    recency_boost: float = 0.3
    # When set, candidate generation skips query terms in more than this share of a granularity's units
    # (their postings are the longest); candidates are still scored on every term. Off: measured no gain.
    lexical_max_df: float | None = None
    # Best units per coarse granularity whose turns join the candidates.
    route_units: int = 10
    # Off by default: on LoCoMo dev the GMM neighbours of the top turns were near-duplicates of them and
    # pushed other evidence out of the budget (budget-recall@200 +0.8 to +2.0 points per conversation without).
    association_weight: float = 0.0
    association_seeds: int = 10

    @classmethod
    def from_mapping(cls, policy: Mapping[str, Any] | None) -> RetrievalPolicy:
        """Build from a namespace memory policy; ``router_temperature`` is accepted for ``temperature``."""
        policy = policy or {}
        section = policy.get("retrieval", policy)
        if not isinstance(section, Mapping):
            section = {}
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if name in section:
                values[name] = section[name]
        for alias in ("router_temperature", "temperature"):
            if alias in policy and "temperature" not in values:
                values["temperature"] = policy[alias]
        if "neighbor_weights" in values:
            values["neighbor_weights"] = tuple(float(x) for x in values["neighbor_weights"])
        if "priors" in values:
            values["priors"] = {**_DEFAULT_PRIORS, **dict(values["priors"])}
        out = cls(**values)
        if out.temperature <= 0:
            raise ValueError(f"memory policy temperature must be > 0, got {out.temperature}")
        return out


def router_weights(
    cosines: Mapping[str, Sequence[float]],
    temperature: float,
    priors: Mapping[str, float] | None = None,
    floor: float = 0.1,
) -> tuple[dict[str, float], dict[str, float]]:
    """Entropy-router weights per granularity from each one's candidate cosines.

    Returns (normalised entropy H_g, weight w_g). ``w_g ∝ prior_g · (floor + 1 − H_g)``, scaled so the
    weights sum to the sum of the priors: never negative, and equal to the priors when every H_g is
    equal (in particular when all are maximal — the case where MemGAS's raw-nats formula flips sign).
    A granularity without candidates gets H = 1 and weight 0.
    """
    priors = priors or {}
    entropy: dict[str, float] = {}
    raw: dict[str, float] = {}
    for name, values in cosines.items():
        prior = float(priors.get(name, 1.0))
        if len(values) == 0:
            entropy[name], raw[name] = 1.0, 0.0
            continue
        h = normalized_entropy(softmax(np.asarray(values, dtype=np.float64), temperature))
        entropy[name] = h
        raw[name] = prior * (floor + 1.0 - h)
    total_raw = sum(raw.values())
    mass = sum(float(priors.get(n, 1.0)) for n, v in cosines.items() if len(v))
    weights = {n: (r / total_raw * mass if total_raw > 0 else 0.0) for n, r in raw.items()}
    return entropy, weights


def _z(values: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """z-score ``values`` with the mean/std of ``ref`` (default: themselves); flat input gives zeros."""
    ref = values if ref is None else ref
    if len(ref) == 0:
        return np.zeros_like(values, dtype=np.float64)
    mean, std = float(ref.mean()), float(ref.std())
    if std < 1e-9:
        return np.zeros_like(values, dtype=np.float64)
    return (values.astype(np.float64) - mean) / std


def hybrid_scores(
    dense: np.ndarray, lexical: np.ndarray, *, dense_weight: float = 1.0, lexical_weight: float = 1.0
) -> np.ndarray:
    """The retriever's fusion of one candidate pool: ``dense_weight · z(cosine) + lexical_weight · z(bm25)``.

    z-scores over the pool put both channels on one scale whatever their ranges (BM25 is unbounded and
    grows with query length); a channel that cannot tell the candidates apart (all BM25 zero: no query
    term in any of them) contributes nothing, so the other one ranks alone.
    """
    return dense_weight * _z(np.asarray(dense)) + lexical_weight * _z(np.asarray(lexical))


@dataclass
class _Pool:
    """Scored candidates of one granularity."""

    keys: np.ndarray
    score: np.ndarray  # fused z score
    cosines: np.ndarray
    floor: float


_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        [
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ]
    )
}
_MONTH_YEAR = re.compile(r"\b(" + "|".join(_MONTHS) + r")(?:\s+(?:of\s+)?((?:19|20)\d{2}))?\b", re.IGNORECASE)
_YEAR = re.compile(r"\b((?:19|20)\d{2})\b")
_RECENT = re.compile(r"\b(latest|recently|most recent|last time|lately|newest|current(?:ly)?)\b", re.IGNORECASE)


def time_cues(text: str) -> list[tuple[int, int | None]]:
    """(year, month or None) pairs named in a query: "in May 2023" → (2023, 5); "2022" → (2022, None).

    A month without a year gives year 0 (any year). "may" is only read as a month next to a year.
    """
    cues: list[tuple[int, int | None]] = []
    used: set[str] = set()
    for match in _MONTH_YEAR.finditer(text):
        month, year = match.group(1).lower(), match.group(2)
        if month == "may" and not year:
            continue
        cues.append((int(year) if year else 0, _MONTHS[month]))
        if year:
            used.add(year)
    for match in _YEAR.finditer(text):
        if match.group(1) not in used:
            cues.append((int(match.group(1)), None))
    return cues


def _matches_cue(when: datetime | None, cues: Sequence[tuple[int, int | None]]) -> bool:
    if when is None:
        return False
    return any((year in (0, when.year)) and (month is None or month == when.month) for year, month in cues)


class _Scorer:
    """Exact dense and lexical scores of arbitrary keys of one granularity, cached per query."""

    def __init__(self, index: RetrievalIndex, granularity: Granularity, qvec: np.ndarray, terms: list[str]):
        self.index = index
        self.granularity = granularity
        self.qvec = qvec
        self.terms = terms
        self.lexical = index.lexical(granularity)
        self._dense: dict[int, float] = {}
        self._lex: dict[int, float] = {}

    def prime(self, keys: np.ndarray, dense: np.ndarray | None = None, lex: np.ndarray | None = None) -> None:
        """Record scores a candidate search already computed (FAISS inner products, BM25 sums), so
        :meth:`raw` does not compute them again."""
        if dense is not None:
            self._dense.update(zip(keys.tolist(), np.asarray(dense, dtype=np.float64).tolist(), strict=True))
        if lex is not None:
            self._lex.update(zip(keys.tolist(), np.asarray(lex, dtype=np.float64).tolist(), strict=True))

    def raw(self, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Dense cosines and BM25 scores of ``keys``, in their order. Every caller passes distinct keys, so
        they are not de-duplicated here (a repeat would only be scored twice, with the same result)."""
        dense_of, lex_of = self._dense, self._lex
        need_dense = [k for k in keys if k not in dense_of]
        if need_dense:
            vectors = list(map(self.index.vector, need_dense))
            present = [i for i, v in enumerate(vectors) if v is not None]
            found = [v for v in vectors if v is not None]
            dense = np.full(len(need_dense), -1.0)
            if found:
                # One matrix-vector product instead of a dot per key.
                dense[present] = np.stack(found) @ self.qvec
            dense_of.update(zip(need_dense, dense.tolist(), strict=True))
        need_lex = [k for k in keys if k not in lex_of]
        if need_lex:
            lex = (
                self.lexical.score(self.terms, need_lex).astype(np.float64)
                if self.lexical is not None and self.terms
                else np.zeros(len(need_lex))
            )
            lex_of.update(zip(need_lex, lex.tolist(), strict=True))
        n = len(keys)
        return (
            np.fromiter(map(dense_of.__getitem__, keys), dtype=np.float64, count=n),
            np.fromiter(map(lex_of.__getitem__, keys), dtype=np.float64, count=n),
        )


_TURN_CACHES: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()
_Held = TypeVar("_Held")


def _held_for(
    caches: weakref.WeakKeyDictionary[Any, _Held],
    index: RetrievalIndex,
    make: Callable[[], _Held],
    keep: Callable[[_Held], bool] = lambda _: True,
) -> _Held | None:
    """What ``caches`` holds for ``index``, made afresh when absent or not ``keep``-able; None for an index
    type without weak references (the caller then caches per query only)."""
    try:
        held = caches.get(index)
        if held is None or not keep(held):
            held = caches[index] = make()
        return held
    except TypeError:
        return None


def _turn_cache(index: RetrievalIndex) -> dict[str, int]:
    """message id -> key of its turn unit, kept per index object across queries.

    Safe across writes and deletes: a turn unit's key is derived from its id, so a cached key either
    still names the message's turn unit or names nothing (checked on use, then looked up again).
    """
    cache = _held_for(_TURN_CACHES, index, dict)
    return cache if cache is not None else {}


@dataclass
class _Structure:
    """What the units covering one message say, independent of the query: every non-turn unit covering it
    (key, unit), and its turn neighbours in conversation order as (turn key, distance) up to ``max_d``."""

    covers: list[tuple[int, MemoryUnit]]
    neighbours: list[tuple[int, int]]


_STRUCTURE_CACHES: weakref.WeakKeyDictionary[Any, tuple[int, dict[tuple[str, int], _Structure]]] = (
    weakref.WeakKeyDictionary()
)


def _structure_cache(index: RetrievalIndex) -> tuple[int | None, dict[tuple[str, int], _Structure]]:
    """(version, cache) of per-message structure for ``index``; the cache is only kept across queries for an
    index that counts its changes (``units_version``, odd while one is in progress), and is emptied when
    the count moved. Version None: do not store into the cache."""
    version = getattr(index, "units_version", None)
    if not isinstance(version, int) or version % 2:
        return None, {}
    held = _held_for(_STRUCTURE_CACHES, index, lambda: (version, {}), keep=lambda h: h[0] == version)
    return (version, held[1]) if held is not None else (None, {})


def _filters(query: SearchQuery) -> bool:
    """Whether the query restricts sessions or time (else every unit is allowed)."""
    return bool(query.session_ids or query.time_start or query.time_end)


def _allowed(unit: MemoryUnit | None, query: SearchQuery) -> bool:
    if unit is None:
        return False
    if query.session_ids and unit.session_id not in query.session_ids:
        return False
    if not (query.time_start or query.time_end):
        return True
    # A unit of messages without a time has no range that could overlap the window.
    start, end = unit.time_start or unit.time_end, unit.time_end or unit.time_start
    if start is None or end is None:
        return False
    if query.time_start and end < query.time_start:
        return False
    return not (query.time_end and start > query.time_end)


@dataclass(frozen=True)
class LexicalStage:
    """The part of a search that needs no query vector: the query's terms and each granularity's BM25
    candidates. The engine computes it while the query is being embedded (the model runs without the
    GIL on one core, this runs on the other), then hands it to :func:`search`."""

    policy: RetrievalPolicy
    terms: list[str]
    granularities: list[Granularity]
    # Per granularity: (keys, BM25 scores) of the lexical candidates, best first.
    candidates: dict[Granularity, tuple[np.ndarray, np.ndarray]]


def _candidate_count(pol: RetrievalPolicy, granularity: Granularity, query: SearchQuery | None = None) -> int:
    count = pol.candidates
    if query is not None and not query.token_budget and query.top_k > count:
        # Hits come from the candidates: a caller asking for more hits than the pool holds (and no word budget to
        # stop at) gets a pool that large, or top_k 300 would return ~130 hits.
        count = query.top_k
    return count if granularity == Granularity.TURN else max(10, count // 2)


#: How far a filtered search widens its candidate searches (times the usual count) to find enough candidates
#: that pass the filters: each step multiplies the count by 4 until enough pass or the granularity runs out.
MAX_FILTER_WIDENING = 64


def _widened(
    search_k: Callable[[int], tuple[np.ndarray, np.ndarray]],
    k: int,
    allowed: Callable[[int], bool],
) -> tuple[np.ndarray, np.ndarray]:
    """``search_k(k)``, asked again for 4x, 16x, ... as many while fewer than ``k`` of its results pass
    ``allowed`` and it still returned all it was asked for (so more exist)."""
    want = k
    while True:
        keys, scores = search_k(want)
        if len(keys) < want or want >= k * MAX_FILTER_WIDENING or sum(map(allowed, keys.tolist())) >= k:
            return keys, scores
        want *= 4


def lexical_stage(
    index: RetrievalIndex, query: SearchQuery, policy: Mapping[str, Any] | RetrievalPolicy | None = None
) -> LexicalStage:
    """Terms and per-granularity BM25 candidates of ``query`` (the vector-free first step of search)."""
    pol = policy if isinstance(policy, RetrievalPolicy) else RetrievalPolicy.from_mapping(policy)
    terms = tokenize(query.query)
    present = index.granularities()
    if query.granularities:
        present = [g for g in present if g in query.granularities]
    candidates: dict[Granularity, tuple[np.ndarray, np.ndarray]] = {}
    filtered = _filters(query)
    for g in present:
        lexical = index.lexical(g)
        if not terms or lexical is None:
            candidates[g] = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
            continue
        k = _candidate_count(pol, g, query)
        search_k = functools.partial(lexical.search_arrays, terms, max_df=pol.lexical_max_df)
        candidates[g] = (
            # The filters apply to candidates: without widening, units of a small session or a time window
            # outside the namespace-wide top k were never found.
            _widened(search_k, k, lambda key: _allowed(index.unit(key), query))
            if filtered
            else search_k(k)
        )
    return LexicalStage(pol, terms, present, candidates)


def search(
    index: RetrievalIndex,
    query: SearchQuery,
    query_vector: np.ndarray,
    policy: Mapping[str, Any] | None = None,
    lexical: LexicalStage | None = None,
) -> SearchResult:
    """Rank and pack memory units for ``query`` (see the module docstring for the formulas).

    ``lexical`` is :func:`lexical_stage` of the same index, query and policy when the caller ran it
    already (while embedding the query); otherwise it is computed here.
    """
    stage = lexical if lexical is not None else lexical_stage(index, query, policy)
    pol, terms, present = stage.policy, stage.terms, stage.granularities
    qvec = np.asarray(query_vector, dtype=np.float32).reshape(-1)
    if not present:
        return SearchResult([], RoutingDiagnostics({}, {}))

    scorers = {g: _Scorer(index, g, qvec, terms) for g in present}
    pools: dict[Granularity, _Pool] = {}
    filtered = _filters(query)
    for g in present:
        k = _candidate_count(pol, g, query)
        if filtered:
            dk, dscore = _widened(
                functools.partial(index.dense_search, g, qvec), k, lambda key: _allowed(index.unit(key), query)
            )
        else:
            dk, dscore = index.dense_search(g, qvec, k)
        lk, lscore = stage.candidates[g]
        # The candidate searches computed these scores already: FAISS returns exact inner products of the
        # stored vectors, BM25 the sums over every query term (not when max_df dropped common terms).
        scorers[g].prime(dk, dense=dscore)
        if pol.lexical_max_df is None:
            scorers[g].prime(lk, lex=lscore)
        keys: list[int] = []
        weights: list[float] = []
        for x in dict.fromkeys([*dk.tolist(), *lk.tolist()]):
            u = index.unit(x)
            if u is not None and (not filtered or _allowed(u, query)):
                keys.append(x)
                weights.append(u.weight)
        if not keys:
            continue
        dense, lex = scorers[g].raw(keys)
        score = (
            hybrid_scores(dense, lex, dense_weight=pol.dense_weight, lexical_weight=pol.lexical_weight)
            + pol.low_info_penalty * np.log(np.maximum(weights, 1e-3))
        )
        pools[g] = _Pool(np.asarray(keys, dtype=np.int64), score, dense, float(score.min()))

    top_cos = {g.value: np.sort(p.cosines)[::-1][: pol.router_candidates].tolist() for g, p in pools.items()}
    entropy, gweight = router_weights(top_cos, pol.temperature, pol.priors, pol.router_floor)
    diagnostics = RoutingDiagnostics(entropy, gweight)
    if Granularity.TURN not in pools:
        return SearchResult(_pack_units(index, pools, gweight, query), diagnostics)

    # -- project every granularity onto turns ------------------------------------------------------
    turn_pool = pools[Granularity.TURN]
    turn_of_message = _turn_cache(index)

    def turn_key(message_id: str) -> int | None:
        key = turn_of_message.get(message_id)
        if key is not None and index.unit(key) is not None:
            return key
        for key in index.units_of_message(message_id):
            unit = index.unit(key)
            if unit is not None and unit.granularity == Granularity.TURN:
                turn_of_message[message_id] = key
                return key
        return None

    candidates: dict[int, MemoryUnit] = {}
    for key in turn_pool.keys.tolist():
        unit = index.unit(key)
        if unit is not None:
            candidates[key] = unit
    # Coarse granularities: a session unit routes every turn of its session (not only the turns its
    # digest quotes); the best units of the others bring their turns into the candidates.
    session_route: list[tuple[float, dict[str, float], float]] = []  # (w_session, best per session, floor)
    covering_pools: dict[Granularity, _Pool] = {}
    for g, pool in pools.items():
        if g == Granularity.TURN:
            continue
        if g == Granularity.SESSION:
            by_session: dict[str, float] = {}
            for key, score in zip(pool.keys.tolist(), pool.score.tolist(), strict=True):
                sunit = index.unit(key)
                if sunit is not None:
                    by_session[sunit.session_id] = max(by_session.get(sunit.session_id, -math.inf), score)
            session_route.append((gweight.get(g.value, 0.0), by_session, pool.floor))
            continue
        covering_pools[g] = pool
        for row in np.argsort(-pool.score)[: pol.route_units].tolist():
            unit = index.unit(int(pool.keys[row]))
            for mid in unit.message_ids if unit is not None else ():
                tk = turn_key(mid)
                if tk is not None and tk not in candidates:
                    tu = index.unit(tk)
                    if tu is not None and _allowed(tu, query):
                        candidates[tk] = tu

    # One pass over the units covering each candidate: the exchange windows give its sequence
    # neighbours (their message ids are in conversation order), every covering unit of a coarse
    # granularity is a context in which the turn is scored.
    neighbours: dict[int, list[tuple[int, int]]] = {}
    covering: dict[int, dict[Granularity, list[int]]] = {}
    max_d = len(pol.neighbor_weights)
    # The covering units and neighbours of a message change only when the index does: kept across queries
    # (about a third of this function's time on LoCoMo-sized namespaces went into recomputing them).
    version, structures = _structure_cache(index)

    def structure(mid: str) -> _Structure:
        cached = structures.get((mid, max_d))
        if cached is not None:
            return cached
        found: dict[int, int] = {}
        covers: list[tuple[int, MemoryUnit]] = []
        for ck in index.units_of_message(mid):
            cover = index.unit(ck)
            if cover is None:
                continue
            if cover.granularity != Granularity.TURN:
                covers.append((ck, cover))
            if cover.granularity != Granularity.EXCHANGE or mid not in cover.message_ids:
                continue
            at = cover.message_ids.index(mid)
            for pos, other in enumerate(cover.message_ids):
                d = abs(pos - at)
                if 0 < d <= max_d:
                    ok = turn_key(other)
                    if ok is not None and (ok not in found or found[ok] > d):
                        found[ok] = d
        made = _Structure(covers, list(found.items()))
        if version is not None and getattr(index, "units_version", None) == version:
            structures[(mid, max_d)] = made
        return made

    for tk, unit in candidates.items():
        shape = structure(unit.message_ids[0])
        mine: dict[Granularity, list[int]] = {}
        for ck, cover in shape.covers:
            if cover.granularity in covering_pools and (not filtered or _allowed(cover, query)):
                mine.setdefault(cover.granularity, []).append(ck)
        neighbours[tk] = shape.neighbours
        covering[tk] = mine

    # routed(t) = Σ_g w_g · max over units u of g covering t of s_g(u), scored exactly for every
    # candidate (z against g's candidate pool), so a turn outside g's best units is not sent to the floor.
    routed = dict.fromkeys(candidates, 0.0)
    for g, pool in covering_pools.items():
        w = gweight.get(g.value, 0.0)
        ckeys = list(dict.fromkeys(k for mine in covering.values() for k in mine.get(g, ())))
        best_of: dict[int, float] = {}
        if ckeys:
            c_dense, c_lex = scorers[g].raw(ckeys)
            p_dense, p_lex = scorers[g].raw(pool.keys.tolist())
            c_weight = np.array([max(u.weight, 1e-3) if (u := index.unit(k)) is not None else 1.0 for k in ckeys])
            c_score = (
                pol.dense_weight * _z(c_dense, p_dense)
                + pol.lexical_weight * _z(c_lex, p_lex)
                + pol.low_info_penalty * np.log(c_weight)
            )
            best_of = dict(zip(ckeys, c_score.tolist(), strict=True))
        for tk, mine in covering.items():
            covers = mine.get(g)
            routed[tk] += w * (max(best_of[k] for k in covers) if covers else pool.floor)

    for w, by_session, floor in session_route:
        for tk, unit in candidates.items():
            routed[tk] += w * by_session.get(unit.session_id, floor)

    every = list(dict.fromkeys([*candidates, *(k for lst in neighbours.values() for k, _ in lst)]))
    dense, lex = scorers[Granularity.TURN].raw(every)
    ref_dense, ref_lex = scorers[Granularity.TURN].raw(turn_pool.keys.tolist())
    base_arr = pol.dense_weight * _z(dense, ref_dense) + pol.lexical_weight * _z(lex, ref_lex)
    base = dict(zip(every, base_arr.tolist(), strict=True))

    keys = list(candidates)
    w_turn = gweight.get(Granularity.TURN.value, 1.0)
    scores: dict[int, float] = {}
    near_weights, info_penalty, question_penalty = pol.neighbor_weights, pol.low_info_penalty, pol.question_penalty
    for tk in keys:
        smooth = base[tk]
        for n, d in neighbours[tk]:
            smooth += near_weights[d - 1] * base[n]
        weight = candidates[tk].weight
        penalty = info_penalty * math.log(max(weight, 1e-3)) if weight != 1.0 else 0.0
        if question_penalty and candidates[tk].text.rstrip().endswith("?"):
            penalty -= question_penalty
        scores[tk] = w_turn * smooth + routed[tk] + penalty

    # Session-level routing: mean of each session's best three turn scores.
    if pol.session_aggregate:
        session_scores: dict[str, list[float]] = {}
        for tk in keys:
            session_scores.setdefault(candidates[tk].session_id, []).append(scores[tk])
        agg = {s: sum(top := sorted(v, reverse=True)[:3]) / len(top) for s, v in session_scores.items()}
        agg_arr = np.array(list(agg.values()))
        agg_z = dict(zip(agg, _z(agg_arr).tolist(), strict=True))
        for tk in keys:
            scores[tk] += pol.session_aggregate * agg_z[candidates[tk].session_id]

    _apply_cues(query.query, candidates, scores, pol)
    _expand_associations(index, query, candidates, scores, pol)

    ranked = sorted(scores, key=lambda k: (-scores[k], candidates[k].id))
    return SearchResult(_pack(((candidates[k], scores[k]) for k in ranked), query), diagnostics)


def _apply_cues(
    text: str, candidates: Mapping[int, MemoryUnit], scores: dict[int, float], pol: RetrievalPolicy
) -> None:
    """Speaker, explicit-time and recency cues of the query."""
    lowered = set(re.findall(r"\w+", text.lower()))
    speaker = {tk: speaker_of(u.text) for tk, u in candidates.items()}
    named = [s for s in set(speaker.values()) - {""} if s.lower() in lowered]
    if len(named) == 1 and pol.speaker_boost:
        for tk, said_by in speaker.items():
            if said_by == named[0]:
                scores[tk] += pol.speaker_boost
    cues = time_cues(text)
    if cues and pol.time_boost:
        for tk, unit in candidates.items():
            if _matches_cue(unit.time_start, cues) or _matches_cue(unit.time_end, cues):
                scores[tk] += pol.time_boost
    if _RECENT.search(text) and pol.recency_boost:
        stamps = sorted({u.time_end.timestamp() for u in candidates.values() if u.time_end is not None})
        if len(stamps) > 1:
            rank = {t: i / (len(stamps) - 1) for i, t in enumerate(stamps)}
            for tk, unit in candidates.items():
                if unit.time_end is not None:
                    scores[tk] += pol.recency_boost * rank[unit.time_end.timestamp()]


def _expand_associations(
    index: RetrievalIndex,
    query: SearchQuery,
    candidates: dict[int, MemoryUnit],
    scores: dict[int, float],
    pol: RetrievalPolicy,
) -> None:
    """One personalised-PageRank step from the top seeds over association edges (turn units only)."""
    if not pol.association_weight or not scores:
        return
    seeds = sorted(scores, key=lambda k: -scores[k])[: pol.association_seeds]
    floor = min(scores.values())
    edges = index.neighbors(seeds)
    spread: dict[int, float] = {}
    for seed, adjacent in edges.items():
        mass = max(scores[seed] - floor, 0.0)
        for other, weight in adjacent:
            spread[other] = spread.get(other, 0.0) + pol.association_weight * weight * mass
    for other, extra in spread.items():
        unit = index.unit(other)
        if unit is None or unit.granularity != Granularity.TURN or not _allowed(unit, query):
            continue
        if other not in candidates:
            candidates[other] = unit
            scores[other] = floor
        scores[other] += extra


def _pack(ranked: Iterable[tuple[MemoryUnit, float]], query: SearchQuery) -> list[SearchHit]:
    """Best first under the word budget; no message twice; skip what overflows, keep trying smaller."""
    hits: list[SearchHit] = []
    used = 0
    packed: set[str] = set()
    for unit, score in ranked:
        if packed.intersection(unit.message_ids):
            continue
        words = len(unit.text.split())
        if query.token_budget and used + words > query.token_budget:
            continue
        used += words
        packed.update(unit.message_ids)
        hits.append(SearchHit(unit, float(score)))
        if len(hits) >= query.top_k or (query.token_budget and used >= query.token_budget):
            break
    return hits


def _pack_units(
    index: RetrievalIndex, pools: Mapping[Granularity, _Pool], gweight: Mapping[str, float], query: SearchQuery
) -> list[SearchHit]:
    """Packing when turns are not searched: every pool's units by router-weighted score."""
    ranked: list[tuple[MemoryUnit, float]] = []
    for g, pool in pools.items():
        w = gweight.get(g.value, 1.0)
        for key, score in zip(pool.keys.tolist(), pool.score.tolist(), strict=True):
            unit = index.unit(key)
            if unit is not None:
                ranked.append((unit, w * score))
    ranked.sort(key=lambda us: (-us[1], us[0].id))
    return _pack(ranked, query)
