"""Concurrent Writes: group commit (Writes queued behind a commit share the next one), plans that go stale
while they are embedded outside the lock, and background work yielding to foreground calls."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

from core.embedding import create_embedder
from memory.engine import MemoryEngine
from memory.model import Granularity, MemoryMessage
from memory.store import Change, MemoryStore

NS = "acme/chat"
T0 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)


class GatedStore:
    """Delegates to a real store; the first ``apply`` of messages blocks until ``release`` is set, so
    Writes issued meanwhile pile up behind it (deterministically, without timing)."""

    def __init__(self, inner: MemoryStore):
        self._inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()
        self.message_commits: list[int] = []

    def apply(self, namespace: str, change: Change) -> int:
        if change.upsert_messages:
            self.message_commits.append(len(change.upsert_messages))
            if len(self.message_commits) == 1:
                self.entered.set()
                self.release.wait(30)
        return self._inner.apply(namespace, change)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)


def turn(mid: str, session: str, text: str) -> MemoryMessage:
    return MemoryMessage(mid, session, "alice", text, T0)


def wait_until_queued(engine: MemoryEngine, plans: int) -> None:
    """Wait until ``plans`` Writes have planned and queued their change (each then waits for the lock)."""
    for _ in range(3000):
        if sum(len(state.queued) for state in engine._namespaces.values()) == plans:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the concurrent Writes never queued their plans")


def turn_texts(engine: MemoryEngine, message_id: str) -> list[str]:
    index = engine.index(NS)
    units = [index.unit(k) for k in index.units_of_message(message_id)]
    return [u.text for u in units if u is not None and u.granularity == Granularity.TURN]


def test_writes_queued_behind_a_commit_share_the_next_one(store_factory: Callable[[], MemoryStore]) -> None:
    store = GatedStore(store_factory())
    engine = MemoryEngine(store, create_embedder("hashing"), background=False)  # type: ignore[arg-type]
    engine.load()
    first = threading.Thread(target=engine.write, args=(NS, "s0", [turn("m0", "s0", "the first write")]))
    first.start()
    assert store.entered.wait(30)  # the first commit is in progress and holds the namespace lock
    results: dict[int, object] = {}

    def write(i: int) -> None:
        results[i] = engine.write(NS, f"s{i}", [turn(f"m{i}a", f"s{i}", f"note {i} a"), turn(f"m{i}b", f"s{i}", "b")])

    others = [threading.Thread(target=write, args=(i,)) for i in range(1, 6)]
    for t in others:
        t.start()
    wait_until_queued(engine, len(others))
    store.release.set()
    for t in [first, *others]:
        t.join(30)
    assert store.message_commits == [1, 10]  # five Writes, one commit
    assert all(r.written == 2 for r in results.values())  # type: ignore[attr-defined]
    assert engine.stats(NS).messages == 11
    for i in range(1, 6):
        assert turn_texts(engine, f"m{i}a") == [f"alice: note {i} a"]
    engine.close()


def test_a_plan_that_went_stale_while_embedding_is_made_again(store_factory: Callable[[], MemoryStore]) -> None:
    engine = MemoryEngine(store_factory(), create_embedder("hashing"), background=False)
    engine.load()
    engine.write(NS, "s1", [turn("m1", "s1", "the original text")])
    plan = engine._plan_turns
    calls = 0

    def racing_plan(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            # Another Write changes the same message after this one read it, before it commits.
            other = threading.Thread(target=engine.write, args=(NS, "s1", [turn("m1", "s1", "the racing text")]))
            other.start()
            other.join(30)
        return plan(*args, **kwargs)

    engine._plan_turns = racing_plan  # type: ignore[method-assign]
    result = engine.write(NS, "s1", [turn("m1", "s1", "the final text")])
    assert result.written == 1
    assert calls == 3  # this Write planned twice (the first plan went stale), the racing one once
    assert engine.get(NS, ["m1"])[0].text == "the final text"
    assert turn_texts(engine, "m1") == ["alice: the final text"]
    engine.close()


def test_concurrent_writes_of_one_message_leave_units_matching_the_stored_text(
    store_factory: Callable[[], MemoryStore],
) -> None:
    engine = MemoryEngine(store_factory(), create_embedder("hashing"), background=False)
    engine.load()
    texts = [f"version {i} of the message" for i in range(8)]
    threads = [threading.Thread(target=engine.write, args=(NS, "s1", [turn("m1", "s1", t)])) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stored = engine.get(NS, ["m1"])[0].text
    assert stored in texts
    assert turn_texts(engine, "m1") == [f"alice: {stored}"]
    engine.close()


class CountingStore:
    """Delegates to a real store and counts reads of messages."""

    def __init__(self, inner: MemoryStore):
        self._inner = inner
        self.message_reads = 0

    def get_messages(self, namespace: str, ids):  # type: ignore[no-untyped-def]
        self.message_reads += 1
        return self._inner.get_messages(namespace, ids)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)


def test_new_messages_skip_the_first_read_and_another_replicas_messages_are_still_seen(
    store_factory: Callable[[], MemoryStore],
) -> None:
    """A Write of messages its index has never seen plans without reading them (the commit's re-check reads
    them anyway). If another replica stored them meanwhile, the re-check finds the plan stale and the next
    attempt reads: a moved id is refused and an identical resend writes nothing."""
    import pytest

    from core.errors import InvalidArgumentError

    a_store, b_store = CountingStore(store_factory()), CountingStore(store_factory())
    a = MemoryEngine(a_store, create_embedder("hashing"), background=False)  # type: ignore[arg-type]
    b = MemoryEngine(b_store, create_embedder("hashing"), background=False)  # type: ignore[arg-type]
    a.index(NS), b.index(NS)  # both replicas hold the (empty) namespace before anything is written
    a.write(NS, "s1", [turn("m1", "s1", "first words")])
    assert a_store.message_reads == 1  # the commit's re-check only
    a.write(NS, "s1", [turn("m1", "s1", "first words")])  # a resend: the index knows m1, so it is read first
    assert a_store.message_reads == 2
    with pytest.raises(InvalidArgumentError) as err:
        b.write(NS, "s2", [turn("m1", "s2", "moved")])  # b's index has not seen a's write
    assert err.value.violations[0].field == "messages[0].id"
    again = b.write(NS, "s1", [turn("m1", "s1", "first words")])
    assert (again.written, again.unchanged) == (0, 1)
    assert [m.text for m in b.get(NS, ["m1"])] == ["first words"]
    a.close()
    b.close()


class StoreRefusal(Exception):
    """What a database raises for a value it cannot hold (Postgres: DataError)."""


class RefusingGatedStore(GatedStore):
    """``GatedStore`` that also refuses any change holding a message whose text contains ``REFUSE``."""

    def apply(self, namespace: str, change: Change) -> int:
        # Past the gated first commit, a change holding the marked text is refused as a whole.
        if self.message_commits and any("REFUSE" in m.text for m in change.upsert_messages):
            self.message_commits.append(-len(change.upsert_messages))
            raise StoreRefusal("value cannot be stored")
        return super().apply(namespace, change)


def test_a_refused_write_does_not_fail_the_writes_queued_with_it(store_factory: Callable[[], MemoryStore]) -> None:
    store = RefusingGatedStore(store_factory())
    engine = MemoryEngine(store, create_embedder("hashing"), background=False)  # type: ignore[arg-type]
    engine.load()
    first = threading.Thread(target=engine.write, args=(NS, "s0", [turn("m0", "s0", "the first write")]))
    first.start()
    assert store.entered.wait(30)
    results: dict[str, object] = {}

    def write(name: str, text: str) -> None:
        try:
            results[name] = engine.write(NS, f"s-{name}", [turn(f"{name}-m", f"s-{name}", text)])
        except Exception as exc:  # the outcome each client sees
            results[name] = exc

    writers = [threading.Thread(target=write, args=(name, text)) for name, text in
               (("good", "a perfectly fine note"), ("bad", "please REFUSE this one"), ("also", "another fine note"))]
    for t in writers:
        t.start()
    wait_until_queued(engine, len(writers))
    store.release.set()
    for t in [first, *writers]:
        t.join(30)
    assert isinstance(results["bad"], StoreRefusal)
    assert results["good"].written == 1 and results["also"].written == 1  # type: ignore[union-attr]
    assert store.message_commits[:2] == [1, -3]  # the group of three was refused as a whole, then split
    assert sorted(m.id for m in engine.list_messages(NS)[0]) == ["also-m", "good-m", "m0"]
    assert turn_texts(engine, "good-m") == ["alice: a perfectly fine note"]
    assert not turn_texts(engine, "bad-m")
    engine.close()
