"""Durable storage of the memory: the ``MemoryStore`` interface, an in-memory reference, and SQL.

The store knows nothing about derivation, embedding or ranking; it keeps raw messages, derived units
(with their vectors), association edges and a per-namespace generation, and applies one ``Change``
atomically. ``memory/engine.py`` decides what the change is. Both implementations pass the same
conformance suite (``tests/memory/test_store_conformance.py``) on in-memory, SQLite and Postgres.

Every method takes the opaque scoped namespace key first; no method reads across keys.
"""

from __future__ import annotations

import abc
import copy
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from core.sqlread import reading
from core.sqlwrite import lock_for_write
from memory import schema
from memory.model import Granularity, MemoryMessage, MemoryUnit


def content_hash(message: MemoryMessage) -> str:
    """Hash of everything a client sends for a message; equal hash = an idempotent resend."""
    payload = json.dumps(
        [
            message.session_id,
            message.speaker,
            message.text,
            message.time.isoformat() if message.time else None,
            sorted(message.metadata.items()),
        ],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def unit_key(namespace: str, unit_id: str) -> int:
    """The int64 key of a unit in the vector and lexical indexes: 63 bits of blake2b, never negative.

    A hash rather than a database sequence so every backend (and the in-memory reference) agrees on
    keys without a round trip, and a re-derived unit with the same id keeps its key.
    """
    digest = hashlib.blake2b(f"{namespace}\x00{unit_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class StoredUnit:
    """A unit as persisted: the unit, its index key, its embedding and the model that made it."""

    unit: MemoryUnit
    key: int
    vector: np.ndarray
    model: str


@dataclass(frozen=True)
class StoredMessage:
    """A message as persisted, with its arrival order in the namespace."""

    message: MemoryMessage
    seq: int
    content_hash: str


# What a plan assumed about one message: (session id, content hash), None = not stored.
MessageState = tuple[str, str] | None


class StaleChange(RuntimeError):
    """A change's plan no longer holds: a message it was planned from changed, or a unit it inserts would
    cover a message that is gone (another Write, a Delete, another replica committed first). Nothing was
    applied; read again and plan again."""


@dataclass
class Change:
    """One atomic change to a namespace; ``MemoryStore.apply`` commits all of it or none of it."""

    upsert_messages: list[MemoryMessage] = field(default_factory=list)
    """Messages to insert or replace (a replaced message keeps its arrival order)."""
    delete_messages: list[str] = field(default_factory=list)
    """Message ids to delete."""
    delete_units: list[str] = field(default_factory=list)
    """Unit ids to delete (with their message links)."""
    insert_units: list[StoredUnit] = field(default_factory=list)
    """Units to insert (an existing id is replaced)."""
    mark_pending: list[str] = field(default_factory=list)
    """Sessions whose derived units must be rebuilt later (survives a crash)."""
    clear_pending: list[str] = field(default_factory=list)
    """Sessions whose derived units this change brings up to date."""
    expect_messages: dict[str, MessageState] = field(default_factory=dict)
    """Message id -> the state the change was planned from; ``apply`` raises StaleChange if one differs."""
    expect_sessions: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    """Session id -> its ``session_fingerprint`` the change was planned from; StaleChange if it differs."""

    def __bool__(self) -> bool:
        return bool(
            self.upsert_messages
            or self.delete_messages
            or self.delete_units
            or self.insert_units
            or self.mark_pending
            or self.clear_pending
        )


def _check_plan(
    change: Change, stored: dict[str, tuple[str, str]], sessions: dict[str, list[tuple[str, str]]]
) -> None:
    """Raise StaleChange unless ``change`` still holds on the state read in its transaction, under the
    namespace's write lock: ``stored`` (id -> (session, hash)) of at least ``expect_messages``, ``sessions``
    the fingerprints of ``expect_sessions``. Checked in the commit itself, so a Delete that another replica
    committed after the plan was read cannot be undone by it."""
    for sid, want in change.expect_sessions.items():
        if sessions.get(sid, []) != list(want):
            raise StaleChange(f"session {sid!r} changed since the change was planned")
    for mid, state in change.expect_messages.items():
        if stored.get(mid) != state:
            raise StaleChange(f"message {mid!r} changed since the change was planned")
    deleted = set(change.delete_messages) - {m.id for m in change.upsert_messages}
    for s in change.insert_units:
        if deleted.intersection(s.unit.message_ids):
            raise StaleChange(f"unit {s.unit.id!r} covers a message the change deletes")


def _cascade(change: Change, covering: Iterable[str]) -> None:
    """Add to ``change.delete_units`` the units ``covering`` a deleted message that it neither deletes nor
    inserts: a plan read the session's units before committing, and another replica may have derived more
    over the same messages since."""
    listed = set(change.delete_units) | {s.unit.id for s in change.insert_units}
    change.delete_units.extend(uid for uid in dict.fromkeys(covering) if uid not in listed)


def _deleted_units(change: Change) -> list[str]:
    """Unit ids the change removes for good: deleted and not inserted again (a re-derived unit keeps its edges)."""
    inserted = {s.unit.id for s in change.insert_units}
    return [uid for uid in dict.fromkeys(change.delete_units) if uid not in inserted]


@dataclass(frozen=True)
class NamespaceCounts:
    """Row counts of one namespace."""

    messages: int
    sessions: int
    units: dict[str, int]
    edges: int
    generation: int


class MemoryStore(abc.ABC):
    """Persistence of raw messages, derived units, association edges and namespace generations.

    Reads of a namespace that holds nothing return empty results, never an error.
    """

    @abc.abstractmethod
    def get_messages(self, namespace: str, ids: Sequence[str]) -> dict[str, StoredMessage]:
        """The stored messages among ``ids`` (missing ids are absent from the result)."""

    @abc.abstractmethod
    def session_messages(self, namespace: str, session_id: str) -> list[StoredMessage]:
        """All messages of a session in arrival order."""

    def session_fingerprint(self, namespace: str, session_id: str) -> list[tuple[str, str]]:
        """(message id, content hash) of a session's messages in arrival order: what tells whether a
        session changed since a snapshot of it was read. A backend may answer it without reading texts."""
        return [(s.message.id, s.content_hash) for s in self.session_messages(namespace, session_id)]

    @abc.abstractmethod
    def list_messages(
        self, namespace: str, *, session_id: str | None = None, after_seq: int = -1, limit: int = 100
    ) -> list[StoredMessage]:
        """A page of messages in arrival order with ``seq > after_seq``, optionally of one session."""

    @abc.abstractmethod
    def list_sessions(self, namespace: str) -> list[str]:
        """Ids of the sessions that hold at least one message, sorted."""

    @abc.abstractmethod
    def retention_candidates(
        self, namespace: str, *, older_than: datetime | None, keep_newest: int, limit: int
    ) -> list[str]:
        """Ids of the messages a retention policy forgets, oldest arrivals first, at most ``limit``: those whose
        time is before ``older_than`` (None: no age limit; a message without a time never expires), and of the
        others all but the ``keep_newest`` latest arrivals (0: no count limit). Only those ids are read, not
        every message of the namespace."""

    @abc.abstractmethod
    def session_units(self, namespace: str, session_ids: Iterable[str]) -> list[StoredUnit]:
        """The units derived from the given sessions."""

    @abc.abstractmethod
    def units_covering(self, namespace: str, message_ids: Sequence[str]) -> list[StoredUnit]:
        """The stored units that cover at least one of ``message_ids``, each once (in no set order). What a
        pass over some segments of a long session diffs against, without reading all of its units."""

    @abc.abstractmethod
    def get_units(self, namespace: str, unit_ids: Sequence[str]) -> dict[str, StoredUnit]:
        """The stored units among ``unit_ids``."""

    @abc.abstractmethod
    def iter_units(self, namespace: str, batch_size: int = 5000) -> Iterator[list[StoredUnit]]:
        """Every unit of a namespace, in batches (index rebuilds)."""

    @abc.abstractmethod
    def apply(self, namespace: str, change: Change) -> int:
        """Commit ``change`` atomically and return the namespace's new generation.

        New messages get the next arrival numbers; replaced ones keep theirs. The association edges of a unit
        the change deletes (and does not insert again under the same id) are deleted with it.

        Serialised with every other write of the namespace, in any process, and checked inside that: raises
        StaleChange, applying nothing, when ``expect_messages`` or ``expect_sessions`` differ from what is
        stored, or when an inserted unit covers a message the change deletes. A stored unit still covering a
        deleted message is deleted too, and its id appended to ``change.delete_units`` (so the caller mirrors
        what was really committed). A change that inserts units over messages it read must expect them.
        """

    @abc.abstractmethod
    def pending_sessions(self, namespace: str) -> list[str]:
        """Sessions marked pending (derived units not yet rebuilt), sorted."""

    @abc.abstractmethod
    def generation(self, namespace: str) -> int:
        """The namespace's generation: 0 when empty, bumped by every applied change."""

    @abc.abstractmethod
    def namespaces(self) -> list[str]:
        """Namespace keys that hold messages or units."""

    @abc.abstractmethod
    def replace_edges(self, namespace: str, edges: Sequence[tuple[int, int, float]]) -> None:
        """Replace the namespace's association edges ``(src_key, dst_key, weight)``.

        Edges with an end that is not a stored unit's key are dropped (see ``upsert_edges``).
        """

    @abc.abstractmethod
    def upsert_edges(self, namespace: str, edges: Sequence[tuple[int, int, float]]) -> None:
        """Insert or update some association edges, keeping the rest.

        Edges with an end that is not a stored unit's key are dropped: linking runs in the background on what the
        index held when it started, and a Delete may have committed since.
        """

    @abc.abstractmethod
    def load_edges(self, namespace: str) -> list[tuple[int, int, float]]:
        """All association edges of the namespace."""

    @abc.abstractmethod
    def counts(self, namespace: str) -> NamespaceCounts:
        """Row counts of a namespace."""

    @abc.abstractmethod
    def drop_namespace(self, namespace: str) -> int:
        """Delete everything of a namespace; returns how many messages were deleted."""


class InMemoryStore(MemoryStore):
    """Reference implementation on dicts; the conformance suite's oracle. Not durable."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._messages: dict[str, dict[str, StoredMessage]] = {}
        self._units: dict[str, dict[str, StoredUnit]] = {}
        self._edges: dict[str, dict[tuple[int, int], float]] = {}
        self._generation: dict[str, int] = {}
        self._next_seq: dict[str, int] = {}
        self._pending: dict[str, set[str]] = {}

    def get_messages(self, namespace: str, ids: Sequence[str]) -> dict[str, StoredMessage]:
        with self._lock:
            stored = self._messages.get(namespace, {})
            return {i: stored[i] for i in ids if i in stored}

    def session_messages(self, namespace: str, session_id: str) -> list[StoredMessage]:
        with self._lock:
            rows = [m for m in self._messages.get(namespace, {}).values() if m.message.session_id == session_id]
        return sorted(rows, key=lambda m: m.seq)

    def list_messages(
        self, namespace: str, *, session_id: str | None = None, after_seq: int = -1, limit: int = 100
    ) -> list[StoredMessage]:
        with self._lock:
            rows = [
                m
                for m in self._messages.get(namespace, {}).values()
                if m.seq > after_seq and (session_id is None or m.message.session_id == session_id)
            ]
        return sorted(rows, key=lambda m: m.seq)[:limit]

    def list_sessions(self, namespace: str) -> list[str]:
        with self._lock:
            return sorted({m.message.session_id for m in self._messages.get(namespace, {}).values()})

    def retention_candidates(
        self, namespace: str, *, older_than: datetime | None, keep_newest: int, limit: int
    ) -> list[str]:
        with self._lock:
            rows = sorted(self._messages.get(namespace, {}).values(), key=lambda m: m.seq)

        def expired(m: StoredMessage) -> bool:
            return older_than is not None and m.message.time is not None and m.message.time < older_than

        survivors = [m.seq for m in rows if not expired(m)]
        threshold = survivors[-keep_newest] if 0 < keep_newest <= len(survivors) else -1
        return [m.message.id for m in rows if expired(m) or m.seq < threshold][: max(0, limit)]

    def session_units(self, namespace: str, session_ids: Iterable[str]) -> list[StoredUnit]:
        wanted = set(session_ids)
        with self._lock:
            return [u for u in self._units.get(namespace, {}).values() if u.unit.session_id in wanted]

    def units_covering(self, namespace: str, message_ids: Sequence[str]) -> list[StoredUnit]:
        wanted = set(message_ids)
        with self._lock:
            return [u for u in self._units.get(namespace, {}).values() if wanted.intersection(u.unit.message_ids)]

    def get_units(self, namespace: str, unit_ids: Sequence[str]) -> dict[str, StoredUnit]:
        with self._lock:
            stored = self._units.get(namespace, {})
            return {i: stored[i] for i in unit_ids if i in stored}

    def iter_units(self, namespace: str, batch_size: int = 5000) -> Iterator[list[StoredUnit]]:
        with self._lock:
            rows = list(self._units.get(namespace, {}).values())
        for start in range(0, len(rows), batch_size):
            yield rows[start : start + batch_size]

    def apply(self, namespace: str, change: Change) -> int:
        with self._lock:
            stored_msgs = self._messages.get(namespace, {})
            sessions = {
                sid: [(m.message.id, m.content_hash) for m in self.session_messages(namespace, sid)]
                for sid in change.expect_sessions
            }
            _check_plan(
                change,
                {mid: (m.message.session_id, m.content_hash) for mid, m in stored_msgs.items()},
                sessions,
            )
            if change.delete_messages:
                deleted = set(change.delete_messages)
                _cascade(
                    change,
                    [
                        uid
                        for uid, s in self._units.get(namespace, {}).items()
                        if deleted.intersection(s.unit.message_ids)
                    ],
                )
            # Build the new state on copies so a failure half-way leaves nothing applied.
            msgs = dict(stored_msgs)
            units = dict(self._units.get(namespace, {}))
            seq = self._next_seq.get(namespace, 0)
            for mid in change.delete_messages:
                msgs.pop(mid, None)
            for message in change.upsert_messages:
                old = msgs.get(message.id)
                if old is None:
                    msgs[message.id] = StoredMessage(copy.deepcopy(message), seq, content_hash(message))
                    seq += 1
                else:
                    msgs[message.id] = StoredMessage(copy.deepcopy(message), old.seq, content_hash(message))
            for uid in change.delete_units:
                units.pop(uid, None)
            for stored in change.insert_units:
                units[stored.unit.id] = stored
            gone = {unit_key(namespace, uid) for uid in _deleted_units(change)}
            if gone and namespace in self._edges:
                self._edges[namespace] = {
                    pair: w for pair, w in self._edges[namespace].items() if not gone.intersection(pair)
                }
            pending = (self._pending.get(namespace, set()) - set(change.clear_pending)) | set(change.mark_pending)
            self._pending[namespace] = pending
            self._messages[namespace] = msgs
            self._units[namespace] = units
            self._next_seq[namespace] = seq
            self._generation[namespace] = self._generation.get(namespace, 0) + 1
            return self._generation[namespace]

    def pending_sessions(self, namespace: str) -> list[str]:
        with self._lock:
            return sorted(self._pending.get(namespace, set()))

    def generation(self, namespace: str) -> int:
        with self._lock:
            return self._generation.get(namespace, 0)

    def namespaces(self) -> list[str]:
        with self._lock:
            return sorted(
                ns for ns in set(self._messages) | set(self._units) if self._messages.get(ns) or self._units.get(ns)
            )

    def replace_edges(self, namespace: str, edges: Sequence[tuple[int, int, float]]) -> None:
        with self._lock:
            self._edges[namespace] = {(int(s), int(d)): float(w) for s, d, w in self._between_units(namespace, edges)}

    def upsert_edges(self, namespace: str, edges: Sequence[tuple[int, int, float]]) -> None:
        with self._lock:
            table = self._edges.setdefault(namespace, {})
            for s, d, w in self._between_units(namespace, edges):
                table[(int(s), int(d))] = float(w)

    def _between_units(
        self, namespace: str, edges: Sequence[tuple[int, int, float]]
    ) -> list[tuple[int, int, float]]:
        keys = {s.key for s in self._units.get(namespace, {}).values()}
        return [(s, d, w) for s, d, w in edges if int(s) in keys and int(d) in keys]

    def load_edges(self, namespace: str) -> list[tuple[int, int, float]]:
        with self._lock:
            return sorted((s, d, w) for (s, d), w in self._edges.get(namespace, {}).items())

    def counts(self, namespace: str) -> NamespaceCounts:
        with self._lock:
            msgs = self._messages.get(namespace, {})
            per: dict[str, int] = {}
            for u in self._units.get(namespace, {}).values():
                per[u.unit.granularity.value] = per.get(u.unit.granularity.value, 0) + 1
            return NamespaceCounts(
                messages=len(msgs),
                sessions=len({m.message.session_id for m in msgs.values()}),
                units=per,
                edges=len(self._edges.get(namespace, {})),
                generation=self._generation.get(namespace, 0),
            )

    def drop_namespace(self, namespace: str) -> int:
        with self._lock:
            n = len(self._messages.pop(namespace, {}))
            self._units.pop(namespace, None)
            self._edges.pop(namespace, None)
            self._pending.pop(namespace, None)
            if n or namespace in self._generation:
                self._generation[namespace] = self._generation.get(namespace, 0) + 1
            return n


_GRANULARITIES = {g.value: g for g in Granularity}
#: The columns ``SqlMemoryStore._unit`` reads, in the order it unpacks them.
_UNIT_COLUMNS = tuple(
    schema.units.c[name]
    for name in ("id", "granularity", "text", "message_ids_json", "session_id", "time_start", "time_end", "weight",
                 "key", "vector", "model")
)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes even for timezone=True columns; everything we store is UTC.
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


_T = TypeVar("_T")


def _chunks(items: Sequence[_T], size: int = 500) -> Iterator[Sequence[_T]]:
    # Bounded IN lists: SQLite caps bound parameters per statement.
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SqlMemoryStore(MemoryStore):
    """SQLAlchemy Core backend over an injected ``Engine`` (SQLite or Postgres); tables in ``schema``."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        create_tables: bool = False,
        publisher: Callable[[sa.Connection, str, dict[str, Any]], None] | None = None,
    ):
        self._engine = engine
        # Called inside every committing transaction with a description of the change, so replicas
        # sharing the database learn about it atomically with the commit (runtime's change feed).
        self._publisher = publisher
        if create_tables:
            schema.metadata.create_all(engine)

    # -- rows -> values ------------------------------------------------------------------------------

    @staticmethod
    def _message(row: sa.Row) -> StoredMessage:
        message = MemoryMessage(
            id=row.id,
            session_id=row.session_id,
            speaker=row.speaker or "",
            text=row.text,
            time=_aware(row.time),
            metadata=json.loads(row.metadata_json or "{}"),
        )
        return StoredMessage(message, int(row.seq), row.content_hash)

    @staticmethod
    def _unit(row: Sequence[Any]) -> StoredUnit:
        # Unpacked by position and the granularity looked up in a dict: a start reads every unit of every
        # namespace, and named access on each row plus an Enum call per unit were half of the 1.6 s that
        # 100k units took to read on the 2-core VM (1.0-1.1 s now).
        uid, granularity, text, message_ids_json, session_id, time_start, time_end, weight, key, vector, model = row
        unit = MemoryUnit(
            id=uid,
            granularity=_GRANULARITIES[granularity],
            text=text,
            message_ids=tuple(json.loads(message_ids_json)),
            session_id=session_id,
            time_start=_aware(time_start),
            time_end=_aware(time_end),
            weight=float(weight),
        )
        return StoredUnit(unit, int(key), np.frombuffer(vector, dtype=np.float32), model)

    # -- reads ---------------------------------------------------------------------------------------

    def get_messages(self, namespace: str, ids: Sequence[str]) -> dict[str, StoredMessage]:
        t = schema.messages
        out: dict[str, StoredMessage] = {}
        with reading(self._engine) as conn:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                rows = conn.execute(sa.select(t).where(t.c.namespace == namespace, t.c.id.in_(chunk)))
                out.update({row.id: self._message(row) for row in rows})
        return out

    def session_messages(self, namespace: str, session_id: str) -> list[StoredMessage]:
        t = schema.messages
        query = sa.select(t).where(t.c.namespace == namespace, t.c.session_id == session_id).order_by(t.c.seq)
        with reading(self._engine) as conn:
            return [self._message(row) for row in conn.execute(query)]

    def session_fingerprint(self, namespace: str, session_id: str) -> list[tuple[str, str]]:
        # Two narrow columns instead of whole rows: no text, metadata JSON or time to decode (the
        # derivation's re-check of a 600-message session read it all, about 15 ms).
        t = schema.messages
        query = (
            sa.select(t.c.id, t.c.content_hash)
            .where(t.c.namespace == namespace, t.c.session_id == session_id)
            .order_by(t.c.seq)
        )
        with reading(self._engine) as conn:
            return [(row.id, row.content_hash) for row in conn.execute(query)]

    def list_messages(
        self, namespace: str, *, session_id: str | None = None, after_seq: int = -1, limit: int = 100
    ) -> list[StoredMessage]:
        t = schema.messages
        query = sa.select(t).where(t.c.namespace == namespace, t.c.seq > after_seq)
        if session_id is not None:
            query = query.where(t.c.session_id == session_id)
        query = query.order_by(t.c.seq).limit(limit)
        with reading(self._engine) as conn:
            return [self._message(row) for row in conn.execute(query)]

    def list_sessions(self, namespace: str) -> list[str]:
        t = schema.messages
        query = sa.select(t.c.session_id).where(t.c.namespace == namespace).distinct().order_by(t.c.session_id)
        with reading(self._engine) as conn:
            return [row[0] for row in conn.execute(query)]

    def retention_candidates(
        self, namespace: str, *, older_than: datetime | None, keep_newest: int, limit: int
    ) -> list[str]:
        t = schema.messages
        forget: list[sa.ColumnElement[bool]] = []
        survives: list[sa.ColumnElement[bool]] = []
        if older_than is not None:
            forget.append(sa.and_(t.c.time.is_not(None), t.c.time < older_than))
            survives.append(sa.or_(t.c.time.is_(None), t.c.time >= older_than))
        if limit <= 0:
            return []
        with reading(self._engine) as conn:
            if keep_newest > 0:
                # The arrival number of the keep_newest-th latest survivor: every survivor before it goes.
                threshold = conn.execute(
                    sa.select(t.c.seq)
                    .where(t.c.namespace == namespace, *survives)
                    .order_by(t.c.seq.desc())
                    .offset(keep_newest - 1)
                    .limit(1)
                ).scalar()
                if threshold is not None:
                    forget.append(t.c.seq < threshold)
            if not forget:
                return []
            query = (
                sa.select(t.c.id).where(t.c.namespace == namespace, sa.or_(*forget)).order_by(t.c.seq).limit(limit)
            )
            return [row[0] for row in conn.execute(query)]

    def session_units(self, namespace: str, session_ids: Iterable[str]) -> list[StoredUnit]:
        t = schema.units
        out: list[StoredUnit] = []
        with reading(self._engine) as conn:
            for chunk in _chunks(sorted(set(session_ids))):
                rows = conn.execute(
                    sa.select(*_UNIT_COLUMNS).where(t.c.namespace == namespace, t.c.session_id.in_(chunk))
                )
                out.extend(self._unit(row) for row in rows)
        return out

    def units_covering(self, namespace: str, message_ids: Sequence[str]) -> list[StoredUnit]:
        um = schema.unit_messages
        ids: set[str] = set()
        with reading(self._engine) as conn:
            # The unit ids first (the unit_messages index), then each unit's row once.
            for chunk in _chunks(list(dict.fromkeys(message_ids))):
                rows = conn.execute(
                    sa.select(um.c.unit_id).where(um.c.namespace == namespace, um.c.message_id.in_(chunk))
                )
                ids.update(row.unit_id for row in rows)
        return list(self.get_units(namespace, sorted(ids)).values())

    def get_units(self, namespace: str, unit_ids: Sequence[str]) -> dict[str, StoredUnit]:
        t = schema.units
        out: dict[str, StoredUnit] = {}
        with reading(self._engine) as conn:
            for chunk in _chunks(list(dict.fromkeys(unit_ids))):
                rows = conn.execute(
                    sa.select(*_UNIT_COLUMNS).where(t.c.namespace == namespace, t.c.id.in_(chunk))
                )
                out.update((unit.unit.id, unit) for unit in map(self._unit, rows))
        return out

    def iter_units(self, namespace: str, batch_size: int = 5000) -> Iterator[list[StoredUnit]]:
        t = schema.units
        last = ""
        while True:
            # Keyset pagination: no long-lived cursor, no OFFSET scans.
            query = (
                sa.select(*_UNIT_COLUMNS)
                .where(t.c.namespace == namespace, t.c.id > last)
                .order_by(t.c.id)
                .limit(batch_size)
            )
            with reading(self._engine) as conn:
                batch = [self._unit(row) for row in conn.execute(query)]
            if not batch:
                return
            yield batch
            last = batch[-1].unit.id

    def pending_sessions(self, namespace: str) -> list[str]:
        t = schema.pending_sessions
        query = sa.select(t.c.session_id).where(t.c.namespace == namespace).order_by(t.c.session_id)
        with reading(self._engine) as conn:
            return [row[0] for row in conn.execute(query)]

    def generation(self, namespace: str) -> int:
        t = schema.namespace_state
        with reading(self._engine) as conn:
            value = conn.execute(sa.select(t.c.generation).where(t.c.namespace == namespace)).scalar()
        return int(value or 0)

    def namespaces(self) -> list[str]:
        m, u = schema.messages, schema.units
        query = sa.union(sa.select(m.c.namespace).distinct(), sa.select(u.c.namespace).distinct())
        with reading(self._engine) as conn:
            return sorted({row[0] for row in conn.execute(query)})

    def load_edges(self, namespace: str) -> list[tuple[int, int, float]]:
        t = schema.edges
        query = sa.select(t.c.src, t.c.dst, t.c.weight).where(t.c.namespace == namespace).order_by(t.c.src, t.c.dst)
        with reading(self._engine) as conn:
            return [(int(s), int(d), float(w)) for s, d, w in conn.execute(query)]

    def counts(self, namespace: str) -> NamespaceCounts:
        m, u, e = schema.messages, schema.units, schema.edges
        with reading(self._engine) as conn:
            n_msgs = conn.execute(sa.select(sa.func.count()).select_from(m).where(m.c.namespace == namespace)).scalar()
            n_sessions = conn.execute(
                sa.select(sa.func.count(sa.distinct(m.c.session_id))).where(m.c.namespace == namespace)
            ).scalar()
            per = conn.execute(
                sa.select(u.c.granularity, sa.func.count()).where(u.c.namespace == namespace).group_by(u.c.granularity)
            ).all()
            n_edges = conn.execute(sa.select(sa.func.count()).select_from(e).where(e.c.namespace == namespace)).scalar()
        return NamespaceCounts(
            messages=int(n_msgs or 0),
            sessions=int(n_sessions or 0),
            units={g: int(n) for g, n in per},
            edges=int(n_edges or 0),
            generation=self.generation(namespace),
        )

    # -- writes --------------------------------------------------------------------------------------

    def _bump(self, conn: sa.Connection, namespace: str, new_messages: int) -> tuple[int, int]:
        """Advance the namespace's generation and reserve ``new_messages`` arrival numbers.

        Returns (new generation, first reserved seq). Callers hold the namespace lock (``_lock``); the
        UPDATE's row lock on Postgres also keeps any other writer of the row from colliding on seq.
        """
        t = schema.namespace_state
        now = datetime.now(UTC)
        updated = conn.execute(
            sa.update(t)
            .where(t.c.namespace == namespace)
            .values(generation=t.c.generation + 1, next_seq=t.c.next_seq + new_messages, updated_at=now)
        )
        if updated.rowcount == 0:
            # The namespace's first write: insert its row unless a writer that did not take the namespace
            # lock got there first, then advance it like any other (a plain INSERT was a unique violation).
            values = {
                "namespace": namespace,
                "generation": 0,
                "next_seq": 0,
                "consolidated_generation": 0,
                "clusters": 0,
                "updated_at": now,
            }
            insert = postgresql.insert(t) if conn.dialect.name == "postgresql" else sqlite.insert(t)
            conn.execute(insert.values(**values).on_conflict_do_nothing(index_elements=[t.c.namespace]))
            conn.execute(
                sa.update(t)
                .where(t.c.namespace == namespace)
                .values(generation=t.c.generation + 1, next_seq=t.c.next_seq + new_messages, updated_at=now)
            )
        row = conn.execute(sa.select(t.c.generation, t.c.next_seq).where(t.c.namespace == namespace)).one()
        return int(row.generation), int(row.next_seq) - new_messages

    @staticmethod
    def _lock(conn: sa.Connection, namespace: str) -> None:
        """Serialise this transaction with every other write of the namespace (first thing in it)."""
        lock_for_write(conn, "memory", namespace)

    def apply(self, namespace: str, change: Change) -> int:
        m, u, um = schema.messages, schema.units, schema.unit_messages
        with self._engine.begin() as conn:
            # Lock first, then read: what the checks below read cannot change before the commit.
            self._lock(conn, namespace)
            sessions: dict[str, list[tuple[str, str]]] = {sid: [] for sid in change.expect_sessions}
            for chunk in _chunks(sorted(sessions)):
                rows = conn.execute(
                    sa.select(m.c.session_id, m.c.id, m.c.content_hash)
                    .where(m.c.namespace == namespace, m.c.session_id.in_(chunk))
                    .order_by(m.c.seq)
                )
                for row in rows:
                    sessions[row.session_id].append((row.id, row.content_hash))
            upsert_ids = [msg.id for msg in change.upsert_messages]
            existing: dict[str, int] = {}
            stored: dict[str, tuple[str, str]] = {}
            # One read serves both the arrival numbers of replaced messages and the plan's checks.
            for chunk in _chunks(list(dict.fromkeys(upsert_ids + list(change.expect_messages)))):
                rows = conn.execute(
                    sa.select(m.c.id, m.c.seq, m.c.session_id, m.c.content_hash).where(
                        m.c.namespace == namespace, m.c.id.in_(chunk)
                    )
                )
                for row in rows:
                    stored[row.id] = (row.session_id, row.content_hash)
                    existing[row.id] = int(row.seq)
            _check_plan(change, stored, sessions)
            existing = {i: existing[i] for i in upsert_ids if i in existing}
            if change.delete_messages:
                covering: list[str] = []
                for chunk in _chunks(list(dict.fromkeys(change.delete_messages))):
                    covering += conn.execute(
                        sa.select(um.c.unit_id).where(um.c.namespace == namespace, um.c.message_id.in_(chunk))
                    ).scalars()
                _cascade(change, covering)
            fresh = sum(1 for i in dict.fromkeys(upsert_ids) if i not in existing)
            generation, seq = self._bump(conn, namespace, fresh)

            for chunk in _chunks(list(dict.fromkeys(change.delete_messages + list(existing)))):
                conn.execute(sa.delete(m).where(m.c.namespace == namespace, m.c.id.in_(chunk)))
            message_rows = []
            for msg in change.upsert_messages:
                if msg.id in existing:
                    row_seq = existing[msg.id]
                else:
                    row_seq, seq = seq, seq + 1
                    existing[msg.id] = row_seq
                message_rows.append(
                    {
                        "namespace": namespace,
                        "id": msg.id,
                        "session_id": msg.session_id,
                        "seq": row_seq,
                        "speaker": msg.speaker,
                        "text": msg.text,
                        "time": msg.time,
                        "metadata_json": json.dumps(msg.metadata, ensure_ascii=False, sort_keys=True),
                        "content_hash": content_hash(msg),
                    }
                )
            if message_rows:
                conn.execute(sa.insert(m), message_rows)

            drop_units = list(dict.fromkeys(change.delete_units + [s.unit.id for s in change.insert_units]))
            for chunk in _chunks(drop_units):
                conn.execute(sa.delete(u).where(u.c.namespace == namespace, u.c.id.in_(chunk)))
                conn.execute(sa.delete(um).where(um.c.namespace == namespace, um.c.unit_id.in_(chunk)))
            e = schema.edges
            # Two IN lists per statement: half the chunk size.
            for keys in _chunks([unit_key(namespace, uid) for uid in _deleted_units(change)], 250):
                conn.execute(
                    sa.delete(e).where(e.c.namespace == namespace, sa.or_(e.c.src.in_(keys), e.c.dst.in_(keys)))
                )
            if change.insert_units:
                conn.execute(
                    sa.insert(u),
                    [
                        {
                            "namespace": namespace,
                            "id": s.unit.id,
                            "key": s.key,
                            "granularity": s.unit.granularity.value,
                            "session_id": s.unit.session_id,
                            "text": s.unit.text,
                            "message_ids_json": json.dumps(list(s.unit.message_ids), ensure_ascii=False),
                            "time_start": s.unit.time_start,
                            "time_end": s.unit.time_end,
                            "weight": float(s.unit.weight),
                            "vector": np.ascontiguousarray(s.vector, dtype=np.float32).tobytes(),
                            "model": s.model,
                        }
                        for s in change.insert_units
                    ],
                )
                links = {(s.unit.id, mid) for s in change.insert_units for mid in s.unit.message_ids}
                conn.execute(
                    sa.insert(um),
                    [{"namespace": namespace, "unit_id": uid, "message_id": mid} for uid, mid in sorted(links)],
                )
            if self._publisher is not None:
                self._publisher(
                    conn,
                    namespace,
                    {
                        "generation": generation,
                        "delete_units": list(change.delete_units),
                        "insert_units": [u.unit.id for u in change.insert_units],
                    },
                )
            p = schema.pending_sessions
            touched = sorted(set(change.clear_pending) | set(change.mark_pending))
            for chunk in _chunks(touched):
                conn.execute(sa.delete(p).where(p.c.namespace == namespace, p.c.session_id.in_(chunk)))
            if change.mark_pending:
                conn.execute(
                    sa.insert(p),
                    [{"namespace": namespace, "session_id": sid} for sid in sorted(set(change.mark_pending))],
                )
            return generation

    def replace_edges(self, namespace: str, edges: Sequence[tuple[int, int, float]]) -> None:
        t = schema.edges
        with self._engine.begin() as conn:
            self._lock(conn, namespace)
            conn.execute(sa.delete(t).where(t.c.namespace == namespace))
            edges = self._between_units(conn, namespace, edges)
            self._insert_edges(conn, namespace, edges)
            self._publish_edges(conn, namespace, edges, replace=True)

    def upsert_edges(self, namespace: str, edges: Sequence[tuple[int, int, float]]) -> None:
        t = schema.edges
        if not edges:
            return
        with self._engine.begin() as conn:
            # Under the namespace lock: two replicas upserting one edge (delete, then insert) would both
            # insert it, and a unit deleted meanwhile would keep an edge.
            self._lock(conn, namespace)
            edges = self._between_units(conn, namespace, edges)
            pairs = {(int(s), int(d)) for s, d, _ in edges}
            srcs = sorted({s for s, _ in pairs})
            for start in range(0, len(srcs), 500):
                chunk = srcs[start : start + 500]
                rows = conn.execute(
                    sa.select(t.c.src, t.c.dst).where(t.c.namespace == namespace, t.c.src.in_(chunk))
                ).all()
                stale = [(int(s), int(d)) for s, d in rows if (int(s), int(d)) in pairs]
                for s, d in stale:
                    conn.execute(sa.delete(t).where(t.c.namespace == namespace, t.c.src == s, t.c.dst == d))
            self._insert_edges(conn, namespace, edges)
            if edges:
                self._publish_edges(conn, namespace, edges, replace=False)

    def _publish_edges(
        self, conn: sa.Connection, namespace: str, edges: Sequence[tuple[int, int, float]], *, replace: bool
    ) -> None:
        # Other replicas mirror the edges from the change feed (MemoryEngine.apply_remote_change): association
        # work runs on the one replica holding the namespace's lease, and without this the others served only
        # the edges they loaded at start. Edges do not bump the generation: they change no unit.
        if self._publisher is not None:
            payload = {"edges": [[int(s), int(d), float(w)] for s, d, w in edges], "replace": replace}
            self._publisher(conn, namespace, payload)

    @staticmethod
    def _between_units(
        conn: sa.Connection, namespace: str, edges: Sequence[tuple[int, int, float]]
    ) -> list[tuple[int, int, float]]:
        u = schema.units
        ends = sorted({int(k) for s, d, _ in edges for k in (s, d)})
        keys: set[int] = set()
        for chunk in _chunks(ends):
            keys.update(int(k) for k in conn.execute(
                sa.select(u.c.key).where(u.c.namespace == namespace, u.c.key.in_(chunk))
            ).scalars())
        return [(s, d, w) for s, d, w in edges if int(s) in keys and int(d) in keys]

    @staticmethod
    def _insert_edges(conn: sa.Connection, namespace: str, edges: Sequence[tuple[int, int, float]]) -> None:
        unique = {(int(s), int(d)): float(w) for s, d, w in edges}
        if unique:
            conn.execute(
                sa.insert(schema.edges),
                [{"namespace": namespace, "src": s, "dst": d, "weight": w} for (s, d), w in unique.items()],
            )

    def drop_namespace(self, namespace: str) -> int:
        with self._engine.begin() as conn:
            # The lock before deleting any row, like every other writer (else a deadlock against apply).
            self._lock(conn, namespace)
            n = conn.execute(
                sa.select(sa.func.count()).select_from(schema.messages).where(schema.messages.c.namespace == namespace)
            ).scalar()
            tables = (
                schema.messages,
                schema.units,
                schema.unit_messages,
                schema.edges,
                schema.pending_sessions,
            )
            for table in tables:
                conn.execute(sa.delete(table).where(table.c.namespace == namespace))
            if n:
                generation, _ = self._bump(conn, namespace, 0)
                if self._publisher is not None:
                    self._publisher(conn, namespace, {"generation": generation, "drop": True})
            return int(n or 0)
