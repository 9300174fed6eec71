"""SQL backend of the tool store (SQLite or Postgres through an injected SQLAlchemy Engine)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from core.errors import NotFoundError
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
from tools.store import ToolStore


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
        key = definition.content_key()
        # Two writers may race for the same next version; the unique constraint makes one retry.
        for attempt in range(3):
            try:
                with self._engine.begin() as conn:
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
                    self._announce(conn, scope)
                    return dataclasses.replace(definition, version=version, created_at=now), True
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get_tool(self, scope: str, name: str, version: int = 0) -> ToolDefinition:
        q = select(tool_versions).where(tool_versions.c.scope == scope, tool_versions.c.name == name)
        if version:
            q = q.where(tool_versions.c.version == version)
        else:
            q = q.where(tool_versions.c.deleted.is_(False)).order_by(tool_versions.c.version.desc()).limit(1)
        with self._engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            raise NotFoundError("tool", f"{name}@{version}" if version else name)
        return self._row_to_def(row)

    def list_tools(self, scope: str) -> list[ToolDefinition]:
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
        with self._engine.connect() as conn:
            return [self._row_to_def(r) for r in conn.execute(q)]

    def list_versions(self, scope: str, name: str) -> list[ToolDefinition]:
        q = (
            select(tool_versions)
            .where(tool_versions.c.scope == scope, tool_versions.c.name == name)
            .order_by(tool_versions.c.version)
        )
        with self._engine.connect() as conn:
            return [self._row_to_def(r) for r in conn.execute(q)]

    def delete_tool(self, scope: str, name: str) -> int:
        with self._engine.begin() as conn:
            last = conn.execute(
                select(func.max(tool_versions.c.version)).where(
                    tool_versions.c.scope == scope,
                    tool_versions.c.name == name,
                    tool_versions.c.deleted.is_(False),
                )
            ).scalar()
            if last is None:
                raise NotFoundError("tool", name)
            conn.execute(
                update(tool_versions)
                .where(tool_versions.c.scope == scope, tool_versions.c.name == name)
                .values(deleted=True)
            )
            self._announce(conn, scope)
            return int(last)

    def put_server(self, scope: str, spec: McpServerSpec) -> None:
        with self._engine.begin() as conn:
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
        with self._engine.connect() as conn:
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
        with self._engine.connect() as conn:
            return [(r.scope, server_from_dict(json.loads(r.spec))) for r in conn.execute(q)]

    def delete_server(self, scope: str, name: str) -> None:
        with self._engine.begin() as conn:
            n = conn.execute(
                delete(tool_mcp_servers).where(tool_mcp_servers.c.scope == scope, tool_mcp_servers.c.name == name)
            ).rowcount
            if n:
                self._announce(conn, scope)
        if not n:
            raise NotFoundError("mcp server", name)

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
        with self._engine.connect() as conn:
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
        with self._engine.connect() as conn:
            row = conn.execute(select(tool_policies.c.policy).where(tool_policies.c.scope == scope)).first()
        if row is None:
            return None
        return ToolPolicy(**json.loads(row.policy))

    def set_policy(self, scope: str, policy: ToolPolicy) -> None:
        with self._engine.begin() as conn:
            conn.execute(delete(tool_policies).where(tool_policies.c.scope == scope))
            conn.execute(insert(tool_policies).values(scope=scope, policy=json.dumps(dataclasses.asdict(policy))))
            self._announce(conn, scope)
