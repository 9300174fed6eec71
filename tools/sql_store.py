"""SQL backend of the tool store (SQLite or Postgres through an injected SQLAlchemy Engine)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update

from core.errors import NotFoundError
from core.sqlread import reading
from core.sqlwrite import lock_for_write
from tools.model import (
    AuditRecord,
    McpServerSpec,
    Outcome,
    Step,
    ToolDefinition,
    ToolPolicy,
    definition_from_dict,
    definition_to_dict,
    server_from_dict,
    server_to_dict,
    utcnow,
)
from tools.schema import tool_audit, tool_mcp_servers, tool_policies, tool_versions
from tools.store import ServerToolsSync, ToolStore, check_server_spec, is_server_tool, runs_on_server


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone=True columns.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class SqlToolStore(ToolStore):
    """Tool store on the sidecar's database; tables live in ``tools/schema.py``.

    ``publisher(connection, scope)`` is called inside every transaction that changes a scope's tools, MCP
    servers or policy (not its audit log), so replicas sharing the database learn of the change exactly
    when it commits.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        create_tables: bool = False,
        publisher: Callable[[Connection, str], None] | None = None,
    ):
        self._engine = engine
        self._publisher = publisher
        if create_tables:
            from tools.schema import metadata

            metadata.create_all(engine)

    def _announce(self, conn: Connection, scope: str) -> None:
        if self._publisher is not None:
            self._publisher(conn, scope)

    def _row_to_def(self, row: Any) -> ToolDefinition:
        d = definition_from_dict(json.loads(row.definition))
        return dataclasses.replace(d, version=row.version, created_at=_utc(row.created_at))

    def put_tool(self, scope: str, definition: ToolDefinition) -> tuple[ToolDefinition, bool]:
        with self._engine.begin() as conn:
            lock_for_write(conn, "tools", scope, definition.name)
            stored, created = self._put_locked(conn, scope, definition)
            if created:
                self._announce(conn, scope)
            return stored, created

    def _put_locked(self, conn: Connection, scope: str, definition: ToolDefinition) -> tuple[ToolDefinition, bool]:
        # The caller holds the name's write lock, so "latest + 1" is this name's next free version.
        key = definition.content_key()
        latest = conn.execute(
            select(tool_versions)
            .where(tool_versions.c.scope == scope, tool_versions.c.name == definition.name)
            .order_by(tool_versions.c.version.desc())
            .limit(1)
        ).first()
        if latest is not None and not latest.deleted and latest.content_key == key:
            return self._row_to_def(latest), False
        version = (latest.version if latest is not None else 0) + 1
        now = utcnow()
        body = definition_to_dict(dataclasses.replace(definition, version=0, created_at=None))
        conn.execute(
            insert(tool_versions).values(
                scope=scope,
                name=definition.name,
                version=version,
                content_key=key,
                definition=json.dumps(body, sort_keys=True),
                deleted=False,
                created_at=now,
            )
        )
        # A new version revives a name that was unregistered.
        conn.execute(
            update(tool_versions)
            .where(tool_versions.c.scope == scope, tool_versions.c.name == definition.name)
            .values(deleted=False)
        )
        return dataclasses.replace(definition, version=version, created_at=now), True

    def get_tool(self, scope: str, name: str, version: int = 0) -> ToolDefinition:
        q = select(tool_versions).where(tool_versions.c.scope == scope, tool_versions.c.name == name)
        if version:
            q = q.where(tool_versions.c.version == version)
        else:
            q = q.where(tool_versions.c.deleted.is_(False)).order_by(tool_versions.c.version.desc()).limit(1)
        with reading(self._engine) as conn:
            row = conn.execute(q).first()
        if row is None:
            raise NotFoundError("tool", f"{name}@{version}" if version else name)
        return self._row_to_def(row)

    def list_tools(self, scope: str) -> list[ToolDefinition]:
        with reading(self._engine) as conn:
            return self._live_tools(conn, scope)

    def _live_tools(self, conn: Connection, scope: str) -> list[ToolDefinition]:
        latest = (
            select(tool_versions.c.name, func.max(tool_versions.c.version).label("v"))
            .where(tool_versions.c.scope == scope, tool_versions.c.deleted.is_(False))
            .group_by(tool_versions.c.name)
            .subquery()
        )
        q = (
            select(tool_versions)
            .join(latest, and_(tool_versions.c.name == latest.c.name, tool_versions.c.version == latest.c.v))
            .where(tool_versions.c.scope == scope)
            .order_by(tool_versions.c.name)
        )
        return [self._row_to_def(r) for r in conn.execute(q)]

    def list_versions(self, scope: str, name: str) -> list[ToolDefinition]:
        q = (
            select(tool_versions)
            .where(tool_versions.c.scope == scope, tool_versions.c.name == name)
            .order_by(tool_versions.c.version)
        )
        with reading(self._engine) as conn:
            return [self._row_to_def(r) for r in conn.execute(q)]

    def delete_tool(self, scope: str, name: str) -> int:
        with self._engine.begin() as conn:
            lock_for_write(conn, "tools", scope, name)
            last = self._delete_locked(conn, scope, name)
            if last is None:
                raise NotFoundError("tool", name)
            self._announce(conn, scope)
            return last

    def _delete_locked(self, conn: Connection, scope: str, name: str) -> int | None:
        """Mark ``name`` unregistered (the caller holds its write lock); its last version, None if not live."""
        last = conn.execute(
            select(func.max(tool_versions.c.version)).where(
                tool_versions.c.scope == scope,
                tool_versions.c.name == name,
                tool_versions.c.deleted.is_(False),
            )
        ).scalar()
        if last is None:
            return None
        conn.execute(
            update(tool_versions)
            .where(tool_versions.c.scope == scope, tool_versions.c.name == name)
            .values(deleted=True)
        )
        return int(last)

    def sync_server_tools(
        self,
        scope: str,
        server: str,
        definitions: Sequence[ToolDefinition],
        *,
        spec: McpServerSpec | None = None,
    ) -> ServerToolsSync:
        wanted = {d.name: d for d in definitions}
        with self._engine.begin() as conn:
            # One sync of a server at a time, then its names in sorted order. Names of different servers
            # never overlap (``<server>.``, and a server name has no dot), so two syncs cannot deadlock.
            lock_for_write(conn, "tool_mcp_servers", scope, server)
            if spec is not None:
                # Read under the lock put_server and remove_server take: a removal or re-import either
                # committed before this check or waits for this sync.
                row = conn.execute(
                    select(tool_mcp_servers.c.spec).where(
                        tool_mcp_servers.c.scope == scope, tool_mcp_servers.c.name == server
                    )
                ).first()
                check_server_spec(server, server_from_dict(json.loads(row.spec)) if row else None, spec)
            held = sorted(set(wanted) | set(self._server_tool_names(conn, scope, server)))
            for name in held:
                lock_for_write(conn, "tools", scope, name)
            created = sorted(name for name, d in wanted.items() if self._put_locked(conn, scope, d)[1])
            removed = []
            # Read again under the locks: a name registered after the first read is not held, so it stays.
            for name in sorted(self._server_tool_names(conn, scope, server)):
                if name not in wanted and name in held and self._delete_locked(conn, scope, name) is not None:
                    removed.append(name)
            result = ServerToolsSync(created, removed)
            if result.changed:
                self._announce(conn, scope)
            return result

    def _server_tool_names(self, conn: Connection, scope: str, server: str) -> list[str]:
        """Live tools of ``scope`` that importing ``server`` made."""
        latest = (
            select(tool_versions.c.name, func.max(tool_versions.c.version).label("v"))
            .where(
                tool_versions.c.scope == scope,
                tool_versions.c.deleted.is_(False),
                tool_versions.c.name.startswith(f"{server}.", autoescape=True),
            )
            .group_by(tool_versions.c.name)
            .subquery()
        )
        rows = conn.execute(
            select(tool_versions)
            .join(latest, and_(tool_versions.c.name == latest.c.name, tool_versions.c.version == latest.c.v))
            .where(tool_versions.c.scope == scope)
        )
        return [r.name for r in rows if is_server_tool(self._row_to_def(r), server)]

    def put_server(self, scope: str, spec: McpServerSpec) -> None:
        with self._engine.begin() as conn:
            # Delete-then-insert: two imports of one name at once (replicas) would both insert without the lock.
            lock_for_write(conn, "tool_mcp_servers", scope, spec.name)
            conn.execute(
                delete(tool_mcp_servers).where(tool_mcp_servers.c.scope == scope, tool_mcp_servers.c.name == spec.name)
            )
            conn.execute(
                insert(tool_mcp_servers).values(
                    scope=scope, name=spec.name, spec=json.dumps(server_to_dict(spec)), updated_at=utcnow()
                )
            )
            self._announce(conn, scope)

    def get_server(self, scope: str, name: str) -> McpServerSpec:
        with reading(self._engine) as conn:
            row = conn.execute(
                select(tool_mcp_servers.c.spec).where(
                    tool_mcp_servers.c.scope == scope, tool_mcp_servers.c.name == name
                )
            ).first()
        if row is None:
            raise NotFoundError("mcp server", name)
        return server_from_dict(json.loads(row.spec))

    def list_servers(self, scope: str | None = None) -> list[tuple[str, McpServerSpec]]:
        q = select(tool_mcp_servers).order_by(tool_mcp_servers.c.scope, tool_mcp_servers.c.name)
        if scope is not None:
            q = q.where(tool_mcp_servers.c.scope == scope)
        with reading(self._engine) as conn:
            return [(r.scope, server_from_dict(json.loads(r.spec))) for r in conn.execute(q)]

    def remove_server(self, scope: str, name: str) -> list[str]:
        with self._engine.begin() as conn:
            # The server's lock (as sync_server_tools takes it), then its tools' names as delete_tool does.
            lock_for_write(conn, "tool_mcp_servers", scope, name)
            n = conn.execute(
                delete(tool_mcp_servers).where(tool_mcp_servers.c.scope == scope, tool_mcp_servers.c.name == name)
            ).rowcount
            if not n:
                raise NotFoundError("mcp server", name)  # rolls back: nothing was changed
            held: set[str] = set()
            while True:
                # Read again under the locks until no live tool of the server is left unlocked (one pass on
                # SQLite, where the whole transaction already runs alone).
                names = {d.name for d in self._live_tools(conn, scope) if runs_on_server(d, name)}
                if names <= held:
                    break
                for tool in sorted(names - held):
                    lock_for_write(conn, "tools", scope, tool)
                    held.add(tool)
            removed = sorted(tool for tool in names if self._delete_locked(conn, scope, tool) is not None)
            self._announce(conn, scope)
            return removed

    def append_audit(self, scope: str, record: AuditRecord) -> None:
        self.append_audits([(scope, record)])

    def append_audits(self, items: list[tuple[str, AuditRecord]]) -> None:
        if not items:
            return
        rows = [
            {
                "id": r.id,
                "scope": scope,
                "tool_name": r.tool_name,
                "tool_version": r.tool_version,
                "caller": r.caller,
                "arguments_sha256": r.arguments_sha256,
                "outcome": r.outcome.value,
                "stopped_at": r.stopped_at.value,
                "reason": r.reason,
                "duration_ms": r.duration_ms,
                "attempts": r.attempts,
                "verdicts": json.dumps(list(r.verdicts), sort_keys=True),
                "truncated": r.truncated,
                "created_at": r.created_at or utcnow(),
            }
            for scope, r in items
        ]
        # One transaction (one fsync on SQLite) for a whole batch of invocations.
        with self._engine.begin() as conn:
            conn.execute(insert(tool_audit), rows)

    def list_audit(self, scope: str, tool_name: str = "", limit: int = 100) -> list[AuditRecord]:
        q = select(tool_audit).where(tool_audit.c.scope == scope)
        if tool_name:
            q = q.where(tool_audit.c.tool_name == tool_name)
        q = q.order_by(tool_audit.c.seq.desc()).limit(limit)
        with reading(self._engine) as conn:
            rows = conn.execute(q).all()
        return [
            AuditRecord(
                id=r.id,
                tool_name=r.tool_name,
                tool_version=r.tool_version,
                caller=r.caller,
                arguments_sha256=r.arguments_sha256,
                outcome=Outcome(r.outcome),
                stopped_at=Step(r.stopped_at),
                reason=r.reason,
                duration_ms=r.duration_ms,
                attempts=r.attempts,
                verdicts=tuple(json.loads(r.verdicts)),
                truncated=bool(r.truncated),
                created_at=_utc(r.created_at),
            )
            for r in rows
        ]

    def get_policy(self, scope: str) -> ToolPolicy | None:
        with reading(self._engine) as conn:
            row = conn.execute(select(tool_policies.c.policy).where(tool_policies.c.scope == scope)).first()
        if row is None:
            return None
        return ToolPolicy(**json.loads(row.policy))

    def update_policy(self, scope: str, change: Callable[[ToolPolicy | None], ToolPolicy]) -> ToolPolicy:
        with self._engine.begin() as conn:
            lock_for_write(conn, "tool_policies", scope)
            row = conn.execute(select(tool_policies.c.policy).where(tool_policies.c.scope == scope)).first()
            policy = change(None if row is None else ToolPolicy(**json.loads(row.policy)))
            body = json.dumps(dataclasses.asdict(policy))
            # Under the lock nobody else inserts this scope's row between the read and the write.
            if row is None:
                conn.execute(insert(tool_policies).values(scope=scope, policy=body))
            else:
                conn.execute(update(tool_policies).where(tool_policies.c.scope == scope).values(policy=body))
            self._announce(conn, scope)
            return policy
