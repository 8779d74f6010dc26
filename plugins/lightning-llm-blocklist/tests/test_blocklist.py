"""The blocklist filter as an installed plugin: found through its entry point, used by prepare, listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lightning_llm_blocklist import BlocklistFilter

from lightning_llm.cli.plugins import collect
from lightning_llm.data.clean import CleanConfig
from lightning_llm.data.errors import ConfigError, PrepareError
from lightning_llm.data.filtering import FilterSpec, build_filter
from lightning_llm.data.prepare import PrepareConfig, prepare
from lightning_llm.registry import FILTERS

PROSE = (
    "The river ran slowly past the old mill, and the miller's daughter watched the boats go by while "
    "her father counted the sacks of grain that the farmers had brought in from the fields that week. "
)


def test_found_through_the_entry_point_and_listed() -> None:
    entry = FILTERS.entry("blocklist")
    assert entry.obj is BlocklistFilter and entry.source.startswith("lightning-llm-blocklist ")
    rows = {(r.kind, r.name): r for r in collect(["cpu"])}
    assert rows[("filter", "blocklist")].source.startswith("lightning-llm-blocklist ")


def test_matches_whole_words_ignoring_case() -> None:
    f = build_filter(FilterSpec("blocklist", {"terms": ["casino", "click here"]}))
    assert f.score("A classic tale.") == 0
    assert f.score("CASINO bonus! Click here, click HERE.") == 3
    assert f.score("casinos") == 0  # whole words only
    assert not f.keeps(f.score("casino")) and f.keeps(0)
    assert "casino" in f.explain("win at the casino")


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="has no option 'term'.*Valid options: terms=None"):
        build_filter(FilterSpec("blocklist", {"term": ["x"]}))
    with pytest.raises(ConfigError, match="empty blocklist"):
        build_filter(FilterSpec("blocklist", {}))


def _corpus(root: Path) -> Path:
    src = root / "corpus"
    src.mkdir()
    for i in range(12):
        extra = " Visit the casino for a bonus." if i % 4 == 0 else ""
        (src / f"doc{i:02d}.txt").write_text(f"Day {i}. " + PROSE + extra, encoding="utf-8")
    return src


def test_prepare_drops_counts_and_refuses_a_changed_list(tmp_path: Path) -> None:
    src, blocklist = _corpus(tmp_path), tmp_path / "blocked.txt"
    blocklist.write_text("# terms\ncasino\n", encoding="utf-8")
    clean = CleanConfig(
        near_dedup=False, filters=[{"name": "blocklist", "options": {"file": str(blocklist)}}]
    )
    cfg = PrepareConfig(source=str(src), output_dir=str(tmp_path / "out"), tokenizer="gpt2", clean=clean)
    out = prepare(cfg)
    report = json.loads((out / "report.json").read_text())
    row = next(r for r in report["clean"] if r["name"] == "blocklist")
    assert (row["docs_in"], row["docs_removed"]) == (12, 3)
    assert report["documents_kept"] == 9
    assert row["examples"][0]["excerpt"] == "hits: casino" and row["examples"][0]["score"] == 1.0
    blocklist.write_text("casino\nbonus\n", encoding="utf-8")  # an edited list is another filter
    with pytest.raises(PrepareError, match=r"clean\.filters"):
        prepare(cfg)
