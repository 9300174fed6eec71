"""Value objects of the memory: raw messages and the units derived from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Granularity(StrEnum):
    """The granularities a memory unit can have; the value is what `Hit.granularity` carries."""

    TURN = "turn"
    EXCHANGE = "exchange"
    SESSION = "session"
    FACT = "fact"


@dataclass(frozen=True)
class MemoryMessage:
    """One raw conversation message, stored losslessly."""

    id: str
    session_id: str
    speaker: str
    text: str
    time: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MemoryUnit:
    """A retrievable unit derived from one or more messages of one session.

    ``text`` must contain the words of the messages it covers (a digest that only lists ids does not
    count as covering them); ``weight`` < 1 down-weights low-information units ("ok", "haha").
    """

    id: str
    granularity: Granularity
    text: str
    message_ids: tuple[str, ...]
    session_id: str
    time_start: datetime | None = None
    time_end: datetime | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class SearchHit:
    """A unit returned by search, with its fused score."""

    unit: MemoryUnit
    score: float


@dataclass(frozen=True)
class RoutingDiagnostics:
    """Per-granularity normalised entropy and router weight for one query."""

    entropy: dict[str, float]
    weight: dict[str, float]


@dataclass(frozen=True)
class SearchResult:
    """Hits in rank order plus the router's diagnostics."""

    hits: list[SearchHit]
    routing: RoutingDiagnostics


@dataclass(frozen=True)
class SearchQuery:
    """One search request as the engine hands it to the retriever (validated, defaults applied)."""

    query: str
    top_k: int = 10
    # Maximum total whitespace words over the returned hits; 0 = no budget.
    token_budget: int = 0
    # Only units whose time range overlaps [time_start, time_end] (either bound optional).
    time_start: datetime | None = None
    time_end: datetime | None = None
    # Restrict to these sessions / granularities (empty = all).
    session_ids: tuple[str, ...] = ()
    granularities: tuple[Granularity, ...] = ()
