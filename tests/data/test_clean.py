"""Cleaning transforms, quality filters and the pipeline, on real classics text and on hostile input."""

from __future__ import annotations

import ast
import inspect
import os
import time
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightning_llm.data import clean, filters
from lightning_llm.data.clean import (
    CleanConfig,
    Pipeline,
    Transform,
    build_pipeline,
    clean_whitespace,
    config_filters,
    unicode_normalizer,
)
from lightning_llm.data.documents import Document, decode, strip_gutenberg
from lightning_llm.data.filters import RangeFilter

PROSE = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be on "
    "his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding "
    "families, that he is considered the rightful property of some one or other of their daughters."
)


def _doc(text: str) -> Document:
    return Document(text, "test")


# -- transforms ---------------------------------------------------------------------------------------
def test_clean_whitespace() -> None:
    raw = "\n\n  Title  \r\nline one\t \rline\x00 two\x07\n\n\n\n\n\nlast\u2028line\ufeff   \n\n"
    assert clean_whitespace(raw) == "  Title\nline one\nline two\n\n\nlast\nline"


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_clean_whitespace_is_idempotent_and_adds_nothing_visible(text: str) -> None:
    once = clean_whitespace(text)
    assert clean_whitespace(once) == once
    visible = [c for c in once if not c.isspace()]
    source = iter(c for c in text if not c.isspace())
    assert all(c in source for c in visible)  # a subsequence of the input's visible characters


def test_strip_gutenberg() -> None:
    body = "CHAPTER I\n\nIt was a dark and stormy night."
    modern = (
        "The Project Gutenberg EBook of Something, by Someone\n\nThis eBook is for the use of anyone...\n\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***\n\n\n\nProduced by A. Volunteer\n\n\n"
        f"{body}\n\n\n*** END OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***\n\nSection 1. General Terms of Use"
    )
    assert strip_gutenberg(modern) == body
    old = "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n" + body
    assert strip_gutenberg(old + "\n\nEnd of Project Gutenberg's Something") == body
    plain = "A text that merely mentions Project Gutenberg stays as it is."
    assert strip_gutenberg(plain) == plain


def test_unicode_normalizer_and_transform_semantics() -> None:
    nfc = unicode_normalizer("NFC")
    assert nfc(_doc("Cafe\u0301")).text == "Café"
    same = _doc("already normal")
    assert nfc(same) is same  # unchanged documents pass through as they are
    assert Transform("blank", lambda t: "  ")(_doc("x")) is None
    with pytest.raises(ValueError, match="NFC, NFKC, NFD, NFKD"):
        unicode_normalizer("NFX")


# -- filters: each metric, and the threshold semantics of RangeFilter ----------------------------------
def test_metric_values() -> None:
    assert filters.alpha_ratio("ab 12") == pytest.approx(0.5)
    assert filters.alpha_ratio("ééé 12!") == pytest.approx(0.5)  # the non-ASCII path
    assert filters.alpha_ratio("   ") == 0.0
    assert filters.symbol_ratio("ab, cd. ##") == pytest.approx(2 / 8)
    assert filters.symbol_ratio("ab\ufffd\ufffd") == pytest.approx(0.5)
    assert filters.line_repetition_ratio("spam\nspam\neggs and\n\nspam") == pytest.approx(8 / 20)
    assert filters.ngram_repetition_ratio("a b c a b c", n=3) == pytest.approx(1 / 4)
    assert filters.ngram_repetition_ratio("too short", n=3) == 0.0
    assert filters.stopword_ratio("The cat, and THE dog.") == pytest.approx(3 / 5)
    assert filters.chars_per_token("a bb ccc") == pytest.approx(2.0)


METRICS = [
    filters.num_chars,
    filters.alpha_ratio,
    filters.symbol_ratio,
    filters.line_repetition_ratio,
    filters.ngram_repetition_ratio,
    filters.stopword_ratio,
    filters.chars_per_token,
]


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.__name__)
@pytest.mark.parametrize(
    "text", [PROSE, "x" * 50, "## $$ %%\n## $$ %%", "the the the the the the the the the the the"]
)
def test_range_filter_bounds_are_inclusive(metric, text: str) -> None:
    value = metric(text)
    doc = _doc(text)
    assert RangeFilter("f", metric, min=value)(doc) is doc
    assert RangeFilter("f", metric, max=value)(doc) is doc
    assert RangeFilter("f", metric, min=value + 1e-6)(doc) is None
    assert RangeFilter("f", metric, max=value - 1e-6)(doc) is None
    assert RangeFilter("f", metric)(doc) is doc


def _kept_by_defaults(text: str) -> dict[str, bool]:
    steps = config_filters(CleanConfig())
    return {f.name: f.keeps(f.score(text)) for f in steps}


BAD = {
    "length": "Too short.",
    "alpha_ratio": "Totals: 1,234,567 + 8,901,234 = 10,135,801; 42 * 17 = 714; 2024-01-01 12:00:00 " * 5,
    "symbol_ratio": "the <div> {and} of <span> | to || in ### the @@@ and $$$ of ~~~ to ^^^ " * 5,
    "chars_per_token": "the a of I " * 30,
    "stopword_ratio": "Buy cheap watches online discount prices free shipping best deals guaranteed. " * 5,
    "line_repetition": "Click here to subscribe to our newsletter today!\n" * 20 + PROSE,
    "ngram_repetition_10": " ".join([PROSE] * 4),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_default_filter_drops_its_garbage_and_keeps_prose(name: str) -> None:
    assert all(_kept_by_defaults(PROSE).values())
    assert _kept_by_defaults(BAD[name])[name] is False


def test_default_filters_keep_real_classics(classics_slice: list[Document]) -> None:
    assert len(classics_slice) >= 8
    for doc in classics_slice:
        kept = _kept_by_defaults(clean_whitespace(doc.text))
        assert all(kept.values()), (doc.source, kept)


# -- the pipeline -------------------------------------------------------------------------------------
def _check_report(pipe: Pipeline, n_in: int, n_out: int) -> None:
    report = pipe.report()
    assert [r["name"] for r in report] == [clean.step_name(s) for s in pipe.steps]
    assert report[0]["docs_in"] == n_in and report[-1]["docs_out"] == n_out
    for row in report:
        assert row["docs_in"] - row["docs_out"] == row["docs_removed"] >= 0
    for prev, nxt in zip(report, report[1:], strict=False):
        assert (prev["docs_out"], prev["bytes_out"]) == (nxt["docs_in"], nxt["bytes_in"])


def test_pipeline_on_real_text_and_hostile_input(classics_slice: list[Document]) -> None:
    garbage, bad = decode(os.urandom(50_000))
    assert bad > 0
    hostile = [
        _doc(""),
        _doc(garbage),
        _doc("\x00\x01\x02 \r\n \t"),
        classics_slice[0],  # an exact duplicate, once more
        _doc(classics_slice[1].text.replace("the", "thee", 3)),  # a near duplicate
    ]
    pipe = build_pipeline(CleanConfig())
    kept = list(pipe([*classics_slice, *hostile]))
    assert [d.source for d in kept] == [d.source for d in classics_slice]
    _check_report(pipe, len(classics_slice) + len(hostile), len(classics_slice))
    removed = {r["name"]: r["docs_removed"] for r in pipe.report()}
    assert removed["normalize_NFC"] + removed["whitespace"] == 2  # blank once cleaned
    assert removed["exact_dedup"] == 1 and removed["near_dedup"] == 1
    assert removed["alpha_ratio"] + removed["symbol_ratio"] == 1  # the binary garbage


def test_pipeline_is_lazy_and_takes_plain_functions() -> None:
    seen: list[str] = []

    def upper(doc: Document) -> Document:
        seen.append(doc.text)
        return Document(doc.text.upper(), doc.source)

    pipe = Pipeline([upper, RangeFilter("no_x", lambda t: t.count("X"), max=0)])
    stream = pipe(_doc(t) for t in ["ab", "xy", "cd"])
    assert seen == []
    assert next(stream).text == "AB" and seen == ["ab"]
    assert [d.text for d in stream] == ["CD"]
    assert pipe.report()[0]["name"] == "upper" and pipe.report()[1]["docs_removed"] == 1
    _check_report(pipe, 3, 2)


def test_huge_single_line_goes_through_quickly() -> None:
    words = " ".join(f"w{i % 50_000}" for i in range(700_000))  # ~5 MB, no newline
    pipe = build_pipeline(CleanConfig(min_stopword_ratio=None))
    start = time.perf_counter()
    kept = list(pipe([_doc(words)]))
    assert time.perf_counter() - start < 20
    assert kept == []  # 50,000 words repeated 14 times: n-gram repetition
    spam = "spam " * 1_000_000
    assert list(build_pipeline(CleanConfig())([_doc(spam)])) == []


# -- the config ----------------------------------------------------------------------------------------
def test_every_config_field_has_a_docstring() -> None:
    body = ast.parse(inspect.getsource(CleanConfig)).body[0].body  # type: ignore[attr-defined]
    documented = {
        node.target.id
        for node, after in zip(body, body[1:], strict=False)
        if isinstance(node, ast.AnnAssign)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
    }
    assert documented == {f.name for f in fields(CleanConfig)}


def test_config_validation_and_switches() -> None:
    with pytest.raises(ValueError, match="min_alpha_ratio is a fraction"):
        CleanConfig(min_alpha_ratio=60)
    with pytest.raises(ValueError, match="normalize must be one of"):
        CleanConfig(normalize="nfc")
    off = CleanConfig(normalize=None, clean_whitespace=False, strip_boilerplate=False, exact_dedup=False,
                      near_dedup=False, min_chars=None, min_alpha_ratio=None, max_symbol_ratio=None,
                      max_repetition_ratio=None, max_ngram_repetition_ratio=None, min_stopword_ratio=None,
                      min_chars_per_token=None, max_chars_per_token=None)  # fmt: skip
    assert build_pipeline(off).steps == []
    names = [r["name"] for r in build_pipeline(CleanConfig(max_chars=10**9)).report()]
    assert names[:4] == ["normalize_NFC", "whitespace", "gutenberg_boilerplate", "length"]
    assert names[-2:] == ["exact_dedup", "near_dedup"]
