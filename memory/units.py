"""Derive retrievable units from one session's messages, extractively (no LLM by default).

Granularities (every unit keeps its ``message_ids``, session and time range, and its ``text`` contains
the full words of every message it claims to cover):

- ``turn``: one per message, ``"<speaker>: <text>"``. Low-information turns ("ok", "haha!") are kept
  but get ``weight`` < 1, from the share of content words (entropy-aware filtering, SimpleMem-style).
- ``exchange``: a sliding window of ``window`` consecutive turns centred on each turn (stride 1), so
  each turn has one unit holding its immediate context. The retriever also reads the windows to know
  which turns are sequence neighbours (a window's ``message_ids`` are in conversation order).
- ``session``: a digest: the session date, its top keyphrases, and its most central turns (TF-IDF
  centroid similarity, in full); ``message_ids`` are those turns only.
- ``fact``: per salient entity/keyphrase (capitalised names, dates, numbers, frequent content words),
  the turns that mention it, in full (at most ``fact_turns``), prefixed by the keyphrase.

An optional :class:`Enricher` (e.g. :class:`OpenAICompatibleEnricher`) may add units; it is off unless
a namespace policy configures it, and its units must respect the same covering rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from core.lexical import STOPWORDS, tokenize
from memory.model import Granularity, MemoryMessage, MemoryUnit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitPolicy:
    """How units are derived; defaults are what the memory policy uses when it says nothing."""

    # Turns per exchange window (odd: centred on a turn).
    window: int = 3
    # Most central turns quoted in the session digest.
    digest_turns: int = 3
    # Keyphrases listed in the digest.
    digest_keyphrases: int = 8
    # Fact units per session, and turns quoted per fact.
    max_facts: int = 6
    fact_turns: int = 3
    # A turn with fewer content terms than this is "low information".
    low_info_terms: int = 3
    # Weight floor of a turn without any content term.
    low_info_weight: float = 0.4
    # A session longer than this many messages is derived in consecutive segments of that many (windows,
    # digest and facts per segment; segment 0 keeps the id of an unsegmented digest). A segment's units
    # depend on its messages alone, so a growing session (an agent thread) re-derives only its last
    # segment instead of all of it (memory.engine, _derive_session). 0 = one segment, however long.
    segment_messages: int = 100
    # Derived units (exchange, session, fact) get the word-weighted mean of their turns' vectors instead
    # of a model pass over their text (``memory.engine.compose_vectors``); false embeds every unit's text.
    composed_vectors: bool = True
    # Optional LLM enrichment (OpenAI-compatible chat endpoint); off while ``llm_base_url`` is empty.
    llm_base_url: str = ""
    llm_model: str = ""
    # Name of the environment variable holding the API key (the key itself never sits in config).
    llm_api_key_env: str = ""

    @classmethod
    def from_mapping(cls, policy: Mapping[str, Any] | None) -> UnitPolicy:
        """Read the ``units`` section of a namespace memory policy (unknown keys are ignored)."""
        section = (policy or {}).get("units", policy or {})
        fields = {f: section[f] for f in cls.__dataclass_fields__ if isinstance(section, Mapping) and f in section}
        return cls(**fields)

    @classmethod
    def problems(cls, policy: Mapping[str, Any] | None) -> list[tuple[str, str]]:
        """(field, why) for every value of the ``units`` section of a memory policy that derivation could not
        use: the server checks the configured policies at start, so a typo stops it with the setting's name
        instead of failing every background derivation later."""
        section = (policy or {}).get("units", policy or {})
        if not isinstance(section, Mapping):
            return [("", "must be a mapping")]
        out: list[tuple[str, str]] = []
        for name, lowest in _UNIT_INT_MINIMUMS.items():
            value = section.get(name)
            if name in section and (not isinstance(value, int) or isinstance(value, bool) or value < lowest):
                out.append((name, f"must be an integer >= {lowest}, got {value!r}"))
        weight = section.get("low_info_weight")
        if "low_info_weight" in section and (
            not isinstance(weight, int | float) or isinstance(weight, bool) or not 0.0 <= weight <= 1.0
        ):
            out.append(("low_info_weight", f"must be a number in [0, 1], got {weight!r}"))
        if "composed_vectors" in section and not isinstance(section["composed_vectors"], bool):
            out.append(("composed_vectors", f"must be true or false, got {section['composed_vectors']!r}"))
        for name in ("llm_base_url", "llm_model", "llm_api_key_env"):
            if name in section and not isinstance(section[name], str):
                out.append((name, f"must be a string, got {section[name]!r}"))
        return out


# Smallest value each integer field of UnitPolicy accepts.
_UNIT_INT_MINIMUMS = {
    "window": 1,
    "digest_turns": 1,
    "digest_keyphrases": 0,
    "max_facts": 0,
    "fact_turns": 1,
    "low_info_terms": 0,
    "segment_messages": 0,
}


def turn_text(message: MemoryMessage) -> str:
    """The text of a message as units quote it: ``"<speaker>: <text>"`` (just the text without speaker)."""
    return f"{message.speaker}: {message.text}" if message.speaker else message.text


# Speakers that name a conversational role rather than a person. Their name carries nothing a query could
# match, so their turns are embedded without the "<speaker>: " prefix (see embedding_text).
ROLE_SPEAKERS = frozenset({"user", "assistant", "system", "tool"})


def embedding_text(unit: MemoryUnit) -> str:
    """The text a unit's vector is computed from: its text, except that a turn of a role speaker
    (``ROLE_SPEAKERS``) drops its ``"<speaker>: "`` prefix.

    A person's name is content ("What did Caroline paint?" matches Caroline's turns), a role name is not.
    Without the prefix, an agent turn's vector is the vector of exactly the text its guard checked and its
    retrieval searched with, so the embedder's cache serves the memory write instead of a model pass per
    message (two of the six passes of a ``RunTurn``). The lexical channel and every hit keep the prefix.
    """
    return turn_embedding_text(unit.text) if unit.granularity == Granularity.TURN else unit.text


def turn_embedding_text(text: str) -> str:
    """:func:`embedding_text` of a turn unit's text (``"<speaker>: <text>"``)."""
    speaker = speaker_of(text)
    return text[len(speaker) + 2 :] if speaker.lower() in ROLE_SPEAKERS else text


def speaker_of(unit_text: str) -> str:
    """The speaker prefix of a turn unit's text (``""`` when there is none)."""
    head, sep, _ = unit_text.partition(": ")
    return head if sep and 0 < len(head) <= 64 and "\n" not in head else ""


def information_weight(text: str, policy: UnitPolicy = UnitPolicy()) -> float:
    """Down-weight for low-information turns: 1.0 at ≥ ``low_info_terms`` distinct content terms.

    Linear from ``low_info_weight`` (no content term: "haha", "ok!") up to 1.
    """
    distinct = len(set(tokenize(text)))
    if distinct >= policy.low_info_terms:
        return 1.0
    return policy.low_info_weight + (1.0 - policy.low_info_weight) * distinct / policy.low_info_terms


#: Longest session or message id kept as it is inside a unit id; a longer one is hashed, so that a unit id fits
#: the store's 255-character id column whatever the lengths of the two ids it is made of (each up to 255).
ID_PART_CHARS = 100


def id_part(value: str) -> str:
    """A session or message id as one part of a unit id: ``/`` separates the parts, so it is escaped (and ``%``,
    the escape character, first), which keeps unit ids one-to-one with (session, kind, message): unescaped,
    session ``a`` with message ``b/turn/c`` and session ``a/turn/b`` with message ``c`` shared one turn unit id.
    Ids over ``ID_PART_CHARS`` after escaping become ``%h`` + a 128-bit hash, a form no escaped id can take."""
    escaped = value.replace("%", "%25").replace("/", "%2F")
    if len(escaped) <= ID_PART_CHARS:
        return escaped
    return "%h" + hashlib.blake2b(value.encode(), digest_size=16).hexdigest()


def turn_unit_id(session_id: str, message_id: str) -> str:
    """Id of the turn unit of a message."""
    return f"{id_part(session_id)}/turn/{id_part(message_id)}"


def _unit_id(session_id: str, kind: str, parts: Sequence[str]) -> str:
    # Deterministic and bounded: the same messages give the same id on every re-derive.
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()
    return f"{id_part(session_id)}/{kind}/{digest}"


_DATE = re.compile(
    r"\b(?:\d{1,2}(?:st|nd|rd|th)?\s+(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?(?:,?\s+\d{4})?"
    r"|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?(?:,?\s+\d{4})?"
    r"|(?:19|20)\d{2}|yesterday|today|tomorrow|last (?:week|month|year|weekend)|next (?:week|month|year))\b",
    re.IGNORECASE,
)
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z]+(?:\s+[A-Z][a-z]+)*)\b")


def keyphrases(texts: Sequence[str], limit: int, exclude: set[str] | None = None) -> list[str]:
    """Salient phrases of a set of texts: names, dates, then terms by TF-IDF across the texts.

    Names are capitalised word runs not at a sentence start; dates match common forms. Returned in
    surface form (first seen), most salient first.
    """
    exclude = {e.lower() for e in (exclude or set())}
    scores: dict[str, float] = {}
    surface: dict[str, str] = {}
    for text in texts:
        for match in _DATE.finditer(text):
            key = match.group(0).lower()
            scores[key] = scores.get(key, 0.0) + 3.0
            surface.setdefault(key, match.group(0))
        for match in _NAME.finditer(text):
            phrase = match.group(1)
            key = phrase.lower()
            if key in STOPWORDS or key in exclude or len(key) < 3:
                continue
            scores[key] = scores.get(key, 0.0) + 2.0
            surface.setdefault(key, phrase)
    doc_freq: Counter[str] = Counter()
    term_freq: Counter[str] = Counter()
    first_word: dict[str, str] = {}
    # A word seen before cannot change first_word (its stem is already there, or it has none), so each
    # distinct word is stemmed once per call: a session's texts repeat most of their words.
    seen_words: set[str] = set()
    for text in texts:
        words = re.findall(r"[A-Za-z][A-Za-z'-]+", text)
        stems = tokenize(" ".join(words))
        for word in words:
            if word in seen_words:
                continue
            seen_words.add(word)
            stem = tokenize(word)
            if stem:
                first_word.setdefault(stem[0], word.lower())
        term_freq.update(stems)
        doc_freq.update(set(stems))
    n = max(len(texts), 1)
    for term, tf in term_freq.items():
        word = first_word.get(term, term)
        if len(word) < 4 or word in exclude:
            continue
        # Repeated within the session but not everywhere in it: the session's topic words.
        tfidf = (1.0 + math.log(tf)) * math.log(1.0 + n / doc_freq[term])
        scores[word] = scores.get(word, 0.0) + tfidf * (1.0 if tf > 1 else 0.5)
        surface.setdefault(word, word)
    ranked = [surface[k] for k, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]
    out: list[str] = []
    seen: set[str] = set()
    for phrase in ranked:
        key = phrase.lower()
        if key in seen:
            continue
        seen.add(key)
        out.append(phrase)
        if len(out) >= limit:
            break
    return out


def _centrality(token_lists: Sequence[list[str]]) -> list[float]:
    """Cosine of each text's TF-IDF vector to the session centroid (0 for empty texts)."""
    n = len(token_lists)
    doc_freq: Counter[str] = Counter()
    for tokens in token_lists:
        doc_freq.update(set(tokens))
    vectors: list[dict[str, float]] = []
    centroid: Counter[str] = Counter()
    for tokens in token_lists:
        tf = Counter(tokens)
        vec = {t: (1 + math.log(c)) * math.log(1 + n / doc_freq[t]) for t, c in tf.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        vec = {t: v / norm for t, v in vec.items()}
        vectors.append(vec)
        centroid.update(vec)
    cnorm = math.sqrt(sum(v * v for v in centroid.values())) or 1.0
    return [sum(v * centroid[t] for t, v in vec.items()) / cnorm for vec in vectors]


class Enricher(Protocol):
    """Optional extra units for one session (e.g. LLM summaries); must obey the covering rule."""

    def enrich(self, session_id: str, messages: Sequence[MemoryMessage]) -> list[MemoryUnit]:
        """Units to add to the extractive ones (may be empty)."""
        ...


def derive_units(
    session_id: str,
    messages: Sequence[MemoryMessage],
    policy: UnitPolicy | None = None,
    enricher: Enricher | None = None,
    *,
    enrich: bool = True,
) -> list[MemoryUnit]:
    """Every unit of one session, from its messages in conversation order.

    Deterministic: the same messages give the same units and ids. Unit ids are prefixed by the session
    id, so they are unique within a namespace. The LLM enricher (``enricher``, or the one the policy
    configures) runs only when ``enrich`` is true: callers that keep only turn units pass False.
    """
    policy = policy or UnitPolicy()
    if enricher is None and enrich:
        enricher = policy_enricher(policy)
    units: list[MemoryUnit] = []
    for index, part in enumerate(session_segments(messages, policy)):
        units.extend(derive_segment(session_id, index, part, policy, enricher if enrich else None))
    return units


def policy_enricher(policy: UnitPolicy) -> Enricher | None:
    """The LLM enricher the policy configures (``llm_base_url``), or None when enrichment is off."""
    if not policy.llm_base_url:
        return None
    key = os.environ.get(policy.llm_api_key_env, "") if policy.llm_api_key_env else ""
    return OpenAICompatibleEnricher(policy.llm_base_url, policy.llm_model, key)


def session_segments(messages: Sequence[MemoryMessage], policy: UnitPolicy) -> list[list[MemoryMessage]]:
    """A session's messages cut into consecutive segments of ``policy.segment_messages`` (one segment when
    the session is no longer than that, or segmentation is off); no segment when there is no message."""
    msgs = list(messages)
    size = policy.segment_messages
    if not msgs:
        return []
    if size <= 0 or len(msgs) <= size:
        return [msgs]
    return [msgs[start : start + size] for start in range(0, len(msgs), size)]


def segment_digest_id(session_id: str, index: int) -> str:
    """Id of the digest unit of a session's segment ``index`` (segment 0: the id of an unsegmented one)."""
    return f"{id_part(session_id)}/session" if index == 0 else f"{id_part(session_id)}/session/{index}"


def derive_segment(
    session_id: str,
    index: int,
    messages: Sequence[MemoryMessage],
    policy: UnitPolicy | None = None,
    enricher: Enricher | None = None,
) -> list[MemoryUnit]:
    """The units of one segment of a session (see :func:`session_segments`): its turns, its exchange
    windows, its digest and its facts, from its messages alone."""
    policy = policy or UnitPolicy()
    msgs = list(messages)
    if not msgs:
        return []
    texts = [turn_text(m) for m in msgs]
    token_lists = [tokenize(m.text) for m in msgs]
    units = turn_units(session_id, msgs, policy)
    units.extend(_windows(session_id, msgs, texts, policy))
    speakers = {m.speaker for m in msgs if m.speaker}
    # One ranking serves both: keyphrases(texts, k) is the first k of keyphrases(texts, n) for k <= n.
    phrases = keyphrases([m.text for m in msgs], max(policy.digest_keyphrases, policy.max_facts * 3), exclude=speakers)
    digest_id = segment_digest_id(session_id, index)
    units.append(_digest(digest_id, session_id, msgs, texts, token_lists, phrases[: policy.digest_keyphrases], policy))
    units.extend(_facts(session_id, msgs, texts, phrases[: policy.max_facts * 3], policy))
    if enricher is not None:
        try:
            units.extend(enricher.enrich(session_id, msgs))
        except Exception:  # enrichment is best effort: the extractive units stand on their own
            log.warning("unit enrichment failed for session %s", session_id, exc_info=True)
    return units


def turn_units(
    session_id: str, messages: Sequence[MemoryMessage], policy: UnitPolicy | None = None
) -> list[MemoryUnit]:
    """The turn units of ``messages`` alone (each depends on its own message only): what Write commits."""
    policy = policy or UnitPolicy()
    return [
        MemoryUnit(
            id=turn_unit_id(session_id, m.id),
            granularity=Granularity.TURN,
            text=turn_text(m),
            message_ids=(m.id,),
            session_id=session_id,
            time_start=m.time,
            time_end=m.time,
            weight=information_weight(m.text, policy),
        )
        for m in messages
    ]


def _span(msgs: Sequence[MemoryMessage]) -> tuple[Any, Any]:
    times = [m.time for m in msgs if m.time is not None]
    return (min(times), max(times)) if times else (None, None)


def _windows(
    session_id: str, msgs: Sequence[MemoryMessage], texts: Sequence[str], policy: UnitPolicy
) -> list[MemoryUnit]:
    if len(msgs) < 2 or policy.window < 2:
        return []
    half = policy.window // 2
    out = []
    for center in range(len(msgs)):
        lo, hi = max(0, center - half), min(len(msgs), center + half + 1)
        part = msgs[lo:hi]
        if len(part) < 2:
            continue
        start, end = _span(part)
        ids = tuple(m.id for m in part)
        out.append(
            MemoryUnit(
                id=_unit_id(session_id, "exchange", [msgs[center].id, *ids]),
                granularity=Granularity.EXCHANGE,
                text="\n".join(texts[lo:hi]),
                message_ids=ids,
                session_id=session_id,
                time_start=start,
                time_end=end,
            )
        )
    return out


def _date_header(msgs: Sequence[MemoryMessage]) -> str:
    start, end = _span(msgs)
    if start is None:
        return ""
    day = start.strftime("%d %B %Y").lstrip("0")
    return f"[{day}]" if start.date() == end.date() else f"[{day} – {end.strftime('%d %B %Y').lstrip('0')}]"


def _digest(
    unit_id: str,
    session_id: str,
    msgs: Sequence[MemoryMessage],
    texts: Sequence[str],
    token_lists: Sequence[list[str]],
    phrases: Sequence[str],
    policy: UnitPolicy,
) -> MemoryUnit:
    central = _centrality(token_lists)
    ranked = sorted(range(len(msgs)), key=lambda i: (-central[i], i))[: max(1, policy.digest_turns)]
    chosen = sorted(ranked)
    header = " ".join(p for p in (_date_header(msgs), "Topics: " + ", ".join(phrases) if phrases else "") if p)
    start, end = _span(msgs)
    return MemoryUnit(
        id=unit_id,
        granularity=Granularity.SESSION,
        text="\n".join([header, *(texts[i] for i in chosen)]) if header else "\n".join(texts[i] for i in chosen),
        message_ids=tuple(msgs[i].id for i in chosen),
        session_id=session_id,
        time_start=start,
        time_end=end,
    )


def _facts(
    session_id: str, msgs: Sequence[MemoryMessage], texts: Sequence[str], phrases: Sequence[str], policy: UnitPolicy
) -> list[MemoryUnit]:
    out: list[MemoryUnit] = []
    covered: set[tuple[str, ...]] = set()
    for phrase in phrases:
        stems = tokenize(phrase)
        if not stems:
            continue
        hits = [i for i, m in enumerate(msgs) if phrase.lower() in m.text.lower()]
        if not hits:
            continue
        hits = hits[: policy.fact_turns]
        ids = tuple(msgs[i].id for i in hits)
        if ids in covered:  # another keyphrase already grouped exactly these turns
            continue
        covered.add(ids)
        part = [msgs[i] for i in hits]
        start, end = _span(part)
        date = _date_header(part)
        out.append(
            MemoryUnit(
                id=_unit_id(session_id, "fact", [phrase.lower(), *ids]),
                granularity=Granularity.FACT,
                text=f"{phrase} {date}".strip() + ":\n" + "\n".join(texts[i] for i in hits),
                message_ids=ids,
                session_id=session_id,
                time_start=start,
                time_end=end,
            )
        )
        if len(out) >= policy.max_facts:
            break
    return out


class OpenAICompatibleEnricher:
    """Asks an OpenAI-compatible chat endpoint which turns state durable facts, and builds fact units.

    The model only *selects* turn numbers and a short label; the unit text is the label plus the quoted
    turns, so units still contain the words they cover whatever the model says. Off by default.
    """

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout: float = 30.0, client: Any = None):
        import httpx

        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(timeout=timeout)

    def enrich(self, session_id: str, messages: Sequence[MemoryMessage]) -> list[MemoryUnit]:
        """Fact units for the turns the model marks (empty when it answers nothing usable)."""
        numbered = "\n".join(f"{i}. {turn_text(m)}" for i, m in enumerate(messages))
        prompt = (
            "List the durable facts stated in this conversation. Answer JSON only: "
            '{"facts": [{"label": "<5 words>", "turns": [<turn numbers>]}]}\n\n' + numbered
        )
        response = self._client.post(
            self._url,
            headers=self._headers,
            json={"model": self._model, "messages": [{"role": "user", "content": prompt}], "temperature": 0},
        )
        response.raise_for_status()
        content = response.json()["choices"][0]["message"]["content"]
        match = re.search(r"\{.*\}", content, re.DOTALL)
        facts = json.loads(match.group(0)).get("facts", []) if match else []
        out = []
        for fact in facts:
            turns = sorted({int(t) for t in fact.get("turns", []) if 0 <= int(t) < len(messages)})
            label = str(fact.get("label", "")).strip()[:80]
            if not turns or not label:
                continue
            part = [messages[i] for i in turns]
            start, end = _span(part)
            ids = tuple(m.id for m in part)
            out.append(
                MemoryUnit(
                    id=_unit_id(session_id, "llmfact", [label.lower(), *ids]),
                    granularity=Granularity.FACT,
                    text=label + ":\n" + "\n".join(turn_text(m) for m in part),
                    message_ids=ids,
                    session_id=session_id,
                    time_start=start,
                    time_end=end,
                )
            )
        return out
