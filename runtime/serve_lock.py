"""One sidecar per SQLite database: the lock ``agentrt serve`` holds on it while it runs.

A sidecar keeps caches of its database (vector indexes, guard trees, tool registries, rate-limit counts) that
only Postgres keeps in step across processes (the change feed). A second sidecar started on the same SQLite file
(another terminal's ``make serve``, a second container on the same volume) would serve from caches that miss
everything the first one writes, with nothing to tell either of them. So a start takes an exclusive ``flock``
on ``<database>.serve.lock`` and refuses, naming the holder's pid, when another process has it; the kernel
releases it when the holder exits, however it exits (kill -9 included), so a crash leaves nothing to clean up.
``agentrt migrate``, ``admin import`` and ``admin reindex`` hold it too while they change the database, so a
server cannot start in the middle of one and cache half of it, nor one of them change the database under a server.

``flock`` locks belong to the open file, not the process: they never touch SQLite's own POSIX locks on the
database, and two servers in one process (tests) exclude each other too. Postgres needs none: replicas there
are the supported way to run several sidecars.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.db import DatabaseError, sqlite_file


class ServeLockHeld(Exception):
    """Another process serves this SQLite database."""


class ServeLock:
    """The held lock (``release`` when the server stops); ``acquire`` returns None where none is needed."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, database_url: str, *, existing_only: bool = False) -> ServeLock | None:
        """Lock the SQLite database of ``database_url`` for this process; None for other databases, an in-memory
        SQLite, a system without ``flock``, and with ``existing_only`` (the admin commands, which create no
        database) a database file that is not there. Raises ServeLockHeld naming the holder."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            return None
        database = database_file(database_url)
        if database is None or (existing_only and not database.is_file()):
            return None
        path = Path(f"{database}.serve.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            # Left by another user (root running an admin command): flock works on a descriptor opened for reading.
            fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
                raise ServeLockHeld(
                    f"{database} is in use by another agentrt process{f' (pid {holder})' if holder else ''}, a "
                    "server, or `agentrt migrate` or an admin import / reindex: one sidecar per SQLite database, as "
                    "each keeps caches the other would not update; stop it, give this one its own storage.data_dir, "
                    "or share a Postgres database (storage.database_url) to run replicas"
                ) from None
            _note_holder(fd, database)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        """Unlock (closing the file drops the flock); the file stays, empty of meaning until the next start."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def database_file(database_url: str) -> Path | None:
    """The absolute path of the SQLite file ``database_url`` names (plain paths and ``file:`` URIs alike), or None
    for another database, an in-memory one, or a string that is no URL (opening the database says so)."""
    if not database_url.startswith("sqlite"):
        return None
    try:
        path = sqlite_file(database_url)
    except DatabaseError:
        return None
    return path.resolve() if path is not None and str(path) not in ("", ".") else None


def _note_holder(fd: int, database: Path) -> None:
    """Write this pid into the held lock file for whoever is refused next; best effort (a full disk, a file opened
    read-only), as the lock itself is the flock. A root process gives the file to the database's owner, so that
    owner's server can open it later."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except OSError:
        pass
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        try:
            owner = database.stat() if database.exists() else database.parent.stat()
            os.fchown(fd, owner.st_uid, owner.st_gid)
        except OSError:
            pass
