"""SQL backend of ``GuardStore`` (SQLite and Postgres through SQLAlchemy Core)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, text, update

from core.errors import NotFoundError
from core.sqlread import reading
from core.sqlwrite import lock_for_write
from guards import schema as t
from guards.model import (
    AuditRecord,
    Cluster,
    Decision,
    Evidence,
    EvolutionEvent,
    Exemplar,
    FeedbackResult,
    GuardVerdict,
    Label,
    LeafSource,
    PolicyRule,
    Stage,
)
from guards.rules import DryRunCounter, RateCounter, rule_to_dict, stored_rule
from guards.store import (
    as_utc,
    storable_leaf,
    storable_record,
    storable_text,
    storable_verdict_id,
)

log = logging.getLogger(__name__)

# The largest value of an ``Integer`` column (guard_events.version): Postgres refuses a larger parameter in a
# comparison ("integer out of range") where SQLite compares it.
_MAX_INT32 = 2**31 - 1


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return None if value is None else as_utc(value)


def _evidence_to_json(evidence: tuple[Evidence, ...]) -> list[dict[str, Any]]:
    return [
        {
            "kind": e.kind,
            "ref": e.ref,
            "text": e.text,
            "decision": e.decision.value,
            "score": e.score,
            "detail": dict(e.detail),
        }
        for e in evidence
    ]


def _evidence_from_json(items: list[dict[str, Any]]) -> tuple[Evidence, ...]:
    return tuple(
        Evidence(
            i["kind"],
            i["ref"],
            i.get("text", ""),
            Decision(i.get("decision", "unspecified")),
            float(i.get("score", 0.0)),
            dict(i.get("detail", {})),
        )
        for i in items
    )


def _feedback_to_json(result: FeedbackResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "leaf_id": result.leaf_id,
        "cluster_id": result.cluster_id,
        "memory_version": result.memory_version,
        "events": [
            {
                "version": e.version,
                "kind": e.kind,
                "summary": e.summary,
                "created_at": e.created_at.isoformat() if e.created_at else None,
                "payload": e.payload,
            }
            for e in result.events
        ],
    }


def _feedback_from_json(value: dict[str, Any] | None) -> FeedbackResult | None:
    if value is None:
        return None
    return FeedbackResult(
        int(value["leaf_id"]),
        int(value["cluster_id"]),
        tuple(
            EvolutionEvent(
                int(e["version"]),
                e["kind"],
                e["summary"],
                _utc(datetime.fromisoformat(e["created_at"])) if e.get("created_at") else None,
                dict(e.get("payload") or {}),
            )
            for e in value.get("events", [])
        ),
        int(value["memory_version"]),
    )


class _Transaction:
    """The write transaction open on this thread (see ``SqlGuardStore.transaction``)."""

    def __init__(self, scope: str, conn: Connection):
        self.scope = scope
        self.conn = conn
        self.wrote = False


class SqlGuardStore:
    """``GuardStore`` on an injected SQLAlchemy engine; creates its tables if missing.

    ``publisher(connection, scope)`` is called inside every transaction that changes a scope's rules,
    settings or guard memory (not its audit log), so replicas sharing the database learn of the change
    exactly when it commits — never before, and never not at all.

    Every such transaction first takes the scope's write lock (``core.sqlwrite.lock_for_write``): writers
    of one scope, in this process or another replica, run one after the other. ``transaction(scope)`` makes
    the calls of a block on this thread one transaction (reads included, so they see its writes).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        create_tables: bool = True,
        publisher: Callable[[Connection, str], None] | None = None,
    ):
        self.engine = engine
        self._publisher = publisher
        self._local = threading.local()
        if create_tables:
            t.metadata.create_all(engine)

    def _open(self) -> _Transaction | None:
        tx: _Transaction | None = getattr(self._local, "tx", None)
        return tx

    @contextlib.contextmanager
    def transaction(self, scope: str) -> Iterator[None]:
        tx = self._open()
        if tx is not None:
            if tx.scope != scope:
                raise RuntimeError(f"a guard transaction on {tx.scope!r} is open; {scope!r} cannot join it")
            yield
            return
        with self.engine.begin() as conn:
            lock_for_write(conn, "guards", scope)
            tx = _Transaction(scope, conn)
            self._local.tx = tx
            try:
                yield
            finally:
                self._local.tx = None
            if tx.wrote and self._publisher is not None:
                self._publisher(conn, scope)

    @contextlib.contextmanager
    def _changing(self, scope: str) -> Iterator[Connection]:
        """A write on ``scope``'s cached state: in the open transaction, else in one of its own that takes the
        scope's write lock and announces itself in the same commit."""
        tx = self._open()
        if tx is None:
            with self.transaction(scope):
                tx = self._open()
                assert tx is not None
                tx.wrote = True
                yield tx.conn
            return
        if tx.scope != scope:
            raise RuntimeError(f"a guard transaction on {tx.scope!r} is open; cannot write to {scope!r} in it")
        tx.wrote = True
        yield tx.conn

    @contextlib.contextmanager
    def _joining(self, scope: str) -> Iterator[Connection]:
        """An audit-log write: in the scope's open transaction (it commits or rolls back with it), else in one
        of its own. Neither takes the scope's write lock nor announces a change (no replica caches verdicts)."""
        tx = self._open()
        if tx is not None:
            if tx.scope != scope:
                raise RuntimeError(f"a guard transaction on {tx.scope!r} is open; cannot write to {scope!r} in it")
            yield tx.conn
            return
        with self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        """The open transaction's connection (its reads see its writes), else a connection of the pool."""
        tx = self._open()
        if tx is not None:
            yield tx.conn
            return
        with reading(self.engine) as conn:
            yield conn

    # --- settings -----------------------------------------------------------------------------------------
    def get_settings(self, scope: str) -> dict[str, Any] | None:
        with self._reading() as conn:
            row = conn.execute(select(t.guard_settings.c.settings).where(t.guard_settings.c.scope == scope)).first()
        return dict(row[0]) if row else None

    def put_settings(self, scope: str, settings: dict[str, Any]) -> None:
        with self._changing(scope) as conn:
            done = conn.execute(
                update(t.guard_settings).where(t.guard_settings.c.scope == scope).values(settings=settings)
            ).rowcount
            if not done:
                conn.execute(insert(t.guard_settings).values(scope=scope, settings=settings))

    # --- rules ----------------------------------------------------------------------------------------------
    def put_rules(self, scope: str, rules: list[PolicyRule], *, replace_all: bool = False) -> None:
        now = datetime.now(UTC)
        with self._changing(scope) as conn:
            if replace_all:
                conn.execute(delete(t.guard_rules).where(t.guard_rules.c.scope == scope))
            elif rules:
                conn.execute(
                    delete(t.guard_rules).where(
                        t.guard_rules.c.scope == scope, t.guard_rules.c.name.in_([r.name for r in rules])
                    )
                )
            if rules:
                conn.execute(
                    insert(t.guard_rules),
                    [
                        {
                            "scope": scope,
                            "name": r.name,
                            "body": {**rule_to_dict(r), "source": r.source},
                            "updated_at": now,
                        }
                        for r in rules
                    ],
                )

    def list_rules(self, scope: str) -> list[PolicyRule]:
        with self._reading() as conn:
            rows = conn.execute(
                select(t.guard_rules.c.body).where(t.guard_rules.c.scope == scope).order_by(t.guard_rules.c.name)
            ).all()
        out = []
        for (body,) in rows:
            body = dict(body)
            source = body.pop("source", "operator")
            out.append(stored_rule(body, source=source))
        return out

    def delete_rules(self, scope: str, names: list[str]) -> int:
        if not names:
            return 0
        with self._changing(scope) as conn:
            return int(
                conn.execute(
                    delete(t.guard_rules).where(t.guard_rules.c.scope == scope, t.guard_rules.c.name.in_(names))
                ).rowcount
            )

    # --- leaves and clusters ----------------------------------------------------------------------------------
    def add_leaves(self, scope: str, leaves: list[Exemplar], vectors: np.ndarray) -> list[int]:
        vectors = np.asarray(vectors, dtype=np.float32)
        ids = []
        with self._changing(scope) as conn:
            # One INSERT ... RETURNING per row keeps ids in order on both SQLite and Postgres.
            for given, vec in zip(leaves, vectors, strict=True):
                leaf = storable_leaf(given)
                row = conn.execute(
                    insert(t.guard_leaves)
                    .values(
                        scope=scope,
                        category=leaf.category,
                        stage_group=leaf.stage_group,
                        text=leaf.text,
                        label=leaf.label.value,
                        source=leaf.source.value,
                        cluster_id=leaf.cluster_id,
                        active=leaf.active,
                        note=leaf.note,
                        embedding=vec.tobytes(),
                        created_at=leaf.created_at or datetime.now(UTC),
                    )
                    .returning(t.guard_leaves.c.id)
                ).scalar_one()
                ids.append(int(row))
        return ids

    def load_leaves(self, scope: str) -> tuple[list[Exemplar], np.ndarray]:
        c = t.guard_leaves.c
        with self._reading() as conn:
            rows = conn.execute(select(t.guard_leaves).where(c.scope == scope).order_by(c.id)).mappings().all()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        leaves = [
            Exemplar(
                id=int(r["id"]),
                category=r["category"],
                text=r["text"],
                label=Label(r["label"]),
                stage_group=r["stage_group"],
                source=LeafSource(r["source"]),
                created_at=_utc(r["created_at"]),
                cluster_id=int(r["cluster_id"]),
                active=bool(r["active"]),
                note=r["note"],
            )
            for r in rows
        ]
        vectors = np.stack([np.frombuffer(r["embedding"], dtype=np.float32) for r in rows])
        return leaves, vectors

    def update_leaves(self, scope: str, changes: dict[int, dict[str, Any]]) -> None:
        c = t.guard_leaves.c
        with self._changing(scope) as conn:
            for leaf_id, change in changes.items():
                values = {k: v for k, v in change.items() if k in ("cluster_id", "active")}
                if values:
                    conn.execute(update(t.guard_leaves).where(c.scope == scope, c.id == leaf_id).values(**values))

    def add_cluster(self, scope: str, cluster: Cluster) -> int:
        with self._changing(scope) as conn:
            return int(
                conn.execute(
                    insert(t.guard_clusters)
                    .values(
                        scope=scope,
                        category=storable_text(cluster.category),
                        stage_group=cluster.stage_group,
                        rule_text=storable_text(cluster.rule_text),
                        active=True,
                    )
                    .returning(t.guard_clusters.c.id)
                ).scalar_one()
            )

    def update_cluster(
        self, scope: str, cluster_id: int, *, rule_text: str | None = None, active: bool | None = None
    ) -> None:
        c = t.guard_clusters.c
        values: dict[str, Any] = {}
        if rule_text is not None:
            values["rule_text"] = storable_text(rule_text)
        if active is not None:
            values["active"] = active
        with self._changing(scope) as conn:
            exists = conn.execute(select(c.id).where(c.scope == scope, c.id == cluster_id)).first()
            if exists is None:
                raise NotFoundError("cluster", str(cluster_id))
            if values:
                conn.execute(update(t.guard_clusters).where(c.scope == scope, c.id == cluster_id).values(**values))

    def load_clusters(self, scope: str) -> list[tuple[Cluster, bool]]:
        c = t.guard_clusters.c
        with self._reading() as conn:
            rows = conn.execute(select(t.guard_clusters).where(c.scope == scope).order_by(c.id)).mappings().all()
        return [
            (Cluster(int(r["id"]), r["category"], r["stage_group"], r["rule_text"]), bool(r["active"])) for r in rows
        ]

    # --- events -------------------------------------------------------------------------------------------------
    def latest_version(self, scope: str) -> int:
        c = t.guard_events.c
        with self._reading() as conn:
            return int(conn.execute(select(func.max(c.version)).where(c.scope == scope)).scalar() or 0)

    def append_event(self, scope: str, kind: str, summary: str, payload: dict[str, Any]) -> EvolutionEvent:
        c = t.guard_events.c
        now = datetime.now(UTC)
        with self._changing(scope) as conn:
            current = conn.execute(select(func.max(c.version)).where(c.scope == scope)).scalar()
            version = int(current or 0) + 1
            conn.execute(
                insert(t.guard_events).values(
                    scope=scope, version=version, kind=kind, summary=summary, payload=payload, created_at=now
                )
            )
        return EvolutionEvent(version, kind, summary, now, payload)

    def list_events(self, scope: str, *, after_version: int = 0, limit: int = 1000) -> list[EvolutionEvent]:
        c = t.guard_events.c
        # No scope has 2**31 events: past that, History is empty on every backend (Postgres refused the value).
        after_version = min(after_version, _MAX_INT32)
        with self._reading() as conn:
            rows = (
                conn.execute(
                    select(t.guard_events)
                    .where(c.scope == scope, c.version > after_version)
                    .order_by(c.version)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [
            EvolutionEvent(int(r["version"]), r["kind"], r["summary"], _utc(r["created_at"]), dict(r["payload"]))
            for r in rows
        ]

    # --- audit ----------------------------------------------------------------------------------------------------
    def put_audit(self, scope: str, records: list[AuditRecord]) -> None:
        if not records:
            return
        c = t.guard_verdicts.c
        records = [storable_record(r) for r in records]
        ids = [r.verdict.verdict_id for r in records]
        with self.engine.begin() as conn:
            existing = set(conn.execute(select(c.verdict_id).where(c.verdict_id.in_(ids))).scalars())
            rows = [
                {
                    "verdict_id": r.verdict.verdict_id,
                    "scope": scope,
                    "stage": r.verdict.stage.value,
                    "decision": r.verdict.decision.value,
                    "harm_score": r.verdict.harm_score,
                    "entropy": r.verdict.entropy,
                    "category": r.verdict.category,
                    "decided_by": r.verdict.decided_by,
                    "memory_version": r.verdict.memory_version,
                    "evidence": _evidence_to_json(r.verdict.evidence),
                    "request_text": r.request_text,
                    "tool_name": r.tool_name,
                    "arguments_json": r.arguments_json,
                    "created_at": r.created_at or datetime.now(UTC),
                    "feedback": r.feedback.value,
                    "feedback_note": r.feedback_note,
                    "feedback_result": _feedback_to_json(r.feedback_result),
                    "decided_segment": r.decided_segment,
                    "metadata": r.metadata or None,
                }
                for r in records
                if r.verdict.verdict_id not in existing
            ]
            if rows:
                conn.execute(insert(t.guard_verdicts), rows)

    @staticmethod
    def _record(r: Any) -> AuditRecord:
        verdict = GuardVerdict(
            verdict_id=r["verdict_id"],
            decision=Decision(r["decision"]),
            harm_score=float(r["harm_score"]),
            entropy=float(r["entropy"]),
            stage=Stage(r["stage"]),
            evidence=_evidence_from_json(r["evidence"]),
            category=r["category"],
            decided_by=r["decided_by"],
            memory_version=int(r["memory_version"]),
        )
        return AuditRecord(
            verdict,
            r["request_text"],
            r["tool_name"],
            r["arguments_json"],
            _utc(r["created_at"]),
            Decision(r["feedback"]),
            r["feedback_note"],
            _feedback_from_json(r["feedback_result"]),
            r["decided_segment"],
            dict(r["metadata"] or {}),
        )

    def get_audit(self, scope: str, verdict_id: str) -> AuditRecord:
        c = t.guard_verdicts.c
        if not storable_verdict_id(verdict_id):
            raise NotFoundError("verdict", verdict_id)
        with reading(self.engine) as conn:
            row = (
                conn.execute(select(t.guard_verdicts).where(c.scope == scope, c.verdict_id == verdict_id))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFoundError("verdict", verdict_id)
        return self._record(row)

    def set_feedback(
        self, scope: str, verdict_id: str, expected: Decision, note: str, result: FeedbackResult | None = None
    ) -> bool:
        c = t.guard_verdicts.c
        if not storable_verdict_id(verdict_id):
            raise NotFoundError("verdict", verdict_id)
        with self._joining(scope) as conn:
            # Only a verdict without feedback takes it: of two calls racing, the second updates nothing (on
            # Postgres it waits for the first one's row lock, then sees its feedback).
            n = conn.execute(
                update(t.guard_verdicts)
                .where(
                    c.scope == scope, c.verdict_id == verdict_id, c.feedback == Decision.UNSPECIFIED.value
                )
                .values(
                    feedback=expected.value,
                    feedback_note=storable_text(note),
                    feedback_result=_feedback_to_json(result),
                )
            ).rowcount
            if n:
                return True
            found = conn.execute(select(c.verdict_id).where(c.scope == scope, c.verdict_id == verdict_id)).first()
        if found is None:
            raise NotFoundError("verdict", verdict_id)
        return False

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
        c = t.guard_verdicts.c
        cond = [c.scope == scope]
        if stage is not None:
            cond.append(c.stage == stage.value)
        if decision is not None:
            cond.append(c.decision == decision.value)
        # SQLite compares stored times as text (see guards.store.as_utc).
        if since is not None:
            cond.append(c.created_at >= _utc(since))
        if until is not None:
            cond.append(c.created_at < _utc(until))
        if before_id is not None and not storable_verdict_id(before_id):
            raise NotFoundError("verdict", before_id)
        with reading(self.engine) as conn:
            if before_id is not None:
                anchor = conn.execute(select(c.created_at).where(c.scope == scope, c.verdict_id == before_id)).first()
                if anchor is None:
                    raise NotFoundError("verdict", before_id)
                cond.append(or_(c.created_at < anchor[0], and_(c.created_at == anchor[0], c.verdict_id < before_id)))
            rows = (
                conn.execute(
                    select(t.guard_verdicts)
                    .where(*cond)
                    .order_by(c.created_at.desc(), c.verdict_id.desc())
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [self._record(r) for r in rows]

    def purge_audit(self, scope: str | None, before: datetime) -> int:
        c = t.guard_verdicts.c
        cond = [c.created_at < _utc(before)]
        if scope is not None:
            cond.append(c.scope == scope)
        with self.engine.begin() as conn:
            return int(conn.execute(delete(t.guard_verdicts).where(*cond)).rowcount)


class SqlRateLimiter:
    """``RateCounter`` in the database: every replica on it counts the same calls, so a limit of 5 calls a minute
    holds for the deployment, not per sidecar (``guards.rules.RateLimiter`` is the in-process one).

    One short transaction per counted call (a TOOL_CALL check of a tool that a rate-limit rule names): the key's
    write lock (``lock_for_write``: calls of one key on several replicas queue there, so two of them cannot both
    count themselves under the limit), then the key's calls out of the window are dropped, this one added, the
    window counted up to ``max_calls + 1`` (an agent looping on a blocked tool adds a row per call; an uncapped
    count grew with them, 26 ms a call at 200k rows, while holding the key's lock). On Postgres the lock is waited
    for at most ``LOCK_TIMEOUT_S`` (a replica stalled inside its transaction would otherwise hold every other
    replica's checks of the key, and their worker threads, until Postgres dropped its session): the check then
    fails UNAVAILABLE. Times come from the database's clock on Postgres (the replicas' clocks may disagree),
    from this process's wall clock elsewhere (SQLite has one process). Keys no longer hit are swept every
    ``SWEEP_EVERY`` calls, once their newest call is out of its window (as the in-process counter forgets them).
    """

    SWEEP_EVERY = 1024
    LOCK_TIMEOUT_S = 2.0
    local = False

    def __init__(self, engine: Engine):
        self.engine = engine
        self._hits = 0
        self._hits_lock = threading.Lock()

    @staticmethod
    def _digest(key: tuple[str, str, str]) -> str:
        return hashlib.blake2b("\x1f".join(key).encode(), digest_size=16).hexdigest()

    @staticmethod
    def _now(conn: Connection, now: float | None) -> float:
        if now is not None:
            return now
        if conn.dialect.name == "postgresql":
            # clock_timestamp, not now(): now() is the transaction's start, before the wait for the key's lock.
            return float(conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one())
        return time.time()

    @staticmethod
    def _count(conn: Connection, digest: str, since: float, cap: int) -> int:
        """Calls of the key after ``since``, counted up to ``cap``."""
        c = t.guard_rate_calls.c
        window = select(c.id).where(c.key == digest, c.at > since).limit(cap).subquery()
        return int(conn.execute(select(func.count()).select_from(window)).scalar_one())

    def hit(self, key: tuple[str, str, str], max_calls: int, per_seconds: float, now: float | None = None) -> int:
        c = t.guard_rate_calls.c
        digest = self._digest(key)
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # SET LOCAL takes no bind parameters; the value is this class's own number.
                conn.execute(text(f"SET LOCAL lock_timeout = '{int(self.LOCK_TIMEOUT_S * 1000)}ms'"))
            lock_for_write(conn, "guard-rate", digest)
            at = self._now(conn, now)
            conn.execute(delete(t.guard_rate_calls).where(c.key == digest, c.at <= at - per_seconds))
            conn.execute(
                insert(t.guard_rate_calls).values(
                    key=digest, scope=storable_text(key[0])[:300], at=at, expires_at=at + per_seconds
                )
            )
            count = self._count(conn, digest, at - per_seconds, max_calls + 1)
        with self._hits_lock:
            self._hits += 1
            sweep = self._hits % self.SWEEP_EVERY == 0
        if sweep:
            try:
                self.sweep(now)
            except Exception:  # the call is counted and committed: its check must not fail for housekeeping
                log.warning("sweeping expired rate-limit calls failed; the next sweep retries", exc_info=True)
        return count

    def peek(self, key: tuple[str, str, str], max_calls: int, per_seconds: float, now: float | None = None) -> int:
        with reading(self.engine) as conn:
            at = self._now(conn, now)
            found = self._count(conn, self._digest(key), at - per_seconds, max_calls)
        return found + 1

    def dry(self) -> RateCounter:
        return DryRunCounter(self)

    def sweep(self, now: float | None = None) -> int:
        """Delete the calls of every key whose newest call is out of its window; returns how many went."""
        c = t.guard_rate_calls.c
        with self.engine.begin() as conn:
            at = self._now(conn, now)
            idle = select(c.key).group_by(c.key).having(func.max(c.expires_at) <= at)
            gone = conn.execute(delete(t.guard_rate_calls).where(c.key.in_(idle))).rowcount
        return int(gone)


__all__ = ["SqlGuardStore", "SqlRateLimiter"]
