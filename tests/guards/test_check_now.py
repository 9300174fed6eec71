"""GuardEngine.check_now: the same verdict as check, given only when it cannot block the caller."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from core.embedding import CachingEmbedder, HashingEmbedder
from guards.engine import GuardEngine
from guards.model import Decision, GuardRequest, Stage, ToolCallInfo
from guards.store import InMemoryGuardStore

SCOPE = "default/now"


@pytest.fixture
def engine() -> Iterator[GuardEngine]:
    e = GuardEngine(InMemoryGuardStore(), CachingEmbedder(HashingEmbedder()), audit_async=True)
    yield e
    e.close()


def request(text: str) -> GuardRequest:
    return GuardRequest(
        stage=Stage.TOOL_CALL,
        text=text,
        tool_call=ToolCallInfo(name="send_email", arguments_json='{"to": "a@example.com"}'),
    )


def test_check_now_answers_only_from_cached_embeddings(engine: GuardEngine) -> None:
    req = request("Email the quarterly figures to the finance team.")
    assert engine.check_now(SCOPE, req) is None  # the namespace is not loaded yet
    first = engine.check(SCOPE, req)
    assert engine.check_now(SCOPE, request("A sentence never embedded before.")) is None
    now = engine.check_now(SCOPE, req)
    assert now is not None and now.verdict_id != first.verdict_id
    assert (now.decision, now.harm_score, now.decided_by) == (first.decision, first.harm_score, first.decided_by)
    # Both verdicts are audited, and feedback can name the fast one.
    engine.flush()
    assert {r.verdict.verdict_id for r in engine.query_audit(SCOPE)} >= {first.verdict_id, now.verdict_id}
    engine.feedback(SCOPE, now.verdict_id, Decision.BLOCK)


def test_check_now_never_waits_for_a_busy_memory(engine: GuardEngine) -> None:
    req = request("Email the quarterly figures to the finance team.")
    engine.check(SCOPE, req)
    mem = engine.memory(SCOPE)
    held, release = threading.Event(), threading.Event()

    def evolve() -> None:  # stands in for feedback reshaping the memory in a worker thread
        with mem.lock:
            held.set()
            release.wait(10)

    worker = threading.Thread(target=evolve)
    worker.start()
    held.wait(10)
    try:
        assert engine.check_now(SCOPE, req) is None
    finally:
        release.set()
        worker.join()
    assert engine.check_now(SCOPE, req) is not None


def test_check_now_declines_when_audits_are_written_inline() -> None:
    e = GuardEngine(InMemoryGuardStore(), CachingEmbedder(HashingEmbedder()), audit_async=False)
    req = request("Email the quarterly figures to the finance team.")
    e.check(SCOPE, req)
    assert e.check_now(SCOPE, req) is None
    e.close()


def test_check_now_needs_the_steps_of_a_request_cached_too(engine: GuardEngine) -> None:
    """A request cut into steps ("…, then …") embeds its steps as well: with only its segments cached,
    check_now would run the model on the caller's event loop."""
    engine.check(SCOPE, request("Email the quarterly figures to the finance team."))
    req = GuardRequest(stage=Stage.INPUT, text="Collect the staff home addresses, then post them on the forum.")
    engine.embedder.embed(engine._segments(req))
    assert engine.check_now(SCOPE, req) is None
    engine.embedder.embed(engine._texts_to_embed(req))
    assert engine.check_now(SCOPE, req) is not None


def test_warm_embeds_what_check_will_and_decides_nothing(engine: GuardEngine) -> None:
    engine.check(SCOPE, request("Email the quarterly figures to the finance team."))
    engine.flush()
    audited = len(engine.query_audit(SCOPE))
    emb = engine.embedder
    assert isinstance(emb, CachingEmbedder)
    text = "Here is the summary you asked for. I sent it to the team, and filed it."
    req = GuardRequest(stage=Stage.OUTPUT, text=text)
    assert engine.check_now(SCOPE, req) is None
    engine.warm(SCOPE, req)
    engine.flush()
    assert len(engine.query_audit(SCOPE)) == audited  # no verdict, no audit record
    misses = emb.misses
    verdict = engine.check_now(SCOPE, req)
    assert verdict is not None and emb.misses == misses  # answered without a model call
    assert verdict.decision == engine.check(SCOPE, req).decision


def test_check_now_leaves_a_rate_limit_counted_in_the_database_to_a_worker(tmp_path) -> None:
    """A rate limit shared by replicas costs a database transaction per counted call (and may wait on another
    replica's lock): not on an event loop. Counted in memory, the same check still answers at once."""
    from guards.sql import SqlRateLimiter
    from runtime.db import Database

    db = Database(f"sqlite:///{tmp_path / 'agentrt.db'}")
    db.migrate()
    rule = "rules: [{name: cap, action: block, tools: [send_email], rate_limit: {max_calls: 1, per_seconds: 600}}]"
    req = request("Email the quarterly figures to the finance team.")
    shared = GuardEngine(InMemoryGuardStore(), CachingEmbedder(HashingEmbedder()), limiter=SqlRateLimiter(db.engine))
    local = GuardEngine(InMemoryGuardStore(), CachingEmbedder(HashingEmbedder()))
    try:
        for engine in (shared, local):
            engine.put_rules(SCOPE, rule)
            assert engine.check(SCOPE, req).decision == Decision.ALLOW
        assert shared.check_now(SCOPE, req) is None
        assert shared.check(SCOPE, req).decision == Decision.BLOCK  # the database counted the first call
        now = local.check_now(SCOPE, req)
        assert now is not None and now.decision == Decision.BLOCK
    finally:
        shared.close()
        local.close()
        db.dispose()
