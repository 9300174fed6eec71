"""``core.cachefiles``: cache files replaced all at once, never left half written, never filling the disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO

import pytest

from core.cachefiles import MIN_FREE_BYTES, has_room, replace_directory, write_atomic, write_synced


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "vectors.npy"
    write_atomic(path, b"first")
    write_atomic(path, lambda f: f.write(b"second"))
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.npy"]


def test_a_write_that_fails_midway_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.npz"
    write_atomic(path, b"good")

    def disk_full(f: BinaryIO) -> None:
        f.write(b"half of it")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, disk_full)
    assert path.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.npz"]


def test_the_temporary_name_carries_the_process_id(tmp_path: Path) -> None:
    """Processes sharing a data directory write their own temporary files, never each other's."""
    seen: list[str] = []

    def look(f: BinaryIO) -> None:
        seen.extend(p.name for p in tmp_path.iterdir())
        f.write(b"x")

    write_atomic(tmp_path / "manifest.json", look)
    assert seen == [f"manifest.json.{os.getpid()}.tmp"]


def test_has_room_keeps_the_reserve_and_counts_the_old_file_too(tmp_path: Path) -> None:
    assert has_room(tmp_path, 1)
    assert not has_room(tmp_path, 1, min_free=1 << 62)  # more than any disk has free
    free = shutil.disk_usage(tmp_path).free
    # A file of just over half the free space does not fit: the old one stays until the rename.
    assert not has_room(tmp_path, free // 2 + (1 << 20), min_free=0)
    assert has_room(tmp_path, free // 4, min_free=0)
    assert MIN_FREE_BYTES == 64 << 20


def test_replace_directory_swaps_a_whole_entry(tmp_path: Path) -> None:
    entry = tmp_path / "onnx-key"
    entry.mkdir()
    (entry / "stale.onnx").write_bytes(b"rejected")
    staged = tmp_path / ".onnx-tmp"
    staged.mkdir()
    write_synced(staged / "model.onnx", b"fresh")
    write_synced(staged / "meta.json", lambda f: f.write(b"{}"))
    replace_directory(staged, entry)
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "model.onnx"]
    assert (entry / "model.onnx").read_bytes() == b"fresh"
    assert not staged.exists()
