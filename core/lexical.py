"""Lexical retrieval: a tokenizer with light normalisation and an incremental BM25 index.

The index keeps postings per term (slot arrays cached as numpy, rebuilt lazily after a change), so a
query touches only the postings of its own terms — never a loop over every document. Documents are
added and removed one at a time; the index is a cache rebuildable from the database.

BM25 (Lucene variant, always-positive idf)::

    idf(t)      = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))
    score(d, q) = Σ_{t ∈ q} idf(t) · tf(t,d) · (k1 + 1) / (tf(t,d) + k1 · (1 − b + b · |d| / avgdl))
"""

from __future__ import annotations

import functools
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

# Function words that carry no topic; kept short on purpose: pronouns and question words are dropped,
# but negations and quantities ("not", "first", "last") stay because questions hinge on them.
_STOPWORD_TEXT = (
    "a about above after again against all am an and any are as at be because been before being below "
    "between both but by can could did do does doing down during each few for from further had has have "
    "having he her here hers herself him himself his how i if in into is it its itself just me more most "
    "my myself nor of off on once only or other our ours ourselves out over own same she should so some "
    "such than that the their theirs them themselves then there these they this those through to too "
    "under until up very was we were what when where which while who whom why will with would you your "
    "yours yourself yourselves s t d ll m re ve y o im ive id youre thats dont didnt doesnt isnt wasnt "
    "also really just yeah oh hey hi wow lol haha hahaha ok okay um uh gonna wanna got get gets"
)
STOPWORDS: frozenset[str] = frozenset(_STOPWORD_TEXT.split())

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


class Tokenizer:
    """Lower-cases, folds accents, drops stopwords and possessive/contracted suffixes, then stems.

    Stemming is Snowball English (Porter2) with a per-process word cache, so "painting", "paints" and
    "painted" meet at "paint".
    """

    def __init__(self, *, stem: bool = True, stopwords: Iterable[str] | None = None, min_len: int = 1):
        self._stopwords = frozenset(STOPWORDS if stopwords is None else stopwords)
        self._min_len = min_len
        self._cache: dict[str, str] = {}
        self._stemmer = None
        if stem:
            import snowballstemmer

            self._stemmer = snowballstemmer.stemmer("english")
        self._lock = threading.Lock()

    def _stem(self, word: str) -> str:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        if self._stemmer is None:
            out = word
        else:
            with self._lock:  # the Snowball stemmer keeps state between calls
                out = self._stemmer.stemWord(word)
        if len(self._cache) < 200_000:
            self._cache[word] = out
        return out

    def tokens(self, text: str) -> list[str]:
        """The index terms of ``text`` in order (duplicates kept: term frequency matters)."""
        folded = unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode()
        out: list[str] = []
        for match in _TOKEN.findall(folded.replace("’", "'")):
            word = match.split("'", 1)[0]  # "caroline's" -> "caroline", "don't" -> "don"
            if len(word) < self._min_len or word in self._stopwords or match.replace("'", "") in self._stopwords:
                continue
            out.append(self._stem(word))
        return out


_DEFAULT_TOKENIZER: Tokenizer | None = None


def default_tokenizer() -> Tokenizer:
    """The process-wide tokenizer (stemming on, default stopwords)."""
    global _DEFAULT_TOKENIZER
    if _DEFAULT_TOKENIZER is None:
        _DEFAULT_TOKENIZER = Tokenizer()
    return _DEFAULT_TOKENIZER


# Texts up to this many characters have their terms cached: a session is re-derived after every Write to
# it, and derivation tokenizes each of its turns (and each word of them, for keyphrases) again.
_CACHED_TEXT_CHARS = 2_000


@functools.lru_cache(maxsize=65_536)
def _cached_tokens(text: str) -> tuple[str, ...]:
    return tuple(default_tokenizer().tokens(text))


def tokenize(text: str) -> list[str]:
    """Index terms of ``text`` with the default tokenizer."""
    if len(text) <= _CACHED_TEXT_CHARS:
        return list(_cached_tokens(text))
    return default_tokenizer().tokens(text)


class _Postings:
    """One term's postings: a mutable slot -> tf dict plus lazily rebuilt numpy views."""

    __slots__ = ("arrays", "sorted_arrays", "tf")

    def __init__(self) -> None:
        self.tf: dict[int, int] = {}
        self.arrays: tuple[np.ndarray, np.ndarray] | None = None
        self.sorted_arrays: tuple[np.ndarray, np.ndarray] | None = None

    def invalidate(self) -> None:
        self.arrays = None
        self.sorted_arrays = None

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        if self.arrays is None:
            slots = np.fromiter(self.tf.keys(), dtype=np.int64, count=len(self.tf))
            tfs = np.fromiter(self.tf.values(), dtype=np.float32, count=len(self.tf))
            self.arrays = (slots, tfs)
        return self.arrays

    def sorted_view(self) -> tuple[np.ndarray, np.ndarray]:
        """(slots ascending, their tfs), for membership lookups by ``searchsorted``."""
        if self.sorted_arrays is None:
            slots, tfs = self.view()
            order = np.argsort(slots, kind="stable")
            self.sorted_arrays = (slots[order], tfs[order])
        return self.sorted_arrays


class BM25Index:
    """Incremental BM25 over int64 document ids.

    ``add`` replaces a document already present under the same id; ``remove`` deletes its postings.
    Thread-safe: writers and readers share one lock (queries are short: they read only their postings).
    """

    def __init__(self, *, k1: float = 1.2, b: float = 0.75, tokenizer: Tokenizer | None = None):
        self.k1 = k1
        self.b = b
        self.tokenizer = tokenizer or default_tokenizer()
        self._postings: dict[str, _Postings] = {}
        self._slot_of: dict[int, int] = {}
        self._doc_terms: list[Counter[str] | None] = []
        self._ids = np.zeros(1024, dtype=np.int64)
        self._lengths = np.zeros(1024, dtype=np.float32)
        self._free: list[int] = []
        self._total_len = 0.0
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._slot_of

    def doc_ids(self) -> list[int]:
        """Every indexed id (snapshot)."""
        with self._lock:
            return list(self._slot_of)

    def add(self, doc_id: int, text: str | None = None, *, tokens: Sequence[str] | None = None) -> None:
        """Index ``text`` (or pre-computed ``tokens``) under ``doc_id``, replacing any earlier version."""
        terms = Counter(tokens if tokens is not None else self.tokenizer.tokens(text or ""))
        doc_id = int(doc_id)
        with self._lock:
            if doc_id in self._slot_of:
                self._remove_locked(doc_id)
            slot = self._free.pop() if self._free else len(self._doc_terms)
            if slot == len(self._doc_terms):
                self._doc_terms.append(None)
                if slot >= len(self._ids):
                    self._ids = np.concatenate([self._ids, np.zeros_like(self._ids)])
                    self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
            self._doc_terms[slot] = terms
            self._slot_of[doc_id] = slot
            self._ids[slot] = doc_id
            length = float(sum(terms.values()))
            self._lengths[slot] = length
            self._total_len += length
            for term, tf in terms.items():
                postings = self._postings.get(term)
                if postings is None:
                    postings = self._postings[term] = _Postings()
                postings.tf[slot] = tf
                postings.invalidate()

    def add_many(self, docs: Iterable[tuple[int, str]]) -> None:
        """Index several (id, text) pairs."""
        for doc_id, text in docs:
            self.add(doc_id, text)

    def remove(self, doc_id: int) -> bool:
        """Remove ``doc_id``; returns whether it was present."""
        with self._lock:
            if int(doc_id) not in self._slot_of:
                return False
            self._remove_locked(int(doc_id))
            return True

    def _remove_locked(self, doc_id: int) -> None:
        slot = self._slot_of.pop(doc_id)
        terms = self._doc_terms[slot] or Counter()
        for term in terms:
            postings = self._postings[term]
            del postings.tf[slot]
            postings.invalidate()
            if not postings.tf:
                del self._postings[term]
        self._total_len -= float(self._lengths[slot])
        self._lengths[slot] = 0.0
        self._ids[slot] = -1
        self._doc_terms[slot] = None
        self._free.append(slot)

    def document_frequency(self, term: str) -> int:
        """How many documents contain the (already tokenized) ``term``."""
        postings = self._postings.get(term)
        return len(postings.tf) if postings else 0

    def idf(self, term: str) -> float:
        """Lucene BM25 idf of an index term (0 when the index is empty)."""
        n = len(self._slot_of)
        df = self.document_frequency(term)
        return float(np.log1p((n - df + 0.5) / (df + 0.5))) if n else 0.0

    def search(self, query: str | Sequence[str], k: int = 10) -> list[tuple[int, float]]:
        """Top-``k`` (id, score) by BM25, best first; only documents sharing a term with the query."""
        ids, scores = self.search_arrays(query, k)
        return [(int(i), float(s)) for i, s in zip(ids, scores, strict=True)]

    def search_arrays(
        self, query: str | Sequence[str], k: int = 10, *, max_df: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search` but returns (ids int64, scores float32) arrays, best first.

        ``max_df`` (a share of N) skips query terms more common than that, as long as a rarer query term
        is indexed: for candidate generation at scale, where a term in half the corpus (a speaker's
        name) costs the most postings and moves the ranking least. Scores then omit those terms.
        """
        terms = self.tokenizer.tokens(query) if isinstance(query, str) else list(query)
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        if k <= 0:
            return empty
        query_tf = Counter(terms)
        with self._lock:
            n = len(self._slot_of)
            if n == 0:
                return empty
            if max_df is not None:
                limit = max_df * n
                present = {t: q for t, q in query_tf.items() if t in self._postings}
                rare = {t: q for t, q in present.items() if len(self._postings[t].tf) <= limit}
                if rare:
                    query_tf = Counter(rare)
            avgdl = max(self._total_len / n, 1e-9)
            slot_parts: list[np.ndarray] = []
            score_parts: list[np.ndarray] = []
            for term, qtf in query_tf.items():
                postings = self._postings.get(term)
                if postings is None:
                    continue
                slots, tfs = postings.view()
                df = len(slots)
                idf = float(np.log1p((n - df + 0.5) / (df + 0.5)))
                norm = self.k1 * (1.0 - self.b + self.b * self._lengths[slots] / avgdl)
                slot_parts.append(slots)
                score_parts.append((idf * qtf) * tfs * (self.k1 + 1.0) / (tfs + norm))
            if not slot_parts:
                return empty
            ids_by_slot = self._ids
            all_slots = np.concatenate(slot_parts)
            all_scores = np.concatenate(score_parts)
            if len(slot_parts) > 1:
                # A dense accumulator over slots is O(N) with tiny constants, cheaper than sorting the
                # concatenated postings (np.unique). Every posting scores > 0 (idf > 0, tf > 0), so the
                # non-zero slots are exactly the matching documents.
                dense = np.bincount(all_slots, weights=all_scores)
                unique = np.flatnonzero(dense)
                summed = dense[unique].astype(np.float32)
            else:
                unique, summed = all_slots, all_scores.astype(np.float32)
            take = min(k, len(unique))
            top = np.argpartition(-summed, take - 1)[:take] if take < len(unique) else np.arange(len(unique))
            # Ties are broken by id so results are deterministic.
            order = np.lexsort((ids_by_slot[unique[top]], -summed[top]))
            top = top[order]
            return ids_by_slot[unique[top]].copy(), summed[top]

    def score(self, query: str | Sequence[str], doc_ids: Sequence[int]) -> np.ndarray:
        """BM25 scores of the given documents (0 for unknown ids), in the given order.

        Vectorised per query term: the documents' slots are looked up in the term's slot-sorted
        postings with ``searchsorted`` (cost ~ len(doc_ids) · log df per term, no Python loop per pair).
        """
        terms = self.tokenizer.tokens(query) if isinstance(query, str) else list(query)
        out = np.zeros(len(doc_ids), dtype=np.float64)
        with self._lock:
            n = len(self._slot_of)
            if n == 0 or not len(doc_ids):
                return out.astype(np.float32)
            avgdl = max(self._total_len / n, 1e-9)
            slot_of = self._slot_of
            slots = np.fromiter((slot_of.get(int(d), -1) for d in doc_ids), dtype=np.int64, count=len(doc_ids))
            known = slots >= 0
            norm = self.k1 * (1.0 - self.b + self.b * self._lengths[np.where(known, slots, 0)] / avgdl)
            for term, qtf in Counter(terms).items():
                postings = self._postings.get(term)
                if postings is None:
                    continue
                sorted_slots, sorted_tfs = postings.sorted_view()
                pos = np.searchsorted(sorted_slots, slots)
                pos = np.minimum(pos, len(sorted_slots) - 1)
                hit = known & (sorted_slots[pos] == slots)
                tf = np.where(hit, sorted_tfs[pos], 0.0)
                df = len(sorted_slots)
                idf = float(np.log1p((n - df + 0.5) / (df + 0.5)))
                out += qtf * idf * tf * (self.k1 + 1.0) / (tf + norm)
            return out.astype(np.float32)
