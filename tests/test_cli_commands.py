"""The subcommand table of ``lightning_llm.cli``: its entries import, ``--help`` is generated from it, the
cheap commands stay free of Lightning, and ``bench`` knows whether it runs from a source checkout."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_llm.cli import BY_NAME, COMMANDS, USAGE

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, *, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_names_are_unique():
    assert len(BY_NAME) == len(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_entry_imports_a_function_of_argv(command):
    fn = command.load()
    assert callable(fn), command
    assert list(inspect.signature(fn).parameters) == ["argv"], command


def test_usage_lists_the_table_in_order():
    listed = [line.split()[0] for line in USAGE.splitlines() if line.startswith("  ")]
    assert listed == [c.name for c in COMMANDS]
    for c in COMMANDS:
        assert c.summary in USAGE and c.example in USAGE, c.name


def test_module_help_lists_every_subcommand():
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_llm", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == USAGE
    for c in COMMANDS:
        assert f"  {c.name} " in proc.stdout, c.name


def test_help_and_plugins_do_not_import_lightning(tmp_path):
    code = (
        "import sys\n"
        "from lightning_llm.cli import main\n"
        "main(['--help']); main(['plugins'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'lightning_fabric', "
        "'pytorch_lightning', 'jsonargparse', 'lightning_llm.model'))\n"
        "print('HEAVY', heavy)\n"
    )
    proc = _run(code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout.splitlines()[-1]


def test_unknown_command_exits_1_with_the_usage():
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_llm", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "unknown command 'nope'" in proc.stderr and USAGE in proc.stderr


def test_bench_finds_this_checkout():
    from lightning_llm.cli.bench import checkout_root

    assert checkout_root() == ROOT


def test_bench_outside_a_checkout_says_so(tmp_path):
    """An installed copy of the package (here: copied into a bare folder that even has a foreign
    ``benchmarks`` package next to it, as site-packages might) refuses instead of importing it."""
    site = tmp_path / "site-packages"
    shutil.copytree(
        ROOT / "lightning_llm", site / "lightning_llm", ignore=shutil.ignore_patterns("__pycache__")
    )
    (site / "benchmarks").mkdir()
    (site / "benchmarks" / "__init__.py").write_text("")
    code = "from lightning_llm.cli import main\nmain(['bench', 'data'])\n"
    proc = _run(code, cwd=tmp_path, pythonpath=site)
    assert proc.returncode == 1, proc.stderr
    assert "lightning-llm bench needs a source checkout" in proc.stderr
    assert str(site / "lightning_llm") in proc.stderr
