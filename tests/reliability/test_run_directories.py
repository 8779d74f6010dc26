"""One run, one directory: outputs follow trainer.default_root_dir and runs never overwrite each other."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from test_cli import ROOT, TINY, succeeds  # noqa: E402

pytestmark = pytest.mark.slow


def _fit(data: Path, root: str, *extra: str) -> list[str]:
    """``lightning-llm fit`` (for ``in_process``: the test's tmp_path is the working directory)."""
    return [
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
    ]


def test_outputs_follow_the_run_directory_and_runs_do_not_overwrite(
    tiny_dataset: Path, tmp_path: Path, in_process
) -> None:
    succeeds(in_process, *_fit(tiny_dataset, "runs/a"))
    succeeds(in_process, *_fit(tiny_dataset, "runs/b"))
    for run in ("a", "b"):
        root = tmp_path / "runs" / run
        assert (root / "checkpoints" / "last.ckpt").is_file(), sorted(root.rglob("*"))
        assert (root / "metrics.csv").is_file() and (root / "config.yaml").is_file()
    assert not (tmp_path / "runs" / "quickstart").exists()  # the preset's directory was moved, not used

    refused, _, err = in_process(*_fit(tiny_dataset, "runs/a"))
    assert refused is not None
    assert "already holds a run's checkpoints (" in refused and "--ckpt_path last" in refused
    assert "Traceback" not in err

    before = _loss_steps(tmp_path / "runs" / "a" / "metrics.csv")
    assert before == [0, 1]
    out, err = succeeds(
        in_process, *_fit(tiny_dataset, "runs/a", "--trainer.max_steps=4", "--ckpt_path=last")
    )
    assert "Restored all states" in out + err
    # the resumed run appends: the CSV covers the whole run, each step once
    assert _loss_steps(tmp_path / "runs" / "a" / "metrics.csv") == [0, 1, 2, 3]


def _loss_steps(path: Path) -> list[int]:
    with path.open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_metrics_writer_keeps_history_and_drops_what_is_logged_again(tmp_path: Path) -> None:
    """Unit level: rows before the resumed step stay, later ones go, a new column keeps the old rows."""
    from lightning_llm.runlog import RunCSVLogger

    path = tmp_path / "metrics.csv"
    path.write_text("step,train/loss\n" + "".join(f"{s},{9 - s}.0\n" for s in range(6)))
    writer = RunCSVLogger(save_dir=str(tmp_path), name="", version="").experiment
    assert path.is_file()  # Lightning's writer would have deleted it here
    writer.drop_rows_from(3)
    writer.log_metrics({"train/loss": 1.5, "val/loss": 2.5}, step=3)
    writer.save()
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert rows[0]["train/loss"] == "9.0" and rows[-1]["val/loss"] == "2.5"
    writer.drop_rows_from(0)  # a new run in this directory starts a new file
    assert not path.exists()
