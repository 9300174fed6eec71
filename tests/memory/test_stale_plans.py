"""Two engines on one store stand for two replicas on one database: what one commits between the other's
plan and its commit (a Delete, the same message) must not be undone by that commit. Deterministic: the
other replica's call runs from a hook just before a given store call of the first."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from core.embedding import create_embedder
from memory.engine import MemoryEngine
from memory.model import MemoryMessage
from memory.store import MemoryStore

NS = "acme/chat"
T0 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)


class HookedStore:
    """Delegates to a real store; ``before(method, hook)`` runs ``hook`` once, just before the next call of
    ``method`` (what another replica commits at that moment)."""

    def __init__(self, inner: MemoryStore):
        self._inner = inner
        self._hooks: dict[str, Callable[[], object]] = {}

    def before(self, method: str, hook: Callable[[], object]) -> None:
        self._hooks[method] = hook

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self._hooks:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            hook = self._hooks.pop(name, None)
            if hook is not None:
                hook()
            return attr(*args, **kwargs)

        return call


def conversation(session: str = "s") -> list[MemoryMessage]:
    return [
        MemoryMessage(f"m{i}", session, "alice" if i % 2 else "bob", f"line {i} about the harbour crane permit", T0)
        for i in range(4)
    ]


def engines(store_factory: Callable[[], MemoryStore]) -> tuple[MemoryEngine, MemoryEngine, HookedStore, HookedStore]:
    a_store, b_store = HookedStore(store_factory()), HookedStore(store_factory())
    a = MemoryEngine(a_store, create_embedder("hashing"), background=False)  # type: ignore[arg-type]
    b = MemoryEngine(b_store, create_embedder("hashing"), background=False)  # type: ignore[arg-type]
    return a, b, a_store, b_store


def test_a_derivation_does_not_bring_back_units_of_a_session_deleted_before_its_commit(
    store_factory: Callable[[], MemoryStore],
) -> None:
    a, b, _, b_store = engines(store_factory)
    b.write(NS, "s", conversation())
    # b derives the session from its snapshot; a deletes the session after b's checks read it, before b commits.
    b_store.before("get_units", lambda: a.delete(NS, session_id="s"))
    b.flush()
    store = store_factory()
    assert store.session_messages(NS, "s") == []
    assert store.units_covering(NS, [m.id for m in conversation()]) == []
    assert store.session_units(NS, ["s"]) == []
    assert store.pending_sessions(NS) == []
    a.close()
    b.close()


def test_a_delete_removes_units_derived_over_its_messages_after_it_read_them(
    store_factory: Callable[[], MemoryStore],
) -> None:
    a, b, a_store, _ = engines(store_factory)
    a.write(NS, "s", conversation())  # pending: only the turn units are stored
    # b derives the session (windows, digest over m1) after a planned the Delete from the turn units alone.
    a_store.before("apply", lambda: b.consolidate(NS, refit=False))
    result = a.delete(NS, message_ids=["m1"])
    store = store_factory()
    assert store.units_covering(NS, ["m1"]) == []
    assert not any("m1" in s.unit.message_ids for s in store.session_units(NS, ["s"]))
    assert list(a.index(NS).units_of_message("m1")) == []  # the index dropped them with the commit
    assert result.messages == 1
    a.close()
    b.close()


def test_an_identical_resend_committed_by_another_replica_after_the_check_writes_nothing(
    store_factory: Callable[[], MemoryStore],
) -> None:
    a, b, a_store, _ = engines(store_factory)
    a.index(NS), b.index(NS)
    msgs = conversation()[:2]
    # b stores the same messages after a's plan was checked and before a's commit.
    a_store.before("apply", lambda: b.write(NS, "s", msgs))
    result = a.write(NS, "s", msgs)
    assert (result.written, result.unchanged) == (0, 2)
    assert [s.message.id for s in store_factory().session_messages(NS, "s")] == ["m0", "m1"]
    a.close()
    b.close()
