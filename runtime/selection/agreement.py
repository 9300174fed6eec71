"""Agreement clustering of candidate answers: normalised text first, embedding similarity for long answers."""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence

import numpy as np

from core.embedding import Embedder

_PREFIX = re.compile(
    r"^\s*(?:(?:the\s+)?(?:final\s+|short\s+)?answer\s*(?:is)?\s*[:\-=]?|a\s*[:.)]|result\s*:)\s*",
    re.IGNORECASE,
)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in ".-"})
# One number: digits with an optional fraction, or thousands grouped by commas ("1,000", "12,345.6") and
# nothing else — "1, 2" (a list) and "1,00" are not numbers, and neither is anything with a space inside.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")


def normalize_answer(text: str) -> str:
    """Canonical form for exact agreement: NFKC, case, "Answer:"-style prefixes, punctuation, articles,
    whitespace; a lone number compares by value ("1,000.0" = "1000", "$5." = "5"). Only commas that group
    thousands are dropped from a number: "1, 2" and "12" differ, and numbers separated by whitespace are
    never joined ("3 4" is not "34"). An answer with nothing but punctuation and spaces normalises to ""
    (which agrees with no other answer, see :func:`cluster_answers`)."""
    s = unicodedata.normalize("NFKC", text).strip()
    # Strip repeated prefixes like "Final answer: Answer: X".
    for _ in range(3):
        stripped = _PREFIX.sub("", s, count=1)
        # "A." / "A)" alone is a multiple-choice answer, not a prefix.
        if stripped == s or not stripped.strip():
            break
        s = stripped
    s = s.lower()
    # Before punctuation becomes spaces: a comma inside a number must still be told from one between two.
    number = _ARTICLES.sub(" ", s.replace("$", "")).strip().rstrip(".").strip()
    if _NUMBER.fullmatch(number):
        try:
            value = float(number.replace(",", ""))
            return str(int(value)) if value.is_integer() else repr(value)
        except (ValueError, OverflowError):
            pass
    s = s.translate(_PUNCT)
    # Drop articles unless nothing else is left ("A" may be a multiple-choice answer).
    without = " ".join(_ARTICLES.sub(" ", s).split()).strip(" .-")
    return without or " ".join(s.split()).strip(" .-")


def _groups(answers: Sequence[str], min_words: int) -> tuple[list[str], list[list[int]], list[list[int]]]:
    """Normalised answers, groups of equal ones (see :func:`_cluster_order`) and those of at least
    ``min_words`` words. Empty normalised answers are one group each: saying nothing is no agreement."""
    norm = [normalize_answer(a) for a in answers]
    groups: dict[str, list[int]] = {}
    empty: list[list[int]] = []
    for i, key in enumerate(norm):
        if key:
            groups.setdefault(key, []).append(i)
        else:
            empty.append([i])
    ordered = sorted([*groups.values(), *empty], key=lambda g: _cluster_order(g, norm))
    return norm, ordered, [g for g in ordered if len(norm[g[0]].split()) >= min_words]


def _cluster_order(cluster: Sequence[int], norm: Sequence[str]) -> tuple[bool, int, int]:
    # Empty answers last, then largest first, then earliest member first.
    return (not norm[cluster[0]], -len(cluster), min(cluster))


def is_empty_answer(text: str) -> bool:
    """Whether ``text`` normalises to nothing (empty, whitespace or punctuation only): such an answer never
    agrees with another and ranks after every real answer."""
    return not normalize_answer(text)


def texts_to_embed(answers: Sequence[str], *, min_words: int = 4) -> list[str]:
    """The answers :func:`cluster_answers` would embed (none when fewer than two long groups differ)."""
    _, _, long_groups = _groups(answers, min_words)
    return [answers[g[0]] for g in long_groups] if len(long_groups) >= 2 else []


def cluster_answers(
    answers: Sequence[str],
    embedder: Embedder | None = None,
    *,
    similarity: float = 0.85,
    min_words: int = 4,
) -> list[list[int]]:
    """Group answers that agree; returns clusters of indices, largest first (ties: earliest member first),
    clusters of an empty answer last.

    Answers with equal, non-empty :func:`normalize_answer` always agree; an answer that normalises to
    nothing is a cluster of its own. Groups whose normalised text has at least
    ``min_words`` words are merged further when the cosine similarity of their embeddings (mean of the
    members, greedy, largest group first) is ≥ ``similarity``. Short answers never merge by embedding:
    "42" and "43" embed almost identically.
    """
    norm, ordered, long_groups = _groups(answers, min_words)
    if embedder is None or len(long_groups) < 2:
        return ordered
    vecs = embedder.embed([answers[g[0]] for g in long_groups])
    vecs = np.asarray(vecs, dtype=np.float32)
    merged: list[tuple[list[int], np.ndarray]] = []
    for group, vec in zip(long_groups, vecs, strict=True):
        best, best_sim = -1, similarity
        for j, (_, centroid) in enumerate(merged):
            sim = float(vec @ centroid / (np.linalg.norm(centroid) or 1.0))
            if sim >= best_sim:
                best, best_sim = j, sim
        if best < 0:
            merged.append((list(group), vec * len(group)))
        else:
            members, centroid = merged[best]
            merged[best] = (members + group, centroid + vec * len(group))
    short = [g for g in ordered if len(norm[g[0]].split()) < min_words]
    clusters = [sorted(m) for m, _ in merged] + short
    return sorted(clusters, key=lambda c: _cluster_order(c, norm))
