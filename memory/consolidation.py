"""Consolidation of a namespace: forgetting by policy, and merging near-duplicate turns.

Raw messages are the source of truth and are only ever removed by a deliberate policy, so consolidation
works on the derived side and on ranking:

- **Forgetting** (``max_age_days``, ``max_messages``): messages older than the age limit (by their own
  time) and the oldest beyond the count limit (by arrival) are deleted through the engine's ordinary
  Delete, so everything derived from them — units, index entries, postings, edges — goes too.
- **Fact promotion** (``promote_min_sessions``): a fact unit's keyphrase (a name, a date, a salient term
  with the turns that mention it) that recurs in facts of several sessions is something the conversation
  keeps coming back to — a person, a project, a pet. Those facts are promoted: their weight becomes
  ``promote_weight`` (> 1), so they rank above one-off facts of equal similarity.
- **Near-duplicate merging** (``duplicate_cosine``): when a speaker says nearly the same thing again
  ("I live in Lisbon now" in five sessions), the turns compete for the same budget with the same words.
  Of each group of turns of one speaker whose embeddings are at least ``duplicate_cosine`` similar, the
  newest keeps its weight and the older ones are merged into it: their weight is multiplied by
  ``duplicate_weight`` (the retriever scores ``ln weight``), so they still answer "when did she first say
  so?" but no longer crowd a budget. The decision is re-checked on every pass: an older turn whose newer
  twin was deleted gets its weight back.

Cost is bounded: one pass checks at most ``batch`` turns (new ones first) with one FAISS query each.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from core.lexical import tokenize
from memory.index import NamespaceIndex
from memory.model import Granularity, MemoryUnit
from memory.store import MemoryStore
from memory.units import UnitPolicy, information_weight, speaker_of


@dataclass(frozen=True)
class ConsolidationPolicy:
    """The ``consolidation`` section of a namespace's memory policy (all optional)."""

    max_age_days: float = 0.0
    """Delete messages whose time is older than this many days (0 = keep forever)."""
    max_messages: int = 0
    """Keep at most this many messages, deleting the oldest arrivals first (0 = no limit)."""
    duplicate_cosine: float = 0.95
    """Turns of one speaker at least this similar are near-duplicates (0 = never merge)."""
    duplicate_weight: float = 0.3
    """Weight factor of the older turns of a near-duplicate group."""
    batch: int = 500
    """Most turns checked for near-duplicates per pass."""
    promote_min_sessions: int = 3
    """A fact keyphrase found in facts of at least this many sessions is promoted (0 = never)."""
    promote_weight: float = 1.5
    """Weight of promoted facts."""
    neighbours: int = 8
    """Nearest turns looked at per checked turn."""

    @classmethod
    def from_mapping(cls, policy: Mapping[str, Any] | None) -> ConsolidationPolicy:
        section = (policy or {}).get("consolidation") or {}
        if not isinstance(section, Mapping):
            raise ValueError("memory policy 'consolidation' must be a mapping")
        return cls(**{k: type(getattr(cls, k))(v) for k, v in section.items() if k in cls.__dataclass_fields__})


def messages_to_forget(
    store: MemoryStore, namespace: str, policy: ConsolidationPolicy, now: datetime | None = None
) -> list[str]:
    """Ids of the messages the retention policy removes now (empty when it keeps everything)."""
    if policy.max_age_days <= 0 and policy.max_messages <= 0:
        return []
    cutoff = (now or datetime.now(UTC)) - timedelta(days=policy.max_age_days) if policy.max_age_days > 0 else None
    arrivals: list[str] = []
    expired: list[str] = []
    after = -1
    while True:
        page = store.list_messages(namespace, session_id=None, after_seq=after, limit=1000)
        for stored in page:
            arrivals.append(stored.message.id)
            when = stored.message.time
            if cutoff is not None and when is not None and when < cutoff:
                expired.append(stored.message.id)
        if len(page) < 1000:
            break
        after = page[-1].seq
    forget = dict.fromkeys(expired)
    if policy.max_messages > 0:
        survivors = [mid for mid in arrivals if mid not in forget]
        for mid in survivors[: max(0, len(survivors) - policy.max_messages)]:
            forget[mid] = None
    return list(forget)


def base_weight(unit: MemoryUnit, units_policy: UnitPolicy) -> float:
    """The weight derivation gives a turn unit (its information weight), before any merging."""
    return _turn_information_weight(unit.text, units_policy)


@functools.lru_cache(maxsize=1 << 16)
def _turn_information_weight(text: str, units_policy: UnitPolicy) -> float:
    # Cached: background passes re-check the same turns over and over, and tokenising them was a
    # fifth of a pass.
    speaker = speaker_of(text)
    return information_weight(text[len(speaker) + 2 :] if speaker else text, units_policy)


def _recency(unit: MemoryUnit, key: int) -> tuple[float, int]:
    when = unit.time_end or unit.time_start
    return (when.timestamp() if when is not None else float("-inf"), key)


def merged_weights(
    index: NamespaceIndex,
    keys: Sequence[int],
    policy: ConsolidationPolicy,
    units_policy: UnitPolicy,
    pause: Callable[[], None] | None = None,
) -> dict[int, float]:
    """The weight each checked turn (and each newly found older twin) should have: key -> weight.

    A turn is "older" when its time (then its key, i.e. arrival) is lower than its twin's.
    """
    if policy.duplicate_cosine <= 0:
        return {}
    checked = [
        (key, unit, vector)
        for key in keys
        if (unit := index.unit(key)) is not None
        and (vector := index.vector(key)) is not None
        and unit.granularity == Granularity.TURN
    ]
    if not checked:
        return {}
    # One batched FAISS query for the whole pass: it runs without the GIL on every core, where a query
    # per turn held the GIL for the Python overhead of each (~0.26 ms x 500 per pass at 100k units).
    found_all, scores_all = index.dense_search_many(
        Granularity.TURN, np.stack([v for _, _, v in checked]), policy.neighbours + 1
    )
    wanted: dict[int, float] = {}
    for i, ((key, unit, _), found, scores) in enumerate(
        zip(checked, found_all.tolist(), scores_all.tolist(), strict=True)
    ):
        if pause is not None and i % 32 == 31:
            pause()
        speaker = speaker_of(unit.text)
        newer_twin = False
        for score, other_key in zip(scores, found, strict=True):
            if other_key == key or other_key < 0 or score < policy.duplicate_cosine:
                continue
            other = index.unit(other_key)
            if other is None or speaker_of(other.text) != speaker or set(other.message_ids) & set(unit.message_ids):
                continue
            if _recency(other, other_key) > _recency(unit, key):
                newer_twin = True
            else:  # this turn is the newer one: its twin is merged into it
                wanted[other_key] = base_weight(other, units_policy) * policy.duplicate_weight
        wanted[key] = base_weight(unit, units_policy) * (policy.duplicate_weight if newer_twin else 1.0)
    return wanted


def fact_topic(unit: MemoryUnit) -> str:
    """The keyphrase a fact unit is about, normalised (stems), from its first line ``"<phrase> [date]:"``."""
    head = unit.text.split("\n", 1)[0].rstrip(":")
    phrase = head.split(" [", 1)[0]
    return " ".join(tokenize(phrase))


def promoted_weights(
    index: NamespaceIndex,
    keys: Sequence[int],
    policy: ConsolidationPolicy,
    topics: dict[int, tuple[str, str]] | None = None,
    pause: Callable[[], None] | None = None,
) -> dict[int, float]:
    """The weight each fact unit among ``keys`` should have: ``promote_weight`` when its topic recurs in
    facts of ``promote_min_sessions`` sessions, else 1.

    ``topics`` caches key -> (text, topic) across passes, so a pass tokenizes only new or changed facts.
    """
    cache = topics if topics is not None else {}
    sessions: dict[str, set[str]] = {}
    fact_topics: dict[int, str] = {}
    for i, key in enumerate(keys):
        if pause is not None and i % 256 == 255:
            pause()
        unit = index.unit(key)
        if unit is None or unit.granularity != Granularity.FACT:
            continue
        cached = cache.get(key)
        if cached is None or cached[0] != unit.text:
            cached = cache[key] = (unit.text, fact_topic(unit))
        fact_topics[key] = cached[1]
        if cached[1]:
            sessions.setdefault(cached[1], set()).add(unit.session_id)
    for gone in set(cache) - set(fact_topics):
        del cache[gone]
    threshold = policy.promote_min_sessions
    return {
        key: policy.promote_weight if threshold > 0 and len(sessions.get(topic, ())) >= threshold else 1.0
        for key, topic in fact_topics.items()
    }


def weight_changes(index: NamespaceIndex, wanted: Mapping[int, float]) -> list[tuple[int, MemoryUnit]]:
    """(key, unit with the wanted weight) for every unit whose weight differs from what it should be."""
    out = []
    for key, weight in wanted.items():
        unit = index.unit(key)
        if unit is not None and abs(unit.weight - weight) > 1e-6:
            out.append((key, _with_weight(unit, weight)))
    return out


def _with_weight(unit: MemoryUnit, weight: float) -> MemoryUnit:
    return replace(unit, weight=round(float(weight), 6))
