"""Kept-open MCP connections (stdio command or streamable HTTP) with the official ``mcp`` SDK.

One supervisor task per server owns the SDK's context managers (anyio needs them entered and left by
the same task), lists the tools, and then watches the connection: a ``tools/list_changed``
notification triggers a re-list, a failed ping or a call that finds the connection closed marks it
lost, and the supervisor reconnects with exponential backoff, counting restarts. A dying server never
raises out of the supervisor, so it cannot take the sidecar down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.errors import DeadlineExceededError, FailedPreconditionError, UnavailableError
from tools.executors import ExecResult
from tools.model import McpServerSpec, McpServerStatus, McpTransport, ToolDefinition, utcnow

log = logging.getLogger(__name__)

PING_INTERVAL_S = 2.0
MAX_BACKOFF_S = 5.0
# Longest wait for one connection to close. Closing a streamable-HTTP connection ends its session with a
# DELETE and a server that accepts the TCP connection but never answers (frozen, overloaded) would hold
# RemoveMcp and the sidecar's shutdown until the HTTP client's read timeout; past this the close is abandoned.
CLOSE_TIMEOUT_S = 5.0
# Connect/write/pool limit of the streamable-HTTP client (the read limit is the SDK's: its GET stream
# stays open between server messages, and a call's own deadline bounds each tool call anyway).
HTTP_CONNECT_TIMEOUT_S = 30.0
# Supervisors whose close was abandoned: referenced until they finish, so they are not collected while pending.
_abandoned: set[asyncio.Task[None]] = set()
# How much of a stdio server's stderr is kept: its tail explains a server that fails to start ("No module
# named 'mcp'") better than the SDK's "unhandled errors in a TaskGroup". Past twice this it is emptied.
STDERR_TAIL_CHARS = 2000


class _StderrTail:
    """A stdio server's stderr, kept in an unlinked temporary file opened for appending (the child writes at
    the end whatever this process truncates), read back as its last ``STDERR_TAIL_CHARS`` characters."""

    def __init__(self) -> None:
        import tempfile

        fd, path = tempfile.mkstemp(prefix="agentrt-mcp-stderr-")
        try:
            self.file = open(path, "a+", encoding="utf-8", errors="replace")  # noqa: SIM115
        finally:
            os.close(fd)
            os.unlink(path)

    def tail(self) -> str:
        try:
            self.file.flush()
            size = os.fstat(self.file.fileno()).st_size
            with open(os.dup(self.file.fileno()), "rb") as raw:
                raw.seek(max(0, size - 4 * STDERR_TAIL_CHARS))
                text = raw.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return " ".join(text.split())[-STDERR_TAIL_CHARS:]

    def trim(self) -> None:
        """Empty the file once it holds much more than the tail (a server that logs to stderr for days)."""
        with contextlib.suppress(OSError, ValueError):
            if os.fstat(self.file.fileno()).st_size > 32 * STDERR_TAIL_CHARS:
                os.ftruncate(self.file.fileno(), 0)

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class McpTool:
    """A tool as the MCP server lists it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    read_only: bool
    idempotent: bool
    destructive: bool
    open_world: bool


ToolsChanged = Callable[[list[McpTool]], Awaitable[None]]


def _convert_tool(tool: Any) -> McpTool:
    ann = getattr(tool, "annotations", None)

    def hint(name: str) -> bool:
        return bool(getattr(ann, name, None)) if ann is not None else False

    return McpTool(
        name=tool.name,
        description=tool.description or getattr(tool, "title", None) or "",
        input_schema=dict(tool.input_schema or {"type": "object"}),
        output_schema=dict(tool.output_schema) if getattr(tool, "output_schema", None) else None,
        read_only=hint("read_only_hint"),
        idempotent=hint("idempotent_hint"),
        destructive=hint("destructive_hint"),
        open_world=hint("open_world_hint"),
    )


def _result_bytes(result: Any) -> bytes:
    """Structured content as JSON when the server gives it, else the text blocks joined."""
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        return json.dumps(structured).encode()
    parts: list[str] = []
    for block in getattr(result, "content", None) or []:
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else block.model_dump_json(exclude_none=True))
    return "\n".join(parts).encode()


class McpConnection:
    """One MCP server, kept connected by a supervisor task on the event loop that first used it."""

    def __init__(self, scope: str, spec: McpServerSpec, on_tools_changed: ToolsChanged | None = None):
        self.scope = scope
        self.spec = spec
        self._on_tools_changed = on_tools_changed
        self._session: Any = None
        self._task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        """The loop running the supervisor (another thread schedules work for this connection on it)."""
        self._connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._lost = False
        self._refresh_wanted = False
        self._closing = False
        self._first_attempt = asyncio.Event()
        self.tools: list[McpTool] = []
        self.restarts = 0
        self.last_error = ""
        self.skipped_tools = ""
        """Why listed tools were not imported (set by the registry at each sync; reported with last_error)."""
        self.last_refresh: datetime | None = None

    def status(self) -> McpServerStatus:
        """A snapshot for the API."""
        return McpServerStatus(
            name=self.spec.name,
            connected=self._usable(),
            tool_count=len(self.tools),
            restarts=self.restarts,
            last_error="; ".join(e for e in (self.last_error, self.skipped_tools) if e),
            last_refresh=self.last_refresh,
        )

    def _usable(self) -> bool:
        # Between a crash and the supervisor noticing it, the old session object is still set.
        return self._session is not None and not self._lost

    async def start(self, timeout_s: float | None = None) -> None:
        """Start the supervisor and wait for the first connection (UnavailableError if it fails)."""
        if self._task is None:
            self.loop = asyncio.get_running_loop()
            self._task = self.loop.create_task(self._supervise(), name=f"mcp:{self.spec.name}")
        await self.wait_connected(timeout_s or self.spec.timeout_s)

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until connected; after the first attempt failed, wait only briefly for a restart."""
        if self._usable():
            return
        try:
            await asyncio.wait_for(self._first_attempt.wait(), timeout_s)
            if not self._usable():
                await asyncio.wait_for(self._connected.wait(), min(timeout_s, 0.5))
        except TimeoutError:
            pass
        if not self._usable():
            raise UnavailableError(
                f"MCP server {self.spec.name!r} is not connected ({self.last_error or 'still starting'})",
                retry_after_s=1.0,
            )

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop the supervisor and close the connection (terminates a stdio server), waiting at most
        ``timeout_s``: a server that does not answer the session's closing request is abandoned (logged)."""
        self._closing = True
        self._wake.set()
        self._session = None
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # asyncio.wait neither raises the supervisor's CancelledError nor swallows the caller's own: a caller
        # cancelled while waiting here is cancelled (the supervisor goes on winding down on its own).
        done, _ = await asyncio.wait([task], timeout=timeout_s)
        if not done:
            log.warning(
                "MCP server %s (%s) did not close within %.3gs; abandoned", self.spec.name, self.scope, timeout_s
            )
            _abandoned.add(task)
            task.add_done_callback(_abandoned.discard)
        elif not task.cancelled() and task.exception() is not None:
            log.warning("MCP server %s (%s) failed while closing: %r", self.spec.name, self.scope, task.exception())

    async def refresh(self) -> list[McpTool]:
        """Re-list the server's tools now (and tell the registry about any change)."""
        await self.wait_connected(self.spec.timeout_s)
        await self._list_tools(self._session)
        return self.tools

    def _mark_lost(self, why: str) -> None:
        if not self._lost and not self._closing:
            self._lost = True
            self.last_error = why
            log.warning("MCP server %s (%s) lost: %s", self.spec.name, self.scope, why)
        self._connected.clear()
        self._wake.set()

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            self._mark_lost(f"transport error: {message}")
            return
        method = getattr(message, "method", "")
        if method == "notifications/tools/list_changed":
            self._refresh_wanted = True
            self._wake.set()

    async def _list_tools(self, session: Any) -> None:
        tools: list[McpTool] = []
        cursor: str | None = None
        for _ in range(100):  # a paginator that never ends must not hang the supervisor
            from mcp import types

            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            tools.extend(_convert_tool(t) for t in page.tools)
            cursor = getattr(page, "next_cursor", None)
            if not cursor:
                break
        self.tools = tools
        self.last_refresh = utcnow()
        if self._on_tools_changed is not None:
            await self._on_tools_changed(tools)

    async def _open(self, stack: AsyncExitStack, stderr: _StderrTail | None = None) -> Any:
        from mcp import ClientSession, StdioServerParameters, stdio_client
        from mcp.client.streamable_http import streamable_http_client

        spec = self.spec
        if spec.transport == McpTransport.STDIO:
            params = StdioServerParameters(
                command=spec.command, args=list(spec.args), env=dict(spec.env) or None, cwd=spec.cwd or None
            )
            # Not the sidecar's stderr (it would mix into its logs): a file whose tail explains a failed start.
            errlog = stderr.file if stderr is not None else stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115
            read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        else:
            import httpx2
            from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, create_mcp_http_client

            # Always our own client with finite limits: a bare httpx2.AsyncClient would apply its 5 s default to
            # every read (cutting off longer tool calls), and none at all would let a dead server hang the stack.
            timeout = httpx2.Timeout(
                min(spec.timeout_s, HTTP_CONNECT_TIMEOUT_S),
                read=max(spec.timeout_s, MCP_DEFAULT_SSE_READ_TIMEOUT),
            )
            http_client = await stack.enter_async_context(
                create_mcp_http_client(headers=dict(spec.headers) or None, timeout=timeout)
            )
            read, write = await stack.enter_async_context(streamable_http_client(spec.url, http_client=http_client))
        session = await stack.enter_async_context(ClientSession(read, write, message_handler=self._on_message))
        await asyncio.wait_for(session.initialize(), spec.timeout_s)
        return session

    async def _supervise(self) -> None:
        backoff = 0.1
        while not self._closing:
            self._lost = False
            stderr = _StderrTail() if self.spec.transport == McpTransport.STDIO else None
            try:
                async with AsyncExitStack() as stack:
                    session = await self._open(stack, stderr)
                    await asyncio.wait_for(self._list_tools(session), self.spec.timeout_s)
                    self._session = session
                    self._connected.set()
                    self._first_attempt.set()
                    self.last_error = "" if self.restarts == 0 else self.last_error
                    backoff = 0.1
                    await self._watch(session, stderr)
                if self._lost and stderr is not None and (tail := stderr.tail()):
                    self.last_error = f"{self.last_error}; server stderr: {tail}"
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                self.last_error = f"{type(exc).__name__}: {exc}"
                if stderr is not None and (tail := stderr.tail()):
                    self.last_error += f"; server stderr: {tail}"
                log.warning("MCP server %s (%s): %s", self.spec.name, self.scope, self.last_error)
            finally:
                if stderr is not None:
                    stderr.close()
                self._session = None
                self._connected.clear()
                self._first_attempt.set()
            if self._closing:
                break
            self.restarts += 1
            log.warning("restarting MCP server %s (%s), restart #%d", self.spec.name, self.scope, self.restarts)
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def _watch(self, session: Any, stderr: _StderrTail | None = None) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PING_INTERVAL_S)
            self._wake.clear()
            if stderr is not None:
                stderr.trim()
            if self._lost or self._closing:
                return
            if self._refresh_wanted:
                self._refresh_wanted = False
                await asyncio.wait_for(self._list_tools(session), self.spec.timeout_s)
                continue
            try:
                await asyncio.wait_for(session.send_ping(), min(self.spec.timeout_s, 5.0))
            except Exception as exc:
                self._mark_lost(f"ping failed: {type(exc).__name__}: {exc}")
                return

    async def call(self, tool: str, arguments: dict[str, Any], timeout_s: float) -> ExecResult:
        """Call one tool; a dead connection is reported as UnavailableError and restarted behind it."""
        await self.wait_connected(min(timeout_s, self.spec.timeout_s))
        session = self._session
        if session is None or self._lost:
            raise UnavailableError(f"MCP server {self.spec.name!r} is restarting", retry_after_s=1.0)
        try:
            result = await asyncio.wait_for(session.call_tool(tool, arguments), timeout_s)
        except TimeoutError:
            raise DeadlineExceededError(
                f"MCP tool {self.spec.name}.{tool} did not answer within {timeout_s:.3g}s"
            ) from None
        except Exception as exc:
            import anyio
            import httpx2
            from mcp import MCPError

            transport_errors = (
                anyio.ClosedResourceError,
                anyio.BrokenResourceError,
                anyio.EndOfStream,
                OSError,
                httpx2.TransportError,
            )
            if isinstance(exc, MCPError) and exc.code in _REFUSED_CALL_CODES:
                # The server is fine and refused this call (a tool it no longer has, arguments it rejects):
                # the tool never ran, and restarting the server would not help.
                raise FailedPreconditionError(
                    f"MCP server {self.spec.name!r} refused the call of {tool!r} ({exc.code}: {exc.message}); "
                    "RefreshMcp re-lists its tools"
                ) from exc
            if isinstance(exc, (MCPError, *transport_errors)):
                # Any other JSON-RPC error is the protocol, not the tool: a session the server no longer knows
                # (it restarted: "Session not found"/"Session terminated"), a closed connection, an HTTP error
                # the transport turned into an error reply. Only CallToolResult.isError is the tool's own answer.
                self._mark_lost(f"connection lost during call of {tool!r}: {type(exc).__name__}: {exc}")
                raise UnavailableError(
                    f"MCP server {self.spec.name!r} crashed or restarted during the call; it is being "
                    f"reconnected (restart #{self.restarts + 1})",
                    retry_after_s=1.0,
                ) from exc
            return ExecResult(output=json.dumps({"error": str(exc)}).encode(), is_error=True)
        return ExecResult(output=_result_bytes(result), is_error=bool(getattr(result, "is_error", False)))


def _refused_call_codes() -> frozenset[int]:
    from mcp_types import INVALID_PARAMS, METHOD_NOT_FOUND

    return frozenset({INVALID_PARAMS, METHOD_NOT_FOUND})


_REFUSED_CALL_CODES = _refused_call_codes()


class McpManager:
    """Every open MCP connection of the process, keyed by (scope, server name)."""

    def __init__(self) -> None:
        self._conns: dict[tuple[str, str], McpConnection] = {}
        self._lock = asyncio.Lock()

    def get(self, scope: str, name: str) -> McpConnection | None:
        """The open connection, or None."""
        return self._conns.get((scope, name))

    async def connect(
        self, scope: str, spec: McpServerSpec, on_tools_changed: ToolsChanged | None = None
    ) -> McpConnection:
        """Open (or reopen with a changed spec) a connection and wait until its tools are listed."""
        key = (scope, spec.name)
        async with self._lock:
            conn = self._conns.get(key)
            if conn is not None and conn.spec != spec:
                await conn.close()
                conn = None
            if conn is None:
                conn = McpConnection(scope, spec, on_tools_changed)
                self._conns[key] = conn
        await conn.start()
        return conn

    async def disconnect(self, scope: str, name: str) -> None:
        """Close one connection if open."""
        conn = self._conns.pop((scope, name), None)
        if conn is not None:
            await conn.close()

    async def aclose(self) -> None:
        """Close every connection (sidecar shutdown), all at once: each close is bounded by
        ``CLOSE_TIMEOUT_S``, so shutdown waits at most about that long however many servers hang."""
        conns = list(self._conns.values())
        self._conns.clear()
        if conns:
            await asyncio.gather(*(c.close() for c in conns))

    def connections(self, scope: str) -> list[McpConnection]:
        """The open connections of one scope (safe to call from any thread)."""
        return [c for (s, _), c in list(self._conns.items()) if s == scope]

    def statuses(self, scope: str) -> list[McpServerStatus]:
        """Status of every open connection of one scope."""
        return [c.status() for (s, _), c in sorted(self._conns.items()) if s == scope]


def definitions_from_mcp(spec: McpServerSpec, tools: list[McpTool]) -> list[ToolDefinition]:
    """Registry definitions for a server's tools, named ``<server>.<tool>``; MCP hints become tags."""
    from tools.model import ExecutorKind, ExecutorSpec

    out = []
    for t in tools:
        tags = list(spec.risk_tags)
        if t.destructive:
            tags.append("destructive")
        if t.open_world:
            tags.append("open_world")
        if t.read_only:
            tags.append("read_only")
        out.append(
            ToolDefinition(
                name=f"{spec.name}.{t.name}",
                description=t.description,
                input_schema=t.input_schema,
                output_schema=t.output_schema,
                risk_tags=tuple(dict.fromkeys(tags)),
                idempotent=t.idempotent or t.read_only,
                timeout_s=spec.timeout_s,
                max_concurrency=spec.max_concurrency,
                max_output_bytes=spec.max_output_bytes,
                executor=ExecutorSpec(kind=ExecutorKind.MCP, mcp_server=spec.name, mcp_tool=t.name),
            )
        )
    return out
