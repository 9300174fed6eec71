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
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from core.errors import FieldViolation, InvalidArgumentError
from core.lexical import tokenize
from memory.index import NamespaceIndex
from memory.model import Granularity, MemoryUnit
from memory.store import MemoryStore
from memory.units import UnitPolicy, information_weight, speaker_of

# Most messages one retention pass deletes; the rest go in the next passes (see MemoryEngine).
RETENTION_BATCH = 1000


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
    def problems(cls, policy: Mapping[str, Any] | None) -> list[tuple[str, str]]:
        """(field, why) for every value of the ``consolidation`` section of a memory policy that a pass could
        not use ("" names the section itself). The server checks the configured policies at start: a value
        cast blindly failed every background pass later (``max_age_days: 1000000`` overflowed the cutoff,
        ``max_messages: "lots"``), or did something else than meant (``max_messages: true`` kept one message)."""
        section = (policy or {}).get("consolidation") or {}
        if not isinstance(section, Mapping):
            return [("", f"must be a mapping, got {section!r}")]
        out: list[tuple[str, str]] = []
        for name, value in section.items():
            rule = _RULES.get(name)
            if rule is None:
                continue
            whole, low, low_open, high = rule
            number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if whole and not (number and float(value).is_integer() and value >= low):
                out.append((name, f"must be a whole number >= {low}, got {value!r}"))
            elif not whole and not (number and (value > low if low_open else value >= low) and value <= high):
                span = (
                    f"a finite number {'>' if low_open else '>='} {low:g}"
                    if math.isinf(high)
                    else f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
                )
                out.append((name, f"must be {span}, got {value!r}"))
        return out

    @classmethod
    def from_mapping(cls, policy: Mapping[str, Any] | None) -> ConsolidationPolicy:
        """The policy of a memory policy's ``consolidation`` section; raises InvalidArgumentError naming every
        bad value (see :meth:`problems`)."""
        bad = cls.problems(policy)
        if bad:
            raise InvalidArgumentError(
                [FieldViolation(f"consolidation.{name}" if name else "consolidation", why) for name, why in bad]
            )
        section = (policy or {}).get("consolidation") or {}
        return cls(**{k: type(getattr(cls, k))(v) for k, v in section.items() if k in _RULES})


# Most days ``max_age_days`` may say: 10,000 years, far inside what ``timedelta`` holds. A cutoff before year 1
# (anything over ~740,000 days today) keeps every message, see ``retention_cutoff``.
MAX_AGE_DAYS = 3_650_000.0
# Per field of ConsolidationPolicy: (whole number, lowest, lowest excluded, highest).
_RULES: dict[str, tuple[bool, float, bool, float]] = {
    "max_age_days": (False, 0.0, False, MAX_AGE_DAYS),
    "max_messages": (True, 0, False, math.inf),
    "duplicate_cosine": (False, 0.0, False, 1.0),
    "duplicate_weight": (False, 0.0, True, 1.0),
    "batch": (True, 1, False, math.inf),
    "promote_min_sessions": (True, 0, False, math.inf),
    "promote_weight": (False, 0.0, True, math.inf),
    "neighbours": (True, 1, False, math.inf),
}


def retention_cutoff(policy: ConsolidationPolicy, now: datetime | None = None) -> datetime | None:
    """Messages whose time is before this are forgotten by age; None when age keeps everything (no limit, or
    a limit reaching back before year 1, which ``datetime`` cannot say)."""
    if policy.max_age_days <= 0:
        return None
    try:
        return (now or datetime.now(UTC)) - timedelta(days=min(policy.max_age_days, MAX_AGE_DAYS))
    except OverflowError:
        return None


def messages_to_forget(
    store: MemoryStore,
    namespace: str,
    policy: ConsolidationPolicy,
    now: datetime | None = None,
    limit: int = RETENTION_BATCH,
) -> list[str]:
    """Ids of (at most ``limit``) the messages the retention policy removes now, oldest arrivals first;
    empty when it keeps everything. The store selects them (``MemoryStore.retention_candidates``): listing
    every message of the namespace on every background pass cost a read of the whole namespace each time."""
    cutoff = retention_cutoff(policy, now)
    if cutoff is None and policy.max_messages <= 0:
        return []
    return store.retention_candidates(namespace, older_than=cutoff, keep_newest=policy.max_messages, limit=limit)


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
