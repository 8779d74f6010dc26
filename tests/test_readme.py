"""Keep the README true: every command in it parses against the real CLI, and the files it names exist.

The quick-start commands themselves run for real in CI (`.ci/run` runs `make test` then `make quickstart`);
the distributed ones run in small form in tests/training/test_cli.py, the post-training ones (same presets,
tiny model) in tests/post_training/test_post_training_cli.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [ln.split("#")[0].strip() for b in blocks for ln in b.splitlines()]
    return [ln for ln in lines if ln]


def test_readme_names_the_two_commands_and_ci_runs_them():
    cmds = readme_commands()
    assert "make quickstart" in cmds and "make test" in cmds
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make quickstart" in ci


def test_makefile_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("quickstart", "test", "lint"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target


@pytest.mark.parametrize(
    "line", [c for c in readme_commands() if "lightning-llm" in c.split()[0]], ids=lambda c: c[:60]
)
def test_readme_cli_command_parses(line, capsys, monkeypatch):
    """In-process (one import of Lightning for all of them, instead of ~15 s of start-up per command)."""
    from cli_runner import isolated_process_state

    from lightning_llm.cli import main

    args = shlex.split(line)[1:]
    for i, a in enumerate(args):
        if a == "--config":
            assert (ROOT / args[i + 1]).is_file(), f"README names a missing config {args[i + 1]}"
    # commands with a config parser are parsed in full; the others must at least accept their arguments
    parsed_in_full = (
        "fit",
        "validate",
        "test",
        "prepare",
        "generate",
        "sft",
        "dpo",
        "prepare-sft",
        "prepare-dpo",
        "train-quality",
    )
    check = "--print_config" if args[0] in parsed_in_full else "--help"
    monkeypatch.chdir(ROOT)
    with isolated_process_state():  # fit/sft/dpo would switch this process's allocator for good
        try:
            main([*args, check])
            code = 0
        except SystemExit as exc:
            code = exc.code
    assert code in (0, None), f"{line}: {code}\n{capsys.readouterr().err[-3000:]}"


def test_readme_component_table_matches_registries():
    from lightning_llm.registry import ATTENTION, MLP, NORM, POSITIONAL

    for reg in (ATTENTION, POSITIONAL, NORM, MLP):
        for name in reg.names():
            assert f"`{name}`" in README, f"{reg.kind} '{name}' is registered but not in the README table"


def test_readme_recipe_table_names_every_option_and_optimizer():
    """The "Models and plugins" section names each recipe option and optimizer ``lightning-llm plugins`` lists."""
    from lightning_llm.config import RECIPE_OPTIONS
    from lightning_llm.optim import OPTIMIZERS

    section = README[README.index("## Models and plugins") : README.index("### Write your own plugin")]
    for name in (*RECIPE_OPTIONS, *OPTIMIZERS):
        assert f"`{name}`" in section, (
            f"'{name}' is listed by lightning-llm plugins but not in the README table"
        )


def test_readme_mlp_plugin_example_builds_with_the_right_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """The "Write your own plugin" MLP runs as printed: any layer names, the residual init from its contract."""
    import torch

    from lightning_llm.config import GPTConfig
    from lightning_llm.model import GPT
    from lightning_llm.registry import MLP

    block = next(b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if "ReluSquared" in b)
    MLP.names()  # built-ins and plugins into the real table, then register into a copy of it
    monkeypatch.setattr(MLP, "_entries", dict(MLP._entries))
    exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=8, n_head=2, n_embd=256, mlp="my_relu2"))
    mlp = model.blocks[0].mlp
    assert mlp.w_out.weight.double().std().item() == pytest.approx(0.02 / (2 * 8) ** 0.5, rel=0.05)
    assert mlp.w_in.weight.double().std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].tp_plan()["mlp.w_out"] == "rowwise"
    assert model(torch.randint(0, 64, (2, 8))).shape == (2, 8, 64)


def test_readme_filter_table_matches_the_registry():
    from lightning_llm.registry import FILTERS

    section = README[README.index("### Filters") : README.index("### Write your own filter")]
    for name in FILTERS.names():
        assert f"`{name}`" in section, f"filter '{name}' is registered but not in the README's filter table"
    yaml_block = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)[0]
    import yaml

    from lightning_llm.data.filtering import build_filter

    for spec in yaml.safe_load(yaml_block)["clean"]["filters"]:  # every option shown exists
        if spec["name"] != "quality":  # (its classifier is trained by the command below the table)
            build_filter(spec)


def test_readme_filter_example_runs_in_a_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_llm.data.clean import CleanConfig, build_pipeline
    from lightning_llm.data.documents import Document
    from lightning_llm.registry import FILTERS

    block = next(b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if "MaxDigits" in b)
    FILTERS.names()
    monkeypatch.setattr(FILTERS, "_entries", dict(FILTERS._entries))
    exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
    filters = [{"name": "max_digits", "options": {"max_share": 0.2}}]
    clean = CleanConfig(filters=filters, min_alpha_ratio=None, min_stopword_ratio=None, near_dedup=False)
    prose = (
        "The quick brown fox jumps over the lazy dog, and then it runs into the forest to hide. Later "
        "that evening the farmer counted his hens and found that none of them was missing after all."
    )
    table = "Table of results for the year: " + " ".join(f"{i:05d}" for i in range(40))
    pipe = build_pipeline(clean)
    kept = list(pipe([Document(prose, "a"), Document(table, "b")]))
    assert [d.source for d in kept] == ["a"]
    row = next(r for r in pipe.report() if r["name"] == "max_digits")
    assert row["docs_removed"] == 1 and sum(row["histogram"]["counts"]) == 2
