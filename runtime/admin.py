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
from memory.model import MemoryMessage
from runtime import naming
from runtime.config import Settings
from runtime.container import Runtime
from runtime.db import Database


def open_runtime(settings: Settings) -> Runtime:
    """A Runtime with the database migrated, the embedder loaded and the memory component built."""
    from runtime.services import memory as memory_service

    db = Database(settings.storage.resolved_url())
    db.migrate()
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
    naming.validate_name(tenant, "--tenant")
    naming.validate_name(namespace, "--namespace")
    return f"{tenant}/{namespace}"


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
            msg = MemoryMessage(
                id=str(row["id"]),
                session_id=str(row["session_id"]),
                speaker=str(row.get("speaker", "")),
                text=str(row["text"]),
                time=datetime.fromisoformat(row["time"]) if row.get("time") else None,
                metadata={str(k): str(v) for k, v in (row.get("metadata") or {}).items()},
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
    """Dispatch ``agentrt admin <command>``."""
    rt = open_runtime(settings)
    try:
        if args.admin_command == "reindex":
            scopes = [_scope(args.tenant, args.namespace)] if args.namespace else rt.memory.store.namespaces()
            for scope in scopes:
                print(json.dumps({"namespace": scope, "units_indexed": rt.memory.rebuild(scope)}))
            return 0
        if args.admin_command == "export":
            for row in export_messages(rt, _scope(args.tenant, args.namespace)):
                sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            return 0
        if args.admin_command == "import":
            scope = _scope(args.tenant, args.namespace)
            if args.file == "-":
                written = import_messages(rt, scope, sys.stdin)
            else:
                with open(args.file, encoding="utf-8") as f:
                    written = import_messages(rt, scope, f)
            print(json.dumps({"namespace": scope, "written": written}))
            return 0
        raise SystemExit(f"unknown admin command {args.admin_command!r}")
    finally:
        close_runtime(rt)
