"""How components take part in a multi-replica deployment without knowing about it.

A component that caches database state in memory (indexes, trees, registries) takes two optional
collaborators:

- a ``ChangePublisher``: called inside the component's own write transaction with a small JSON-able payload
  describing what changed; the runtime stores it in a change feed that every other replica tails, and calls
  the component's ``apply_remote_change(scope, payload)`` there. A single process needs none.
- a ``LeaseManager``: ``with leases.hold(name) as held:`` runs background work (refits, consolidation,
  evolution) on at most one replica at a time; ``held`` is False when another replica has it, and the lease
  is released if the holder dies. The local default always grants it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Protocol


class ChangePublisher(Protocol):
    """Records a committed change for other replicas, in the caller's transaction."""

    def publish(self, connection: Any, component: str, scope: str, payload: dict[str, Any]) -> None:
        """``connection`` is the SQLAlchemy Connection of the transaction that makes the change."""
        ...


class LeaseManager(Protocol):
    """Mutual exclusion of background work across replicas."""

    def hold(self, name: str) -> contextlib.AbstractContextManager[bool]:
        """Try to take the lease ``name`` without waiting; yields whether it is held."""
        ...


class NoChangePublisher:
    """Single-process default: nothing to tell anyone."""

    def publish(self, connection: Any, component: str, scope: str, payload: dict[str, Any]) -> None:
        return None


class LocalLeases:
    """Single-process default: a non-blocking lock per lease name."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[bool]:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        got = lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lock.release()
