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
