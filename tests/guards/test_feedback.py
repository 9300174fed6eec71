"""Feedback is one transaction (the verdict's feedback, its leaf, the evolution it causes) and is idempotent per
verdict: a retry answers the stored result, a different decision is refused. On every store backend."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, insert

from core.errors import FailedPreconditionError
from guards import schema as t
from guards.engine import GuardEngine
from guards.model import Decision, FeedbackResult, GuardRequest, LeafSource, Stage
from guards.sql import SqlGuardStore
from guards.store import GuardStore
from runtime.db import MIGRATIONS_DIR

NS = "t/fb"
H1 = "wire the savings to the offshore account tonight"
H2 = "move the savings into the offshore wallet"
B1 = "wire the rent to the landlord account tonight"
B2 = "wire the rent to the landlord account this week"


class _Wrapped:
    """A GuardStore passing every call to ``inner``, for the methods a test overrides."""

    def __init__(self, inner: GuardStore):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _RefusingEvents(_Wrapped):
    """The event log refuses one kind of event, like a database rejecting that write."""

    def __init__(self, inner: GuardStore, kind: str | None):
        super().__init__(inner)
        self.refuse = kind

    def append_event(self, scope: str, kind: str, summary: str, payload: dict[str, Any]) -> Any:
        if kind == self.refuse:
            raise RuntimeError(f"{kind} event refused")
        return self._inner.append_event(scope, kind, summary, payload)


class _Interleaving(_Wrapped):
    """Runs ``between`` (once) right after a verdict is read: another call commits after this one looked."""

    between: Callable[[], None] | None = None

    def get_audit(self, scope: str, verdict_id: str) -> Any:
        record = self._inner.get_audit(scope, verdict_id)
        between, self.between = self.between, None
        if between is not None:
            between()
        return record


def _mixed_cluster(engine: GuardEngine) -> str:
    """Two harmful and one benign leaf in one cluster; returns a verdict on B2, whose ALLOW leaf splits it."""
    for text, expected in ((H1, Decision.BLOCK), (H2, Decision.BLOCK), (B1, Decision.ALLOW)):
        engine.report_incident(NS, GuardRequest(Stage.INPUT, text), expected, "payments")
    return engine.check(NS, GuardRequest(Stage.INPUT, B2)).verdict_id


def _feedback_leaves(store: GuardStore) -> list[int]:
    return [leaf.id for leaf in store.load_leaves(NS)[0] if leaf.source == LeafSource.FEEDBACK]


def test_a_failure_in_the_evolution_step_leaves_the_verdict_without_feedback(
    hashing_engine, guard_store: GuardStore
) -> None:
    store = _RefusingEvents(guard_store, None)
    engine = hashing_engine(store, defaults={"pack": False})
    verdict_id = _mixed_cluster(engine)
    history = engine.history(NS)
    store.refuse = "split"  # the leaf is placed, then the split it causes fails
    with pytest.raises(RuntimeError, match="split event refused"):
        engine.feedback(NS, verdict_id, Decision.ALLOW, "rent is fine")
    record = engine.get_verdict(NS, verdict_id)
    assert record.feedback == Decision.UNSPECIFIED and record.feedback_note == "" and record.feedback_result is None
    assert engine.history(NS) == history and _feedback_leaves(guard_store) == []
    assert engine.memory(NS).version == history[-1].version
    # The retry does the whole thing.
    store.refuse = None
    result = engine.feedback(NS, verdict_id, Decision.ALLOW, "rent is fine")
    assert [e.kind for e in result.events] == ["add_leaf", "split"]
    assert _feedback_leaves(guard_store) == [result.leaf_id]
    record = engine.get_verdict(NS, verdict_id)
    assert (record.feedback, record.feedback_note, record.feedback_result) == (Decision.ALLOW, "rent is fine", result)


def test_a_repeated_feedback_answers_the_stored_result_and_changes_nothing(
    hashing_engine, guard_store: GuardStore
) -> None:
    engine = hashing_engine(guard_store, defaults={"pack": False})
    verdict_id = _mixed_cluster(engine)
    first = engine.feedback(NS, verdict_id, Decision.ALLOW, "rent is fine")
    assert first.leaf_id > 0 and [e.kind for e in first.events] == ["add_leaf", "split"]
    clusters, history = engine.clusters(NS), engine.history(NS)
    assert engine.feedback(NS, verdict_id, Decision.ALLOW, "rent is fine") == first
    assert engine.feedback(NS, verdict_id, Decision.ALLOW, "another note") == first  # the first note stays
    # From the store, not a cache: a restarted engine answers the same.
    again = hashing_engine(guard_store, defaults={"pack": False})
    assert again.feedback(NS, verdict_id, Decision.ALLOW) == first
    assert engine.clusters(NS) == clusters and engine.history(NS) == history and engine.memory(NS).version == 5
    assert _feedback_leaves(guard_store) == [first.leaf_id]
    assert engine.get_verdict(NS, verdict_id).feedback_note == "rent is fine"
    # REVIEW only records; repeated, it answers the same (the memory version it was given at).
    review_id = engine.check(NS, GuardRequest(Stage.INPUT, "pay the invoice of the cleaning company")).verdict_id
    review = engine.feedback(NS, review_id, Decision.REVIEW)
    assert review == FeedbackResult(0, 0, (), 5)
    engine.report_incident(NS, GuardRequest(Stage.INPUT, H1 + " again"), Decision.BLOCK, "payments")
    assert engine.feedback(NS, review_id, Decision.REVIEW) == review
    assert engine.get_verdict(NS, review_id).feedback == Decision.REVIEW


def test_feedback_with_another_decision_is_refused_naming_expected(hashing_engine, guard_store: GuardStore) -> None:
    engine = hashing_engine(guard_store, defaults={"pack": False})
    verdict_id = _mixed_cluster(engine)
    first = engine.feedback(NS, verdict_id, Decision.ALLOW)
    history = engine.history(NS)
    for other in (Decision.BLOCK, Decision.REVIEW):
        with pytest.raises(FailedPreconditionError) as err:
            engine.feedback(NS, verdict_id, other)
        message = str(err.value)
        assert message.startswith("expected: ") and verdict_id in message
        assert "already has feedback ALLOW" in message and f"this call says {other.value.upper()}" in message
    assert engine.history(NS) == history and _feedback_leaves(guard_store) == [first.leaf_id]
    record = engine.get_verdict(NS, verdict_id)
    assert (record.feedback, record.feedback_result) == (Decision.ALLOW, first)
    # A REVIEW is one feedback too: a later ALLOW/BLOCK is refused (and adds no leaf).
    review_id = engine.check(NS, GuardRequest(Stage.INPUT, B1)).verdict_id
    engine.feedback(NS, review_id, Decision.REVIEW)
    with pytest.raises(FailedPreconditionError, match="already has feedback REVIEW, this call says BLOCK"):
        engine.feedback(NS, review_id, Decision.BLOCK)
    assert engine.history(NS) == history and _feedback_leaves(guard_store) == [first.leaf_id]


@pytest.mark.parametrize("expected", [Decision.ALLOW, Decision.REVIEW])
def test_feedback_racing_another_on_the_same_verdict_is_undone_and_answers_the_winner(
    hashing_engine, guard_store: GuardStore, expected: Decision
) -> None:
    store = _Interleaving(guard_store)
    engine = hashing_engine(store, defaults={"pack": False})
    verdict_id = _mixed_cluster(engine)
    won: list[FeedbackResult] = []

    def other_call() -> None:
        thread = threading.Thread(target=lambda: won.append(engine.feedback(NS, verdict_id, expected, "first")))
        thread.start()
        thread.join()

    # This call reads the verdict without feedback; the other call then commits its feedback (and leaf), so
    # this one finds the verdict taken only inside its own step, which is undone.
    store.between = other_call
    assert engine.feedback(NS, verdict_id, expected, "second") == won[0]
    assert len(_feedback_leaves(guard_store)) == (1 if expected == Decision.ALLOW else 0)
    assert engine.history(NS)[-1].version == won[0].memory_version
    record = engine.get_verdict(NS, verdict_id)
    assert (record.feedback, record.feedback_note, record.feedback_result) == (expected, "first", won[0])
    # The same race with another decision: refused, and nothing of it stays.
    other_id = engine.check(NS, GuardRequest(Stage.INPUT, B1)).verdict_id
    store.between = lambda: won.append(engine.feedback(NS, other_id, Decision.BLOCK))
    history = engine.history(NS)
    with pytest.raises(FailedPreconditionError, match="already has feedback BLOCK"):
        engine.feedback(NS, other_id, expected)
    assert engine.history(NS) == history + list(won[1].events)  # the winner's leaf only
    assert engine.get_verdict(NS, other_id).feedback_result == won[1]


def test_feedback_recorded_before_results_were_stored_is_not_repeated(db_url: str, hashing_engine) -> None:
    """A database at revision 0001 holds feedback without its result: after migrating, a repeat adds nothing."""
    db = create_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with db.begin() as conn:
        conn.execute(
            insert(t.guard_verdicts).values(
                verdict_id="old", scope=NS, stage="input", decision="allow", harm_score=0.1, entropy=0.4,
                category="", decided_by="default", memory_version=0, evidence=[], request_text=H1,
                tool_name="", arguments_json="", created_at=datetime.now(UTC), feedback="block", feedback_note="",
            )
        )
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    try:
        store = SqlGuardStore(db, create_tables=False)
        engine = hashing_engine(store, defaults={"pack": False})
        assert engine.get_verdict(NS, "old").feedback_result is None
        assert engine.feedback(NS, "old", Decision.BLOCK) == FeedbackResult(0, 0, (), 0)
        with pytest.raises(FailedPreconditionError, match="already has feedback BLOCK"):
            engine.feedback(NS, "old", Decision.ALLOW)
        assert store.load_leaves(NS)[0] == [] and engine.history(NS) == []
        # New feedback stores its result in the migrated column.
        new_id = engine.check(NS, GuardRequest(Stage.INPUT, H2)).verdict_id
        result = engine.feedback(NS, new_id, Decision.BLOCK)
        assert result.leaf_id > 0 and engine.get_verdict(NS, new_id).feedback_result == result
    finally:
        db.dispose()
