"""runtime/serve_lock.py: every way of naming one SQLite file leads to one lock, and a lock whose holder note
cannot be written is still taken and given back (servers refusing each other are in test_lifecycle.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.embedded import EmbeddedServer
from runtime.serve_lock import ServeLock, ServeLockHeld, database_file
from runtime.server import StartupError
from tests.conftest import REPO, make_settings


def test_plain_paths_and_file_uris_name_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "d" / "agentrt.db"
    for url in (f"sqlite:///{db}", f"sqlite+pysqlite:///{db}?timeout=5", "sqlite:///d/agentrt.db",
                f"sqlite:///file:{db}?uri=true", f"sqlite:///file:{str(db).replace('agentrt', 'agent%72t')}?uri=true"):
        assert database_file(url) == db, url
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true",
                "postgresql+psycopg://127.0.0.1/test", "not a url"):
        assert database_file(url) is None, url


def test_a_file_uri_cannot_put_a_second_server_on_a_served_database(tmp_path: Path) -> None:
    """``sqlite:///file:/x/agentrt.db?uri=true`` used to lock a file of its own (under the working directory)."""
    first = EmbeddedServer(make_settings(data_dir=tmp_path, embedding_model="hashing"))
    try:
        uri = f"sqlite:///file:{tmp_path / 'agentrt.db'}?uri=true"
        with pytest.raises(StartupError, match="in use by another agentrt process"):
            EmbeddedServer(make_settings(data_dir=tmp_path / "other", db_url=uri, embedding_model="hashing"))
    finally:
        first.stop()


_NO_ROOM = """
import resource, signal, sys
from runtime.serve_lock import ServeLock, ServeLockHeld
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
url = sys.argv[1]
held = ServeLock.acquire(url)
try:
    ServeLock.acquire(url)
    print("second lock taken")
except ServeLockHeld:
    print("refused while held")
held.release()
again = ServeLock.acquire(url)
print("taken again" if again is not None else "not taken")
"""


def test_a_lock_whose_pid_cannot_be_written_is_taken_and_released(tmp_path: Path) -> None:
    """A full disk made the pid write raise after the flock: the descriptor stayed open and locked, and every later
    start in the process was refused. The pid is a courtesy; the lock is the flock."""
    url = f"sqlite:///{tmp_path / 'agentrt.db'}"
    done = subprocess.run([sys.executable, "-c", _NO_ROOM, url], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["refused while held", "taken again"]
    assert (tmp_path / "agentrt.db.serve.lock").read_text() == ""  # nothing could be written


def test_the_holder_is_named_and_a_released_lock_is_free(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'agentrt.db'}"
    held = ServeLock.acquire(url)
    assert held is not None
    with pytest.raises(ServeLockHeld, match=r"\(pid \d+\)"):
        ServeLock.acquire(url)
    held.release()
    held.release()  # idempotent
    again = ServeLock.acquire(url)
    assert again is not None
    again.release()
    assert ServeLock.acquire(url, existing_only=True) is None  # no database file there: nothing to lock


def test_migrate_refuses_a_sqlite_database_a_server_holds(tmp_path: Path) -> None:
    first = EmbeddedServer(make_settings(data_dir=tmp_path, embedding_model="hashing"))
    try:
        done = subprocess.run([sys.executable, "-m", "runtime.cli", "migrate", "--data-dir", str(tmp_path)],
                              cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "is in use by another agentrt process" in done.stderr
    finally:
        first.stop()
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "migrate", "--data-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr


_AS_OTHER_USER = """
import sys
from runtime.serve_lock import ServeLock, ServeLockHeld
url = sys.argv[1]
held = ServeLock.acquire(url)
print("taken" if held is not None else "none")
held.release()
"""


def test_a_lock_file_another_user_left_does_not_keep_this_users_server_out(tmp_path: Path) -> None:
    """Root running an admin command left a lock file only root may write: the owner's next server failed with
    "Permission denied". It opens the file read-only instead (flock needs no write access), and root now hands
    the file it creates to the database's owner."""
    import os
    import shutil
    import tempfile

    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    shared = Path(tempfile.mkdtemp(dir="/tmp", prefix="serve-lock-"))  # the pytest tree is root's alone
    try:
        shared.chmod(0o777)
        nobody = 65534
        db = shared / "agentrt.db"
        db.touch()
        os.chown(db, nobody, nobody)
        url = f"sqlite:///{db}"
        # Root takes and gives back the lock: the file it created now belongs to the database's owner.
        held = ServeLock.acquire(url)
        assert held is not None
        held.release()
        assert os.stat(f"{db}.serve.lock").st_uid == nobody
        # A lock file that only root may write (as root's admin commands left them before): read-only still locks.
        os.chown(f"{db}.serve.lock", 0, 0)
        os.chmod(f"{db}.serve.lock", 0o644)
        done = subprocess.run(
            ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups", sys.executable, "-c",
             _AS_OTHER_USER, url],
            cwd=REPO, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 0 and done.stdout.strip() == "taken", done.stderr
        held = ServeLock.acquire(url)  # and the read-only holder's lock was a real one, now released
        assert held is not None
        held.release()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_file_uri_opens_its_file_and_makes_no_directory_named_file(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite:///file:/x/agentrt.db?uri=true`` made a directory tree ``./file:/x`` under the working directory,
    and ``create=False`` (the admin commands) said there was no database at ``file:/x/agentrt.db``."""
    from runtime.db import Database

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    uri = f"sqlite:///file:{tmp_path / 'data' / 'agentrt.db'}?uri=true"
    db = Database(uri)
    db.migrate()
    db.dispose()
    assert (tmp_path / "data" / "agentrt.db").is_file() and list(work.iterdir()) == []
    existing = Database(uri, create=False)  # found, not "no database at file:..."
    existing.dispose()
