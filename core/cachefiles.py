"""Writing cache files safely: the one recipe behind the index snapshots, the vector cache and the encoder cache.

Each of those is only a head start that the database or the model can rebuild, so two rules hold for all of them:

* **A crash never leaves a partial file under the real name.** The data goes to a temporary name in the same
  directory (with the process id in it, so processes sharing a data directory never mix their files), is flushed
  and fsynced, and is renamed over the real name; the directory is fsynced after the rename so the new name
  itself survives a power cut. A write that fails midway removes its temporary file.
* **A cache never takes the room the database needs.** :func:`has_room` answers whether a file of a given size
  fits while leaving :data:`MIN_FREE_BYTES` free (twice the size, since the old file stays until the rename).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: Free disk space a cache file never eats into (the database needs it more).
MIN_FREE_BYTES = 64 << 20

#: What a file is written from: its bytes, or a function that writes them to the open file.
Content = bytes | Callable[[BinaryIO], object]


def has_room(directory: str | Path, size: int, *, min_free: int = MIN_FREE_BYTES) -> bool:
    """Whether ``directory``'s disk can take a file of ``size`` bytes (twice: old and new side by side) and still
    keep ``min_free`` bytes free."""
    return shutil.disk_usage(directory).free >= min_free + 2 * size


def write_synced(path: str | Path, content: Content) -> None:
    """Write ``content`` to ``path`` and fsync it (no rename: for files inside a directory renamed as a whole)."""
    with open(path, "wb") as f:
        if isinstance(content, bytes):
            f.write(content)
        else:
            content(f)
        f.flush()
        os.fsync(f.fileno())


def fsync_directory(path: str | Path) -> None:
    """Make a rename or a new entry in directory ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, content: Content) -> None:
    """Replace ``path`` with ``content`` all at once: a temporary file, fsynced, then renamed over it.

    Raises what the write raises (OSError: disk full, read-only); the temporary file is gone either way.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write_synced(tmp, content)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # renamed already, or no directory to remove it from
            tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def replace_directory(tmp: str | Path, path: str | Path) -> None:
    """Move the fully written directory ``tmp`` to ``path``, replacing what was there (a rejected entry)."""
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    fsync_directory(os.path.dirname(os.path.abspath(path)))
