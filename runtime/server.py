"""The grpc.aio server: one call wrapper (readiness, auth, concurrency cap, deadline, metrics, error mapping),
health and reflection, start-up that loads models and indexes before turning SERVING, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from core import errors as domain
from core.embedding import CachingEmbedder, Embedder, create_embedder
from runtime import logs, metrics, naming
from runtime.config import Settings
from runtime.container import Runtime
from runtime.db import Database
from runtime.errors import RpcError, to_rpc_error
from runtime.services import SERVICE_MODULES

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class StartupError(RuntimeError):
    """The server cannot start with this configuration (the message says why and what to change)."""


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the wrapper can answer INVALID_ARGUMENT."""

    def __init__(self, error: str):
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, UnicodeDecodeError, ValueError) as exc:
            return _Malformed(str(exc) or exc.__class__.__name__)

    return parse


class Authenticator:
    """Maps bearer tokens to principals. Tokens are compared in constant time and never logged."""

    def __init__(self, settings: Settings):
        self._tokens = [
            (t.token.get_secret_value().encode(), naming.Principal(t.tenant, tuple(t.namespaces), t.read_only))
            for t in settings.auth.tokens
        ]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def authenticate(self, metadata: dict[str, Any]) -> naming.Principal:
        if not self._tokens:
            return naming.ANONYMOUS
        header = metadata.get("authorization")
        if not header:
            raise domain.UnauthenticatedError("missing 'authorization: Bearer <token>' metadata")
        scheme, _, token = str(header).partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise domain.UnauthenticatedError("authorization metadata must be 'Bearer <token>'")
        presented = token.strip().encode()
        for secret, principal in self._tokens:
            if hmac.compare_digest(secret, presented):
                return principal
        raise domain.UnauthenticatedError("unknown bearer token")


class CallWrapper(grpc.aio.ServerInterceptor):
    """Wraps every application handler: readiness, auth, concurrency cap, default deadline, metrics and the
    mapping of exceptions to statuses (runtime/errors.py), in this order."""

    def __init__(self, rt: Runtime, auth: Authenticator):
        self._rt = rt
        self._auth = auth
        self._cap = rt.settings.server.max_concurrent_rpcs
        self._in_flight = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(_OPEN_METHODS):
            return handler
        metadata = dict(details.invocation_metadata or ())
        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, metadata, handler.unary_unary),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, metadata, handler.unary_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client-streaming RPCs are not part of the API

    def _admit(self, request: Any, metadata: dict[str, Any]) -> None:
        if not self._rt.ready:
            raise domain.UnavailableError("the server is starting (models and indexes loading)", retry_after_s=1.0)
        principal = self._auth.authenticate(metadata)
        naming.current_principal.set(principal)
        if isinstance(request, _Malformed):
            raise domain.InvalidArgumentError("request", f"not a valid message: {request.error}")
        if self._in_flight >= self._cap:
            metrics.RPC_SHED.inc()
            raise domain.ResourceExhaustedError(
                f"server is at its concurrency cap ({self._cap} calls); retry with backoff"
            )

    async def _fail(self, context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
        err: RpcError = to_rpc_error(exc, method)
        metrics.RPC_ERRORS.labels(method, err.code.name).inc()
        await context.abort(err.code, err.message, trailing_metadata=err.trailing_metadata())

    @contextlib.asynccontextmanager
    async def _served(
        self, method: str, metadata: dict[str, Any], request: Any, context: grpc.aio.ServicerContext,
        default_deadline: float,
    ) -> AsyncIterator[None]:
        """Everything around one call: admission, in-flight count, default deadline, metrics, error mapping."""
        logs.request_id.set(uuid.uuid4().hex[:16])
        started = time.perf_counter()
        admitted = False
        try:
            self._admit(request, metadata)
            admitted = True
            self._in_flight += 1
            metrics.RPC_IN_FLIGHT.inc()
            timeout = None if context.time_remaining() is not None else default_deadline
            async with asyncio.timeout(timeout):
                yield
        except grpc.aio.AbortError:
            metrics.RPC_ERRORS.labels(method, str(context.code())).inc()
            raise
        except Exception as exc:
            await self._fail(context, method, exc)
        finally:
            if admitted:
                self._in_flight -= 1
                metrics.RPC_IN_FLIGHT.dec()
            metrics.RPC_LATENCY.labels(method).observe(time.perf_counter() - started)

    def _unary(self, method: str, metadata: dict[str, Any], inner: Callable[..., Any]) -> Callable[..., Any]:
        deadline = self._rt.settings.server.default_deadline_s

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._served(method, metadata, request, context, deadline):
                return await inner(request, context)

        return handle

    def _streaming(self, method: str, metadata: dict[str, Any], inner: Callable[..., Any]) -> Callable[..., Any]:
        deadline = self._rt.settings.server.stream_deadline_s

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._served(method, metadata, request, context, deadline):
                async for item in inner(request, context):
                    yield item

        return handle


def _service_names() -> list[str]:
    from agentrt.v1 import (
        agent_pb2,
        gate_pb2,
        guard_pb2,
        memory_pb2,
        select_pb2,
        tool_pb2,
    )

    names: list[str] = []
    for module in (memory_pb2, gate_pb2, select_pb2, guard_pb2, tool_pb2, agent_pb2):
        names.extend(s.full_name for s in module.DESCRIPTOR.services_by_name.values())
    return names


def check_binding(settings: Settings) -> None:
    """Refuse a non-loopback bind without tokens (unless ``insecure``) and half-configured TLS."""
    s = settings.server
    tls = s.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        raise StartupError("server.tls needs both cert_file and key_file")
    if tls.client_ca_file and not tls.enabled:
        raise StartupError("server.tls.client_ca_file (mTLS) needs cert_file and key_file too")
    if s.host not in LOOPBACK_HOSTS and not settings.auth.tokens and not s.insecure:
        raise StartupError(
            f"refusing to bind {s.host!r} without authentication: configure auth.tokens (bearer tokens), "
            "bind 127.0.0.1, or pass --insecure to accept unauthenticated remote callers"
        )


class AgentrtServer:
    """One sidecar: start() binds and begins loading; wait_ready() blocks until SERVING; stop() drains."""

    def __init__(self, settings: Settings, *, embedder: Embedder | None = None):
        check_binding(settings)
        self.settings = settings
        self._embedder_override = embedder
        db = Database(settings.storage.resolved_url())
        executor = ThreadPoolExecutor(settings.server.worker_threads, thread_name_prefix="agentrt-worker")
        self.rt = Runtime(settings=settings, db=db, executor=executor, replica_id=uuid.uuid4().hex[:16])
        self.port: int = 0
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._build_task: asyncio.Task[None] | None = None
        self._started_modules: list[Any] = []
        self._metrics_httpd: Any = None
        self._stopped = False
        self.tailer: Any = None

    async def start(self) -> int:
        """Bind the port, start serving health (NOT_SERVING), and begin loading in the background."""
        s = self.settings.server
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(interceptors=[CallWrapper(self.rt, Authenticator(self.settings))], options=options)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for module in SERVICE_MODULES:
            module.register(server, self.rt)
        names = _service_names()
        if s.reflection:
            from grpc_reflection.v1alpha import reflection

            reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        address = grpc_address(s.host, s.port)
        try:
            # Metrics first: once the gRPC server has started, a failure here would leave it serving health
            # with nothing behind it, and an event loop torn down under it ("Event loop is closed").
            if s.metrics_port >= 0:
                try:
                    self._metrics_httpd, self.metrics_port = metrics.start_metrics_server(
                        s.metrics_host, s.metrics_port)
                except OSError as exc:
                    raise StartupError(
                        f"could not serve metrics on {grpc_address(s.metrics_host, s.metrics_port)}: "
                        f"{exc.strerror or exc} (server.metrics_port; -1 turns metrics off)"
                    ) from None
            creds = _server_credentials(self.settings) if s.tls.enabled else None
            try:
                self.port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
            except RuntimeError:  # grpc raises (rather than returning 0) when the address is taken
                self.port = 0
            if self.port == 0:
                raise StartupError(f"could not bind {address}: the port is in use or the address is not local")
            for name in ["", *names]:
                await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            await server.start()
        except BaseException:
            await server.stop(0)
            self._stop_metrics()
            raise
        self._server = server
        self._build_task = asyncio.create_task(self._build(names))
        log.info("listening", extra={"address": grpc_address(s.host, self.port), "tls": s.tls.enabled,
                                     "metrics_port": self.metrics_port})
        return self.port

    async def _build(self, names: list[str]) -> None:
        rt = self.rt
        started = time.perf_counter()
        # One query vector per search: OpenMP threads only add contention (measured: a 900-vector flat search
        # took 23 ms with the default threads on a busy 2-core machine, 100k vectors 0.3-0.7 ms with one).
        import faiss

        faiss.omp_set_num_threads(1)
        await rt.offload(rt.db.migrate)
        feed = None
        start_seq = 0
        if rt.db.dialect == "postgresql":
            # Replicas share this database: publish our changes, tail everyone else's. The head is read
            # before the caches are rebuilt so nothing committed during the rebuild is missed.
            from runtime.replication import ChangeFeed, PgLeases

            feed = ChangeFeed(rt.db, rt.replica_id)
            rt.changes = feed
            rt.leases = PgLeases(rt.db)
            start_seq = await rt.offload(feed.head)
        if self._embedder_override is not None:
            rt.loaded_embedder = self._embedder_override
        else:
            emb = self.settings.embedding
            model = await rt.offload(
                create_embedder,
                emb.model,
                emb.device,
                emb.backend,
                emb.onnx_threads,
                emb.precision,
                self.settings.storage.cache_dir(),
            )
            if emb.torch_threads and "torch" in sys.modules:
                # Only where torch was loaded (the torch backend, or the first start's export): a start that
                # opened the cached ONNX encoder runs no torch at all and need not import it for this.
                import torch

                torch.set_num_threads(emb.torch_threads)
            rt.loaded_embedder = CachingEmbedder(model) if emb.cache_size > 0 else model
        for module in SERVICE_MODULES:
            await rt.offload(module.build, rt)
        for module in SERVICE_MODULES:
            start = getattr(module, "start", None)
            if start is not None:
                await start(rt)
            self._started_modules.append(module)
        if feed is not None:
            from runtime.replication import FeedTailer

            self.tailer = FeedTailer(feed, rt.replica_handlers, start_seq)
            await rt.offload(self.tailer.apply_available)
            self.tailer.start()
        rt.ready = True
        for name in ["", *names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"startup_s": round(time.perf_counter() - started, 3),
                                   "database": repr(rt.db), "embedder": rt.embedder.name})

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until models and indexes are loaded; re-raises a start-up failure."""
        if self._build_task is None:
            raise RuntimeError("start() first")
        await asyncio.wait_for(asyncio.shield(self._build_task), timeout)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, refuse new calls, drain in-flight ones for ``grace`` seconds,
        stop background work (flushing it), close the database."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.server.shutdown_grace_s if grace is None else grace
        log.info("shutting down", extra={"grace_s": grace})
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._build_task is not None and not self._build_task.done():
            self._build_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._build_task
        if self.tailer is not None:
            await self.rt.offload(self.tailer.stop)
        for module in reversed(self._started_modules):
            stop = getattr(module, "stop", None)
            if stop is not None:
                try:
                    await stop(self.rt)
                except Exception:
                    log.exception("error while stopping %s", module.__name__)
        self.rt.ready = False
        self.rt.executor.shutdown(wait=True)
        self.rt.db.dispose()
        self._stop_metrics()
        log.info("stopped")

    def _stop_metrics(self) -> None:
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
            self._metrics_httpd = None


def grpc_address(host: str, port: int) -> str:
    """``host:port`` for gRPC, an IPv6 literal in brackets (``[::1]:50051``; ``::1:50051`` does not parse)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _read_tls_file(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise StartupError(f"cannot read {setting} {path!r}: {exc.strerror or exc}") from None


def _server_credentials(settings: Settings) -> grpc.ServerCredentials:
    tls = settings.server.tls
    assert tls.cert_file and tls.key_file
    key = _read_tls_file("server.tls.key_file", tls.key_file)
    cert = _read_tls_file("server.tls.cert_file", tls.cert_file)
    ca = _read_tls_file("server.tls.client_ca_file", tls.client_ca_file) if tls.client_ca_file else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


async def serve(settings: Settings, port_file: str | None = None) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully. Returns the process exit code.

    ``port_file`` receives the bound port once listening (useful with ``--port 0``).
    """
    server = AgentrtServer(settings)
    try:
        await server.start()
    except StartupError:
        await server.stop(0)  # the database pool and worker threads made by the constructor
        raise
    if port_file:
        tmp = f"{port_file}.tmp"
        with open(tmp, "w") as f:
            f.write(str(server.port))
        os.replace(tmp, port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = asyncio.ensure_future(server.wait_ready())
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if ready in done and ready.exception() is not None:
        log.error("start-up failed", exc_info=ready.exception())
        await server.stop(0)
        return 1
    await stopping
    await server.stop()
    return 0
