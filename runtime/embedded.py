"""The sidecar embedded in another program: an AgentrtServer on its own event loop in a background thread.

Used by the tests and the in-process benchmarks, and by apps that want the sidecar inside their own
process (the gRPC port is still what they call):

    srv = EmbeddedServer(load_settings(None, server={"port": 0}))
    ... AgentrtClient(f"127.0.0.1:{srv.port}") ...
    srv.stop()
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from runtime.config import Settings
from runtime.server import AgentrtServer


class EmbeddedServer:
    """Starts on construction (returns once SERVING); ``call`` runs a coroutine on its loop."""

    def __init__(self, settings: Settings, *, ready_timeout_s: float = 600):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="agentrt-embedded", daemon=True)
        self._thread.start()
        self._stopped = False
        try:
            self.server: AgentrtServer = self.call(self._create(settings))
        except BaseException:
            self._stop_loop()
            raise
        try:
            self.port: int = self.call(self.server.start())
            self.target = f"127.0.0.1:{self.port}"
            self.call(self.server.wait_ready(ready_timeout_s), timeout=ready_timeout_s + 5)
        except BaseException:
            # A start that failed (port or metrics port taken, a model that does not load) must not leave the
            # port listening, the worker threads and database pool open, or this loop's thread running.
            self.stop()
            raise

    @staticmethod
    async def _create(settings: Settings) -> AgentrtServer:
        return AgentrtServer(settings)  # the grpc.aio server must be created on the loop that runs it

    @property
    def rt(self) -> Any:
        """The server's Runtime (components, database)."""
        return self.server.rt

    def call(self, coro: Any, timeout: float | None = 600) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 0.0) -> None:
        """Graceful shutdown, then stop the loop and its thread (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.call(self.server.stop(grace), timeout=120)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._stopped = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()
