"""A throwaway PostgreSQL instance for tests that stop and restart the database.

Restarting the shared server on 127.0.0.1:5432 would break every other Postgres test running at the same
time, so fault tests get their own cluster (``initdb`` into a temporary directory, a free port, trust auth,
run as the ``postgres`` user). Where that is impossible (no server binaries, not root) the caller skips.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """``start()``, ``stop()``, ``restart()`` one private cluster; ``url(db)`` for SQLAlchemy."""

    def __init__(self, port: int):
        bindir = _bin_dir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        if os.geteuid() != 0:
            raise RuntimeError("need root to run a private PostgreSQL as the postgres user")
        try:
            self._user = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise RuntimeError("no 'postgres' system user") from exc
        self.bindir = bindir
        self.port = port
        # Not under pytest's tmp_path: the postgres user cannot traverse root's 0700 pytest directory.
        self.root = Path(tempfile.mkdtemp(prefix="agentrt-pg-", dir="/tmp"))
        os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self.data = self.root / "data"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", "postgres", "--", str(self.bindir / tool), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def _ctl(self, action: str, *extra: str) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                  "-o", opts, *extra, action)

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
