"""``lightning-llm plugins``: table and JSON listing of every component and where it can run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_llm.cli import plugins as plugins_cli
from lightning_llm.cli.plugins import plugins_main
from lightning_llm.registry import Registry


def test_table_lists_every_kind_and_the_plugin_sources(capsys: pytest.CaptureFixture[str]) -> None:
    plugins_main([])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["KIND", "NAME", "SOURCE", "CPU"]
    kinds = {line.split()[0] for line in lines[1:]}
    assert {"attention", "positional", "norm", "mlp", "source"} <= kinds
    alibi = next(line for line in lines if line.split()[:2] == ["positional", "alibi"])
    assert "lightning-llm-alibi" in alibi
    rope = next(line for line in lines if line.split()[:2] == ["positional", "rope"])
    assert "built-in" in rope


def test_json_says_what_runs_here_and_why_not(capsys: pytest.CaptureFixture[str]) -> None:
    plugins_main(["--json"])
    rows = {(r["kind"], r["name"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[("attention", "sdpa")]["runs"]["cpu"] is True
    assert rows[("positional", "alibi")]["source"].startswith("lightning-llm-alibi ")
    xf = rows[("attention", "xformers")]
    assert xf["source"].startswith("lightning-llm-xformers ")
    assert xf["runs"]["cpu"] is False and "no CPU kernels" in xf["why_not"]["cpu"]


def test_broken_entry_points_are_listed_with_their_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dist = tmp_path / "fake_cli_plugin-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-cli-plugin\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text("[lightning_llm.tests.cli_group]\nbad = fake_cli_missing_mod:X\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = {
        "attention": plugins_cli.REGISTRIES["attention"],
        "widget": Registry("widget", "lightning_llm.tests.cli_group"),
    }
    monkeypatch.setattr(plugins_cli, "REGISTRIES", fresh)  # restored by monkeypatch
    plugins_main([])
    bad = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("widget"))
    assert "bad" in bad and "fake-cli-plugin 1.2" in bad and "ERROR:" in bad and "failed to import" in bad


def test_recipe_options_and_optimizers_are_listed_with_their_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Every GPTConfig recipe option and every optimizer has a row whose text is its --help docstring."""
    from lightning_llm.config import RECIPE_OPTIONS, GPTConfig
    from lightning_llm.optim import OPTIMIZERS

    plugins_main(["--json"])
    rows = {(r["kind"], r["name"]): r for r in json.loads(capsys.readouterr().out)}
    docs = plugins_cli.field_docs(GPTConfig)
    for name in RECIPE_OPTIONS:
        row = rows[("option", f"model.config.{name}")]
        assert row["description"] == docs[name] and len(row["description"]) > 40
    assert {n for k, n in rows if k == "optimizer"} == set(OPTIMIZERS) >= {"adamw", "muon"}
    assert field_names_documented(GPTConfig) >= set(RECIPE_OPTIONS)


def field_names_documented(cls: type) -> set[str]:
    """Fields of ``cls`` that carry a docstring (``field_docs`` must find the new ones)."""
    return set(plugins_cli.field_docs(cls))
