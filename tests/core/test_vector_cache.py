"""``core.vector_cache``: vectors of a fixed list of texts kept in a file between starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.embedding import HashingEmbedder
from core.vector_cache import cache_path, cached_vectors

TEXTS = [f"exemplar {i}: never delete the {w} without asking" for i, w in enumerate(["backups", "logs", "users"] * 5)]


class CountingEmbedder(HashingEmbedder):
    """The deterministic fake, counting the texts it is asked to embed (the test is about the cache)."""

    def __init__(self, dim: int = 64, salt: str = "") -> None:
        super().__init__(dim)
        self.embedded = 0
        self.salt = salt

    def embed(self, texts: list[str]) -> np.ndarray:
        self.embedded += len(texts)
        return super().embed([self.salt + t for t in texts])


def test_second_call_reads_the_file_and_checks_two_texts_only(tmp_path: Path) -> None:
    emb = CountingEmbedder()
    first = cached_vectors(tmp_path, "pack", emb, TEXTS)
    assert emb.embedded == len(TEXTS)
    path = cache_path(tmp_path, "pack", emb, TEXTS)
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    again = CountingEmbedder()
    second = cached_vectors(tmp_path, "pack", again, TEXTS)
    assert again.embedded == 2  # the spot check, not the whole list
    np.testing.assert_array_equal(first, second)
    assert second.dtype == np.float32 and second.flags.c_contiguous


def test_other_texts_or_another_embedder_name_use_another_file(tmp_path: Path) -> None:
    emb = CountingEmbedder()
    base = cache_path(tmp_path, "pack", emb, TEXTS)
    assert cache_path(tmp_path, "pack", emb, TEXTS[:-1]) != base
    assert cache_path(tmp_path, "pack", emb, [TEXTS[0] + TEXTS[1], *TEXTS[2:]]) != base  # joins never collide
    assert cache_path(tmp_path, "pack", CountingEmbedder(dim=32), TEXTS) != base
    assert cache_path(tmp_path, "other", emb, TEXTS) != base


@pytest.mark.parametrize(
    "damage", ["empty", "truncated", "garbage", "wrong shape", "not unit length", "other model"]
)
def test_a_bad_file_is_embedded_again_and_replaced(tmp_path: Path, damage: str) -> None:
    emb = CountingEmbedder()
    expected = cached_vectors(tmp_path, "pack", emb, TEXTS)
    path = cache_path(tmp_path, "pack", emb, TEXTS)
    if damage == "empty":
        path.write_bytes(b"")  # a crash before any byte was written: numpy raises EOFError, not ValueError
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 512)
    elif damage == "wrong shape":
        np.save(path, expected[:-1])
    elif damage == "not unit length":
        np.save(path, expected * 2)
    else:
        # Same name and dimension, other vectors: what a swapped model directory gives. The spot check sees it.
        np.save(path, CountingEmbedder(salt="other weights ").embed(TEXTS))
    emb = CountingEmbedder()
    got = cached_vectors(tmp_path, "pack", emb, TEXTS)
    np.testing.assert_array_equal(got, expected)
    assert emb.embedded >= len(TEXTS)  # embedded again
    fresh = CountingEmbedder()
    cached_vectors(tmp_path, "pack", fresh, TEXTS)
    assert fresh.embedded == 2  # and the file was replaced by a good one


def test_no_directory_means_no_cache_and_an_unwritable_one_still_gives_vectors(tmp_path: Path) -> None:
    emb = CountingEmbedder()
    cached_vectors(None, "pack", emb, TEXTS)
    cached_vectors(None, "pack", emb, TEXTS)
    assert emb.embedded == 2 * len(TEXTS)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    got = cached_vectors(blocker / "cache", "pack", emb, TEXTS)  # mkdir fails: logged, vectors still returned
    np.testing.assert_array_equal(got, CountingEmbedder().embed(TEXTS))
