"""One conformance suite for every GuardStore backend: in-memory reference, SQLite, Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from core.errors import NotFoundError
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
from guards.store import GuardStore

A, B = "t/a", "t/b"


def _record(vid: str, when: datetime, stage: Stage = Stage.INPUT, decision: Decision = Decision.ALLOW) -> AuditRecord:
    verdict = GuardVerdict(
        vid,
        decision,
        0.25,
        0.5,
        stage,
        (Evidence("rule", "r1", "why", Decision.BLOCK, 1.0, {"field": "text"}),),
        "fraud",
        "memory",
        3,
    )
    return AuditRecord(verdict, f"text of {vid}", "send_email", '{"to": "x"}', when)


def test_settings_roundtrip_and_isolation(guard_store: GuardStore) -> None:
    assert guard_store.get_settings(A) is None
    guard_store.put_settings(A, {"pack": False, "default_decision": "review"})
    guard_store.put_settings(A, {"pack": True, "default_decision": "review"})
    assert guard_store.get_settings(A) == {"pack": True, "default_decision": "review"}
    assert guard_store.get_settings(B) is None


def test_rules_put_list_delete(guard_store: GuardStore) -> None:
    r1 = PolicyRule("deny-shell", Decision.BLOCK, 10, "no shell", (Stage.TOOL_CALL,), {"tools": ["shell*"]})
    r2 = PolicyRule("cap", Decision.REVIEW, 5, "", (), {"tools": ["pay"], "arguments": [{"path": "amount", "max": 5}]})
    guard_store.put_rules(A, [r1, r2])
    assert [r.name for r in guard_store.list_rules(A)] == ["cap", "deny-shell"]
    assert guard_store.list_rules(A)[1] == r1
    assert guard_store.list_rules(B) == []
    guard_store.put_rules(A, [PolicyRule("cap", Decision.BLOCK, 1, "", (), {"tools": ["pay"]})])
    assert guard_store.list_rules(A)[0].action == Decision.BLOCK
    assert guard_store.delete_rules(A, ["cap", "missing"]) == 1
    assert guard_store.delete_rules(B, ["deny-shell"]) == 0
    guard_store.put_rules(A, [r2], replace_all=True)
    assert [r.name for r in guard_store.list_rules(A)] == ["cap"]


def test_leaves_and_clusters(guard_store: GuardStore) -> None:
    vecs = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    leaves = [
        Exemplar(
            0,
            "fraud",
            f"t{i}",
            Label.HARMFUL if i else Label.BENIGN,
            "request",
            LeafSource.PACK,
            datetime(2024, 1, 1, tzinfo=UTC),
        )
        for i in range(3)
    ]
    ids = guard_store.add_leaves(A, leaves, vecs)
    assert len(set(ids)) == 3 and ids == sorted(ids)
    got, got_vecs = guard_store.load_leaves(A)
    assert [g.id for g in got] == ids and [g.text for g in got] == ["t0", "t1", "t2"]
    assert got[0].label == Label.BENIGN and got[1].source == LeafSource.PACK
    np.testing.assert_array_equal(got_vecs, vecs)
    assert guard_store.load_leaves(B)[0] == []
    cid = guard_store.add_cluster(A, Cluster(0, "fraud", "request", "rule text"))
    guard_store.update_leaves(A, {ids[0]: {"cluster_id": cid}, ids[1]: {"active": False}})
    got, _ = guard_store.load_leaves(A)
    assert got[0].cluster_id == cid and not got[1].active and got[2].active
    guard_store.update_cluster(A, cid, rule_text="new", active=False)
    [(cluster, active)] = guard_store.load_clusters(A)
    assert cluster.rule_text == "new" and not active and cluster.category == "fraud"
    assert guard_store.load_clusters(B) == []
    with pytest.raises(NotFoundError):
        guard_store.update_cluster(B, cid, active=True)


def test_events_are_versioned_per_scope(guard_store: GuardStore) -> None:
    e1 = guard_store.append_event(A, "seed", "s", {"created": [1], "before": []})
    e2 = guard_store.append_event(A, "split", "x", {"created": [2, 3], "before": [{"id": 1, "leaf_ids": [4]}]})
    e3 = guard_store.append_event(B, "seed", "s", {})
    assert (e1.version, e2.version, e3.version) == (1, 2, 1)
    events = guard_store.list_events(A)
    assert [e.kind for e in events] == ["seed", "split"]
    assert events[1].payload == {"created": [2, 3], "before": [{"id": 1, "leaf_ids": [4]}]}
    assert [e.version for e in guard_store.list_events(A, after_version=1)] == [2]
    assert [guard_store.latest_version(s) for s in (A, B, "t/c")] == [2, 1, 0]


def test_a_transaction_sees_its_writes_and_an_exception_leaves_nothing(guard_store: GuardStore) -> None:
    leaf = Exemplar(id=0, category="c", text="x", label=Label.HARMFUL, stage_group="request")
    with guard_store.transaction(A):
        guard_store.put_settings(A, {"pack": False})
        [leaf_id] = guard_store.add_leaves(A, [leaf], np.ones((1, 4), dtype=np.float32))
        with guard_store.transaction(A):  # an inner block joins
            guard_store.append_event(A, "seed", "s", {"added_leaves": [leaf_id]})
        assert guard_store.get_settings(A) == {"pack": False}
        assert guard_store.latest_version(A) == 1
        assert [x.id for x in guard_store.load_leaves(A)[0]] == [leaf_id]
    with pytest.raises(RuntimeError, match="boom"), guard_store.transaction(A):
        guard_store.put_settings(A, {"pack": True})
        guard_store.add_leaves(A, [leaf], np.ones((1, 4), dtype=np.float32))
        guard_store.add_cluster(A, Cluster(0, "c", "request", "r"))
        guard_store.put_rules(A, [PolicyRule("r1", Decision.BLOCK, spec={"tools": ["x"]})])
        guard_store.append_event(A, "add_leaf", "a", {})
        raise RuntimeError("boom")
    assert guard_store.get_settings(A) == {"pack": False}
    assert [x.id for x in guard_store.load_leaves(A)[0]] == [leaf_id]
    assert guard_store.load_clusters(A) == [] and guard_store.list_rules(A) == []
    assert guard_store.latest_version(A) == 1
    with pytest.raises(RuntimeError), guard_store.transaction(A), guard_store.transaction(B):
        pass  # one scope per transaction


def test_audit_put_get_query_feedback_purge(guard_store: GuardStore) -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    records = [
        _record(
            f"v{i}",
            t0 + timedelta(minutes=i),
            Stage.TOOL_RESULT if i % 2 else Stage.INPUT,
            Decision.BLOCK if i == 3 else Decision.ALLOW,
        )
        for i in range(5)
    ]
    guard_store.put_audit(A, records)
    guard_store.put_audit(A, records[:1])  # idempotent
    got = guard_store.get_audit(A, "v3")
    assert got.verdict == records[3].verdict and got.created_at == records[3].created_at
    assert got.tool_name == "send_email" and got.request_text == "text of v3"
    with pytest.raises(NotFoundError):
        guard_store.get_audit(B, "v3")
    assert [r.verdict.verdict_id for r in guard_store.query_audit(A)] == ["v4", "v3", "v2", "v1", "v0"]
    assert [r.verdict.verdict_id for r in guard_store.query_audit(A, stage=Stage.TOOL_RESULT)] == ["v3", "v1"]
    assert [r.verdict.verdict_id for r in guard_store.query_audit(A, decision=Decision.BLOCK)] == ["v3"]
    assert [r.verdict.verdict_id for r in guard_store.query_audit(A, limit=2, before_id="v3")] == ["v2", "v1"]
    assert [
        r.verdict.verdict_id
        for r in guard_store.query_audit(A, since=t0 + timedelta(minutes=1), until=t0 + timedelta(minutes=3))
    ] == ["v2", "v1"]
    assert guard_store.query_audit(B) == []
    # The same instants in another offset select the same records (SQLite compared the times as text).
    plus5 = timezone(timedelta(hours=5))
    assert [
        r.verdict.verdict_id
        for r in guard_store.query_audit(
            A, since=(t0 + timedelta(minutes=1)).astimezone(plus5), until=(t0 + timedelta(minutes=3)).astimezone(plus5)
        )
    ] == ["v2", "v1"]
    naive = [t.replace(tzinfo=None) for t in (t0 + timedelta(minutes=1), t0 + timedelta(minutes=3))]  # taken as UTC
    assert [r.verdict.verdict_id for r in guard_store.query_audit(A, since=naive[0], until=naive[1])] == ["v2", "v1"]
    guard_store.set_feedback(A, "v2", Decision.BLOCK, "missed")
    assert guard_store.get_audit(A, "v2").feedback == Decision.BLOCK
    with pytest.raises(NotFoundError):
        guard_store.set_feedback(B, "v2", Decision.BLOCK, "")
    guard_store.put_audit(B, [_record("w0", t0)])
    assert guard_store.purge_audit(A, (t0 + timedelta(minutes=2)).astimezone(timezone(timedelta(hours=5)))) == 2
    assert [r.verdict.verdict_id for r in guard_store.query_audit(A)] == ["v4", "v3", "v2"]
    assert len(guard_store.query_audit(B)) == 1
    assert guard_store.purge_audit(None, t0 + timedelta(days=1)) == 4


def test_feedback_is_taken_once_with_its_result_and_joins_the_transaction(guard_store: GuardStore) -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    guard_store.put_audit(A, [_record("v0", t0), _record("v1", t0), _record("v2", t0)])
    leaf = Exemplar(id=0, category="c", text="x", label=Label.HARMFUL, stage_group="request")
    # Inside a transaction that fails, the verdict's feedback goes with the leaf and the event.
    with pytest.raises(RuntimeError, match="boom"), guard_store.transaction(A):
        [leaf_id] = guard_store.add_leaves(A, [leaf], np.ones((1, 4), dtype=np.float32))
        event = guard_store.append_event(A, "new_cluster", "n", {"created": [7], "added_leaves": [leaf_id]})
        assert guard_store.set_feedback(A, "v0", Decision.BLOCK, "n", FeedbackResult(leaf_id, 7, (event,), 1))
        raise RuntimeError("boom")
    assert guard_store.get_audit(A, "v0").feedback == Decision.UNSPECIFIED
    assert guard_store.get_audit(A, "v0").feedback_result is None
    assert guard_store.load_leaves(A)[0] == [] and guard_store.latest_version(A) == 0
    # Committed, it is stored with its result (events included).
    with guard_store.transaction(A):
        [leaf_id] = guard_store.add_leaves(A, [leaf], np.ones((1, 4), dtype=np.float32))
        event = guard_store.append_event(A, "new_cluster", "n", {"created": [7], "before": [{"id": 3}]})
        result = FeedbackResult(leaf_id, 7, (event,), event.version)
        assert guard_store.set_feedback(A, "v0", Decision.BLOCK, "missed", result)
    got = guard_store.get_audit(A, "v0")
    assert (got.feedback, got.feedback_note, got.feedback_result) == (Decision.BLOCK, "missed", result)
    [stored] = guard_store.query_audit(A, limit=3, before_id="v1")  # every read path carries it
    assert stored.verdict.verdict_id == "v0" and stored.feedback_result == result
    assert isinstance(result.events[0], EvolutionEvent) and result.events[0].created_at is not None
    # A verdict takes one feedback: a second one, same or not, changes nothing.
    assert not guard_store.set_feedback(A, "v0", Decision.BLOCK, "again", FeedbackResult(99, 9, (), 9))
    assert not guard_store.set_feedback(A, "v0", Decision.ALLOW, "other")
    assert guard_store.get_audit(A, "v0") == got
    # Outside a transaction it is a write of its own; without a result, REVIEW style.
    assert guard_store.set_feedback(A, "v1", Decision.REVIEW, "")
    assert guard_store.get_audit(A, "v1").feedback == Decision.REVIEW
    assert guard_store.get_audit(A, "v1").feedback_result is None
    with pytest.raises(NotFoundError):
        guard_store.set_feedback(B, "v2", Decision.BLOCK, "")


def test_audit_keeps_the_requests_metadata(guard_store: GuardStore) -> None:
    from dataclasses import replace

    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    meta = {"thread_id": "th-42", "tool_id": "call\x007"}
    guard_store.put_audit(A, [replace(_record("m1", t0), metadata=meta), _record("m2", t0)])
    assert guard_store.get_audit(A, "m1").metadata == {"thread_id": "th-42", "tool_id": "call\ufffd7"}
    assert guard_store.get_audit(A, "m2").metadata == {}
    assert sorted(r.metadata.get("thread_id", "") for r in guard_store.query_audit(A)) == ["", "th-42"]
