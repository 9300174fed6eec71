"""The grpc.aio server: one call wrapper (readiness, auth, concurrency cap, deadline, metrics, error mapping),
health and reflection, start-up that checks what it can before binding (configured policies, TLS files, the
database URL) and loads models and indexes before turning SERVING, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import logging
import os
import signal
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from core import errors as domain
from core.embedding import CachingEmbedder, Embedder, create_embedder
from runtime import logs, metrics, naming
from runtime.config import Settings
from runtime.container import Runtime
from runtime.db import Database, DatabaseError
from runtime.errors import RpcError, to_rpc_error
from runtime.serve_lock import ServeLock, ServeLockHeld
from runtime.services import SERVICE_MODULES

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


# Retry advice of a call shed at the concurrency cap: calls take milliseconds, a slot frees up soon.
SHED_RETRY_AFTER_S = 0.1


class StartupError(RuntimeError):
    """The server cannot start with this configuration (the message says why and what to change)."""


class PolicyError(StartupError, domain.InvalidArgumentError):
    """A configured policy (``policies.*``) its component refuses. ``violations`` are as the component names them
    (``policies.gates.retrieve.threshold``); the message names each key where it is configured
    (``policies.namespaces.demo.gates.retrieve.threshold``)."""

    def __init__(self, violations: list[domain.FieldViolation], message: str):
        domain.InvalidArgumentError.__init__(self, violations)
        self.args = (message,)


class _AtCapacity(domain.ResourceExhaustedError):
    """Shed by the concurrency cap; ``retry_after_s`` goes to the client as RetryInfo."""

    def __init__(self, message: str, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(message)


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

    def authenticate(self, metadata: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> naming.Principal:
        """The principal of the call's ``authorization: Bearer <token>`` metadata (a mapping, or the call's
        (key, value) pairs). Raises UnauthenticatedError when tokens are configured and it is missing, malformed,
        given more than once or unknown."""
        if not self._tokens:
            return naming.ANONYMOUS
        if isinstance(metadata, Mapping):
            headers = [metadata["authorization"]] if metadata.get("authorization") else []
        else:
            headers = [value for key, value in metadata if key == "authorization"]
        if not headers:
            raise domain.UnauthenticatedError("missing 'authorization: Bearer <token>' metadata")
        if len(headers) > 1:
            # Which one counts would be up to the proxies on the way (the last one won): refuse the ambiguity.
            raise domain.UnauthenticatedError("more than one 'authorization' metadata value; send one")
        scheme, _, token = str(headers[0]).partition(" ")
        token = token.strip()  # "Bearer " plus spaces is no token at all
        if scheme.lower() != "bearer" or not token:
            raise domain.UnauthenticatedError("authorization metadata must be 'Bearer <token>'")
        presented = token.encode()
        for secret, principal in self._tokens:
            if hmac.compare_digest(secret, presented):
                return principal
        raise domain.UnauthenticatedError("unknown bearer token")


@dataclasses.dataclass
class _Call:
    """One RPC as the wrapper sees it, shared by its handler and its reply serializer."""

    method: str
    # Pairs, not a dict: a key sent twice must be seen twice (two authorization values are refused).
    metadata: tuple[tuple[str, Any], ...]
    # A reply was over server.max_message_bytes: gRPC ends the call, and it is counted once, as that.
    reply_refused: bool = False


class CallWrapper(grpc.aio.ServerInterceptor):
    """Wraps every application handler: readiness, auth, concurrency cap, default deadline, metrics and the
    mapping of exceptions to statuses (runtime/errors.py), in this order."""

    def __init__(self, rt: Runtime, auth: Authenticator):
        self._rt = rt
        self._auth = auth
        self._cap = rt.settings.server.max_concurrent_rpcs
        self._max_reply = rt.settings.server.max_message_bytes
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
        call = _Call(method, tuple(details.invocation_metadata or ()))
        deserializer = _tolerant(handler.request_deserializer)
        serializer = self._measured(call, handler.response_serializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(call, handler.unary_unary),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(call, handler.unary_stream),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        return handler  # client-streaming RPCs are not part of the API

    def _measured(self, call: _Call, serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
        """``serializer``, counting replies over ``server.max_message_bytes``: gRPC refuses to send them
        (RESOURCE_EXHAUSTED) after the handler has returned or yielded, where nothing else of ours sees it."""
        if serializer is None:
            return None
        limit = self._max_reply

        def serialize(message: Any) -> bytes:
            data = serializer(message)
            if len(data) > limit and not call.reply_refused:
                call.reply_refused = True
                metrics.RPC_ERRORS.labels(call.method, grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc()
                log.warning("reply larger than server.max_message_bytes: not sent",
                            extra={"method": call.method, "reply_bytes": len(data), "max_message_bytes": limit})
            return data

        return serialize

    def _admit(self, request: Any, metadata: tuple[tuple[str, Any], ...]) -> None:
        if not self._rt.ready:
            raise domain.UnavailableError("the server is starting (models and indexes loading)", retry_after_s=1.0)
        principal = self._auth.authenticate(metadata)
        naming.current_principal.set(principal)
        if isinstance(request, _Malformed):
            raise domain.InvalidArgumentError("request", f"not a valid message: {request.error}")
        if self._in_flight >= self._cap:
            metrics.RPC_SHED.inc()
            raise _AtCapacity(
                f"server is at its concurrency cap ({self._cap} calls); retry with backoff", SHED_RETRY_AFTER_S
            )

    async def _fail(self, context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
        err: RpcError = to_rpc_error(exc, method)
        metrics.RPC_ERRORS.labels(method, err.code.name).inc()
        await context.abort(err.code, err.message, trailing_metadata=err.trailing_metadata())

    @contextlib.asynccontextmanager
    async def _served(
        self, call: _Call, request: Any, context: grpc.aio.ServicerContext, default_deadline: float
    ) -> AsyncIterator[float | None]:
        """Everything around one call: admission, in-flight count, metrics, error mapping. Yields the call's own
        deadline (event-loop time) when the client set none, which the caller applies: None otherwise."""
        logs.request_id.set(uuid.uuid4().hex[:16])
        started = time.perf_counter()
        admitted = False
        try:
            self._admit(request, call.metadata)
            admitted = True
            self._in_flight += 1
            metrics.RPC_IN_FLIGHT.inc()
            # A client's deadline is gRPC's to enforce: it cancels the call (the CancelledError below).
            if context.time_remaining() is not None:
                yield None
            else:
                yield asyncio.get_running_loop().time() + default_deadline
        except grpc.aio.AbortError:
            metrics.RPC_ERRORS.labels(call.method, _code_name(context.code())).inc()
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # gRPC ended the call: its deadline passed, the client cancelled, or the server is stopping
            # (CancelledError); or a stream's client went away while an event was being written (gRPC closes
            # the stream then: GeneratorExit). The client has its status; only the count is left to do.
            if not call.reply_refused:
                metrics.RPC_ERRORS.labels(call.method, _cancelled_code(context)).inc()
            raise
        except Exception as exc:
            await self._fail(context, call.method, exc)
        finally:
            if admitted:
                self._in_flight -= 1
                metrics.RPC_IN_FLIGHT.dec()
            metrics.RPC_LATENCY.labels(call.method).observe(time.perf_counter() - started)

    def _unary(self, call: _Call, inner: Callable[..., Any]) -> Callable[..., Any]:
        default_deadline = self._rt.settings.server.default_deadline_s

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._served(call, request, context, default_deadline) as deadline:
                async with asyncio.timeout_at(deadline):
                    return await inner(request, context)

        return handle

    def _streaming(self, call: _Call, inner: Callable[..., Any]) -> Callable[..., Any]:
        default_deadline = self._rt.settings.server.stream_deadline_s

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._served(call, request, context, default_deadline) as deadline:
                loop = asyncio.get_running_loop()
                stream = inner(request, context)
                try:
                    while True:
                        # The deadline covers producing each item, never the yield: while gRPC writes an item
                        # this generator is suspended, and a timeout firing then cancels gRPC's write instead of
                        # our code; the call then ended with no status at all (the client waited forever).
                        # A deadline that passed during a write ends the call at the next item.
                        if deadline is not None and loop.time() >= deadline:
                            raise TimeoutError
                        async with asyncio.timeout_at(deadline):
                            try:
                                item = await anext(stream)
                            except StopAsyncIteration:
                                break
                        yield item
                finally:
                    aclose = getattr(stream, "aclose", None)
                    if aclose is not None:
                        await aclose()

        return handle


def _code_name(code: Any) -> str:
    """A status code as metrics label it (``NOT_FOUND``)."""
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def _cancelled_code(context: grpc.aio.ServicerContext) -> str:
    """DEADLINE_EXCEEDED when the client's deadline has passed, else CANCELLED (the client cancelled, or the
    server is stopping)."""
    remaining = context.time_remaining()
    expired = remaining is not None and remaining <= 0.001
    return (grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED).name


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
    # Truthiness, not ``is None``: an empty path is no file (a plaintext server came up with cert_file: "").
    if bool(tls.cert_file) != bool(tls.key_file):
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
        db = _open_database(settings)
        # Taken by start(): a server object that is never started keeps nobody else from starting.
        self._serve_lock: ServeLock | None = None
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
        """Bind the port, start serving health (NOT_SERVING), and begin loading in the background.

        Raises StartupError, before anything is bound, for a SQLite database another server holds
        (``runtime/serve_lock.py``), configured policies a component refuses (PolicyError) and unusable TLS files;
        and for a port or metrics port it cannot bind."""
        s = self.settings.server
        if self._serve_lock is None:
            try:
                self._serve_lock = ServeLock.acquire(self.settings.storage.resolved_url())
            except ServeLockHeld as exc:
                raise StartupError(str(exc)) from None
            except OSError as exc:  # a directory that cannot hold the lock file
                raise StartupError(f"cannot lock the database for this server: {exc} (storage.data_dir)") from None
        check_policies(self.rt)
        # Before binding: gRPC reports bad TLS material only as a failure to bind ("port in use").
        creds = _server_credentials(self.settings) if s.tls.enabled else None
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
        try:
            await self._shut_down(grace)
        finally:
            # Also when stopping failed part way: the next start on this database (a restart in this process, or a
            # new one) must not be refused for a server that is gone.
            self._release_serve_lock()

    async def _shut_down(self, grace: float | None) -> None:
        grace = self.settings.server.shutdown_grace_s if grace is None else grace
        # A start refused before binding only releases what the constructor made: nothing to announce (the
        # refusal is the one line an operator should see).
        announce = self._server is not None
        if announce:
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
        # Not waiting: a worker still inside a call that the grace period cut off (a slow search) would hold the
        # event loop, and stop() ran past the grace by as long; its result has nowhere to go. Queued work is
        # dropped.
        self.rt.executor.shutdown(wait=False, cancel_futures=True)
        self.rt.db.dispose()
        self._stop_metrics()
        if announce:
            log.info("stopped")

    def _release_serve_lock(self) -> None:
        if self._serve_lock is not None:
            self._serve_lock.release()
            self._serve_lock = None

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


def _no_passphrase() -> bytes:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal; gRPC cannot use one either.
    return b""


def _check_tls_material(cert_file: str, key_file: str, cert: bytes, ca_file: str | None, ca: bytes | None) -> None:
    """Raise StartupError naming the ``server.tls.*`` setting whose file gRPC could not use, and why."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.load_verify_locations(cadata=cert.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError):
        raise StartupError(f"server.tls.cert_file {cert_file!r} holds no PEM certificate "
                           "(-----BEGIN CERTIFICATE-----)") from None
    try:
        probe.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise StartupError(f"server.tls.key_file {key_file!r} is not the private key of the certificate in "
                               f"server.tls.cert_file {cert_file!r}") from None
        why = f"; {exc.reason}" if exc.reason else ""  # OpenSSL's reason, where it has one beyond "PEM lib"
        raise StartupError(f"server.tls.key_file {key_file!r} holds no usable PEM private key (unencrypted, "
                           f"-----BEGIN ... PRIVATE KEY-----{why})") from None
    except OSError as exc:
        raise StartupError(f"cannot read server.tls.key_file {key_file!r}: {exc.strerror or exc}") from None
    if ca is not None:
        try:
            probe.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError):
            raise StartupError(f"server.tls.client_ca_file {ca_file!r} holds no PEM certificate "
                               "(-----BEGIN CERTIFICATE-----)") from None


def _server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """The server's TLS credentials; StartupError naming the setting for a file that is missing, unreadable or
    not what it should be (a certificate, its private key, CA certificates)."""
    tls = settings.server.tls
    assert tls.cert_file and tls.key_file
    key = _read_tls_file("server.tls.key_file", tls.key_file)
    cert = _read_tls_file("server.tls.cert_file", tls.cert_file)
    ca = _read_tls_file("server.tls.client_ca_file", tls.client_ca_file) if tls.client_ca_file else None
    _check_tls_material(tls.cert_file, tls.key_file, cert, tls.client_ca_file, ca)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def _shown_database_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can read: mask what looks like a password
        return logs.redacted_url(url)


def _open_database(settings: Settings) -> Database:
    """The configured Database; StartupError in one line for a URL that names no usable database or a data
    directory that cannot hold one (nothing connects yet: that is the start-up's first step)."""
    url = settings.storage.resolved_url()
    try:
        return Database(url)
    except (DatabaseError, SQLAlchemyError, OSError, ValueError) as exc:
        detail = (str(exc).strip().splitlines() or [""])[0]
        raise StartupError(f"cannot use the database {_shown_database_url(url)}: {exc.__class__.__name__}: "
                           f"{detail} (storage.database_url, or storage.data_dir for SQLite)") from None


# Where each component names its configured keys in its errors (``policies.<component>.<key>``, the agent
# policy ``policy.<key>``); check_policies says where the key really is.
_COMPONENT_FIELDS = ("policies.{component}", "policy")


def _located(field: str, component: str, where: str) -> str:
    """``field`` as a component names it, placed at ``where`` (``policies.namespaces.demo``)."""
    for pattern in _COMPONENT_FIELDS:
        prefix = pattern.format(component=component)
        if field == prefix or field.startswith((f"{prefix}.", f"{prefix}[")):
            return f"{where}.{component}{field[len(prefix):]}"
    return f"{where}.{component} ({field})"


def check_policies(rt: Runtime) -> None:
    """Run each component's validator over the configured policies (``policies.*``) before anything is bound:
    otherwise the start failed after listening, with a traceback. Raises PolicyError naming every bad key where
    it is configured.

    Each component also checks them again when it is built; these are the same validators, called early.
    """
    from guards.memory import MemoryParams
    from memory.engine import checked_derive_duty
    from runtime.agent.policy import TurnPolicy
    from runtime.convert.tool import policy_from_config
    from runtime.gates import GateEngine
    from runtime.selection.selector import SelectorConfig
    from runtime.services import gate as gate_service
    from runtime.services import guard as guard_service
    from runtime.services import memory as memory_service

    settings = rt.settings
    policies = settings.policies
    found: list[tuple[domain.FieldViolation, str]] = []  # (as the component named it, where it is configured)

    def collect(check: Callable[[], object], locate: Callable[[str], str], section: str) -> bool:
        """Run ``check``; False, with what it refused, where it raised (``section``: where a plain
        TypeError or ValueError, which names no key, is placed)."""
        try:
            check()
        except domain.InvalidArgumentError as exc:
            found.extend((v, locate(v.field)) for v in exc.violations)
            return False
        except (TypeError, ValueError) as exc:
            found.append((domain.FieldViolation(section, str(exc)), section))
            return False
        return True

    def as_named(field: str) -> str:
        return field

    # These check every level themselves and name the configured keys.
    duty = policies.defaults.get("memory", {}).get("derive_duty")
    if duty is not None:
        try:
            checked_derive_duty(duty)
        except ValueError as exc:
            field = "policies.defaults.memory.derive_duty"
            found.append((domain.FieldViolation(field, str(exc)), field))
    collect(lambda: memory_service._check_memory_policies(rt), as_named, "policies.*.memory")
    # The guards' own check of their configured keys, where the guards service has one.
    check_guards = getattr(guard_service, "_check_guard_policies", None)
    if check_guards is not None:
        collect(lambda: check_guards(rt), as_named, "policies.*.guards")
    collect(lambda: MemoryParams.from_config(policies.defaults.get("guards", {}).get("memory"),
                                             "policies.defaults.guards.memory"), as_named,
            "policies.defaults.guards.memory")

    # These check the policy in effect for one namespace, and name keys relative to their component.
    gates = GateEngine(rt.db.engine, lambda scope: gate_service.gate_config(rt, scope))
    per_scope: dict[str, Callable[[str], object]] = {
        "gates": lambda scope: gates.validate_config([scope]),
        "select": lambda scope: SelectorConfig.from_mapping(settings.policy("select", scope)),
        "tools": lambda scope: policy_from_config(settings.policy("tools", scope)),
        # The ranges too, not only the types: a temperature of 5 passed here, then failed every turn blaming the client.
        "agent": lambda scope: TurnPolicy.from_dict(settings.policy("agent", scope)).validate(configured=True),
    }
    levels = [("_/_", "policies.defaults"), *((name, f"policies.namespaces.{name}") for name in policies.namespaces)]
    for component, check in per_scope.items():
        for scope, where in levels:
            if scope != "_/_" and component not in policies.namespaces[scope]:
                continue  # the defaults' policy, checked already
            passed = collect(functools.partial(check, scope),
                             functools.partial(_located, component=component, where=where), f"{where}.{component}")
            if not passed and scope == "_/_":
                break  # every namespace inherits the defaults: each would report the same problem again
    if found:
        shown = dict.fromkeys(f"{where}: {v.description}" for v, where in found)
        raise PolicyError([v for v, _ in found], "invalid policy configuration: " + "; ".join(shown))


def _check_port_file(port_file: str) -> None:
    """StartupError, before anything is bound, when ``port_file`` could not be written once listening."""
    path = Path(port_file)
    directory = path.parent
    if path.is_dir():
        raise StartupError(f"--port-file {port_file!r} is a directory; name a file")
    if not directory.is_dir():
        raise StartupError(f"--port-file {port_file!r}: the directory {str(directory)!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StartupError(f"--port-file {port_file!r}: the directory {str(directory)!r} is not writable")


def _write_port_file(port_file: str, port: int) -> None:
    # Written aside and renamed: a reader never sees an empty or partial file.
    tmp = f"{port_file}.tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, port_file)


async def serve(settings: Settings, port_file: str | None = None) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully. Returns the process exit code.

    ``port_file`` receives the bound port once listening (useful with ``--port 0``).
    """
    if port_file:
        _check_port_file(port_file)
    server = AgentrtServer(settings)
    try:
        await server.start()
    except StartupError:
        await server.stop(0)  # the database pool and worker threads made by the constructor
        raise
    if port_file:
        try:
            _write_port_file(port_file, server.port)
        except OSError as exc:
            # Whoever waits for the file would wait forever for a server it cannot find.
            await server.stop(0)
            raise StartupError(f"cannot write --port-file {port_file!r}: {exc.strerror or exc}") from None
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
