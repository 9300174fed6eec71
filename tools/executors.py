"""Executors: run one tool call over HTTP(S), against an MCP server, or in-process (builtins).

Transport failures raise ``UnavailableError`` (with retry advice) and are the only failures the
runner retries, and only for idempotent tools; a tool that answers with an error (HTTP 4xx/5xx other
than 429/502/503/504, MCP ``isError``) is a result with ``is_error`` set, never retried.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from core.errors import DeadlineExceededError, NotFoundError, UnavailableError
from core.http import SessionPerLoop
from tools.model import ExecutorKind, ExecutorSpec, ToolDefinition

# Statuses that mean "the endpoint is not able to answer right now", so a retry may succeed.
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
# Longest wait for a TCP connection to a tool endpoint (within the call's own deadline).
CONNECT_TIMEOUT_S = 5.0
# Longest Retry-After advice passed on from an endpoint (a day).
MAX_RETRY_AFTER_S = 86400.0


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


def _retry_after(headers: Mapping[str, str], default: float) -> float:
    raw = headers.get("retry-after", "")
    try:
        seconds = float(raw)
    except ValueError:
        return default
    # "inf", "nan" or "1e300" from an endpoint is no advice a client can act on (nor encode as a Duration).
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else default


def endpoint_label(url: str) -> str:
    """``scheme://host:port`` of ``url``: what error messages and audit reasons may name.

    The path, the query string and any ``user:password@`` may carry credentials (``?api_key=...``); errors
    reach the caller and the audit trail, which read-only tokens can list."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "the tool's endpoint"
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _scrub(text: str, url: str) -> str:
    """``text`` (an aiohttp exception's message, which may quote the whole URL) with the URL replaced."""
    label = endpoint_label(url)
    for secret in {url, url.split("#", 1)[0], str(URL(url)) if url else ""} - {""}:
        text = text.replace(secret, label)
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    # Pieces aiohttp may quote on their own (a URL it normalised, a query it re-encoded).
    for secret in (parts.query, parts.password or "", parts.username or "", parts.path):
        if len(secret) > 1:
            text = text.replace(secret, "***")
    return text


class HttpExecutor:
    """POSTs (or PUT/GETs) the arguments as JSON to the tool's URL; reads at most the output cap + 1 byte.

    Connections stay pooled per event loop (``core.http.SessionPerLoop``): on loopback aiohttp's request path
    costs about 0.26 ms against httpx's 0.77 ms (measured here, same no-op server), a tenth of the whole Invoke
    overhead budget.
    """

    def __init__(self, *, max_connections: int = 100):
        self._sessions = SessionPerLoop(max_connections=max_connections)

    async def aclose(self) -> None:
        """Close the pooled session of the running loop."""
        await self._sessions.aclose()

    async def execute(
        self, scope: str, tool: ToolDefinition, arguments: dict[str, Any], timeout_s: float
    ) -> ExecResult:
        """Send the call; transport errors become UnavailableError, a timeout DeadlineExceededError."""
        ex = tool.executor
        method = ex.method.upper()
        defaults = {"accept": "application/json"}
        if method != "GET":
            defaults["content-type"] = "application/json"
        # Header names are case-insensitive: a registered "Content-Type" or "Accept" replaces the default.
        registered = {name.lower() for name in ex.headers}
        headers = {**{k: v for k, v in defaults.items() if k not in registered}, **ex.headers}
        kwargs: dict[str, Any] = {}
        # allow_nan=False: NaN and Infinity are not JSON (decode_json refuses them in arguments already).
        if method == "GET":
            kwargs["params"] = {
                k: v if isinstance(v, str) else json.dumps(v, allow_nan=False) for k, v in arguments.items()
            }
        else:
            kwargs["data"] = json.dumps(arguments, allow_nan=False).encode()
        cap = tool.max_output_bytes
        # The connect phase gets its own (shorter) limit so an unreachable host reads as UNAVAILABLE, not as
        # a tool that was too slow to answer.
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, CONNECT_TIMEOUT_S))
        try:
            async with self._sessions.get().request(
                method, ex.url, headers=headers, timeout=timeout, allow_redirects=False, **kwargs
            ) as resp:
                if resp.status in RETRYABLE_STATUS:
                    raise UnavailableError(
                        f"tool {tool.name!r}: endpoint answered HTTP {resp.status}",
                        retry_after_s=_retry_after(resp.headers, 1.0),
                    )
                chunks: list[bytes] = []
                size = 0
                while size <= cap:
                    chunk = await resp.content.read(cap + 1 - size)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                body = b"".join(chunks)
                # Under a Content-Encoding (gzip) Content-Length counts the compressed bytes, not the output's.
                declared = "" if "content-encoding" in resp.headers else resp.headers.get("content-length", "")
                total = int(declared) if declared.isdigit() else -1
                return ExecResult(
                    output=body,
                    is_error=resp.status >= 400,
                    content_type=resp.headers.get("content-type", ""),
                    total_bytes=total if size > cap else None,
                )
        # Messages name only scheme://host:port of the endpoint, and aiohttp's own text is scrubbed of the URL:
        # they reach the caller and the audit reason, and a URL may carry a credential.
        except aiohttp.ConnectionTimeoutError:
            raise UnavailableError(
                f"tool {tool.name!r}: connect to {endpoint_label(ex.url)} timed out", 1.0
            ) from None
        except TimeoutError as exc:  # aiohttp's read and total timeouts are TimeoutError subclasses
            raise DeadlineExceededError(f"tool {tool.name!r} did not answer within {timeout_s:.3g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            # ``from None``: the chained exception would carry the URL into tracebacks that get logged.
            raise UnavailableError(
                f"tool {tool.name!r}: endpoint {endpoint_label(ex.url)} unreachable "
                f"({type(exc).__name__}: {_scrub(str(exc), ex.url)})",
                retry_after_s=1.0,
            ) from None


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
