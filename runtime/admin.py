"""Admin commands that run without a server: reindex, export and import of a namespace's memory.

They open the same database the server uses (stop the server first on SQLite, or run them beside a
Postgres replica set: they only read, or write through the same idempotent paths the server uses).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TextIO

from core.embedding import create_embedder
from core.errors import InvalidArgumentError
from memory.model import MemoryMessage
from runtime import naming
from runtime.config import Settings
from runtime.container import Runtime
from runtime.db import Database, DatabaseError


def open_database(settings: Settings) -> Database:
    """The configured database, brought to the newest revision; DatabaseError where it does not exist or has no
    agentrt schema. These commands work on a database the server (or ``agentrt migrate``) made: a mistyped
    ``--data-dir`` must fail, not create an empty database and export nothing with exit code 0."""
    db = Database(settings.storage.resolved_url(), create=False)
    try:
        if not db.is_migrated():
            raise DatabaseError(
                f"{db!r} has no agentrt schema (check --data-dir / --database-url; a new database is made by "
                "`agentrt migrate` or `agentrt serve`)"
            )
        db.migrate()  # an older revision is upgraded, as the server would on start
    except BaseException:
        db.dispose()
        raise
    return db


def open_runtime(settings: Settings) -> Runtime:
    """A Runtime on an existing database (``open_database``), the embedder loaded and the memory component built."""
    from runtime.services import memory as memory_service

    db = open_database(settings)
    rt = Runtime(settings=settings, db=db, executor=ThreadPoolExecutor(2))
    emb = settings.embedding
    rt.loaded_embedder = create_embedder(
        emb.model, emb.device, emb.backend, emb.onnx_threads, emb.precision, settings.storage.cache_dir()
    )
    memory_service.build(rt)
    return rt


def close_runtime(rt: Runtime) -> None:
    if rt.memory is not None:
        rt.memory.flush()
        rt.memory.close()
    rt.executor.shutdown()
    rt.db.dispose()


def _scope(tenant: str, namespace: str) -> str:
    try:
        naming.validate_name(tenant, "--tenant")
        naming.validate_name(namespace, "--namespace")
    except InvalidArgumentError as exc:
        raise SystemExit(f"agentrt: {exc}") from None
    return f"{tenant}/{namespace}"


def _existing_scope(rt: Runtime, tenant: str, namespace: str) -> str:
    """``tenant/namespace``, which must exist: a mistyped name is an error, not an empty result with exit 0."""
    scope = _scope(tenant, namespace)
    known = rt.db.list_namespaces(tenant)
    if namespace not in known:
        raise SystemExit(
            f"agentrt: namespace {namespace!r} of tenant {tenant!r} does not exist in {rt.db!r}"
            f" (it has: {', '.join(known) or 'none'})"
        )
    return scope


def export_messages(rt: Runtime, scope: str) -> Iterator[dict[str, Any]]:
    """Every raw message of a namespace in arrival order, as JSON-ready dicts (the lossless source)."""
    token = ""
    while True:
        page, token = rt.memory.list_messages(scope, page_size=1000, page_token=token)
        for m in page:
            yield {
                "id": m.id,
                "session_id": m.session_id,
                "speaker": m.speaker,
                "text": m.text,
                "time": m.time.isoformat() if m.time else None,
                "metadata": dict(m.metadata),
            }
        if not token:
            return


def import_messages(rt: Runtime, scope: str, lines: TextIO) -> int:
    """Write exported messages back, session by session (idempotent: re-importing changes nothing)."""
    rt.db.ensure_namespace(scope)
    batch: list[MemoryMessage] = []
    session = None
    written = 0

    def flush() -> int:
        if not batch:
            return 0
        result = rt.memory.write(scope, batch[0].session_id, list(batch))
        batch.clear()
        return int(result.written)

    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise TypeError(f"a JSON object is expected, not a {type(row).__name__}")
            metadata = row.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise TypeError(f"metadata must be a JSON object, not a {type(metadata).__name__}")
            msg = MemoryMessage(
                id=str(row["id"]),
                session_id=str(row["session_id"]),
                speaker=str(row.get("speaker", "")),
                text=str(row["text"]),
                time=datetime.fromisoformat(row["time"]) if row.get("time") else None,
                metadata={str(k): str(v) for k, v in metadata.items()},
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"line {number}: not an exported message ({exc})") from None
        if msg.session_id != session or len(batch) >= 500:
            written += flush()
            session = msg.session_id
        batch.append(msg)
    written += flush()
    return written


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch ``agentrt admin <command>``. Bad input (an unknown namespace, an unreadable file, a malformed
    line) ends in SystemExit with one line; a missing database in DatabaseError (``open_database``)."""
    if args.admin_command not in ("reindex", "export", "import"):
        raise SystemExit(f"unknown admin command {args.admin_command!r}")
    if getattr(args, "namespace", None):
        _scope(args.tenant, args.namespace)  # a malformed name fails before the model loads
    source: TextIO | None = None
    if args.admin_command == "import":
        try:
            source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise SystemExit(f"agentrt: cannot read {args.file}: {exc.strerror or exc}") from None
    try:
        rt = open_runtime(settings)
        try:
            if args.admin_command == "reindex":
                if args.namespace:
                    scopes = [_existing_scope(rt, args.tenant, args.namespace)]
                else:
                    scopes = rt.memory.store.namespaces()
                for scope in scopes:
                    print(json.dumps({"namespace": scope, "units_indexed": rt.memory.rebuild(scope)}))
                return 0
            if args.admin_command == "export":
                for row in export_messages(rt, _existing_scope(rt, args.tenant, args.namespace)):
                    sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
                return 0
            assert source is not None
            scope = _scope(args.tenant, args.namespace)
            written = import_messages(rt, scope, source)
            print(json.dumps({"namespace": scope, "written": written}))
            return 0
        finally:
            close_runtime(rt)
    finally:
        if source is not None and source is not sys.stdin:
            source.close()
