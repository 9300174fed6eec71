"""The ``Runtime``: every component of one sidecar process, built once and shared by the servicers.

``runtime/`` composes ``memory/``, ``guards/`` and ``tools/``; those packages never see this object.
Component slots are filled by each service module's ``build(rt)`` (see ``runtime/services``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from core.coordination import ChangePublisher, LeaseManager, LocalLeases, NoChangePublisher
from core.embedding import Embedder
from runtime.config import Settings
from runtime.db import Database

T = TypeVar("T")


@dataclass
class Runtime:
    """Shared state of one sidecar process."""

    settings: Settings
    db: Database
    # Runs CPU-heavy and blocking work (embedding, FAISS, GMM fits, SQL) off the event loop.
    executor: ThreadPoolExecutor
    # Component slots, filled by runtime.services.<name>.build(rt).
    memory: Any = None
    gates: Any = None
    selector: Any = None
    guards: Any = None
    tools: Any = None
    agent: Any = None
    # Free-form slots for components that need more than one object.
    extras: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    # Multi-replica collaboration (runtime/replication.py): components publish changes of their cached
    # state through ``changes`` inside their write transactions, register ``replica_handlers[component]``
    # to apply other replicas' changes, and run background work under ``leases``.
    changes: ChangePublisher = field(default_factory=NoChangePublisher)
    leases: LeaseManager = field(default_factory=LocalLeases)
    replica_handlers: dict[str, Callable[[str, dict[str, Any]], None]] = field(default_factory=dict)
    replica_id: str = ""
    # Loaded during start-up (before health turns SERVING); read through ``embedder``.
    loaded_embedder: Embedder | None = None

    @property
    def embedder(self) -> Embedder:
        """The shared text embedder (loaded once per process)."""
        if self.loaded_embedder is None:
            raise RuntimeError("the embedder is not loaded yet (server still starting)")
        return self.loaded_embedder

    def policy(self, component: str, scope: str) -> dict[str, Any]:
        """Configured policy of ``component`` for a scoped namespace key (see Settings.policy)."""
        return self.settings.policy(component, scope)

    async def offload(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the worker pool, keeping context variables (tenant, request id)."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self.executor, call)

    async def scope(
        self, namespace: str, *, write: bool = False, create: bool = False, field_name: str = "namespace"
    ) -> str:
        """Validate ``namespace`` for the calling tenant and return the opaque scoped key components use.

        Raises InvalidArgumentError (bad name), PermissionDeniedError (token not allowed there, or read-only
        with ``write=True``). With ``write`` or ``create`` the namespace is created on first use with the
        tenant's default policies (``create`` alone: calls like Check that read-only tokens may make).
        """
        from runtime import naming

        key = naming.scoped_namespace(namespace, write=write, field_name=field_name)
        if (write or create) and not self.db.is_known(key):  # the common case skips the thread hop
            await self.offload(self.db.ensure_namespace, key)
        return key


async def check_guard(guards: Any, offload: Callable[..., Awaitable[Any]], scope: str, request: Any) -> Any:
    """A guard verdict: decided on the calling event loop when the guard can answer at once (its
    ``check_now``: embeddings cached, nothing to wait for), else by ``guards.check`` through ``offload``.

    For text seen before, the hop to a worker thread and back costs more than the check itself.
    """
    check_now = getattr(guards, "check_now", None)
    verdict = check_now(scope, request) if check_now is not None else None
    if verdict is None:
        verdict = await offload(guards.check, scope, request)
    return verdict
