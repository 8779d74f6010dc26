"""The offensive-language filter (alt-profanity-check's bundled model) on real text: the classics corpus,
short insulting or profane lines and ordinary prose written for these tests, and forked workers.

Measured with the defaults (``threshold: 0.8``, ``max_fraction: 0.2``, ``max_chunks: 128``,
``min_chunk_chars: 30``) and alt-profanity-check 1.9.1 / scikit-learn 1.9.1:

- classics (122 documents, 12 MB): every document kept; highest score 0.055 (Proverbs), median 0.008;
  0.3-0.45 s of CPU for the whole corpus.
- the 20 offensive lines below: each scores 0.82-1.0 alone, so each one-line document is dropped (recall
  20/20), as are all 14 three-line documents made of them; the 20 clean lines score 0.004-0.22, so
  none of their one-line or three-line documents is dropped (precision 1.0).
- one offensive line inside clean prose is found and shown by ``explain`` (its chunk scores 0.9-1.0).

The assertions leave a margin of a line or two for another build of the model.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import time
import warnings
from typing import Any

import pytest

pytest.importorskip("profanity_check", reason="the offensive filter needs the filters extra")

from filter_workers import score_in_forked_workers

from lightning_llm.data.documents import Document  # noqa: E402
from lightning_llm.data.errors import ConfigError  # noqa: E402
from lightning_llm.data.filtering import FilterError, build_filter  # noqa: E402
from lightning_llm.data.offensive import INSTALL_HINT, OffensiveFilter, _LinearScorer, cut_chunks  # noqa: E402
from lightning_llm.registry import FILTERS  # noqa: E402

OFFENSIVE = [
    "You are a complete idiot and everyone knows it.",
    "Shut up, you stupid moron.",
    "What a pathetic loser, get a life.",
    "This is the dumbest shit I have ever read.",
    "Go to hell, you worthless piece of trash.",
    "Nobody cares about your crap opinion, dumbass.",
    "You're an ignorant fool and a liar.",
    "Fuck off and stop posting this garbage.",
    "What an ugly, fat, disgusting slob.",
    "He is such an asshole to everyone.",
    "Damn, you really are brain dead.",
    "Screw you and your stupid little blog.",
    "Only a total jerk would write something this stupid.",
    "Stop whining, you spineless coward.",
    "The author is a clueless bitch.",
    "Your mother should be ashamed of raising such a dumb kid.",
    "Get lost, you creepy little freak.",
    "Holy shit, what a bunch of idiots.",
    "You suck at this, just quit already.",
    "Kiss my ass, loser.",
]
CLEAN = [
    "The library opens at nine on weekdays and at ten on Saturdays.",
    "We planted tomatoes, beans and a row of sunflowers along the fence.",
    "The train to the coast was late, so we had coffee at the station.",
    "Preheat the oven to 200 degrees and grease a round baking tin.",
    "Her new book tells the story of a lighthouse keeper and his daughter.",
    "The committee will publish its recommendations at the end of the month.",
    "After the rain the path along the river was muddy but beautiful.",
    "He repaired the old bicycle with parts from a shop in the village.",
    "The museum has a small collection of maps from the sixteenth century.",
    "Our team meets every Tuesday to review the week's progress.",
    "Children learn to read more easily when they are read to at home.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "The mountain village is known for its cheese and its wooden houses.",
    "Please remember to bring a packed lunch and a warm jacket.",
    "The orchestra played a symphony by Dvorak and two short overtures.",
    "Scientists measured the temperature of the lake every morning for a year.",
    "The shop on the corner sells fresh bread, newspapers and flowers.",
    "She answered every letter by hand, even in her nineties.",
    "The bridge was closed for repairs, so traffic took the long way round.",
    "In spring the hills are covered with yellow and purple wildflowers.",
]


def _triples(lines: list[str]) -> list[str]:
    """Three-line documents: consecutive lines, two offsets, wrapping around (14 from 20 lines)."""
    ring = lines * 2
    return ["\n".join(ring[i : i + 3]) for offset in (0, 1) for i in range(offset, len(lines), 3)]


@pytest.fixture(scope="module")
def offensive() -> OffensiveFilter:
    """The default filter, its model loaded once for the module."""
    flt = OffensiveFilter()
    flt.setup()
    return flt


def test_every_classics_document_is_kept(offensive: OffensiveFilter, classics_docs: list[Any]) -> None:
    """Measured: highest score 0.055 (Proverbs), median 0.008, 0.3-0.45 s of CPU for the 12 MB."""
    offensive.score("warm up")
    start = time.process_time()
    scores = {doc.source: offensive.score(doc.text) for doc in classics_docs}
    elapsed = time.process_time() - start
    assert len(scores) > 100 and sum(len(doc.text) for doc in classics_docs) > 10_000_000
    dropped = {source: round(s, 3) for source, s in scores.items() if not offensive.keeps(s)}
    assert not dropped
    assert max(scores.values()) <= 0.12  # a margin of 2x below max_fraction 0.2
    assert sum(s > 0 for s in scores.values()) >= 30  # the model does see the bawdy and violent words
    assert elapsed < 1.5, f"{elapsed:.2f} s of CPU for the classics"


def test_offensive_lines_are_removed(offensive: OffensiveFilter) -> None:
    """Measured: 20/20 one-line and 14/14 three-line documents dropped (each line 0.82-1.0 alone)."""
    single = [not offensive.keeps(offensive.score(line)) for line in OFFENSIVE]
    assert sum(single) >= 18, [line for line, dropped in zip(OFFENSIVE, single, strict=True) if not dropped]
    triples = _triples(OFFENSIVE)
    assert len(triples) == 14
    assert sum(not offensive.keeps(offensive.score(doc)) for doc in triples) >= 13
    assert offensive(Document(text=OFFENSIVE[1], source="test")) is None


def test_clean_prose_is_kept(offensive: OffensiveFilter) -> None:
    """Measured: every clean line scores 0.22 at most; no clean document dropped (precision 1.0)."""
    probabilities = offensive.probabilities(CLEAN)
    assert max(probabilities) < 0.5
    docs = CLEAN + _triples(CLEAN) + ["\n".join(CLEAN)]
    assert all(offensive.keeps(offensive.score(doc)) for doc in docs)
    assert all(offensive.score(doc) == 0.0 for doc in docs)
    dropped = [doc for doc in OFFENSIVE + CLEAN if not offensive.keeps(offensive.score(doc))]
    assert dropped and set(dropped) <= set(OFFENSIVE)  # precision 1.0 over the two sets
    assert offensive.score("") == 0.0 and offensive.score("  \n\n ") == 0.0


def test_scores_are_shares_of_offensive_chunks(offensive: OffensiveFilter) -> None:
    """One insult among clean sentences is one offensive chunk; half insults is half the chunks."""
    one = "\n".join(CLEAN[:5] + [OFFENSIVE[0]] + CLEAN[5:9])
    assert offensive.score(one) == pytest.approx(1 / 10)
    assert offensive.keeps(offensive.score(one))
    long_insults = [line for line in OFFENSIVE if len(line) >= 30][
        :6
    ]  # shorter ones merge with the next line
    mixed = "\n".join(line for pair in zip(CLEAN[:6], long_insults, strict=True) for line in pair)
    assert offensive.score(mixed) == pytest.approx(0.5) and not offensive.keeps(offensive.score(mixed))
    strict = OffensiveFilter(max_fraction=0.05)
    strict._predict = offensive._predict
    assert not strict.keeps(strict.score(one))


def test_explain_shows_the_offensive_line_truncated(offensive: OffensiveFilter) -> None:
    doc = "\n".join(CLEAN[:6] + [OFFENSIVE[3]] + CLEAN[6:8])
    shown = offensive.explain(doc)
    assert OFFENSIVE[3] in shown and CLEAN[0] not in shown  # the offensive line, not the document's head
    assert shown.startswith("1/9 offensive: [")
    short = offensive.explain(doc, limit=40)
    assert len(short) == 41 and short.endswith("…") and short.startswith("1/9 offensive: [")
    rant = "\n".join(OFFENSIVE[:8])
    shown = offensive.explain(rant, limit=10_000)
    # 7 chunks: "Shut up, you stupid moron." (26 characters) is merged with the next line
    assert shown.startswith("7/7 offensive: [1.00] ")
    assert shown.count(" | ") == 2  # the three worst chunks
    assert offensive.explain("", limit=10) == ""


def test_fast_scorer_matches_scikit_learn(offensive: OffensiveFilter, classics_docs: list[Any]) -> None:
    """The numpy scorer gives scikit-learn's ``predict_proba`` (and the library's ``predict_prob``)."""
    from profanity_check import predict_prob

    assert isinstance(offensive._predict, _LinearScorer)
    texts = OFFENSIVE + CLEAN + ["", "1234 ???", "ÉCOLE naïve café"]
    texts += [chunk for doc in classics_docs[::20] for chunk in offensive.chunks(doc.text)]
    ours, theirs = offensive._predict(texts), predict_prob(texts)
    assert len(ours) == len(texts) and float(abs(ours - theirs).max()) < 1e-9


def test_long_documents_are_judged_on_chunks_over_their_whole_span(offensive: OffensiveFilter) -> None:
    book = "\n".join(f"{i:05d} " + CLEAN[i % 20] for i in range(10_000))  # about 700 kB
    chunks = offensive.chunks(book)
    assert len(chunks) == 128 and all(len(c) <= 400 for c in chunks)
    assert chunks[0].startswith("00000 ") and int(chunks[-1][:5]) > 9_800  # from the start to the end
    assert chunks == offensive.chunks(book)  # deterministic
    assert sum(map(len, chunks)) < 12_000
    one_line = " ".join(CLEAN) * 500  # 650 kB without a newline: cut at sentence ends
    chunks = cut_chunks(one_line, max_chunks=64)
    assert len(chunks) == 64 and all(len(c) <= 400 and c.endswith(".") for c in chunks)
    start = time.process_time()
    offensive.score(one_line + "\n" + book)
    assert time.process_time() - start < 0.5
    # short lines merge up to min_chars; a play's speaker name goes with the speech
    assert cut_chunks("BASTARD.\nIt is a damned and a bloody work;\n\nHUBERT.\nAy.") == [
        "BASTARD.\nIt is a damned and a bloody work;",
        "HUBERT.\nAy.",
    ]
    assert cut_chunks("x" * 1000, max_chars=400) == ["x" * 400, "x" * 400, "x" * 200]
    assert len(cut_chunks("a\n" * 1000, min_chars=1, max_chunks=10)) == 10


def test_bad_options_are_clear_errors() -> None:
    for value in (1.5, -0.1, "high"):
        with pytest.raises(ValueError, match=r"threshold is a probability between 0 and 1; got"):
            OffensiveFilter(threshold=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_fraction is a probability between 0 and 1; got 2"):
        OffensiveFilter(max_fraction=2)
    with pytest.raises(ValueError, match=r"max_chunks must be a whole number of at least 1; got 0"):
        OffensiveFilter(max_chunks=0)
    with pytest.raises(ValueError, match=r"min_chunk_chars must be a whole number"):
        OffensiveFilter(min_chunk_chars=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_chunk_chars must be more than min_chunk_chars \(30\)"):
        OffensiveFilter(max_chunk_chars=30)
    with pytest.raises(ConfigError, match=r"filter 'offensive'.*threshold is a probability"):
        build_filter({"name": "offensive", "options": {"threshold": 80}})
    with pytest.raises(ConfigError, match="offensive"):
        build_filter({"name": "offensive", "options": {"treshold": 0.5}})


def test_registered_and_built_from_a_config() -> None:
    assert FILTERS.get("offensive") is OffensiveFilter
    flt = build_filter({"name": "offensive", "options": {"threshold": 0.9, "max_fraction": 0.1}})
    assert isinstance(flt, OffensiveFilter) and flt.name == "offensive"
    assert flt.threshold == 0.9 and flt.max == 0.1 and flt.min is None and flt.score_range == (0.0, 1.0)
    assert OffensiveFilter.unavailable_reason() is None


def test_missing_library_is_a_filter_error_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "profanity_check", None)  # import profanity_check -> ImportError
    monkeypatch.setitem(sys.modules, "profanity_check.profanity_check", None)
    flt = OffensiveFilter()
    with pytest.raises(FilterError, match="needs the alt-profanity-check library") as err:
        flt.setup()
    assert INSTALL_HINT in str(err.value) and "pip install 'lightning-llm[filters]'" in str(err.value)
    with pytest.raises(FilterError, match=re.escape(INSTALL_HINT)):  # a worker scoring without setup
        flt.score(OFFENSIVE[0])
    assert "lightning-llm[filters]" in (OffensiveFilter.unavailable_reason() or "")


def test_a_version_mismatch_is_one_warning() -> None:
    from sklearn.exceptions import InconsistentVersionWarning

    caught = [
        warnings.WarningMessage(
            InconsistentVersionWarning(
                estimator_name=name, current_sklearn_version="0", original_sklearn_version="1"
            ),
            InconsistentVersionWarning,
            __file__,
            1,
        )
        for name in ("TfidfVectorizer", "LinearSVC", "CalibratedClassifierCV")
    ]
    with pytest.warns(RuntimeWarning, match="pickled with another scikit-learn") as record:
        OffensiveFilter()._forward(caught)
    assert len(record) == 1


def test_importing_the_module_does_not_import_the_library() -> None:
    code = "import sys, lightning_llm.data.offensive; print('profanity_check' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_scores_without_setup_by_loading_lazily(offensive: OffensiveFilter) -> None:
    lazy = OffensiveFilter()
    assert lazy._predict is None
    assert lazy.score(OFFENSIVE[0]) == offensive.score(OFFENSIVE[0]) == 1.0


def test_pickled_filter_scores_the_same(offensive: OffensiveFilter) -> None:
    copy = pickle.loads(pickle.dumps(offensive))
    assert copy._predict is None and copy.threshold == offensive.threshold
    docs = OFFENSIVE + CLEAN + _triples(OFFENSIVE + CLEAN)
    assert [copy.score(d) for d in docs] == [offensive.score(d) for d in docs]


def test_forked_workers_score_the_same(offensive: OffensiveFilter) -> None:
    texts = OFFENSIVE + CLEAN + _triples(OFFENSIVE + CLEAN) + ["\n".join((CLEAN * 40 + OFFENSIVE) * 20)]
    expected = [offensive.score(t) for t in texts]
    results = score_in_forked_workers(
        offensive, texts, lambda f: f._predict is not None
    )  # loaded in the parent
    assert all(inherited for inherited, _ in results)
    assert [score for _, score in results] == expected


def test_fingerprint_names_the_library_scikit_learn_and_model(offensive: OffensiveFilter) -> None:
    import json
    from importlib import metadata

    fp = offensive.fingerprint()
    assert fp["library"] == "alt-profanity-check"
    assert fp["alt-profanity-check"] == metadata.version("alt-profanity-check")
    assert fp["scikit-learn"] == metadata.version("scikit-learn") and fp["joblib"]
    assert fp["model.joblib_hash"].startswith("sha256:") and fp["vectorizer.joblib_hash"].startswith(
        "sha256:"
    )
    json.dumps(fp)  # goes into the dataset's fingerprint as JSON


def test_the_extracted_model_is_cached_and_later_setups_skip_scikit_learn(
    offensive: OffensiveFilter, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIGHTNING_LLM_CACHE", str(tmp_path))
    first = OffensiveFilter()
    first.setup()
    (cached,) = (tmp_path / "filters").glob("offensive-*.npz")
    assert cached.name.startswith(f"offensive-{offensive.fingerprint()['alt-profanity-check']}-")
    assert not list((tmp_path / "filters").glob(".*.tmp"))
    texts = OFFENSIVE[:3] + CLEAN[:3] + ["ÉCOLE naïve café: The AND of it"]
    expected = [float(p) for p in offensive._predict(texts)]
    assert [float(p) for p in first._predict(texts)] == expected
    code = (
        "import json, sys; from lightning_llm.data.offensive import OffensiveFilter; f = OffensiveFilter(); "
        f"f.setup(); print(json.dumps(['sklearn' in sys.modules, 'joblib' in sys.modules, "
        f"[float(p) for p in f._predict({texts!r})]]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False, False, expected]
    assert "rebuilding" not in out.stderr


def test_a_corrupt_cache_is_rebuilt(
    offensive: OffensiveFilter, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("LIGHTNING_LLM_CACHE", str(tmp_path))
    OffensiveFilter().setup()
    (cached,) = (tmp_path / "filters").glob("offensive-*.npz")
    good = cached.read_bytes()
    for corrupt in (good[: len(good) // 2], b"not a zip file"):
        cached.write_bytes(corrupt)
        capsys.readouterr()
        flt = OffensiveFilter()
        flt.setup()
        assert "rebuilding the cached model" in capsys.readouterr().err
        assert isinstance(flt._predict, _LinearScorer)
        assert [flt.score(t) for t in OFFENSIVE + CLEAN] == [offensive.score(t) for t in OFFENSIVE + CLEAN]
        assert cached.read_bytes() == good  # rewritten whole
    flt = OffensiveFilter()
    flt.setup()
    assert "rebuilding" not in capsys.readouterr().err
