"""Filters as plugins in prepare: options from the CLI, setup before reading, worker processes, the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lightning_llm.cli.prepare import parse_config
from lightning_llm.data.clean import CleanConfig, build_pipeline
from lightning_llm.data.documents import Document
from lightning_llm.data.errors import ConfigError, PrepareError
from lightning_llm.data.filtering import DocumentFilter, FilterContext
from lightning_llm.data.prepare import PrepareConfig, prepare, settings_of
from lightning_llm.registry import FILTERS

SETUPS: list[int] = []  # pids of the processes that ran setup


class VowelShare(DocumentFilter):
    """A test filter with a 'model' that exists only after setup: the share of vowels among letters."""

    score_range = (0.0, 1.0)

    def __init__(self, *, min: float = 0.3, version: str = "1") -> None:
        self.min, self.version, self.vowels = min, version, None

    def setup(self, context: FilterContext) -> None:
        SETUPS.append(os.getpid())
        self.vowels = frozenset("aeiouAEIOU")

    def score(self, text: str) -> float:
        assert self.vowels is not None, "score before setup: the model did not reach the worker"
        letters = [c for c in text if c.isalpha()]
        if "RAISE" in text:
            raise ValueError("this document breaks the filter")
        return sum(c in self.vowels for c in letters) / max(1, len(letters))

    def fingerprint(self) -> dict[str, str]:
        return {"model": self.version}


@pytest.fixture(autouse=True)
def vowel_filter():
    FILTERS.register("vowel_share", VowelShare)
    SETUPS.clear()
    yield
    FILTERS._entries.pop("vowel_share", None)


PROSE = [
    "The river ran slowly past the old mill while the miller's daughter watched the boats go by.",
    "Her father counted the sacks of grain that the farmers had brought in from the fields that week.",
    "In the evening the lamps were lit along the quay and the sailors sang songs about distant ports.",
    "A letter arrived from the city, and it said that the price of flour would rise before the winter.",
]
CONSONANT_JUNK = "Brrr psst shh tsk nth strength rhythm crwth crypts glyphs nymphs lynx sphynx tryst."


def corpus(root: Path, n: int = 24) -> Path:
    src = root / "corpus"
    src.mkdir()
    for i in range(n):
        text = f"Chapter {i}. " + " ".join(PROSE[(i + k) % 4] for k in range(3))
        if i % 5 == 0:
            text = f"{i} " + " ".join([CONSONANT_JUNK] * 1) + " " + "Crwth glyph lynx. " * (2 + i % 3)
        (src / f"d{i:02d}.txt").write_text(text, encoding="utf-8")
    (src / "dup.txt").write_text((src / "d01.txt").read_text(), encoding="utf-8")  # an exact duplicate
    return src


def clean_cfg(**kw) -> CleanConfig:
    base = dict(min_stopword_ratio=None, max_ngram_repetition_ratio=None, max_repetition_ratio=None)
    return CleanConfig(**{**base, "filters": [{"name": "vowel_share", "options": {"min": 0.3}}], **kw})


def test_workers_give_the_same_documents_and_report_as_one_process(tmp_path):
    src = corpus(tmp_path)
    docs = [Document(p.read_text(), str(p)) for p in sorted(src.iterdir())]
    ctx = FilterContext(tmp_path)
    one, two = build_pipeline(clean_cfg(), 1, ctx), build_pipeline(clean_cfg(), 2, ctx)
    kept_one, kept_two = list(one(docs)), list(two(docs))
    assert kept_one == kept_two and 0 < len(kept_one) < len(docs)
    assert one.report() == two.report()
    rows = {r["name"]: r for r in two.report()}
    assert rows["vowel_share"]["docs_removed"] == 5 and rows["exact_dedup"]["docs_removed"] == 1
    assert sum(rows["vowel_share"]["histogram"]["counts"]) == rows["vowel_share"]["docs_in"] == len(docs)
    examples = rows["vowel_share"]["examples"]
    assert len(examples) == 3 and all(e["score"] < 0.3 and "Crwth" in e["excerpt"] for e in examples)
    assert SETUPS == [os.getpid(), os.getpid()]  # set up in this process, once per pipeline, not in workers


def test_prepare_reports_plots_and_fingerprints(tmp_path):
    src = corpus(tmp_path)
    cfg = PrepareConfig(
        source=str(src), output_dir=str(tmp_path / "out"), tokenizer="gpt2", clean=clean_cfg()
    )
    out = prepare(cfg)
    report = json.loads((out / "report.json").read_text())
    assert report["score_plots"] == {"vowel_share": "filters/vowel_share_scores.png"}
    assert (out / "filters" / "vowel_share_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    marker = json.loads((out / "prepared.json").read_text())
    assert marker["settings"]["clean"]["filters"][0]["fingerprint"] == {"model": "1"}
    assert prepare(cfg) == out  # same settings: reused
    changed = PrepareConfig(**{**cfg.__dict__, "clean": clean_cfg(filters=[
        {"name": "vowel_share", "options": {"min": 0.3, "version": "2"}}])})  # fmt: skip
    with pytest.raises(
        PrepareError, match=r"clean\.filters: existing .*'model': '1'.*requested .*'model': '2'"
    ):
        prepare(changed)


def test_settings_without_plugin_filters_are_unchanged():
    settings = settings_of(PrepareConfig(), "fp")
    assert "filters" not in settings["clean"]  # datasets prepared before filters were plugins stay valid


def test_a_filter_failing_in_a_worker_fails_prepare_and_leaves_nothing(tmp_path):
    src = corpus(tmp_path)
    (src / "d03.txt").write_text("RAISE " + " ".join(PROSE), encoding="utf-8")
    out = tmp_path / "out"
    cfg = PrepareConfig(source=str(src), output_dir=str(out), tokenizer="gpt2", clean=clean_cfg())
    with pytest.raises(ValueError, match="breaks the filter"):
        prepare(cfg)
    assert sorted(p.name for p in out.iterdir()) == [".prepare.lock"]


def test_names_and_options_are_checked_before_reading(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown filter 'vowels'\. Available: .*vowel_share"):
        CleanConfig(filters=[{"name": "vowels"}])
    with pytest.raises(ConfigError, match=r"has no option 'mni'\. Valid options: min=0\.3, version='1'"):
        CleanConfig(filters=[{"name": "vowel_share", "options": {"mni": 1}}])
    with pytest.raises(ConfigError, match="bounds are fractions"):
        CleanConfig(filters=[{"name": "stopword_ratio", "options": {"min": 2}}])


def test_filters_from_the_command_line_and_yaml(tmp_path):
    yaml = tmp_path / "p.yaml"
    yaml.write_text("clean:\n  filters:\n    - name: vowel_share\n      options: {min: 0.25}\n")
    cfg = parse_config(["--config", str(yaml)])
    assert [(f.name, f.options) for f in cfg.clean.filters] == [("vowel_share", {"min": 0.25})]
    cfg = parse_config(["--clean.filters", '[{"name": "length", "options": {"max": 500}}]'])
    steps = [getattr(s, "name", "") for s in build_pipeline(cfg.clean).steps]
    assert steps.index("length") < len(steps) - 3 and steps[-3:] == ["length", "exact_dedup", "near_dedup"]
