"""The embedders: the real bundled model offline, the fake, and the cache in front of them."""

from __future__ import annotations

import gc
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.embedding import CachingEmbedder, HashingEmbedder, SentenceTransformerEmbedder, create_embedder


def test_bundled_minilm_loads_offline_and_gives_normalised_384d_vectors() -> None:
    emb = create_embedder()
    vecs = emb.embed(["I adopted a cat", "My new kitten", "Quarterly tax filing deadline"])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]  # a real model: related sentences are closer


def test_onnx_backend_gives_the_torch_vectors_in_any_batch_order() -> None:
    emb = create_embedder()
    assert isinstance(emb, SentenceTransformerEmbedder) and emb.backend == "onnx"  # the CPU default
    # Lengths vary so the length-sorted batches pad differently; order must come back as given.
    texts = ["ok", "Where did we meet last summer, and who came along with us?", "haha", "I adopted a cat " * 20]
    onnx_vectors = emb.embed(texts)
    torch_vectors = emb._encode_torch(texts)
    np.testing.assert_allclose(np.sum(onnx_vectors * torch_vectors, axis=1), 1.0, atol=1e-4)
    single = np.stack([emb.embed([t])[0] for t in texts])
    np.testing.assert_allclose(single, onnx_vectors, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_encoder_splits_a_batch_in_halves_and_gives_the_same_vectors(threads: int) -> None:
    from core.embedding import _OnnxEncoder

    emb = create_embedder()
    assert isinstance(emb, SentenceTransformerEmbedder)
    split = _OnnxEncoder.export(emb._st_model(), threads=threads)
    whole = _OnnxEncoder.export(emb._st_model(), threads=threads, split=False)
    assert split._split_pool is not None and whole._split_pool is None  # this machine has >= 2 cores
    texts = ["ok", "Where did we meet last summer, and who came along with us?", "haha", "I adopted a cat " * 20, "x y"]
    for batch in (texts, texts[:2], texts[:1]):
        np.testing.assert_allclose(split.encode(batch, 64), whole.encode(batch, 64), atol=1e-5)
    np.testing.assert_allclose(split.encode(texts, 2), whole.encode(texts, 64), atol=1e-5)  # several chunks per half


def test_a_call_larger_than_one_session_run_comes_back_whole_and_in_order() -> None:
    from core.embedding import _OnnxEncoder

    emb = create_embedder()
    assert isinstance(emb, SentenceTransformerEmbedder)
    # Twenty texts of different lengths: three runs of at most eight, each padded to its own longest text.
    texts = [
        f"turn {i}: " + "we talked about the garden " * (i % 7) + ("ok" if i % 3 else "a trip to Paris")
        for i in range(20)
    ]
    assert len(texts) > _OnnxEncoder.MAX_RUN_TEXTS * 2
    whole = emb.embed(texts)
    single = np.stack([emb.embed([t])[0] for t in texts])
    np.testing.assert_allclose(whole, single, atol=1e-4)


def test_onnx_session_threads_follow_the_setting_and_give_the_same_vectors() -> None:
    from core.embedding import default_onnx_threads

    default, one = create_embedder(), create_embedder(threads=1)
    assert isinstance(default, SentenceTransformerEmbedder) and isinstance(one, SentenceTransformerEmbedder)
    assert default._onnx is not None and one._onnx is not None
    assert default._onnx.threads == default_onnx_threads() == min(2, os.cpu_count() or 1)
    assert one._onnx.threads == 1
    texts = ["ok", "Where did we meet last summer, and who came along with us?", "I adopted a cat " * 20]
    for batch in (texts, texts[1:2]):
        np.testing.assert_allclose(default.embed(batch), one.embed(batch), atol=1e-5)


def test_concurrent_embeds_give_the_sequential_vectors() -> None:
    emb = create_embedder()
    texts = [f"note number {i} about {'the lake ' * (i % 7)}kayaks" for i in range(48)]
    expected = emb.embed(texts)
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:  # single texts and batches interleave across threads
        results[i] = emb.embed(texts[i : i + 4]) if i % 2 else emb.embed([texts[i]])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, got in results.items():
        np.testing.assert_allclose(got, expected[i : i + len(got)], atol=1e-5)


def test_unknown_embedding_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="backend 'tpu'"):
        SentenceTransformerEmbedder(backend="tpu")


def test_int8_precision_gives_nearby_vectors_under_its_own_name() -> None:
    fp32, int8 = create_embedder(), create_embedder(precision="int8")
    assert isinstance(int8, SentenceTransformerEmbedder) and int8.precision == "int8" and int8.backend == "onnx"
    # Another name: stored vectors of the other precision are re-embedded at start-up, never mixed.
    assert int8.name == fp32.name + "+int8"
    texts = ["I adopted a cat", "My new kitten", "Quarterly tax filing deadline", "Where did we meet last summer?"]
    a, b = fp32.embed(texts), int8.embed(texts)
    cosines = np.sum(a * b, axis=1)
    assert cosines.min() > 0.98 and cosines.mean() > 0.99 and not np.allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert b[0] @ b[1] > b[0] @ b[2]


def test_unknown_or_unsupported_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision 'int4'"):
        SentenceTransformerEmbedder(precision="int4")
    with pytest.raises(ValueError, match="needs the ONNX Runtime backend"):
        SentenceTransformerEmbedder(backend="torch", precision="int8")


def test_hashing_embedder_is_deterministic_and_word_sensitive() -> None:
    a, b = HashingEmbedder(64), HashingEmbedder(64)
    va, vb = a.embed(["red car", "red car", "blue boat"]), b.embed(["red car"])
    np.testing.assert_array_equal(va[0], vb[0])
    assert va[0] @ va[1] > 0.999 and va[0] @ va[2] < 0.5


class _Counting:
    def __init__(self) -> None:
        self.inner = HashingEmbedder(32)
        self.calls: list[list[str]] = []

    @property
    def dim(self) -> int:
        return 32

    @property
    def name(self) -> str:
        return "counting"

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner.embed(texts)


def test_answered_from_cache_only_when_a_cache_holds_every_text() -> None:
    from core.embedding import answered_from_cache

    plain = HashingEmbedder(32)
    plain.embed(["a b"])
    assert not answered_from_cache(plain, ["a b"])  # no cache: always a model call
    cache = CachingEmbedder(HashingEmbedder(32))
    assert not answered_from_cache(cache, ["a b"])
    cache.embed(["a b"])
    assert answered_from_cache(cache, ["a b"])
    assert not answered_from_cache(cache, ["a b", "c d"])
    cache.clear()
    assert not answered_from_cache(cache, ["a b"])


def test_cache_returns_the_same_vectors_and_embeds_each_text_once() -> None:
    counting = _Counting()
    cache = CachingEmbedder(counting, maxsize=2)
    first = cache.embed(["a b", "c d", "a b"])
    np.testing.assert_array_equal(first, counting.inner.embed(["a b", "c d", "a b"]))
    assert counting.calls == [["a b", "c d"]]
    again = cache.embed(["c d"])
    np.testing.assert_array_equal(again[0], first[1])
    assert len(counting.calls) == 1
    cache.embed(["e f"])  # evicts the least recently used ("a b")
    cache.embed(["a b"])
    assert counting.calls[-1] == ["a b"]
    assert cache.embed([]).shape == (0, 32)


class _Gated(_Counting):
    """Counts calls; the call ``hold`` picks signals ``entered`` and blocks until ``release`` (then fails
    when ``fail``), so a test can run a second caller while the first is inside the model."""

    def __init__(self, hold: Callable[[list[str], int], bool], fail: bool = False) -> None:
        super().__init__()
        self.hold, self.fail = hold, fail
        self.entered = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if self.hold(texts, len(self.calls)):
            self.entered.set()
            assert self.release.wait(5)
            if self.fail:
                raise RuntimeError("model failed")
        return self.inner.embed(texts)


def test_cache_waits_for_a_text_another_thread_is_embedding_instead_of_embedding_it_twice() -> None:
    slow = _Gated(hold=lambda texts, calls: "shared" in texts and calls == 1)
    cache = CachingEmbedder(slow)
    results: dict[str, np.ndarray] = {}
    first = threading.Thread(target=lambda: results.setdefault("first", cache.embed(["shared"])))
    first.start()
    assert slow.entered.wait(5)
    second = threading.Thread(target=lambda: results.setdefault("second", cache.embed(["own", "shared"])))
    second.start()
    # The second caller embeds only its own text, then waits for the first caller's "shared".
    for _ in range(500):
        if ["own"] in slow.calls:
            break
        threading.Event().wait(0.01)
    assert slow.calls == [["shared"], ["own"]]
    assert "second" not in results
    slow.release.set()
    first.join(5)
    second.join(5)
    np.testing.assert_array_equal(results["second"][1], results["first"][0])
    np.testing.assert_array_equal(results["second"][0], slow.inner.embed(["own"])[0])
    assert slow.calls == [["shared"], ["own"]]


def test_cache_waiter_embeds_for_itself_when_the_other_caller_fails() -> None:
    failing = _Gated(hold=lambda _texts, calls: calls == 1, fail=True)
    cache = CachingEmbedder(failing)
    errors: list[BaseException] = []
    results: list[np.ndarray] = []

    def first_call() -> None:
        try:
            cache.embed(["t"])
        except RuntimeError as exc:
            errors.append(exc)

    first = threading.Thread(target=first_call)
    first.start()
    assert failing.entered.wait(5)
    second = threading.Thread(target=lambda: results.append(cache.embed(["t"])))
    second.start()
    threading.Event().wait(0.05)
    failing.release.set()
    first.join(5)
    second.join(5)
    assert len(errors) == 1 and len(results) == 1
    np.testing.assert_array_equal(results[0][0], failing.inner.embed(["t"])[0])


# -- the ONNX encoder's tokenizer and its cache between starts ---------------------------------------------------

TOKENIZER_TEXTS = [
    "",
    "ok",
    "  spaces   and\ttabs\nnewlines  ",
    "naïve café — 東京で会いましょう 🙂 ﬁne",
    "URLs: https://example.com/a?b=c&d=e, emails: a.b@example.org, numbers 3.14159 and 1,000,000",
    "\ufffd replacement and Ünïcödé ÀÉÎÕÜ",
    "word " * 400,  # beyond max_seq_length: truncated
    "Where did we meet last summer, and who came along with us?",
]


def test_fast_tokenizer_gives_the_transformers_tokenizer_ids() -> None:
    """The encoder tokenises with the ``tokenizers`` library directly; its feeds must be what sentence-transformers'
    tokenizer call gives (padding to the longest, truncation at max_seq_length), text by text and in a batch."""
    emb = create_embedder()
    assert isinstance(emb, SentenceTransformerEmbedder)
    st = emb._st_model()
    assert emb._onnx is not None
    ours = emb._onnx._tokenizer
    assert ours.max_length == st.max_seq_length == 256
    for batch in [TOKENIZER_TEXTS, *([t] for t in TOKENIZER_TEXTS)]:
        theirs = st.tokenizer(batch, padding=True, truncation=True, max_length=st.max_seq_length, return_tensors="np")
        feeds = ours(batch)
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(feeds[name], theirs[name])
    assert ours([TOKENIZER_TEXTS[6]])["input_ids"].shape == (1, 256)


def test_encoder_cache_reopens_the_export_without_torch_and_gives_the_same_vectors(tmp_path: Path) -> None:
    first = SentenceTransformerEmbedder(cache_dir=tmp_path)
    assert first.backend == "onnx" and not first.loaded_from_cache
    [entry] = list(tmp_path.glob("onnx-*"))
    assert {p.name for p in entry.iterdir()} == {"model.onnx", "tokenizer.json", "meta.json"}
    assert not list(tmp_path.glob(".onnx-*"))  # no temporary directory left behind

    second = SentenceTransformerEmbedder(cache_dir=tmp_path)
    assert second.loaded_from_cache and second._model is None  # no sentence-transformers model loaded
    assert second.dim == first.dim == 384 and second.name == first.name
    np.testing.assert_allclose(second.embed(TOKENIZER_TEXTS), first.embed(TOKENIZER_TEXTS), atol=1e-5)
    # Against torch itself, not only against the first export.
    np.testing.assert_allclose(np.sum(second.embed(TOKENIZER_TEXTS[:4]) * first._encode_torch(TOKENIZER_TEXTS[:4]),
                                      axis=1), 1.0, atol=1e-4)


def test_encoder_cache_entries_differ_by_precision(tmp_path: Path) -> None:
    SentenceTransformerEmbedder(cache_dir=tmp_path)
    int8 = SentenceTransformerEmbedder(cache_dir=tmp_path, precision="int8")
    assert not int8.loaded_from_cache and len(list(tmp_path.glob("onnx-*"))) == 2
    again = SentenceTransformerEmbedder(cache_dir=tmp_path, precision="int8")
    assert again.loaded_from_cache and again.precision == "int8" and again.name.endswith("+int8")
    np.testing.assert_allclose(again.embed(["I adopted a cat"]), int8.embed(["I adopted a cat"]), atol=1e-5)


@pytest.mark.parametrize("damage", ["truncate model", "other probe vectors", "garbled meta", "missing tokenizer"])
def test_a_damaged_encoder_cache_entry_is_exported_again_and_replaced(tmp_path: Path, damage: str) -> None:
    import json

    reference = SentenceTransformerEmbedder(cache_dir=tmp_path)
    [entry] = list(tmp_path.glob("onnx-*"))
    if damage == "truncate model":
        data = (entry / "model.onnx").read_bytes()
        (entry / "model.onnx").write_bytes(data[: len(data) // 2])
    elif damage == "other probe vectors":
        meta = json.loads((entry / "meta.json").read_text())
        meta["probe_vectors"] = (-np.asarray(meta["probe_vectors"])).tolist()
        (entry / "meta.json").write_text(json.dumps(meta))
    elif damage == "garbled meta":
        (entry / "meta.json").write_text("{not json")
    else:
        (entry / "tokenizer.json").unlink()
    redone = SentenceTransformerEmbedder(cache_dir=tmp_path)
    assert not redone.loaded_from_cache  # rejected: exported again
    np.testing.assert_allclose(redone.embed(TOKENIZER_TEXTS), reference.embed(TOKENIZER_TEXTS), atol=1e-5)
    healed = SentenceTransformerEmbedder(cache_dir=tmp_path)
    assert healed.loaded_from_cache  # the rejected entry was replaced by a good one


def test_encoder_cache_key_follows_the_model_files(tmp_path: Path) -> None:
    import shutil

    from core.embedding import _EncoderCache, default_model_path

    model = tmp_path / "model"
    shutil.copytree(default_model_path(), model)
    before = _EncoderCache(tmp_path / "cache", str(model), "fp32").directory
    assert before == _EncoderCache(tmp_path / "cache", str(model), "fp32").directory
    with open(model / "config.json", "a") as f:
        f.write("\n")  # any byte of any file of the model changes the key
    assert _EncoderCache(tmp_path / "cache", str(model), "fp32").directory != before
    assert _EncoderCache(tmp_path / "cache", str(model), "int8").directory != before


def test_the_serialised_model_is_not_kept_after_load(tmp_path: Path) -> None:
    """The session holds its own copy of the weights: the exported bytes (87 MB for MiniLM) are dropped once the
    cache has them, and at once without a cache."""
    for emb in (SentenceTransformerEmbedder(), SentenceTransformerEmbedder(cache_dir=tmp_path),
                SentenceTransformerEmbedder(cache_dir=tmp_path)):
        assert emb._onnx is not None and emb._onnx.model_bytes == b""


class _Batches(HashingEmbedder):
    """The fake, remembering (weakly) every batch array it returned."""

    def __init__(self) -> None:
        super().__init__(32)
        self.batches: list[weakref.ref[np.ndarray]] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        out = super().embed(texts)
        self.batches.append(weakref.ref(out))
        return out


def test_cached_vectors_do_not_keep_the_batch_they_came_from_alive() -> None:
    """A cached row must own its memory: a row view kept a background batch of 500 texts alive for one cached
    text (73 MiB held by 100 cached entries of 384 floats)."""
    inner = _Batches()
    cache = CachingEmbedder(inner, maxsize=100, max_text_chars=50)
    long_text = "words " * 20  # over max_text_chars: not cached
    for b in range(5):
        cache.embed([f"short text {b}"] + [f"{long_text} {b} {i}" for i in range(50)])
    gc.collect()
    assert len(inner.batches) == 5 and all(batch() is None for batch in inner.batches)
    np.testing.assert_array_equal(cache.embed(["short text 3"]), HashingEmbedder(32).embed(["short text 3"]))


def test_cache_counts_hits_and_misses() -> None:
    cache = CachingEmbedder(HashingEmbedder(32))
    cache.embed(["a", "b", "a"])
    cache.embed(["a", "c"])
    assert (cache.hits, cache.misses) == (2, 3)


def _perturbed_weights(model: Path) -> None:
    """Replace the model's weights in place by slightly different ones (a model fine-tuned again)."""
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(model / "model.safetensors"))
    rng = np.random.default_rng(0)
    for key, value in weights.items():
        if value.dtype == np.float32 and value.ndim == 2:
            weights[key] = value + rng.standard_normal(value.shape).astype(np.float32) * 0.05
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})


def test_new_weights_at_the_same_model_path_are_a_new_embedder_name(tmp_path: Path) -> None:
    """Memory re-embeds only when the name changes, so a local model's name follows its files; the bundled
    model's name stays as it was (a new one would re-embed every existing deployment)."""
    import shutil

    from core.embedding import default_model_path

    model = tmp_path / "model"
    shutil.copytree(default_model_path(), model)
    before = SentenceTransformerEmbedder(str(model), backend="torch", device="cpu")
    assert before.name.startswith(f"{model}@") and before.name != str(model)
    assert SentenceTransformerEmbedder(str(model), backend="torch", device="cpu").name == before.name
    _perturbed_weights(model)
    after = SentenceTransformerEmbedder(str(model), backend="torch", device="cpu")
    assert after.name != before.name and after.name.startswith(f"{model}@")
    assert float(after.embed(["where did we go?"])[0] @ before.embed(["where did we go?"])[0]) < 0.9
    # The encoder cache computes the same name in the same read of the files.
    cached = SentenceTransformerEmbedder(str(model), backend="onnx", cache_dir=tmp_path / "cache", precision="int8")
    assert cached.name == after.name + "+int8"
    # The bundled model: by its package name, or by its directory as it was always named.
    assert SentenceTransformerEmbedder(backend="torch", device="cpu").name == "all-MiniLM-L6-v2"
    assert SentenceTransformerEmbedder(default_model_path(), backend="torch", device="cpu").name == default_model_path()
