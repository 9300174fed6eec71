"""Thin gRPC servicers, one module per service.

Each module exposes:
- ``build(rt)``: construct its transport-neutral component(s) and attach them to the ``Runtime``
  (runs in a worker thread at start-up, before health turns SERVING; may be slow: model and index loads);
- ``register(server, rt)``: add its servicer to the grpc.aio server (runs before the server starts);
- optionally ``async start(rt)`` / ``async stop(rt)``: background tasks, flushed on graceful shutdown.

The order below is the build order: later components may use earlier ones.
"""

from __future__ import annotations

from types import ModuleType

from runtime.services import agent, gate, guard, memory, select, tool

SERVICE_MODULES: tuple[ModuleType, ...] = (memory, gate, select, guard, tool, agent)
