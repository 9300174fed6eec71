"""The tool registry: one async facade over the store, tool search, MCP connections and executors.

Blocking work (SQL, embedding) goes through the injected ``offload`` (the runtime passes
``rt.offload``); everything else runs on the event loop. Builtins are visible in every namespace
without registration; a stored tool with the same name shadows nothing (registering a builtin's name
is refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from core.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
)
from tools.audit import AuditLog
from tools.executors import BuiltinExecutor, ExecResult, HttpExecutor
from tools.mcp_client import McpConnection, McpManager, McpTool, definitions_from_mcp
from tools.model import (
    AuditRecord,
    ExecutorKind,
    McpServerSpec,
    McpServerStatus,
    ToolDefinition,
    ToolPolicy,
    ToolPolicyPatch,
    server_to_dict,
    validate_definition,
    validate_policy,
    validate_server,
)
from tools.runner import ConcurrencyLimiter, RunResult, run_with_policy
from tools.search import ToolSearch, ToolSearchResult
from tools.store import ToolStore
from tools.validation import argument_violations, may_backtrack

log = logging.getLogger(__name__)
T = TypeVar("T")
Offload = Callable[..., Awaitable[Any]]


async def _to_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


class ToolRegistry:
    """Register, find, validate and execute tools, per scope."""

    def __init__(
        self,
        store: ToolStore,
        search: ToolSearch,
        *,
        builtins: BuiltinExecutor | None = None,
        http: HttpExecutor | None = None,
        mcp: McpManager | None = None,
        offload: Offload = _to_thread,
        default_policy: Callable[[str], ToolPolicy] | None = None,
    ):
        self.store = store
        self.search_index = search
        self.builtins = builtins or BuiltinExecutor()
        self.http = http or HttpExecutor()
        self.mcp = mcp or McpManager()
        self._offload = offload
        self._limiter = ConcurrencyLimiter()
        self.default_policy = default_policy or (lambda scope: ToolPolicy())
        self.audit_log = AuditLog(store, offload)
        # Invoke reads the definition and the policy on every call; both change rarely and only through
        # this object, so they are cached here and dropped on every change.
        self._tool_cache: dict[tuple[str, str], ToolDefinition] = {}
        self._policy_cache: dict[str, ToolPolicy] = {}
        # Bumped on every change of a scope's policy (tools). A read or write of the database that overlapped
        # a change does not know whether its value is still the newest, so it leaves the cache alone.
        self._policy_epoch: dict[str, int] = {}
        self._tool_epoch: dict[str, int] = {}
        # MCP imports running now, per (scope, server): their connection is newer than the stored spec.
        self._importing: dict[tuple[str, str], int] = {}
        self._rechecking: set[str] = set()
        self._recheck_again: set[str] = set()
        self._recheck_tasks: set[asyncio.Task[None]] = set()

    def invalidate(self, scope: str) -> None:
        """Drop everything cached for ``scope`` (another replica changed its tools or policy), and check this
        replica's MCP connections of ``scope`` against the stored specs. Safe to call from any thread."""
        self._changed(scope)
        self._policy_changed(scope)
        self._recheck_mcp_soon(scope)

    def _recheck_mcp_soon(self, scope: str) -> None:
        """Schedule ``_recheck_mcp(scope)`` on the loop of each of the scope's connections (from any thread)."""
        loops = {c.loop for c in self.mcp.connections(scope) if c.loop is not None and not c.loop.is_closed()}
        for loop in loops:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
                loop.call_soon_threadsafe(self._start_recheck, scope)

    def _start_recheck(self, scope: str) -> None:
        # One recheck per scope at a time; a change arriving during one makes it read the specs again.
        if scope in self._rechecking:
            self._recheck_again.add(scope)
            return
        self._rechecking.add(scope)
        task = asyncio.get_running_loop().create_task(self._recheck_mcp(scope), name=f"mcp-recheck:{scope}")
        self._recheck_tasks.add(task)
        task.add_done_callback(self._recheck_tasks.discard)

    async def _recheck_mcp(self, scope: str) -> None:
        """Make this replica's connections of ``scope`` follow the stored specs: the change feed only says the
        scope changed, and a connection kept with an old spec (a re-import elsewhere with a new command, env,
        url or token) or to a removed server would go on serving calls and syncing tools."""
        try:
            while True:
                self._recheck_again.discard(scope)
                pairs: list[tuple[str, McpServerSpec]] = await self._offload(self.store.list_servers, scope)
                stored = {spec.name: spec for _, spec in pairs}
                for conn in self.mcp.connections(scope):
                    name = conn.spec.name
                    # An import in progress here connects before it stores its spec: leave it alone.
                    if self._importing.get((scope, name)) or self.mcp.get(scope, name) is not conn:
                        continue
                    spec = stored.get(name)
                    if spec is None:
                        log.info("MCP server %s (%s) was removed by another replica: disconnecting", name, scope)
                        await self.mcp.disconnect(scope, name)
                    elif server_to_dict(spec) != server_to_dict(conn.spec):
                        log.info("MCP server %s (%s) was re-imported with a new spec: reconnecting", name, scope)
                        try:
                            await self.mcp.connect(scope, spec, self._sync_callback(scope, spec))
                        except Exception as exc:  # the supervisor keeps retrying with the new spec
                            log.warning("MCP server %s (%s): reconnect with the new spec: %s", name, scope, exc)
                if scope not in self._recheck_again:
                    return
        except Exception:
            log.exception("checking the MCP connections of %s against the stored specs failed", scope)
        finally:
            self._rechecking.discard(scope)

    def _policy_changed(self, scope: str) -> None:
        self._policy_epoch[scope] = self._policy_epoch.get(scope, 0) + 1
        self._policy_cache.pop(scope, None)

    def _changed(self, scope: str) -> None:
        self._tool_epoch[scope] = self._tool_epoch.get(scope, 0) + 1
        self.search_index.invalidate(scope)
        # list(): the replication tailer calls this from its own thread.
        for key in [k for k in list(self._tool_cache) if k[0] == scope]:
            self._tool_cache.pop(key, None)

    # -- definitions -----------------------------------------------------------------------------

    async def register(self, scope: str, definition: ToolDefinition) -> tuple[ToolDefinition, bool]:
        """Store a definition (a new version when its content changed). Returns (stored, created)."""
        validate_definition(definition)
        if self.builtins.get(definition.name) is not None:
            raise AlreadyExistsError(f"tool {definition.name!r} is a builtin and cannot be registered")
        if (
            definition.executor.kind == ExecutorKind.BUILTIN
            and self.builtins.get(definition.executor.builtin) is None
        ):
            raise InvalidArgumentError("tool.builtin", f"no builtin named {definition.executor.builtin!r}")
        stored, created = await self._offload(self.store.put_tool, scope, definition)
        if created:
            self._changed(scope)
        return stored, created

    async def get(self, scope: str, name: str, version: int = 0) -> ToolDefinition:
        """A tool's latest or given version (builtins included). NotFoundError if unknown."""
        builtin = self.builtins.get(name)
        if builtin is not None and version in (0, 1):
            return builtin
        if version == 0:
            cached = self._tool_cache.get((scope, name))
            if cached is not None:
                return cached
        epoch = self._tool_epoch.get(scope, 0)
        result: ToolDefinition = await self._offload(self.store.get_tool, scope, name, version)
        if version == 0 and self._tool_epoch.get(scope, 0) == epoch:
            self._tool_cache[(scope, name)] = result
        return result

    async def list_tools(
        self, scope: str, *, include_builtins: bool = True, prefix: str = ""
    ) -> list[ToolDefinition]:
        """Latest live version of every tool, sorted by name."""
        tools: list[ToolDefinition] = await self._offload(self.store.list_tools, scope)
        if include_builtins:
            tools = sorted([*tools, *self.builtins.definitions()], key=lambda t: t.name)
        return [t for t in tools if t.name.startswith(prefix)]

    async def versions(self, scope: str, name: str) -> list[ToolDefinition]:
        """Every stored version of a tool, oldest first."""
        result: list[ToolDefinition] = await self._offload(self.store.list_versions, scope, name)
        return result

    async def unregister(self, scope: str, name: str) -> int:
        """Remove a tool (its versions stay for the audit trail); returns its last version."""
        if self.builtins.get(name) is not None:
            raise InvalidArgumentError("name", f"{name!r} is a builtin and cannot be unregistered")
        version: int = await self._offload(self.store.delete_tool, scope, name)
        self._changed(scope)
        return version

    # -- MCP ---------------------------------------------------------------------------------------

    def _sync_callback(self, scope: str, spec: McpServerSpec) -> Callable[[list[McpTool]], Awaitable[None]]:
        async def on_change(tools: list[McpTool]) -> None:
            await self._sync_mcp_tools(scope, spec, tools)

        return on_change

    async def _sync_mcp_tools(self, scope: str, spec: McpServerSpec, tools: list[McpTool]) -> None:
        """Make the registry hold exactly the server's current tools (new versions for changed ones).

        A tool Register would refuse (a name that is no tool name, an invalid input schema) is skipped, and why is
        reported in the server's status: stored, it would fail every Invoke and Validate with an unclear error.
        """

        def importable() -> tuple[list[ToolDefinition], list[str]]:
            wanted: list[ToolDefinition] = []
            skipped: list[str] = []
            for d in {d.name: d for d in definitions_from_mcp(spec, tools)}.values():
                try:
                    validate_definition(d)
                except InvalidArgumentError as exc:
                    skipped.append(f"{d.name[:100]!r} ({str(exc)[:300]})")
                    continue
                if self.builtins.get(d.name) is not None:
                    skipped.append(f"{d.name!r} (the name of a builtin)")
                    continue
                wanted.append(d)
            return wanted, skipped

        # Checking schemas against their metaschema is CPU work (milliseconds per tool): off the event loop.
        wanted, skipped = await self._offload(importable)
        conn = self.mcp.get(scope, spec.name)
        if conn is not None:
            conn.skipped_tools = (
                f"skipped {len(skipped)} of {len(tools)} listed tools: {'; '.join(skipped)[:2000]}" if skipped else ""
            )
        if skipped:
            log.warning("MCP server %s (%s): skipped %d invalid tools: %s", spec.name, scope, len(skipped), skipped)
        try:
            # With the connection's spec: the store refuses the sync if the server was removed or re-imported
            # with another spec meanwhile (a stale connection must not bring back tools the current one lacks).
            result = await self._offload(self.store.sync_server_tools, scope, spec.name, wanted, spec=spec)
        except FailedPreconditionError as exc:
            if not self._importing.get((scope, spec.name)):  # an import syncs itself once its spec is stored
                log.warning("MCP server %s (%s): %s", spec.name, scope, exc)
                self._recheck_mcp_soon(scope)
            return
        if result.changed:
            self._changed(scope)
            log.info("MCP server %s (%s): tool list now %d tools", spec.name, scope, len(wanted))

    async def import_mcp(
        self, scope: str, spec: McpServerSpec
    ) -> tuple[McpServerStatus, list[ToolDefinition]]:
        """Register an MCP server, connect, and import every tool it lists (kept in sync after)."""
        validate_server(spec)
        key = (scope, spec.name)
        self._importing[key] = self._importing.get(key, 0) + 1
        try:
            try:
                conn = await self.mcp.connect(scope, spec, self._sync_callback(scope, spec))
            except Exception:
                # A server that never came up is not stored: no restart loop for a typo in a command line, and a
                # rejected import leaves the registry (and the replicas' change feed) untouched.
                await self.mcp.disconnect(scope, spec.name)
                raise
            await self._offload(self.store.put_server, scope, spec)
            # The connection's own sync was refused while the stored spec was missing or older: sync now.
            await self._sync_mcp_tools(scope, spec, conn.tools)
        finally:
            self._importing[key] -= 1
            if not self._importing[key]:
                del self._importing[key]
        return conn.status(), await self._server_tools(scope, spec.name)

    async def refresh_mcp(self, scope: str, name: str) -> tuple[McpServerStatus, list[ToolDefinition]]:
        """Re-list a server's tools now (reconnecting first when the connection is gone)."""
        conn = await self._connection(scope, name)
        await conn.refresh()
        return conn.status(), await self._server_tools(scope, name)

    async def remove_mcp(self, scope: str, name: str) -> list[str]:
        """Disconnect a server, forget it and unregister its tools; returns their names."""
        await self._offload(self.store.get_server, scope, name)  # NotFoundError when unknown
        await self.mcp.disconnect(scope, name)
        # One transaction: no crash or concurrent replica sees the server without its tools or vice versa.
        removed: list[str] = await self._offload(self.store.remove_server, scope, name)
        self._changed(scope)
        return removed

    async def mcp_servers(self, scope: str) -> list[tuple[McpServerSpec, McpServerStatus]]:
        """Registered servers of a scope with their live status (not connected until first use)."""
        pairs: list[tuple[str, McpServerSpec]] = await self._offload(self.store.list_servers, scope)
        out = []
        for _, spec in pairs:
            conn = self.mcp.get(scope, spec.name)
            status = conn.status() if conn else McpServerStatus(spec.name, False, 0, 0, "not connected yet")
            out.append((spec, status))
        return out

    async def _server_tools(self, scope: str, name: str) -> list[ToolDefinition]:
        tools = await self._offload(self.store.list_tools, scope)
        return [t for t in tools if t.executor.kind == ExecutorKind.MCP and t.executor.mcp_server == name]

    async def _connection(self, scope: str, name: str) -> McpConnection:
        conn = self.mcp.get(scope, name)
        if conn is None:
            # After a sidecar restart the spec is in the database; reconnect on first use.
            spec: McpServerSpec = await self._offload(self.store.get_server, scope, name)
            conn = await self.mcp.connect(scope, spec, self._sync_callback(scope, spec))
        return conn

    # -- search and validation ---------------------------------------------------------------------

    async def search(self, scope: str, query: str, top_k: int = 5) -> ToolSearchResult:
        """Hybrid semantic + lexical search over the scope's tools (builtins included)."""
        epoch = self.search_index.epoch(scope)
        catalogue = await self.list_tools(scope)
        result: ToolSearchResult = await self._offload(
            self.search_index.search, scope, query, top_k, catalogue, epoch=epoch
        )
        return result

    @staticmethod
    def violations(
        tool: ToolDefinition, arguments: Any, field: str = "arguments_json"
    ) -> list[FieldViolation]:
        """Every way ``arguments`` break the tool's input schema (empty when valid).

        FailedPreconditionError if the stored schema itself cannot be used (a ``$ref`` to nothing).
        """
        try:
            return argument_violations(tool.input_schema, arguments, field)
        except FailedPreconditionError as exc:
            raise FailedPreconditionError(
                f"tool {tool.name!r} version {tool.version}: {exc}; register a corrected version"
            ) from None

    async def check_arguments(
        self, tool: ToolDefinition, arguments: Any, field: str = "arguments_json"
    ) -> list[FieldViolation]:
        """``violations``, run through ``offload`` when the schema has regular expressions: one that
        backtracks would otherwise stall every request on the event loop while it runs."""
        if may_backtrack(tool.input_schema):
            result: list[FieldViolation] = await self._offload(self.violations, tool, arguments, field)
            return result
        return self.violations(tool, arguments, field)

    # -- execution ---------------------------------------------------------------------------------

    async def _dispatch(
        self, scope: str, tool: ToolDefinition, arguments: dict[str, Any], timeout_s: float
    ) -> ExecResult:
        kind = tool.executor.kind
        if kind == ExecutorKind.HTTP:
            return await self.http.execute(scope, tool, arguments, timeout_s)
        if kind == ExecutorKind.BUILTIN:
            return await self.builtins.execute(scope, tool, arguments, timeout_s)
        conn = await self._connection(scope, tool.executor.mcp_server)
        return await conn.call(tool.executor.mcp_tool, arguments, timeout_s)

    async def execute(
        self, scope: str, tool: ToolDefinition, arguments: dict[str, Any], *, deadline_s: float | None = None
    ) -> RunResult:
        """Run a validated call with the tool's deadline, concurrency limit, retries and output cap."""

        async def call(timeout_s: float) -> ExecResult:
            return await self._dispatch(scope, tool, arguments, timeout_s)

        return await run_with_policy(tool, call, self._limiter, scope, deadline_s=deadline_s)

    # -- audit and policy --------------------------------------------------------------------------

    def audit(self, scope: str, record: AuditRecord) -> asyncio.Future[None]:
        """Queue an audit record (written in the background, in batches); the future says when it is stored."""
        return self.audit_log.record(scope, record)

    async def audits(self, scope: str, tool_name: str = "", limit: int = 100) -> list[AuditRecord]:
        """Audit records, newest first (everything queued so far is written first)."""
        await self.audit_log.flush()
        result: list[AuditRecord] = await self._offload(self.store.list_audit, scope, tool_name, limit)
        return result

    async def policy(self, scope: str) -> ToolPolicy:
        """The scope's Invoke policy: set by RPC, else the configured default."""
        cached = self._policy_cache.get(scope)
        if cached is None:
            epoch = self._policy_epoch.get(scope, 0)
            cached = await self._offload(self.store.get_policy, scope) or self.default_policy(scope)
            if self._policy_epoch.get(scope, 0) == epoch:
                self._policy_cache[scope] = cached
        return cached

    async def update_policy(self, scope: str, patch: ToolPolicyPatch) -> ToolPolicy:
        """Apply ``patch`` to the stored policy (else the configured default) inside the write; returns the
        policy committed. InvalidArgumentError, with nothing stored, if memory could never take its writes."""

        def change(stored: ToolPolicy | None) -> ToolPolicy:
            policy = patch.apply(stored or self.default_policy(scope))
            validate_policy(policy)
            return policy

        return await self._store_policy(scope, change)

    async def set_policy(self, scope: str, policy: ToolPolicy) -> None:
        """Replace the scope's Invoke policy (InvalidArgumentError if memory could never take its writes)."""
        validate_policy(policy)
        await self._store_policy(scope, lambda _stored: policy)

    async def _store_policy(self, scope: str, change: Callable[[ToolPolicy | None], ToolPolicy]) -> ToolPolicy:
        epoch = self._policy_epoch.get(scope, 0)
        committed: ToolPolicy = await self._offload(self.store.update_policy, scope, change)
        # Cache what was committed only when no other change of this scope finished meanwhile: that one may
        # have committed after this one.
        overlapped = self._policy_epoch.get(scope, 0) != epoch
        self._policy_changed(scope)
        if not overlapped:
            self._policy_cache[scope] = committed
        return committed

    async def aclose(self) -> None:
        """Flush audits, close MCP connections and the HTTP pool."""
        for task in list(self._recheck_tasks):
            task.cancel()
        await self.audit_log.aclose()
        await self.mcp.aclose()
        await self.http.aclose()
