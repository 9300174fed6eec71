"""Hybrid tool search: dense similarity (MiniLM) blended with BM25 over name, description and
parameter docs, plus the entropy of the hit distribution.

score(t) = w · cos(q, t) + (1 − w) · bm25(q, t) / max_t' bm25(q, t')       (w = ``dense_weight``)

The hits' scores go through softmax(score / T) and the normalised entropy of that distribution is
returned: near 0 when one tool stands out (expose just it), near 1 when several are equally plausible
(expose several, or ask the user).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import numpy as np

from core.embedding import Embedder
from core.entropy import entropy, normalized_entropy, softmax
from core.lexical import BM25Index
from tools.model import ToolDefinition

_CAMEL = re.compile(r"([a-z0-9])([A-Z])")


def search_words(text: str) -> str:
    """Split camelCase and snake_case names into words before the shared tokenizer sees them."""
    return _CAMEL.sub(r"\1 \2", text).replace("_", " ").replace(".", " ")


@dataclass(frozen=True)
class ToolHit:
    """One search result with its fused score and the two parts it came from."""

    tool: ToolDefinition
    score: float
    dense: float
    lexical: float


@dataclass(frozen=True)
class ToolSearchResult:
    """Hits best first plus how peaked their score distribution is."""

    hits: list[ToolHit]
    entropy: float
    """Normalised entropy (0..1) of softmax(score / T) over the hits."""
    entropy_nats: float


@dataclass
class _ScopeIndex:
    tools: list[ToolDefinition]
    matrix: np.ndarray
    bm25: BM25Index


class ToolSearch:
    """Per-scope hybrid index, rebuilt lazily after a change; embeddings are cached per tool text."""

    def __init__(self, embedder: Embedder, *, dense_weight: float = 0.6, temperature: float = 0.05):
        if not 0.0 <= dense_weight <= 1.0:
            raise ValueError(f"dense_weight must be in [0, 1], got {dense_weight}")
        self._embedder = embedder
        self.dense_weight = dense_weight
        self.temperature = temperature
        self._lock = threading.Lock()
        self._indexes: dict[str, _ScopeIndex] = {}
        self._vectors: dict[str, np.ndarray] = {}
        # Bumped by every invalidate: an index built from a catalogue read before a change must not be cached
        # after it (the registry's definition cache does the same).
        self._epochs: dict[str, int] = {}

    def invalidate(self, scope: str) -> None:
        """Forget a scope's index; the next search rebuilds it from the given catalogue."""
        with self._lock:
            self._epochs[scope] = self._epochs.get(scope, 0) + 1
            self._indexes.pop(scope, None)

    def epoch(self, scope: str) -> int:
        """How many times ``scope`` was invalidated: read it before reading the catalogue passed to ``search``."""
        with self._lock:
            return self._epochs.get(scope, 0)

    def _index(self, scope: str, catalogue: list[ToolDefinition], epoch: int | None) -> _ScopeIndex:
        with self._lock:
            idx = self._indexes.get(scope)
            if idx is not None:
                return idx
        texts = [t.search_text() for t in catalogue]
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            vecs = self._embedder.embed(missing)
            with self._lock:
                self._vectors.update(zip(missing, vecs, strict=True))
        matrix = (
            np.stack([self._vectors[t] for t in texts]).astype(np.float32)
            if texts
            else np.zeros((0, self._embedder.dim), np.float32)
        )
        bm25 = BM25Index()
        bm25.add_many((i, search_words(t)) for i, t in enumerate(texts))
        idx = _ScopeIndex(list(catalogue), matrix, bm25)
        with self._lock:
            if epoch is None or self._epochs.get(scope, 0) == epoch:
                self._indexes[scope] = idx
        return idx

    def search(
        self,
        scope: str,
        query: str,
        top_k: int,
        catalogue: list[ToolDefinition],
        *,
        dense_weight: float | None = None,
        query_vector: np.ndarray | None = None,
        epoch: int | None = None,
    ) -> ToolSearchResult:
        """Rank ``catalogue`` (the scope's live tools; used to build the index when none is cached).

        ``query_vector`` skips embedding the query (callers that embed many queries in one batch). ``epoch``:
        ``self.epoch(scope)`` from before the catalogue was read; an index built from it is cached only if the
        scope was not invalidated since (None: always cached).
        """
        idx = self._index(scope, catalogue, epoch)
        if not idx.tools or top_k <= 0:
            return ToolSearchResult([], 0.0, 0.0)
        w = self.dense_weight if dense_weight is None else dense_weight
        q = self._embedder.embed([query])[0] if query_vector is None else query_vector
        dense = idx.matrix @ q
        # Only documents sharing a term with the query have a BM25 score; the rest stay 0.
        lex = np.zeros(len(idx.tools), dtype=np.float64)
        ids, scores = idx.bm25.search_arrays(search_words(query), len(idx.tools))
        lex[ids] = scores
        top = float(lex.max()) if lex.size else 0.0
        lex_norm = lex / top if top > 0 else lex
        fused = w * dense + (1 - w) * lex_norm
        order = np.argsort(-fused, kind="stable")[:top_k]
        hits = [ToolHit(idx.tools[i], float(fused[i]), float(dense[i]), float(lex_norm[i])) for i in order]
        p = softmax([h.score for h in hits], temperature=self.temperature)
        return ToolSearchResult(hits, normalized_entropy(p), entropy(p))
