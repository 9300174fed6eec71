"""Executors: run one tool call over HTTP(S), against an MCP server, or in-process (builtins).

Transport failures raise ``UnavailableError`` (with retry advice) and are the only failures the
runner retries, and only for idempotent tools; a tool that answers with an error (HTTP 4xx/5xx other
than 429/502/503/504, MCP ``isError``) is a result with ``is_error`` set, never retried.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from core.errors import DeadlineExceededError, NotFoundError, UnavailableError
from tools.model import ExecutorKind, ExecutorSpec, ToolDefinition

# Statuses that mean "the endpoint is not able to answer right now", so a retry may succeed.
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class ExecResult:
    """What a tool returned: its output (bytes are capped by the executor where it can stream)."""

    output: bytes
    is_error: bool = False
    content_type: str = "application/json"
    total_bytes: int | None = None
    """Whole output's size when the executor stopped reading early (-1: unknown); None: complete."""


class Executor(Protocol):
    """Runs one call of a tool; the runner wraps it with the deadline, retries and the size cap."""

    async def execute(
        self, scope: str, tool: ToolDefinition, arguments: dict[str, Any], timeout_s: float
    ) -> ExecResult:
        """Run the call or raise UnavailableError / DeadlineExceededError."""
        ...


def _retry_after(response: httpx.Response, default: float) -> float:
    raw = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(raw))
    except ValueError:
        return default


class HttpExecutor:
    """POSTs (or PUT/GETs) the arguments as JSON to the tool's URL; reads at most the output cap + 1 byte.

    One pooled ``httpx.AsyncClient`` per event loop keeps connections alive between calls, which is most
    of the difference between a 1 ms and a 5 ms call on a local tool.
    """

    def __init__(self, *, max_connections: int = 100):
        self._max_connections = max_connections
        self._clients: dict[int, httpx.AsyncClient] = {}

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(id(loop))
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=self._max_connections, max_keepalive_connections=20),
                follow_redirects=False,
                trust_env=False,
            )
            self._clients[id(loop)] = client
        return client

    async def aclose(self) -> None:
        """Close the pooled client of the running loop."""
        client = self._clients.pop(id(asyncio.get_running_loop()), None)
        if client is not None:
            await client.aclose()

    async def execute(
        self, scope: str, tool: ToolDefinition, arguments: dict[str, Any], timeout_s: float
    ) -> ExecResult:
        """Send the call; transport errors become UnavailableError, a timeout DeadlineExceededError."""
        ex = tool.executor
        method = ex.method.upper()
        kwargs: dict[str, Any] = {"headers": {"accept": "application/json", **ex.headers}}
        if method == "GET":
            kwargs["params"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in arguments.items()}
        else:
            kwargs["json"] = arguments
        cap = tool.max_output_bytes
        try:
            async with self._client().stream(method, ex.url, timeout=timeout_s, **kwargs) as resp:
                if resp.status_code in RETRYABLE_STATUS:
                    raise UnavailableError(
                        f"tool {tool.name!r}: endpoint answered HTTP {resp.status_code}",
                        retry_after_s=_retry_after(resp, 1.0),
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > cap:
                        break
                body = b"".join(chunks)
                declared = resp.headers.get("content-length")
                total = int(declared) if declared and declared.isdigit() else -1
                return ExecResult(
                    output=body,
                    is_error=resp.status_code >= 400,
                    content_type=resp.headers.get("content-type", ""),
                    total_bytes=total if size > cap else None,
                )
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise UnavailableError(f"tool {tool.name!r}: connect to {ex.url} timed out", 1.0) from exc
            raise DeadlineExceededError(f"tool {tool.name!r} did not answer within {timeout_s:.3g}s") from exc
        except httpx.TransportError as exc:
            raise UnavailableError(
                f"tool {tool.name!r}: endpoint {ex.url} unreachable ({type(exc).__name__}: {exc})",
                retry_after_s=1.0,
            ) from exc


BuiltinHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""``async handler(scope, arguments) -> JSON-able value``."""


@dataclass(frozen=True)
class Builtin:
    """An in-process tool: its definition (executor kind BUILTIN) and its handler."""

    definition: ToolDefinition
    handler: BuiltinHandler = field(compare=False)


class BuiltinExecutor:
    """Builtins visible in every namespace (``memory.search``, ``memory.write``, ...)."""

    def __init__(self) -> None:
        self._builtins: dict[str, Builtin] = {}

    def add(
        self,
        name: str,
        description: str,
        input_schema: dict[str, Any],
        handler: BuiltinHandler,
        *,
        risk_tags: tuple[str, ...] = (),
        idempotent: bool = False,
    ) -> ToolDefinition:
        """Register a builtin; its registry name and ``executor.builtin`` are both ``name``."""
        definition = ToolDefinition(
            name=name,
            description=description,
            input_schema=input_schema,
            executor=ExecutorSpec(kind=ExecutorKind.BUILTIN, builtin=name),
            risk_tags=risk_tags,
            idempotent=idempotent,
            version=1,
        )
        self._builtins[name] = Builtin(definition, handler)
        return definition

    def definitions(self) -> list[ToolDefinition]:
        """Every builtin's definition, sorted by name."""
        return [self._builtins[n].definition for n in sorted(self._builtins)]

    def get(self, name: str) -> ToolDefinition | None:
        """A builtin's definition, or None."""
        b = self._builtins.get(name)
        return b.definition if b else None

    async def execute(
        self, scope: str, tool: ToolDefinition, arguments: dict[str, Any], timeout_s: float
    ) -> ExecResult:
        """Run the handler; its return value becomes JSON text (a str is passed through)."""
        b = self._builtins.get(tool.executor.builtin)
        if b is None:
            raise NotFoundError("builtin", tool.executor.builtin)
        value = await b.handler(scope, arguments)
        body = value if isinstance(value, str) else json.dumps(value, default=str)
        return ExecResult(output=body.encode())
