"""Vectors of a fixed list of texts kept in a file, so a restart does not embed them again.

The sidecar embeds the same texts on every start: the guard's default rule pack (670 exemplars) took 3-5 s of
the 9 s between listening and SERVING on the 2-core VM, with an empty database. Those vectors depend only on
the texts and the embedder, so they are written once to ``<directory>/<label>-<key>.npy``, where the key is a
SHA-256 of the embedder's name and dimension and of the texts, and read back on the next start.

A file is only a cache: anything unexpected (unreadable, truncated, wrong shape or type, vectors that are not
unit length, or a spot check that disagrees with the embedder) makes :func:`cached_vectors` embed the texts
again and replace the file. The spot check re-embeds two of the texts, so a different model saved under the
same name (a local model directory whose weights were swapped) is caught too. Writes go to a temporary name,
are fsynced and renamed, so a crash never leaves a partial file under the real name; a write that fails (a
read-only or full disk) is logged and the vectors are still returned.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from core.cachefiles import MIN_FREE_BYTES, has_room, write_atomic
from core.embedding import Embedder

log = logging.getLogger(__name__)

#: Least cosine between a cached vector and the embedder's vector for the same text. Vectors of one embedder
#: differ only in the last bits between calls (batching, padding), far above this.
MIN_AGREEMENT = 0.999
__all__ = ["MIN_AGREEMENT", "MIN_FREE_BYTES", "cache_path", "cached_vectors"]


def cache_path(directory: str | Path, label: str, embedder: Embedder, texts: list[str]) -> Path:
    """Where the vectors of ``texts`` by ``embedder`` are kept under ``directory``."""
    digest = hashlib.sha256(f"{embedder.name}\n{embedder.dim}\n{len(texts)}\n".encode())
    for text in texts:
        encoded = text.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))  # lengths first: no two lists hash alike
        digest.update(encoded)
    return Path(directory) / f"{label}-{digest.hexdigest()[:32]}.npy"


def cached_vectors(directory: str | Path | None, label: str, embedder: Embedder, texts: list[str]) -> np.ndarray:
    """``embedder.embed(texts)``, read from ``directory`` when an earlier call saved it there (and saved there
    when not). ``directory=None`` embeds without a cache."""
    if directory is None or not texts:
        return embedder.embed(texts)
    path = cache_path(directory, label, embedder, texts)
    vectors = _load(path, embedder, texts)
    if vectors is not None:
        return vectors
    vectors = embedder.embed(texts)
    _save(path, vectors)
    return vectors


def _load(path: Path, embedder: Embedder, texts: list[str]) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file (numpy finds no header at all)
        log.warning("vector cache %s unreadable (%s): embedding again", path.name, exc)
        return None
    problem = _problem(vectors, embedder, texts)
    if problem:
        log.warning("vector cache %s rejected (%s): embedding again", path.name, problem)
        return None
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _problem(vectors: np.ndarray, embedder: Embedder, texts: list[str]) -> str | None:
    if vectors.dtype != np.float32 or vectors.shape != (len(texts), embedder.dim):
        return f"{vectors.dtype} {vectors.shape}, expected float32 {(len(texts), embedder.dim)}"
    if not np.isfinite(vectors).all():
        return "non-finite values"
    norms = np.linalg.norm(vectors, axis=1)
    if np.abs(norms - 1.0).max() > 1e-3:
        return "vectors not of unit length"
    # First and last text: a swapped model or a file from elsewhere disagrees on both.
    probe = sorted({0, len(texts) - 1})
    fresh = embedder.embed([texts[i] for i in probe])
    agreement = float(np.min(np.sum(fresh * vectors[probe], axis=1)))
    if agreement < MIN_AGREEMENT:
        return f"spot check cosine {agreement:.4f} < {MIN_AGREEMENT}"
    return None


def _save(path: Path, vectors: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not has_room(path.parent, vectors.nbytes):
            log.warning("vector cache %s not written: disk nearly full", path.name)
            return
        array = np.ascontiguousarray(vectors, dtype=np.float32)
        write_atomic(path, lambda f: np.save(f, array, allow_pickle=False))
    except OSError as exc:
        log.warning("vector cache %s not written (%s)", path.name, exc)
