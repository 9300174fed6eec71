"""gRPC servicer for ToolService: validate, convert, call the registry/invoker, convert back."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from agentrt.v1 import tool_pb2, tool_pb2_grpc

from core.errors import FieldViolation, InvalidArgumentError
from runtime.container import Runtime
from runtime.convert import tool as conv
from runtime.tool_invoke import InvokeRequest, ToolInvoker, add_builtins
from tools.model import ToolPolicy, caller_violations, session_id_violations, utcnow
from tools.registry import ToolRegistry
from tools.search import ToolSearch
from tools.sql_store import SqlToolStore
from tools.validation import parse_arguments

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
MAX_TOP_K = 100
MAX_AUDIT = 1000
# Left of the RPC deadline for writing the reply after a tool ran out of time.
DEADLINE_MARGIN_S = 0.05


class MemoryAdapter:
    """The MemoryPort of ``runtime/tool_invoke.py`` over the MemoryEngine (``rt.memory``)."""

    def __init__(self, rt: Runtime):
        self._rt = rt

    async def write(self, scope: str, session_id: str, messages: Sequence[tuple[str, str]]) -> list[str]:
        """Store (speaker, text) messages with fresh ids; returns the ids."""
        from memory.model import MemoryMessage

        now = utcnow()
        msgs = [
            MemoryMessage(id=f"tool-{uuid.uuid4().hex}", session_id=session_id, speaker=speaker, text=text, time=now)
            for speaker, text in messages
            if text.strip()
        ]
        result = await self._rt.offload(self._rt.memory.write, scope, session_id, msgs)
        return list(result.message_ids)

    async def search(self, scope: str, query: str, top_k: int) -> list[dict[str, Any]]:
        """Hits as plain dicts."""
        from memory.model import SearchQuery

        result = await self._rt.offload(self._rt.memory.search, scope, SearchQuery(query=query, top_k=top_k))
        return [
            {
                "id": h.unit.id,
                "granularity": str(h.unit.granularity),
                "text": h.unit.text,
                "score": round(float(h.score), 6),
                "message_ids": list(h.unit.message_ids),
                "session_id": h.unit.session_id,
            }
            for h in result.hits
        ]


def build(rt: Runtime) -> None:
    """The registry on the sidecar's database, tool search on the shared embedder, and the invoker."""
    store = SqlToolStore(rt.db.engine, publisher=lambda conn, scope: rt.changes.publish(conn, "tools", scope, {}))
    settings = rt.settings

    def default_policy(scope: str) -> ToolPolicy:
        return conv.policy_from_config(settings.policy("tools", scope))

    registry = ToolRegistry(store, ToolSearch(rt.embedder), offload=rt.offload, default_policy=default_policy)
    add_builtins(registry, lambda: MemoryAdapter(rt) if rt.memory is not None else None)
    rt.tools = registry
    # Another replica registered, removed or re-imported tools, or changed the policy: reload the scope.
    rt.replica_handlers["tools"] = lambda scope, _payload: registry.invalidate(scope)
    # Guards and gates are read from rt at call time: they may be absent (a sidecar without them simply
    # skips those steps) and are built by their own service modules.
    rt.extras["tool_invoker"] = ToolInvoker(registry, rt.offload, durable_records=rt.settings.storage.durable_records)


def _invoker(rt: Runtime) -> ToolInvoker:
    inv: ToolInvoker = rt.extras["tool_invoker"]
    inv.guards = rt.guards
    inv.gates = rt.gates
    inv.memory = MemoryAdapter(rt) if rt.memory is not None else None
    return inv


async def start(rt: Runtime) -> None:
    """Import the MCP servers named in the configuration (``policies.namespaces.<ns>.tools.mcp_servers``).

    A server is a process and a connection, started once into one scope: a bare key (``agent1``) means
    that namespace of the default tenant, ``<tenant>/<ns>`` names another tenant (unlike the other
    policies, where a bare key applies to that namespace in every tenant). ``policies.defaults.tools.
    mcp_servers`` is not imported (it would start one server per namespace): a warning says so.

    A server that fails to start is logged and not registered (the start goes on); import it again
    with ImportMcpServer once it is fixed.
    """
    from runtime import naming

    registry: ToolRegistry = rt.tools
    if (rt.settings.policies.defaults.get("tools") or {}).get("mcp_servers"):
        log.warning(
            "policies.defaults.tools.mcp_servers is not imported: MCP servers are configured per namespace, "
            "under policies.namespaces.<ns>.tools.mcp_servers (a bare <ns> is the default tenant's, "
            "<tenant>/<ns> another tenant's)"
        )
    for ns_key, components in rt.settings.policies.namespaces.items():
        servers = (components.get("tools") or {}).get("mcp_servers") or []
        tenant, _, ns = ns_key.rpartition("/")
        scope = f"{tenant or naming.DEFAULT_TENANT}/{ns}"
        for i, raw in enumerate(servers):
            try:
                msg = tool_pb2.McpServer(**raw)
                spec = conv.server_from_proto(msg, f"policies.namespaces.{ns_key}.tools.mcp_servers[{i}]")
                await rt.offload(rt.db.ensure_namespace, scope)
                _, tools = await registry.import_mcp(scope, spec)
                log.info("imported MCP server %s into %s: %d tools", spec.name, scope, len(tools))
            except Exception:
                log.exception("could not import configured MCP server #%d of namespace %s", i, ns_key)


async def stop(rt: Runtime) -> None:
    """Flush audits and close MCP connections (terminating stdio servers) and the HTTP pool."""
    if rt.tools is not None:
        await rt.tools.aclose()


def _check_version(version: int) -> None:
    """Get, Validate and Invoke read a tool version the same way: 0 is the latest, negatives are refused."""
    if version < 0:
        raise InvalidArgumentError("version", "must be >= 0 (0 = latest)")


class ToolServiceServicer(tool_pb2_grpc.ToolServiceServicer):
    """Thin servicer: validate, convert, call the component, convert back."""

    def __init__(self, rt: Runtime):
        self._rt = rt

    @property
    def _reg(self) -> ToolRegistry:
        reg: ToolRegistry = self._rt.tools
        return reg

    async def Register(self, request: tool_pb2.RegisterToolRequest, context: Any) -> tool_pb2.RegisterToolResponse:
        scope = await self._rt.scope(request.namespace, write=True)
        if not request.HasField("tool"):
            raise InvalidArgumentError("tool", "is required")
        stored, created = await self._reg.register(scope, conv.tool_from_proto(request.tool))
        return tool_pb2.RegisterToolResponse(tool=conv.tool_to_proto(stored), created=created)

    async def List(self, request: tool_pb2.ListToolsRequest, context: Any) -> tool_pb2.ListToolsResponse:
        scope = await self._rt.scope(request.namespace)
        tools = await self._reg.list_tools(scope, include_builtins=not request.exclude_builtins, prefix=request.prefix)
        return tool_pb2.ListToolsResponse(tools=[conv.tool_to_proto(t) for t in tools])

    async def Get(self, request: tool_pb2.GetToolRequest, context: Any) -> tool_pb2.GetToolResponse:
        scope = await self._rt.scope(request.namespace)
        _check_version(request.version)
        tool = await self._reg.get(scope, request.name, request.version)
        versions = [v.version for v in await self._reg.versions(scope, request.name)] or [tool.version]
        return tool_pb2.GetToolResponse(tool=conv.tool_to_proto(tool), versions=versions)

    async def Unregister(
        self, request: tool_pb2.UnregisterToolRequest, context: Any
    ) -> tool_pb2.UnregisterToolResponse:
        scope = await self._rt.scope(request.namespace, write=True)
        last = await self._reg.unregister(scope, request.name)
        return tool_pb2.UnregisterToolResponse(last_version=last)

    async def ImportMcp(self, request: tool_pb2.ImportMcpRequest, context: Any) -> tool_pb2.ImportMcpResponse:
        scope = await self._rt.scope(request.namespace, write=True)
        if not request.HasField("server"):
            raise InvalidArgumentError("server", "is required")
        status, tools = await self._reg.import_mcp(scope, conv.server_from_proto(request.server))
        return tool_pb2.ImportMcpResponse(
            status=conv.status_to_proto(status), tools=[conv.tool_to_proto(t) for t in tools]
        )

    async def RefreshMcp(self, request: tool_pb2.RefreshMcpRequest, context: Any) -> tool_pb2.ImportMcpResponse:
        scope = await self._rt.scope(request.namespace, write=True)
        status, tools = await self._reg.refresh_mcp(scope, request.name)
        return tool_pb2.ImportMcpResponse(
            status=conv.status_to_proto(status), tools=[conv.tool_to_proto(t) for t in tools]
        )

    async def ListMcpServers(
        self, request: tool_pb2.ListMcpServersRequest, context: Any
    ) -> tool_pb2.ListMcpServersResponse:
        scope = await self._rt.scope(request.namespace)
        return tool_pb2.ListMcpServersResponse(
            servers=[
                tool_pb2.McpServerInfo(server=conv.server_to_proto(spec), status=conv.status_to_proto(status))
                for spec, status in await self._reg.mcp_servers(scope)
            ]
        )

    async def RemoveMcp(self, request: tool_pb2.RemoveMcpRequest, context: Any) -> tool_pb2.RemoveMcpResponse:
        scope = await self._rt.scope(request.namespace, write=True)
        removed = await self._reg.remove_mcp(scope, request.name)
        return tool_pb2.RemoveMcpResponse(removed_tools=removed)

    async def Search(self, request: tool_pb2.ToolSearchRequest, context: Any) -> tool_pb2.ToolSearchResponse:
        scope = await self._rt.scope(request.namespace)
        if not request.query.strip():
            raise InvalidArgumentError("query", "must not be empty")
        if not 0 <= request.top_k <= MAX_TOP_K:
            raise InvalidArgumentError("top_k", f"must be between 0 and {MAX_TOP_K} (0 = {DEFAULT_TOP_K})")
        result = await self._reg.search(scope, request.query, request.top_k or DEFAULT_TOP_K)
        return conv.search_to_proto(result)

    async def Validate(
        self, request: tool_pb2.ValidateToolArgumentsRequest, context: Any
    ) -> tool_pb2.ValidateToolArgumentsResponse:
        scope = await self._rt.scope(request.namespace)
        _check_version(request.version)
        tool = await self._reg.get(scope, request.name, request.version)
        arguments, bad = parse_arguments(request.arguments_json)
        if not bad:
            bad = await self._reg.check_arguments(tool, arguments)
        return conv.violations_to_proto(bad)

    async def Invoke(self, request: tool_pb2.InvokeToolRequest, context: Any) -> tool_pb2.InvokeToolResponse:
        # The deadline is fixed here, as an absolute time: the invoker computes the tool's budget from it right
        # before execute, so the scope lookup, validation and the call guard count against it.
        remaining = context.time_remaining()
        if remaining is None:
            remaining = self._rt.settings.server.default_deadline_s
        deadline_at = time.monotonic() + max(0.001, remaining - DEADLINE_MARGIN_S) if remaining is not None else None
        scope = await self._rt.scope(request.namespace, write=True)
        name, arguments_json, arguments_field = request.name, request.arguments_json, "arguments_json"
        if request.HasField("tool_call"):
            # Two calls in one request: running either would silently drop the other.
            both = [f for f in ("name", "arguments_json") if getattr(request, f)]
            if both:
                why = "set name and arguments_json, or tool_call, not both"
                raise InvalidArgumentError([FieldViolation(f, why) for f in [*both, "tool_call"]])
            name, arguments_json = request.tool_call.name, request.tool_call.arguments_json
            arguments_field = "tool_call.arguments_json"
        if not name:
            raise InvalidArgumentError("tool_call.name" if request.HasField("tool_call") else "name", "is required")
        # Written so NaN fails too; +inf would mean "no timeout", which 0 already says.
        if not (math.isfinite(request.timeout_s) and request.timeout_s >= 0):
            raise InvalidArgumentError(
                "timeout_s", f"must be a finite number >= 0 (0 = the tool's timeout), got {request.timeout_s}"
            )
        _check_version(request.version)
        # The memory write would fail after the call ran, reported only in `reason`.
        bad = session_id_violations(request.session_id, "session_id") + caller_violations(request.caller, "caller")
        if bad:
            raise InvalidArgumentError(bad)
        tokens: Any = ()
        if request.tokens:
            from runtime.convert.gate import tokens_from_proto

            tokens = tokens_from_proto(request.tokens)
        result = await _invoker(self._rt).invoke(
            InvokeRequest(
                scope=scope,
                name=name,
                arguments_json=arguments_json,
                arguments_field=arguments_field,
                instruction=request.instruction,
                tokens=tokens,
                available_tools=tuple(request.available_tools),
                caller=request.caller,
                timeout_s=request.timeout_s,
                version=request.version,
                session_id=request.session_id,
                deadline_at=deadline_at,
            )
        )
        return conv.invoke_to_proto(result)

    async def ListAudit(self, request: tool_pb2.ListToolAuditRequest, context: Any) -> tool_pb2.ListToolAuditResponse:
        scope = await self._rt.scope(request.namespace)
        if not 0 <= request.limit <= MAX_AUDIT:
            raise InvalidArgumentError("limit", f"must be between 0 and {MAX_AUDIT} (0 = 100)")
        records = await self._reg.audits(scope, request.tool_name, request.limit or 100)
        return tool_pb2.ListToolAuditResponse(records=[conv.audit_to_proto(r) for r in records])

    async def GetPolicy(self, request: tool_pb2.GetToolPolicyRequest, context: Any) -> tool_pb2.ToolPolicy:
        scope = await self._rt.scope(request.namespace)
        return conv.policy_to_proto(await self._reg.policy(scope))

    async def SetPolicy(self, request: tool_pb2.SetToolPolicyRequest, context: Any) -> tool_pb2.ToolPolicy:
        scope = await self._rt.scope(request.namespace, write=True)
        # Merged into what the database holds inside the write: a concurrent update of another field survives.
        policy = await self._reg.update_policy(scope, conv.policy_patch_from_proto(request.policy))
        return conv.policy_to_proto(policy)


def register(server: grpc.aio.Server, rt: Runtime) -> None:
    """Add the servicer to the server."""
    tool_pb2_grpc.add_ToolServiceServicer_to_server(ToolServiceServicer(rt), server)
