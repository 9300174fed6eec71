"""The ``agentrt`` command: serve the sidecar, and admin commands (migrate, reindex, export, import)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from pydantic import ValidationError

from runtime.config import ConfigError, Settings, describe_validation_error, load_settings


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (default: $AGENTRT_CONFIG)")
    p.add_argument("--data-dir", help="directory of the SQLite database and index files")
    p.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db")


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the file, the environment and the flags. Flags are merged key by key into their sections
    and validated like every other source (``--port 70000`` is refused, not bound modulo 65536)."""
    storage: dict[str, Any] = {}
    if args.data_dir:
        storage["data_dir"] = args.data_dir
    if args.database_url:
        storage["database_url"] = args.database_url
    server: dict[str, Any] = {}
    for key in ("host", "port", "metrics_port"):
        value = getattr(args, key, None)
        if value is not None:
            server[key] = value
    if getattr(args, "insecure", False):
        server["insecure"] = True
    overrides: dict[str, Any] = {}
    if storage:
        overrides["storage"] = storage
    if server:
        overrides["server"] = server
    return load_settings(args.config, **overrides)


def _config_problem(args: argparse.Namespace, exc: Exception) -> str:
    """One line for a configuration that cannot be loaded (no traceback: the user's input is wrong, not us)."""
    if isinstance(exc, ValidationError):
        import os

        return describe_validation_error(exc, args.config or os.environ.get("AGENTRT_CONFIG"))
    return str(exc)


def _database_problem(url: str, exc: Exception) -> str:
    """One line for a database that cannot be opened or migrated (unreachable, unknown driver, bad path)."""
    from runtime.db import _redact

    try:
        shown = _redact(url)
    except Exception:
        shown = "(unparsable URL)"
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"cannot use the database {shown}: {exc.__class__.__name__}: {detail[0] if detail else ''}"


def _serve(settings: Settings, port_file: str | None) -> int:
    """Run the server; the exit code. A server that cannot start prints one line and gives 2, as a bad
    configuration does: StartupError says why, and what is left (a database URL whose driver is missing, a data
    dir that cannot be made, a file that cannot be written) is named here rather than left to a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from runtime.db import DatabaseError
    from runtime.server import StartupError
    from runtime.server import serve as run_serve

    try:
        return asyncio.run(run_serve(settings, port_file=port_file))
    except (StartupError, DatabaseError) as exc:
        problem = str(exc)
    except SQLAlchemyError as exc:
        problem = _database_problem(settings.storage.resolved_url(), exc)
    except (ImportError, OSError) as exc:  # a package missing (a database driver), a path that cannot be used
        problem = f"cannot start: {exc.__class__.__name__}: {exc}"
    print(f"agentrt: {problem}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``agentrt`` console script."""
    parser = argparse.ArgumentParser(prog="agentrt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC sidecar until SIGTERM")
    _common(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus port (default 9464; -1 = off)")
    serve.add_argument("--port-file", help="write the bound port to this file once listening")
    serve.add_argument("--insecure", action="store_true",
                       help="allow binding a non-loopback address without auth tokens")

    migrate = sub.add_parser("migrate", help="bring the database schema to the newest revision")
    _common(migrate)

    admin = sub.add_parser(
        "admin", help="maintenance: reindex, export, import",
        description="Maintenance of an existing database. Export and import carry a namespace's memory messages "
                    "only (not guard rules or guard memory, tools, gate/select/tool policies). On SQLite, import "
                    "and reindex refuse to run while a server has the database open (use its Write / Reindex "
                    "RPCs); on Postgres, running replicas receive what import writes. Errors: one line, exit 2.")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    reindex = admin_sub.add_parser("reindex", help="rebuild indexes (and their snapshots) from the database")
    _common(reindex)
    reindex.add_argument("--tenant", help="only this tenant's namespaces (default: every tenant's)")
    reindex.add_argument("--namespace", help="only this namespace (of --tenant, default 'default')")
    export = admin_sub.add_parser(
        "export", help="write a namespace's memory messages as JSON lines to stdout (messages only)")
    _common(export)
    export.add_argument("--tenant", default="default")
    export.add_argument("--namespace", required=True)
    imp = admin_sub.add_parser(
        "import", help="read memory messages (JSON lines from export) into a namespace",
        description="Every line is checked before anything is written: a bad line names itself and writes "
                    "nothing. Importing the same file again writes nothing new (re-run it to finish an import "
                    "a database failure interrupted).")
    _common(imp)
    imp.add_argument("--tenant", default="default")
    imp.add_argument("--namespace", required=True)
    imp.add_argument("file", help="JSON-lines file, or - for stdin")

    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except (ConfigError, ValidationError, OSError) as exc:
        print(f"agentrt: {_config_problem(args, exc)}", file=sys.stderr)
        return 2
    from runtime.logs import setup_logging

    setup_logging(settings.log.level, settings.log.format)

    if args.command == "serve":
        code = _serve(settings, args.port_file)
        # Everything acknowledged is committed and background work left unfinished is marked pending in the
        # database. Exit now rather than let interpreter teardown race daemon threads still inside torch or
        # FAISS (that aborts the process with "terminate called without an active exception").
        import logging
        import os

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    from sqlalchemy.exc import SQLAlchemyError

    from runtime.admin import AdminError
    from runtime.db import DatabaseError

    url = settings.storage.resolved_url()
    try:
        if args.command == "migrate":
            from runtime.db import Database
            from runtime.serve_lock import ServeLock, ServeLockHeld

            try:
                # A running server on this SQLite file would go on with the schema it loaded (Postgres replicas
                # migrate together: runtime/db.py serialises them).
                held = ServeLock.acquire(url)
            except ServeLockHeld as exc:
                raise AdminError(str(exc)) from None
            try:
                db = Database(url)
                db.migrate()
                db.dispose()
            finally:
                if held is not None:
                    held.release()
            print(json.dumps({"migrated": repr(db)}))
            return 0
        from runtime import admin as admin_ops

        return admin_ops.run(args, settings)
    except (DatabaseError, AdminError) as exc:
        print(f"agentrt: {exc}", file=sys.stderr)
        return 2
    except (SQLAlchemyError, ImportError, OSError) as exc:
        # ImportError: a URL whose driver is not installed (mysql://); OSError: a data dir that is a file.
        print(f"agentrt: {_database_problem(url, exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
