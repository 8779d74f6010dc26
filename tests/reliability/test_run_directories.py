"""One run, one directory: outputs follow trainer.default_root_dir and runs never overwrite each other."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from test_cli import ROOT, TINY, cli  # noqa: E402

pytestmark = pytest.mark.slow


def _fit(cwd: Path, data: Path, root: str, *extra: str, check: bool = True):
    return cli(
        "fit",
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        f"--data.path={data}",
        *TINY,
        "--trainer.max_steps=2",
        "--checkpoint.every_n_train_steps=2",
        "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={root}",
        *extra,
        cwd=cwd,
        check=check,
    )


def test_outputs_follow_the_run_directory_and_runs_do_not_overwrite(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    _fit(tmp_path, tiny_dataset, "runs/a")
    _fit(tmp_path, tiny_dataset, "runs/b")
    for run in ("a", "b"):
        root = tmp_path / "runs" / run
        assert (root / "checkpoints" / "last.ckpt").is_file(), sorted(root.rglob("*"))
        assert (root / "metrics.csv").is_file() and (root / "config.yaml").is_file()
    assert not (tmp_path / "runs" / "quickstart").exists()  # the preset's directory was moved, not used

    again = _fit(tmp_path, tiny_dataset, "runs/a", check=False)
    assert again.returncode != 0
    assert "already holds a run's checkpoints (" in again.stderr and "--ckpt_path last" in again.stderr
    assert "Traceback" not in again.stderr

    resumed = _fit(tmp_path, tiny_dataset, "runs/a", "--trainer.max_steps=4", "--ckpt_path=last")
    assert "Restored all states" in resumed.stdout + resumed.stderr
