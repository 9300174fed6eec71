"""Tokenizer and incremental BM25 index (core/lexical.py)."""

from __future__ import annotations

import math
import random

import pytest

from core.lexical import BM25Index, Tokenizer, tokenize


def test_tokenizer_normalises_stems_and_drops_stopwords() -> None:
    assert tokenize("Caroline's PAINTINGS were painted") == ["carolin", "paint", "paint"]
    assert tokenize("I don't know what you did") == ["know"]
    assert tokenize("Café résumé") == ["cafe", "resum"]
    assert tokenize("haha ok!") == []


def test_tokenizer_without_stemming_keeps_words() -> None:
    tok = Tokenizer(stem=False, stopwords=())
    assert tok.tokens("The Running dogs") == ["the", "running", "dogs"]


def test_bm25_ranks_matching_document_first_and_ignores_non_matching() -> None:
    index = BM25Index()
    index.add(1, "We went camping by the lake last summer")
    index.add(2, "I painted a sunrise over the lake")
    index.add(3, "My kids love pottery class")
    hits = index.search("When did she paint the sunrise?", k=10)
    assert [doc for doc, _ in hits] == [2]
    assert hits[0][1] > 0


def test_bm25_matches_reference_formula() -> None:
    docs = {1: "apple banana apple", 2: "banana cherry", 3: "cherry durian elderberry fig"}
    index = BM25Index(k1=1.2, b=0.75)
    for doc_id, text in docs.items():
        index.add(doc_id, text)
    tokens = {d: tokenize(t) for d, t in docs.items()}
    avgdl = sum(len(t) for t in tokens.values()) / len(tokens)
    n = len(docs)

    def reference(query: str, doc: int) -> float:
        total = 0.0
        for term in tokenize(query):
            df = sum(term in t for t in tokens.values())
            tf = tokens[doc].count(term)
            if not tf:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            total += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(tokens[doc]) / avgdl))
        return total

    for doc, score in index.search("apple cherry", k=3):
        assert score == pytest.approx(reference("apple cherry", doc), rel=1e-5)
    assert index.score("apple cherry", [1, 2, 3, 99]).tolist() == pytest.approx(
        [reference("apple cherry", d) for d in (1, 2, 3)] + [0.0], rel=1e-5
    )


def test_bm25_remove_and_replace_update_postings() -> None:
    index = BM25Index()
    index.add(1, "violin lessons on tuesday")
    index.add(2, "guitar lessons")
    assert index.remove(1) is True
    assert index.remove(1) is False
    assert index.search("violin", k=5) == []
    assert index.document_frequency("lesson") == 1
    index.add(2, "drum practice")  # replace: old postings go away
    assert index.search("guitar", k=5) == []
    assert [d for d, _ in index.search("drum", k=5)] == [2]
    assert len(index) == 1


def test_bm25_incremental_equals_fresh_build() -> None:
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(60)]
    docs = {i: " ".join(rng.choices(vocab, k=rng.randint(3, 15))) for i in range(300)}
    incremental = BM25Index()
    for doc_id, text in docs.items():
        incremental.add(doc_id, text)
    removed = rng.sample(sorted(docs), 100)
    for doc_id in removed:
        incremental.remove(doc_id)
    fresh = BM25Index()
    for doc_id, text in docs.items():
        if doc_id not in removed:
            fresh.add(doc_id, text)
    for query in ("w1 w2", "w7", "w3 w3 w40 w59"):
        a, b = incremental.search(query, k=20), fresh.search(query, k=20)
        assert [d for d, _ in a] == [d for d, _ in b]
        assert [s for _, s in a] == pytest.approx([s for _, s in b], rel=1e-5)


def test_bm25_top_k_is_sorted_and_deterministic_on_ties() -> None:
    index = BM25Index()
    for doc_id in (5, 3, 9):
        index.add(doc_id, "same words here")
    hits = index.search("words", k=2)
    assert [d for d, _ in hits] == [3, 5]
    assert index.search("words", k=0) == []
    assert BM25Index().search("anything", k=3) == []


def test_max_df_skips_very_common_terms_for_candidate_generation() -> None:
    index = BM25Index()
    for doc_id in range(10):
        index.add(doc_id, f"caroline says filler{doc_id}")
    index.add(99, "caroline adopted a kitten")
    ids, _ = index.search_arrays("caroline kitten", k=20, max_df=0.5)
    assert ids.tolist() == [99]  # "caroline" (in every document) no longer drags in all of them
    ids, _ = index.search_arrays("caroline", k=20, max_df=0.5)
    assert len(ids) == 11  # no rarer term: the common one is kept
    assert len(index.search_arrays("caroline kitten", k=20)[0]) == 11


def test_score_of_given_ids_agrees_with_search_after_updates() -> None:
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(40)]
    index = BM25Index()
    for doc_id in range(200):
        index.add(doc_id, " ".join(rng.choices(vocab, k=rng.randint(2, 12))))
    for doc_id in rng.sample(range(200), 50):
        index.remove(doc_id)
    for doc_id in range(0, 200, 7):
        index.add(doc_id, " ".join(rng.choices(vocab, k=5)))
    for query in ("w1 w2 w3", "w5 w5", "w39 w0"):
        found = dict(index.search(query, k=500))
        ids = list(range(-5, 205))
        scores = index.score(query, ids)
        for doc_id, score in zip(ids, scores.tolist(), strict=True):
            assert score == pytest.approx(found.get(doc_id, 0.0), rel=1e-5, abs=1e-6)


def test_tokenize_cache_hands_out_fresh_lists_and_agrees_with_the_tokenizer() -> None:
    # tokenize() caches the terms of short texts (sessions are re-derived after every Write); a caller that
    # changes the list it got must not change what the next caller gets.
    text = "Caroline's paintings of the lake were painted in June"
    first = tokenize(text)
    first.append("mutated")
    second = tokenize(text)
    assert second == Tokenizer().tokens(text)
    assert "mutated" not in second
    long_text = "painting by the lake " * 200  # over the cached length: tokenized every time, same result
    assert tokenize(long_text) == Tokenizer().tokens(long_text)
