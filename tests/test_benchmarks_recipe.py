"""benchmarks/recipe.py, the modern-recipe ablation: its arithmetic, and every variant's overrides are fields the
real fit parser accepts (a renamed option must fail here, not 30 minutes into an ablation)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import recipe  # noqa: E402


def test_steps_to_reach_interpolates_between_checks() -> None:
    curve = {50: 5.0, 100: 4.6, 150: 4.4, 200: 4.2}
    assert recipe.steps_to_reach(curve, 4.5) == pytest.approx(125.0)  # halfway from 4.6 to 4.4
    assert recipe.steps_to_reach(curve, 5.5) == 50.0  # reached at the first check
    assert recipe.steps_to_reach(curve, 4.2) == pytest.approx(200.0)
    assert recipe.steps_to_reach(curve, 4.1) is None


def test_summarise_means_spreads_and_markdown() -> None:
    runs = [
        {"variant": "a", "seed": 1, "val_loss": {100: 4.5, 200: 4.3}, "tokens_per_s": 100.0},
        {"variant": "a", "seed": 2, "val_loss": {100: 4.7, 200: 4.4}, "tokens_per_s": 120.0},
        {"variant": "b", "seed": 1, "val_loss": {100: 4.9, 200: 4.8}, "tokens_per_s": None},
    ]
    rows = recipe.summarise(runs, target=4.5)
    a, b = rows
    assert a["seeds"] == [1, 2] and a["mean_val_loss"] == {100: pytest.approx(4.6), 200: pytest.approx(4.35)}
    assert a["spread"][100] == pytest.approx(0.2) and a["tokens_per_s"] == 110.0
    assert a["steps_to_target"] == pytest.approx(100 + 100 * (4.6 - 4.5) / (4.6 - 4.35))
    assert b["steps_to_target"] is None and b["tokens_per_s"] is None
    table = recipe.markdown(rows, 4.5)
    assert "| a | 2 | 4.600 ±0.100 | 4.350 ±0.050 | 140 | 110 |" in table
    assert "| b | 1 | 4.900 ±0.000 | 4.800 ±0.000 | - |  |" in table


def test_every_variant_parses_with_the_real_fit_parser(capsys: pytest.CaptureFixture[str]) -> None:
    """Each variant's command, as the runner builds it, through ``fit --print_config``: the overrides exist,
    their values pass the configs' checks, and each variant but the baseline changes the model section."""
    from cli_runner import isolated_process_state

    from lightning_llm.cli import main

    def model_section(variant: str) -> dict:
        cmd = recipe.command(variant, seed=3, steps=20, val_every=10, extra=[])
        assert cmd[:4] == [sys.executable, "-m", "lightning_llm", "fit"]
        args = [str(ROOT / a) if a == recipe.BASE_CONFIG else a for a in cmd[4:]]
        with isolated_process_state(), pytest.raises(SystemExit) as exit_info:
            main(["fit", *args, "--print_config"])
        assert exit_info.value.code in (0, None), f"{variant}: {exit_info.value.code}"
        config = yaml.safe_load(capsys.readouterr().out)
        assert config["trainer"]["max_steps"] == 20 and config["seed_everything"] == 3
        return config["model"]

    baseline = model_section("baseline")
    for variant in recipe.VARIANTS:
        if variant != "baseline":
            assert model_section(variant) != baseline, f"{variant} changes nothing"

    # the variant the ablation reports as the quick start is configs/quickstart.yaml's model, and the
    # leave-one-out variants differ from it in their one change only
    with isolated_process_state(), pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--print_config"])
    quickstart = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model_section(recipe.QUICKSTART_VARIANT) == quickstart
    no_qk = model_section("quickstart_no_qk_norm")
    assert no_qk["config"].pop("qk_norm") is False and quickstart["config"].pop("qk_norm") is True
    assert no_qk == quickstart
    swiglu = model_section("quickstart_swiglu")["config"]
    assert (swiglu["mlp"], swiglu["intermediate_size"], swiglu["qk_norm"]) == ("swiglu", 768, True)
    assert {k: v for k, v in swiglu.items() if k not in ("mlp", "intermediate_size", "qk_norm")} == {
        k: v for k, v in quickstart["config"].items() if k not in ("mlp", "intermediate_size")
    }


def test_every_step_timing_component_builds_and_changes_its_preset() -> None:
    """benchmarks/recipe_step.py: each single change builds (valid config and optimizer) and differs from the
    preset it changes, in the model or in the optimizer."""
    from benchmarks import recipe_step

    def describe(model, opt) -> tuple:
        groups = tuple(sorted((k, str(v)) for g in opt.param_groups for k, v in g.items() if k != "params"))
        return (repr(model.config), type(opt).__name__, groups)

    presets = {name: describe(*recipe_step.build(path, 512)) for name, path in recipe_step.PRESETS.items()}
    assert presets["baseline"] != presets["quickstart"]
    for name, (preset, config_over, opt_over) in recipe_step.COMPONENTS.items():
        built = describe(*recipe_step.build(recipe_step.PRESETS[preset], 512, config_over, opt_over))
        assert built != presets[preset], f"{name} changes nothing"
