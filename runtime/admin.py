"""Admin commands that run without a server: reindex, and export and import of a namespace's memory messages.

What export and import carry: a namespace's raw memory messages (id, session, speaker, text, time, metadata),
nothing else. Guard rules and guard memory, tools, and gate, selection and tool policies are not exported; the
units and indexes derived from messages are rebuilt from them by the import.

Beside a running server:

- SQLite: a server keeps caches (indexes, known namespaces) of its database and would not see what import or
  reindex changed, so both refuse to run while another process has the database open (``refuse_if_in_use``);
  stop the server first, or call its Write and Reindex RPCs instead. Export only reads and may run beside it.
- Postgres: import publishes its writes on the change feed and runs background work under the replicas'
  leases, as a replica does, so running replicas apply the imported messages. Reindex rebuilds the index
  snapshots under this command's ``--data-dir`` only; a running replica rebuilds its own with the Reindex RPC.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from core.embedding import create_embedder
from core.errors import InvalidArgumentError
from memory.model import MemoryMessage
from memory.store import SqlMemoryStore
from runtime import naming
from runtime.config import Settings
from runtime.container import Runtime
from runtime.db import Database, DatabaseError
from runtime.serve_lock import ServeLock, ServeLockHeld

#: An export line is one message (text of at most 100,000 characters, JSON-escaped); a longer line is not one,
#: and reading it whole could take any amount of memory.
MAX_LINE_BYTES = 16 * 1024 * 1024
#: Messages per ``memory.write`` call of an import (one session's consecutive messages at most).
WRITE_BATCH = 500
#: Messages whose ids are looked up in the database at a time while an import file is checked.
_CHECK_BATCH = 1000


class AdminError(ValueError):
    """An admin command cannot do what was asked because of its input: an unknown tenant or namespace, an import
    file that cannot be read or holds a malformed line, a SQLite database a server has open. The message says which
    and what to do; ``agentrt`` prints it on one line and exits with code 2."""


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
    """A Runtime on an existing database (``open_database``), the embedder loaded and the memory component built.

    On Postgres it takes part as a replica does (runtime/server.py): its writes are published on the change feed,
    so running replicas apply them, and its background work runs under the replicas' leases.
    """
    from runtime.services import memory as memory_service

    db = open_database(settings)
    rt = Runtime(settings=settings, db=db, executor=ThreadPoolExecutor(2), replica_id=f"admin-{uuid.uuid4().hex[:12]}")
    if db.dialect == "postgresql":
        from runtime.replication import ChangeFeed, PgLeases

        rt.changes = ChangeFeed(db, rt.replica_id)
        rt.leases = PgLeases(db)
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


# SQLite's locking protocol (os_unix.c; the lock-byte page of the file format): a connection to a database in WAL
# mode holds a read lock on a byte of the SHARED range for as long as it is open, so a write lock over the whole
# range is refused while any other process has the database open. The byte offsets are part of the file format:
# every SQLite version must honour them to share a file with every other.
_PENDING_BYTE = 0x40000000
_SHARED_FIRST = _PENDING_BYTE + 2
_SHARED_SIZE = 510


def sqlite_in_use(path: Path) -> bool:
    """Whether another process has the SQLite database at ``path`` open (a running server keeps its pooled
    connections open). Call it before this process opens the database: closing any descriptor of a file drops
    every POSIX lock the process holds on it, SQLite's own included."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): nothing to probe
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False  # absent or unreadable: open_database says so
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, _SHARED_SIZE, _SHARED_FIRST, os.SEEK_SET)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the probe's lock
    return False


def refuse_if_in_use(settings: Settings, command: str) -> None:
    """AdminError where ``command`` would change a SQLite database another process (a running server) has open:
    the server would go on answering from caches that miss the change, and report success for nothing."""
    url = settings.storage.resolved_url()
    if not url.startswith("sqlite"):
        return  # Postgres: the change feed carries the change to running replicas
    database = make_url(url).database
    if database and sqlite_in_use(Path(database)):
        raise AdminError(
            f"{database} is open in another process, most likely a running `agentrt serve`, which would not see "
            f"what `admin {command}` changes: stop the server first, or call its Write / Reindex RPCs instead"
        )


def _valid(value: str, flag: str) -> str:
    try:
        return naming.validate_name(value, flag)
    except InvalidArgumentError as exc:
        raise AdminError(str(exc)) from None


def _scope(tenant: str, namespace: str) -> str:
    return f"{_valid(tenant, '--tenant')}/{_valid(namespace, '--namespace')}"


def _existing_scope(db: Database, tenant: str, namespace: str) -> str:
    """``tenant/namespace``, which must exist: a mistyped name is an error, not an empty result with exit 0."""
    scope = _scope(tenant, namespace)
    known = db.list_namespaces(tenant)
    if namespace not in known:
        raise AdminError(
            f"namespace {namespace!r} of tenant {tenant!r} does not exist in {db!r}"
            f" (it has: {', '.join(known) or 'none'})"
        )
    return scope


def reindex_scopes(rt: Runtime, tenant: str | None, namespace: str | None) -> list[str]:
    """The namespaces ``admin reindex`` rebuilds: one, every one of a tenant, or every one holding memory. A tenant
    or namespace that does not exist is an AdminError, not an empty result with exit 0."""
    if namespace:
        return [_existing_scope(rt.db, tenant or naming.DEFAULT_TENANT, namespace)]
    scopes = rt.memory.store.namespaces()
    if tenant is None:
        return list(scopes)
    if not rt.db.list_namespaces(_valid(tenant, "--tenant")):
        raise AdminError(f"tenant {tenant!r} has no namespaces in {rt.db!r}")
    return [s for s in scopes if naming.split_scoped(s)[0] == tenant]


def export_messages(db: Database, scope: str) -> Iterator[dict[str, Any]]:
    """Every raw message of a namespace in arrival order, as JSON-ready dicts (the lossless source). Read from the
    store alone: no model, no index, nothing written, so an export may run beside a server."""
    store = SqlMemoryStore(db.engine)
    after = -1
    while page := store.list_messages(scope, after_seq=after, limit=1000):
        for stored in page:
            m = stored.message
            yield {
                "id": m.id,
                "session_id": m.session_id,
                "speaker": m.speaker,
                "text": m.text,
                "time": m.time.isoformat() if m.time else None,
                "metadata": dict(m.metadata),
            }
        after = page[-1].seq


# -- import ------------------------------------------------------------------------------------------------------


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def parse_line(raw: bytes, where: str) -> MemoryMessage:
    """One exported message from a line of an import file; AdminError naming ``where`` (``file:line``) and the
    field otherwise. ``id`` and ``session_id`` are non-empty strings, ``text`` a string, ``speaker`` a string or
    null, ``time`` an ISO 8601 string or null, ``metadata`` an object of strings or null; other keys are ignored."""
    try:
        # A byte order mark (a file saved by an editor) is no part of the first line's JSON.
        line = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AdminError(f"{where}: not UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})") from None
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise AdminError(f"{where}: not an exported message: not JSON ({exc})") from None
    if not isinstance(row, dict):
        raise AdminError(f"{where}: not an exported message: a JSON object is expected, not {_json_type(row)}")

    def bad(field: str, why: str) -> AdminError:
        return AdminError(f"{where}: {field}: {why}")

    def string(field: str, value: object, *, nullable: bool) -> str:
        if value is None and nullable:
            return ""
        if not isinstance(value, str):
            raise bad(field, f"must be a string, not {_json_type(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            # JSON may spell a lone UTF-16 surrogate ("\ud800"); it is no character and no database can store it.
            raise bad(field, f"holds {value[exc.start]!r}, a lone surrogate that is not a character") from None
        return value

    for field in ("id", "session_id", "text"):
        if field not in row:
            raise bad(field, "is missing")
    mid = string("id", row["id"], nullable=False)
    session_id = string("session_id", row["session_id"], nullable=False)
    for field, value in (("id", mid), ("session_id", session_id)):
        if not value:
            raise bad(field, "must not be empty")
    time_value = row.get("time")
    when = None
    if time_value is not None:
        if not isinstance(time_value, str):
            raise bad("time", f"must be an ISO 8601 string or null, not {_json_type(time_value)}")
        try:
            when = datetime.fromisoformat(time_value)
        except ValueError:
            raise bad("time", f"{time_value!r} is not an ISO 8601 time") from None
    metadata = row.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad("metadata", f"must be a JSON object, not {_json_type(metadata)}")
    return MemoryMessage(
        id=mid,
        session_id=session_id,
        speaker=string("speaker", row.get("speaker"), nullable=True),
        text=string("text", row["text"], nullable=False),
        time=when,
        metadata={
            string(f"metadata key {k!r}", k, nullable=False): string(f"metadata[{k!r}]", v, nullable=False)
            for k, v in (metadata or {}).items()
        },
    )


def _violation(exc: InvalidArgumentError, where: list[str]) -> str:
    """The first violation of a ``memory.write`` of messages read from ``where[i]``, as ``where: field: why``."""
    v = exc.violations[0]
    field, index = v.field, 0
    if field.startswith("messages["):
        number, _, rest = field[len("messages["):].partition("]")
        index, field = int(number), rest.lstrip(".")
    return f"{where[min(index, len(where) - 1)]}: {field}: {v.description}"


def _lines(reader: IO[bytes], name: str, copy: IO[bytes] | None = None) -> Iterator[tuple[str, bytes]]:
    """The non-blank lines of an import file as ``(where, bytes)``, ``where`` being ``name:number``; every line is
    also written to ``copy`` where given."""
    number = 0
    while raw := reader.readline(MAX_LINE_BYTES + 1):
        number += 1
        where = f"{name}:{number}"
        if len(raw) > MAX_LINE_BYTES:
            raise AdminError(f"{where}: longer than {MAX_LINE_BYTES >> 20} MiB, not an exported message")
        if copy is not None:
            copy.write(raw)
        if raw.strip():
            yield where, raw


def check_import(rt: Runtime, scope: str, lines: Iterator[tuple[str, bytes]]) -> int:
    """Check every line as ``memory.write`` would (without writing): what it refuses, an id twice in the file, an
    id stored in another session of the namespace. Returns how many messages there are; AdminError otherwise."""
    first_seen: dict[str, str] = {}
    pending: list[tuple[str, MemoryMessage]] = []

    def check_stored() -> None:
        stored = rt.memory.store.get_messages(scope, [m.id for _, m in pending])
        for where, m in pending:
            old = stored.get(m.id)
            if old is not None and old.message.session_id != m.session_id:
                raise AdminError(
                    f"{where}: id: {m.id!r} is already stored in session {old.message.session_id!r} of {scope}, "
                    f"not in {m.session_id!r}"
                )
        pending.clear()

    count = 0
    for where, raw in lines:
        msg = parse_line(raw, where)
        try:
            # The engine's own checks (lengths, control characters, NUL, time range) on this message alone, so the
            # rules are written once; MemoryEngine has no public way yet to check messages without writing them.
            rt.memory.validate_messages(msg.session_id, [msg])
        except InvalidArgumentError as exc:
            raise AdminError(_violation(exc, [where])) from None
        if msg.id in first_seen:
            raise AdminError(f"{where}: id: {msg.id!r} is already on {first_seen[msg.id]}")
        first_seen[msg.id] = where
        pending.append((where, msg))
        if len(pending) >= _CHECK_BATCH:
            check_stored()
        count += 1
    check_stored()
    return count


def write_import(rt: Runtime, scope: str, lines: Iterator[tuple[str, bytes]]) -> int:
    """Write checked lines, one session's consecutive messages per ``memory.write`` (at most WRITE_BATCH), creating
    the namespace before the first. Returns how many messages were new or changed.

    Each batch commits on its own: an interruption (a database failure, a Write of the same id beside this import)
    leaves the batches before it stored, and the AdminError says so; importing the same file again completes it,
    as every message already stored unchanged is skipped."""
    batch: list[MemoryMessage] = []
    lines_of: list[str] = []
    written = 0
    created = False

    def flush() -> None:
        nonlocal written, created
        if not batch:
            return
        try:
            if not created:
                rt.db.ensure_namespace(scope)
                created = True
            written += int(rt.memory.write(scope, batch[0].session_id, list(batch)).written)
        except InvalidArgumentError as exc:
            raise AdminError(f"{_violation(exc, lines_of)}; {_resume(written)}") from None
        except (SQLAlchemyError, OSError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise AdminError(
                f"{lines_of[0]}: the import stopped ({exc.__class__.__name__}: {detail[0] if detail else ''}); "
                f"{_resume(written)}"
            ) from exc
        batch.clear()
        lines_of.clear()

    for where, raw in lines:
        msg = parse_line(raw, where)
        if batch and (msg.session_id != batch[0].session_id or len(batch) >= WRITE_BATCH):
            flush()
        batch.append(msg)
        lines_of.append(where)
    flush()
    return written


def _resume(written: int) -> str:
    return (f"the batches before it are stored ({written} new or changed messages); import the same file again to "
            "finish (messages already stored are skipped)")


def import_messages(rt: Runtime, scope: str, source: IO[bytes], name: str = "-") -> tuple[int, int]:
    """Import an export file into ``scope``: every line is checked before anything is written, so a malformed
    line, or one ``memory.write`` would refuse, writes nothing and does not create the namespace. Returns
    (messages in the file, messages new or changed); idempotent: importing the same file again writes none.

    The file is read twice, checked then written; a source that cannot seek (a pipe) is copied to a temporary
    file on the first pass, so memory holds one line and the ids seen, never the whole file."""
    if source.seekable():
        start = source.tell()
        count = check_import(rt, scope, _lines(source, name))
        source.seek(start)
        return count, (write_import(rt, scope, _lines(source, name)) if count else 0)
    with tempfile.TemporaryFile(prefix="agentrt-import-") as spool:
        count = check_import(rt, scope, _lines(source, name, copy=spool))
        spool.seek(0)
        return count, (write_import(rt, scope, _lines(spool, name)) if count else 0)


# -- output and dispatch -------------------------------------------------------------------------------------------


class _JsonLines:
    """JSON lines on stdout, UTF-8 whatever the locale (the import reads UTF-8). A reader that goes away early
    (``| head -1``) ends the output quietly, not the command with an error."""

    def __init__(self) -> None:
        self.closed = False

    def write(self, row: dict[str, Any]) -> None:
        if self.closed:
            return
        # Stored text is valid Unicode (an import refuses a lone surrogate, and neither database stores one).
        line = json.dumps(row, ensure_ascii=False).encode("utf-8")
        try:
            sys.stdout.buffer.write(line + b"\n")
        except BrokenPipeError:
            self._reader_gone()

    def close(self) -> None:
        if not self.closed:
            try:
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                self._reader_gone()

    def _reader_gone(self) -> None:
        # Point stdout at /dev/null, or the interpreter's final flush fails on the closed pipe all over again
        # (the recipe of https://docs.python.org/3/library/signal.html#note-on-sigpipe).
        self.closed = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _open_source(path: str) -> tuple[IO[bytes], str]:
    if path == "-":
        return sys.stdin.buffer, "<stdin>"
    try:
        return open(path, "rb"), path  # closed by run()
    except OSError as exc:
        raise AdminError(f"cannot read {path}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch ``agentrt admin <command>``. Bad input (an unknown tenant or namespace, an unreadable file, a
    malformed line, a SQLite database a server has open) raises AdminError; a missing database DatabaseError
    (``open_database``). ``agentrt`` turns both into one line and exit code 2."""
    command = args.admin_command
    if command not in ("reindex", "export", "import"):
        raise AdminError(f"unknown admin command {command!r}")
    tenant = _valid(args.tenant or naming.DEFAULT_TENANT, "--tenant")  # a malformed name fails before the model loads
    if getattr(args, "namespace", None):
        _scope(tenant, args.namespace)
    source: IO[bytes] | None = None
    if command == "import":
        source, name = _open_source(args.file)
    out = _JsonLines()
    try:
        if command == "export":
            db = open_database(settings)
            try:
                for row in export_messages(db, _existing_scope(db, tenant, args.namespace)):
                    out.write(row)
                    if out.closed:
                        break
                out.close()
            finally:
                db.dispose()
            return 0
        refuse_if_in_use(settings, command)
        try:
            # A server started meanwhile would cache a half-imported namespace (runtime/serve_lock.py).
            held = ServeLock.acquire(settings.storage.resolved_url(), existing_only=True)
        except ServeLockHeld as exc:
            raise AdminError(str(exc)) from None
        try:
            rt = open_runtime(settings)
            try:
                if command == "reindex":
                    for scope in reindex_scopes(rt, args.tenant, args.namespace):
                        out.write({"namespace": scope, "units_indexed": rt.memory.rebuild(scope)})
                else:
                    assert source is not None
                    scope = _scope(tenant, args.namespace)
                    count, written = import_messages(rt, scope, source, name)
                    out.write({"namespace": scope, "messages": count, "written": written})
                out.close()
                return 0
            finally:
                close_runtime(rt)
        finally:
            if held is not None:
                held.release()
    finally:
        if source is not None and source is not sys.stdin.buffer:
            source.close()
