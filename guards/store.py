"""Storage interface of the guards and its in-memory reference implementation.

Everything is keyed by the opaque scope string (``"<tenant>/<namespace>"``); no method ever returns
rows of another scope. ``guards/sql.py`` is the SQL backend; both pass ``tests/guards/test_store.py``.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from core.errors import NotFoundError
from guards.model import (
    AuditRecord,
    Cluster,
    Decision,
    Evidence,
    EvolutionEvent,
    Exemplar,
    FeedbackResult,
    PolicyRule,
    Stage,
)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive one is taken as UTC. Audit time filters are compared as instants by every store
    (SQLite compares stored times as text, where 19:00+05:00 sorts after 14:00+00:00, the same instant)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: Longest category a leaf, cluster or verdict can store (the SQL columns are ``String(100)``).
MAX_CATEGORY_CHARS = 100
#: Longest tool name a verdict can store (``guard_verdicts.tool_name`` is ``String(200)``).
MAX_TOOL_NAME_CHARS = 200


def storable_text(value: str) -> str:
    """``value`` with every NUL replaced by U+FFFD, on every backend.

    Postgres text cannot hold NUL ("PostgreSQL text fields cannot contain NUL (0x00) bytes"): a verdict on a text
    with one was answered but never audited, so one ``\\x00`` in an attacker-written tool output kept that check
    out of the audit log, and GetVerdict and Feedback on it were NOT_FOUND. SQLite and the in-memory store could
    keep it; replacing it everywhere makes every backend store, and answer, the same text.
    """
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def storable_verdict_id(verdict_id: str) -> bool:
    """Whether a verdict id could be stored at all: one with NUL never was (ids are uuid hex), so a lookup of
    it is NotFoundError on every backend instead of a database error on Postgres."""
    return "\x00" not in verdict_id


def decided_text(record: AuditRecord) -> str:
    """The text a feedback on ``record`` labels: its decided segment, else its request text."""
    return record.decided_segment or record.request_text


def storable_record(record: AuditRecord) -> AuditRecord:
    """``record`` as every store keeps it: NUL replaced in its texts (``storable_text``) and its tool name cut to
    the column's length, so that no record is refused (the audit writer would drop it)."""

    def evidence(e: Evidence) -> Evidence:
        return replace(
            e,
            kind=storable_text(e.kind),
            ref=storable_text(e.ref),
            text=storable_text(e.text),
            detail={storable_text(k): storable_text(v) for k, v in e.detail.items()},
        )

    changes: dict[str, object] = {
        "verdict": replace(
            record.verdict,
            evidence=tuple(evidence(e) for e in record.verdict.evidence),
            category=storable_text(record.verdict.category)[:MAX_CATEGORY_CHARS],
        ),
        "request_text": storable_text(record.request_text),
        "tool_name": storable_text(record.tool_name)[:MAX_TOOL_NAME_CHARS],
        "arguments_json": storable_text(record.arguments_json),
        "feedback_note": storable_text(record.feedback_note),
        "metadata": {storable_text(k): storable_text(v) for k, v in record.metadata.items()},
    }
    if record.decided_segment is not None:
        changes["decided_segment"] = storable_text(record.decided_segment)
    return replace(record, **changes)  # type: ignore[arg-type]


def storable_leaf(leaf: Exemplar) -> Exemplar:
    """``leaf`` with NUL replaced in its text, category and note (see ``storable_text``)."""
    return replace(
        leaf, text=storable_text(leaf.text), category=storable_text(leaf.category), note=storable_text(leaf.note)
    )


class GuardStore(Protocol):
    """Source of truth of rules, guard-memory leaves and clusters, evolution history and the audit log.

    Each write of a scope's settings, rules or guard memory is atomic and runs alone among the writers of
    that scope (several replicas may share the store). ``transaction`` widens that to a block of calls.
    """

    # --- transactions ---------------------------------------------------------------------------------
    def transaction(self, scope: str) -> contextlib.AbstractContextManager[None]:
        """Make the calls on ``scope`` that this thread makes inside the block one write transaction: it
        waits for the other writers of ``scope`` (in any process) before it starts, its reads see its own
        writes, and an exception leaves nothing of it. Nests (an inner block on the same scope joins);
        another scope's writes cannot join it. Of the audit log only ``set_feedback`` joins it (the feedback
        on a verdict commits with the leaf it taught); storing and purging verdicts never do."""
        ...

    # --- namespace settings -------------------------------------------------------------------------
    def get_settings(self, scope: str) -> dict[str, Any] | None:
        """The namespace's guard settings, or None when it was never initialised."""
        ...

    def put_settings(self, scope: str, settings: dict[str, Any]) -> None:
        """Replace the namespace's guard settings."""
        ...

    # --- rules ----------------------------------------------------------------------------------------
    def put_rules(self, scope: str, rules: list[PolicyRule], *, replace_all: bool = False) -> None:
        """Insert or replace rules by name; ``replace_all`` first removes every rule of the scope."""
        ...

    def list_rules(self, scope: str) -> list[PolicyRule]:
        """All rules of the scope, sorted by name."""
        ...

    def delete_rules(self, scope: str, names: list[str]) -> int:
        """Delete rules by name; returns how many existed. Missing names are not an error here."""
        ...

    # --- guard memory -----------------------------------------------------------------------------------
    def add_leaves(self, scope: str, leaves: list[Exemplar], vectors: np.ndarray) -> list[int]:
        """Store leaves (their ``id`` is ignored) with float32 embeddings; returns the new ids in order. NUL in a
        leaf's text, category or note is stored as U+FFFD (``storable_leaf``)."""
        ...

    def load_leaves(self, scope: str) -> tuple[list[Exemplar], np.ndarray]:
        """Every leaf of the scope (active or not) sorted by id, and their embeddings (n, dim)."""
        ...

    def update_leaves(self, scope: str, changes: dict[int, dict[str, Any]]) -> None:
        """Set ``cluster_id`` and/or ``active`` of leaves by id."""
        ...

    def add_cluster(self, scope: str, cluster: Cluster) -> int:
        """Store a new active cluster (``id`` ignored, ``leaf_ids`` ignored); returns its id. NUL in its category or
        rule text is stored as U+FFFD."""
        ...

    def update_cluster(
        self, scope: str, cluster_id: int, *, rule_text: str | None = None, active: bool | None = None
    ) -> None:
        """Change a cluster's rule text or active flag. Raises NotFoundError when it does not exist."""
        ...

    def load_clusters(self, scope: str) -> list[tuple[Cluster, bool]]:
        """Every cluster of the scope with its active flag (``leaf_ids`` empty: membership is on leaves)."""
        ...

    # --- evolution history ------------------------------------------------------------------------------
    def latest_version(self, scope: str) -> int:
        """The version of the scope's newest event (0 when it has none)."""
        ...

    def append_event(self, scope: str, kind: str, summary: str, payload: dict[str, Any]) -> EvolutionEvent:
        """Append an event with the next version number (1, 2, ...) of the scope."""
        ...

    def list_events(self, scope: str, *, after_version: int = 0, limit: int = 1000) -> list[EvolutionEvent]:
        """Events with version > after_version, oldest first (none for any ``after_version`` past the newest
        event, however large)."""
        ...

    # --- audit log ----------------------------------------------------------------------------------------
    def put_audit(self, scope: str, records: list[AuditRecord]) -> None:
        """Store verdicts (idempotent by verdict id) as ``storable_record`` makes them: NUL in their texts as
        U+FFFD, so no verdict is refused; the decided segment is stored with it."""
        ...

    def get_audit(self, scope: str, verdict_id: str) -> AuditRecord:
        """One verdict. Raises NotFoundError when it is not in this scope (and for an id with NUL, which no
        stored verdict has)."""
        ...

    def set_feedback(
        self, scope: str, verdict_id: str, expected: Decision, note: str, result: FeedbackResult | None = None
    ) -> bool:
        """Attach feedback (and ``result``, what it changed in the guard memory) to a verdict that has none yet;
        returns False, changing nothing, when the verdict already has feedback (a verdict takes one). Inside
        ``transaction(scope)`` the write is part of that transaction. NUL in ``note`` is stored as U+FFFD. Raises
        NotFoundError when the verdict is not in this scope."""
        ...

    def query_audit(
        self,
        scope: str,
        *,
        stage: Stage | None = None,
        decision: Decision | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        before_id: str | None = None,
    ) -> list[AuditRecord]:
        """Newest first; ``before_id`` pages on (records older than that verdict). Naive times are UTC."""
        ...

    def purge_audit(self, scope: str | None, before: datetime) -> int:
        """Delete verdicts created before ``before`` (all scopes when None; naive: UTC); returns how many."""
        ...


class InMemoryGuardStore:
    """Dict-backed reference store: what the SQL backend must behave like."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._settings: dict[str, dict[str, Any]] = {}
        self._rules: dict[str, dict[str, PolicyRule]] = {}
        self._leaves: dict[str, dict[int, tuple[Exemplar, np.ndarray]]] = {}
        self._clusters: dict[str, dict[int, tuple[Cluster, bool]]] = {}
        self._events: dict[str, list[EvolutionEvent]] = {}
        self._audit: dict[str, dict[str, AuditRecord]] = {}
        self._next_id = 1
        self._tx_scope: str | None = None

    @contextlib.contextmanager
    def transaction(self, scope: str) -> Iterator[None]:
        # The store's one lock is held throughout (it serialises every writer, not only the scope's); on an
        # exception the scope's tables go back to what they were. Ids handed out meanwhile are not reused.
        with self._lock:
            if self._tx_scope is not None:
                if self._tx_scope != scope:
                    raise RuntimeError(f"a guard transaction on {self._tx_scope!r} is open; {scope!r} cannot join it")
                yield
                return
            # The audit log too: ``set_feedback`` joins the transaction (nothing else writes it inside one).
            tables: tuple[dict[str, Any], ...] = (
                self._settings, self._rules, self._leaves, self._clusters, self._events, self._audit
            )
            saved = [(table, scope in table, copy.copy(table.get(scope))) for table in tables]
            self._tx_scope = scope
            try:
                yield
            except BaseException:
                for table, present, value in saved:
                    table.pop(scope, None)
                    if present:
                        table[scope] = value
                raise
            finally:
                self._tx_scope = None

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def get_settings(self, scope: str) -> dict[str, Any] | None:
        with self._lock:
            value = self._settings.get(scope)
            return copy.deepcopy(value) if value is not None else None

    def put_settings(self, scope: str, settings: dict[str, Any]) -> None:
        with self._lock:
            self._settings[scope] = copy.deepcopy(settings)

    def put_rules(self, scope: str, rules: list[PolicyRule], *, replace_all: bool = False) -> None:
        with self._lock:
            table = self._rules.setdefault(scope, {})
            if replace_all:
                table.clear()
            for rule in rules:
                table[rule.name] = rule

    def list_rules(self, scope: str) -> list[PolicyRule]:
        with self._lock:
            return sorted(self._rules.get(scope, {}).values(), key=lambda r: r.name)

    def delete_rules(self, scope: str, names: list[str]) -> int:
        with self._lock:
            table = self._rules.get(scope, {})
            return sum(1 for n in names if table.pop(n, None) is not None)

    def add_leaves(self, scope: str, leaves: list[Exemplar], vectors: np.ndarray) -> list[int]:
        with self._lock:
            table = self._leaves.setdefault(scope, {})
            ids = []
            for leaf, vec in zip(leaves, np.asarray(vectors, dtype=np.float32), strict=True):
                new = replace(storable_leaf(leaf), id=self._id())
                table[new.id] = (new, vec.copy())
                ids.append(new.id)
            return ids

    def load_leaves(self, scope: str) -> tuple[list[Exemplar], np.ndarray]:
        with self._lock:
            rows = sorted(self._leaves.get(scope, {}).values(), key=lambda r: r[0].id)
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [r[0] for r in rows], np.stack([r[1] for r in rows]).astype(np.float32)

    def update_leaves(self, scope: str, changes: dict[int, dict[str, Any]]) -> None:
        with self._lock:
            table = self._leaves.get(scope, {})
            for leaf_id, change in changes.items():
                if leaf_id in table:
                    leaf, vec = table[leaf_id]
                    allowed = {k: v for k, v in change.items() if k in ("cluster_id", "active")}
                    table[leaf_id] = (replace(leaf, **allowed), vec)

    def add_cluster(self, scope: str, cluster: Cluster) -> int:
        with self._lock:
            new = replace(
                cluster,
                id=self._id(),
                leaf_ids=(),
                category=storable_text(cluster.category),
                rule_text=storable_text(cluster.rule_text),
            )
            self._clusters.setdefault(scope, {})[new.id] = (new, True)
            return new.id

    def update_cluster(
        self, scope: str, cluster_id: int, *, rule_text: str | None = None, active: bool | None = None
    ) -> None:
        with self._lock:
            table = self._clusters.get(scope, {})
            if cluster_id not in table:
                raise NotFoundError("cluster", str(cluster_id))
            cluster, was_active = table[cluster_id]
            if rule_text is not None:
                cluster = replace(cluster, rule_text=storable_text(rule_text))
            table[cluster_id] = (cluster, was_active if active is None else active)

    def load_clusters(self, scope: str) -> list[tuple[Cluster, bool]]:
        with self._lock:
            return sorted(self._clusters.get(scope, {}).values(), key=lambda r: r[0].id)

    def append_event(self, scope: str, kind: str, summary: str, payload: dict[str, Any]) -> EvolutionEvent:
        with self._lock:
            events = self._events.setdefault(scope, [])
            event = EvolutionEvent(
                version=len(events) + 1,
                kind=kind,
                summary=summary,
                created_at=_now(),
                payload=copy.deepcopy(payload),
            )
            events.append(event)
            return event

    def latest_version(self, scope: str) -> int:
        with self._lock:
            events = self._events.get(scope, [])
            return events[-1].version if events else 0

    def list_events(self, scope: str, *, after_version: int = 0, limit: int = 1000) -> list[EvolutionEvent]:
        with self._lock:
            return [e for e in self._events.get(scope, []) if e.version > after_version][:limit]

    def put_audit(self, scope: str, records: list[AuditRecord]) -> None:
        with self._lock:
            table = self._audit.setdefault(scope, {})
            for record in records:
                table.setdefault(record.verdict.verdict_id, storable_record(record))

    def get_audit(self, scope: str, verdict_id: str) -> AuditRecord:
        with self._lock:
            try:
                return self._audit.get(scope, {})[verdict_id]
            except KeyError:
                raise NotFoundError("verdict", verdict_id) from None

    def set_feedback(
        self, scope: str, verdict_id: str, expected: Decision, note: str, result: FeedbackResult | None = None
    ) -> bool:
        with self._lock:
            record = self.get_audit(scope, verdict_id)
            if record.feedback != Decision.UNSPECIFIED:
                return False
            self._audit[scope][verdict_id] = replace(
                record, feedback=expected, feedback_note=storable_text(note), feedback_result=result
            )
            return True

    def query_audit(
        self,
        scope: str,
        *,
        stage: Stage | None = None,
        decision: Decision | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        before_id: str | None = None,
    ) -> list[AuditRecord]:
        since = as_utc(since) if since is not None else None
        until = as_utc(until) if until is not None else None
        with self._lock:
            rows = list(self._audit.get(scope, {}).values())
        rows.sort(key=lambda r: (r.created_at or _EPOCH, r.verdict.verdict_id), reverse=True)
        if before_id is not None:
            keys = [(r.created_at or _EPOCH, r.verdict.verdict_id) for r in rows]
            anchor = next((k for k in keys if k[1] == before_id), None)
            if anchor is None:
                raise NotFoundError("verdict", before_id)
            rows = [r for r, k in zip(rows, keys, strict=True) if k < anchor]
        out = []
        for r in rows:
            if stage is not None and r.verdict.stage != stage:
                continue
            if decision is not None and r.verdict.decision != decision:
                continue
            if since is not None and (r.created_at or _EPOCH) < since:
                continue
            if until is not None and (r.created_at or _EPOCH) >= until:
                continue
            out.append(r)
            if len(out) >= limit:
                break
        return out

    def purge_audit(self, scope: str | None, before: datetime) -> int:
        before = as_utc(before)
        with self._lock:
            scopes = [scope] if scope is not None else list(self._audit)
            removed = 0
            for s in scopes:
                table = self._audit.get(s, {})
                old = [k for k, r in table.items() if (r.created_at or _EPOCH) < before]
                for k in old:
                    del table[k]
                removed += len(old)
            return removed


def _now() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
