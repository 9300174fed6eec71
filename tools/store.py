"""The tool store interface and its in-memory reference implementation.

Everything is keyed by the opaque scope string the runtime hands in (``"<tenant>/<namespace>"``); one
scope never sees another's tools, servers, audits or policy. The SQL backend is in ``tools/sql_store.py``;
both pass ``tests/tools/test_store_conformance.py``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import NamedTuple

from core.errors import FailedPreconditionError, NotFoundError
from tools.model import (
    AuditRecord,
    ExecutorKind,
    McpServerSpec,
    ToolDefinition,
    ToolPolicy,
    server_to_dict,
    utcnow,
)


class ServerToolsSync(NamedTuple):
    """What ``ToolStore.sync_server_tools`` changed."""

    created: list[str]
    """Names that got a new version (new tools and changed ones), sorted."""
    removed: list[str]
    """Names unregistered because the server no longer lists them, sorted."""

    @property
    def changed(self) -> bool:
        """Whether the scope's tools are different now."""
        return bool(self.created or self.removed)


def check_server_spec(server: str, stored: McpServerSpec | None, spec: McpServerSpec) -> None:
    """FailedPreconditionError unless ``stored`` (None: no row) is ``spec`` (see ``sync_server_tools``)."""
    if stored is None:
        raise FailedPreconditionError(f"mcp server {server!r} is no longer registered; its tools are not synced")
    if server_to_dict(stored) != server_to_dict(spec):
        raise FailedPreconditionError(
            f"mcp server {server!r} was re-imported with another spec; this connection's tools are not synced"
        )


def is_server_tool(definition: ToolDefinition, server: str) -> bool:
    """Whether ``definition`` is one that importing MCP server ``server`` made (and a re-list may remove)."""
    return (
        definition.executor.kind == ExecutorKind.MCP
        and definition.executor.mcp_server == server
        and definition.name.startswith(f"{server}.")
    )


def runs_on_server(definition: ToolDefinition, server: str) -> bool:
    """Whether ``definition`` executes on MCP server ``server`` (imported or registered by hand)."""
    return definition.executor.kind == ExecutorKind.MCP and definition.executor.mcp_server == server


class ToolStore(ABC):
    """Persistence of versioned tool definitions, MCP servers, audit records and policies.

    Error contract: ``get_tool``/``delete_tool``/``get_server``/``remove_server`` raise NotFoundError
    for a name this scope does not hold.

    Every write is one atomic read-modify-write, also against writers in other processes sharing the
    database (sidecar replicas): concurrent ``put_tool`` calls of one name get distinct, contiguous versions,
    and ``update_policy`` merges into what is stored at the moment it writes.
    """

    @abstractmethod
    def put_tool(self, scope: str, definition: ToolDefinition) -> tuple[ToolDefinition, bool]:
        """Store a new version unless the latest live one has the same content.

        Returns the stored definition (with version and created_at) and whether a new version was made.
        Versions count up per name and are never reused, also across an unregister.
        """

    @abstractmethod
    def get_tool(self, scope: str, name: str, version: int = 0) -> ToolDefinition:
        """The latest live version (``version=0``) or that exact version, live or not."""

    @abstractmethod
    def list_tools(self, scope: str) -> list[ToolDefinition]:
        """Latest live version of every tool, sorted by name."""

    @abstractmethod
    def list_versions(self, scope: str, name: str) -> list[ToolDefinition]:
        """Every stored version of ``name``, oldest first (empty if none)."""

    @abstractmethod
    def delete_tool(self, scope: str, name: str) -> int:
        """Unregister ``name``; its versions stay for the audit trail. Returns the last version."""

    @abstractmethod
    def sync_server_tools(
        self,
        scope: str,
        server: str,
        definitions: Sequence[ToolDefinition],
        *,
        spec: McpServerSpec | None = None,
    ) -> ServerToolsSync:
        """Make MCP server ``server``'s imported tools exactly ``definitions``, in one transaction.

        Each definition is put as by ``put_tool``; every live tool for which ``is_server_tool(tool, server)``
        holds and whose name is not among ``definitions`` is unregistered.

        ``spec``: the spec of the connection that listed ``definitions``. Then, under the server's write lock,
        the stored server must exist and equal it, else FailedPreconditionError and nothing changes: a replica
        still connected with an old spec, or to a server another replica removed, must not bring back tools
        the current one does not list.
        """

    @abstractmethod
    def put_server(self, scope: str, spec: McpServerSpec) -> None:
        """Create or replace an MCP server spec."""

    @abstractmethod
    def get_server(self, scope: str, name: str) -> McpServerSpec:
        """One MCP server spec."""

    @abstractmethod
    def list_servers(self, scope: str | None = None) -> list[tuple[str, McpServerSpec]]:
        """``(scope, spec)`` pairs of one scope, or of every scope when ``scope`` is None (for restart)."""

    @abstractmethod
    def remove_server(self, scope: str, name: str) -> list[str]:
        """Remove MCP server ``name`` and unregister every live tool that ``runs_on_server`` it, in one
        transaction (as by ``delete_tool``: their versions stay). Returns the unregistered names, sorted.
        """

    @abstractmethod
    def append_audit(self, scope: str, record: AuditRecord) -> None:
        """Append one audit record."""

    def append_audits(self, items: list[tuple[str, AuditRecord]]) -> None:
        """Append several ``(scope, record)`` pairs; backends override this to use one transaction."""
        for scope, record in items:
            self.append_audit(scope, record)

    @abstractmethod
    def list_audit(self, scope: str, tool_name: str = "", limit: int = 100) -> list[AuditRecord]:
        """Newest first, optionally for one tool."""

    @abstractmethod
    def get_policy(self, scope: str) -> ToolPolicy | None:
        """The scope's Invoke policy, or None when never set."""

    @abstractmethod
    def update_policy(self, scope: str, change: Callable[[ToolPolicy | None], ToolPolicy]) -> ToolPolicy:
        """Store ``change(stored policy or None)`` as the scope's Invoke policy and return it.

        ``change`` runs inside the write, on what is stored at that moment (no other writer of the scope's
        policy runs between its read and the commit); whatever it raises aborts the write and propagates.
        """

    def set_policy(self, scope: str, policy: ToolPolicy) -> None:
        """Replace the scope's Invoke policy."""
        self.update_policy(scope, lambda _stored: policy)


class InMemoryToolStore(ToolStore):
    """Reference implementation: dicts behind one lock. Loses everything on restart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], list[ToolDefinition]] = {}
        self._deleted: set[tuple[str, str]] = set()
        self._servers: dict[tuple[str, str], McpServerSpec] = {}
        self._audit: dict[str, list[AuditRecord]] = {}
        self._policies: dict[str, ToolPolicy] = {}

    def put_tool(self, scope: str, definition: ToolDefinition) -> tuple[ToolDefinition, bool]:
        with self._lock:
            return self._put_tool(scope, definition)

    def _put_tool(self, scope: str, definition: ToolDefinition) -> tuple[ToolDefinition, bool]:
        # Callers hold self._lock.
        key = (scope, definition.name)
        versions = self._versions.setdefault(key, [])
        if (
            versions
            and key not in self._deleted
            and versions[-1].content_key() == definition.content_key()
        ):
            return versions[-1], False
        stored = replace(definition, version=len(versions) + 1, created_at=utcnow())
        versions.append(stored)
        self._deleted.discard(key)
        return stored, True

    def get_tool(self, scope: str, name: str, version: int = 0) -> ToolDefinition:
        key = (scope, name)
        with self._lock:
            versions = self._versions.get(key, [])
            if version == 0:
                if not versions or key in self._deleted:
                    raise NotFoundError("tool", name)
                return versions[-1]
            if not 1 <= version <= len(versions):
                raise NotFoundError("tool", f"{name}@{version}")
            return versions[version - 1]

    def list_tools(self, scope: str) -> list[ToolDefinition]:
        with self._lock:
            return sorted(
                (
                    v[-1]
                    for (s, n), v in self._versions.items()
                    if s == scope and v and (s, n) not in self._deleted
                ),
                key=lambda d: d.name,
            )

    def list_versions(self, scope: str, name: str) -> list[ToolDefinition]:
        with self._lock:
            return list(self._versions.get((scope, name), []))

    def delete_tool(self, scope: str, name: str) -> int:
        key = (scope, name)
        with self._lock:
            versions = self._versions.get(key)
            if not versions or key in self._deleted:
                raise NotFoundError("tool", name)
            self._deleted.add(key)
            return versions[-1].version

    def sync_server_tools(
        self,
        scope: str,
        server: str,
        definitions: Sequence[ToolDefinition],
        *,
        spec: McpServerSpec | None = None,
    ) -> ServerToolsSync:
        wanted = {d.name for d in definitions}
        with self._lock:
            if spec is not None:
                check_server_spec(server, self._servers.get((scope, server)), spec)
            created = sorted(d.name for d in definitions if self._put_tool(scope, d)[1])
            removed = sorted(
                name
                for (s, name), versions in self._versions.items()
                if s == scope
                and (s, name) not in self._deleted
                and name not in wanted
                and is_server_tool(versions[-1], server)
            )
            self._deleted.update((scope, name) for name in removed)
        return ServerToolsSync(created, removed)

    def put_server(self, scope: str, spec: McpServerSpec) -> None:
        with self._lock:
            self._servers[(scope, spec.name)] = spec

    def get_server(self, scope: str, name: str) -> McpServerSpec:
        with self._lock:
            try:
                return self._servers[(scope, name)]
            except KeyError:
                raise NotFoundError("mcp server", name) from None

    def list_servers(self, scope: str | None = None) -> list[tuple[str, McpServerSpec]]:
        with self._lock:
            return sorted(
                ((s, spec) for (s, _), spec in self._servers.items() if scope is None or s == scope),
                key=lambda p: (p[0], p[1].name),
            )

    def remove_server(self, scope: str, name: str) -> list[str]:
        with self._lock:
            if self._servers.pop((scope, name), None) is None:
                raise NotFoundError("mcp server", name)
            removed = sorted(
                tool
                for (s, tool), versions in self._versions.items()
                if s == scope and versions and (s, tool) not in self._deleted and runs_on_server(versions[-1], name)
            )
            self._deleted.update((scope, tool) for tool in removed)
            return removed

    def append_audit(self, scope: str, record: AuditRecord) -> None:
        with self._lock:
            self._audit.setdefault(scope, []).append(record)

    def list_audit(self, scope: str, tool_name: str = "", limit: int = 100) -> list[AuditRecord]:
        with self._lock:
            records = [
                r for r in reversed(self._audit.get(scope, [])) if not tool_name or r.tool_name == tool_name
            ]
            return records[:limit]

    def get_policy(self, scope: str) -> ToolPolicy | None:
        with self._lock:
            return self._policies.get(scope)

    def update_policy(self, scope: str, change: Callable[[ToolPolicy | None], ToolPolicy]) -> ToolPolicy:
        with self._lock:
            policy = change(self._policies.get(scope))
            self._policies[scope] = policy
            return policy
