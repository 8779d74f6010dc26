"""Resume and divergence through the real CLI: the command line wins, a diverged model is never saved.

Reproduces issue #11's cases 1 and 2: ``--ckpt_path <file>`` used to replace every ``--model.*`` override
with the checkpoint's hyper-parameters (LightningCLI's ``_parse_ckpt_path``), so a 3-layer request trained
2 layers and a new learning rate was dropped; and a NaN run with a checkpoint every step wrote an all-NaN
``last.ckpt`` while saying the last checkpoint was intact.

The runs are in this process (``in_process``, ``cli_runner``): each subprocess would pay ~10-15 s of start-up.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from cli_runner import isolated_process_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from test_cli import fit_args, succeeds  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_layer_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lightning_llm.cli import main

    run = tmp_path_factory.mktemp("run")
    with isolated_process_state():
        main(
            [
                "fit",
                *fit_args(
                    run,
                    tiny_dataset,
                    "quickstart.yaml",
                    "--trainer.max_steps=4",
                    "--checkpoint.every_n_train_steps=4",
                ),
            ]
        )
    return run


@pytest.mark.parametrize("form", ["file", "last"])
def test_architecture_change_on_resume_is_refused(
    two_layer_run: Path, tiny_dataset: Path, form: str, in_process
) -> None:
    ckpt = str(two_layer_run / "ckpt" / "last.ckpt") if form == "file" else "last"
    error, _, _ = in_process(  # fails on a traceback in stderr
        "fit",
        *fit_args(
            two_layer_run,
            tiny_dataset,
            "quickstart.yaml",
            "--model.config.n_layer=3",
            "--trainer.max_steps=6",
            f"--ckpt_path={ckpt}",
        ),
    )
    assert error is not None
    assert "Cannot resume" in error and "n_layer: checkpoint 2 vs config 3" in error


def test_changed_settings_are_honoured_and_said(
    two_layer_run: Path, tiny_dataset: Path, tmp_path, in_process
) -> None:
    run = tmp_path / "resumed"
    run.mkdir()
    (run / "ckpt").mkdir()
    src = two_layer_run / "ckpt" / "last.ckpt"
    (run / "ckpt" / "last.ckpt").write_bytes(src.read_bytes())
    out = "\n".join(
        succeeds(
            in_process,
            "fit",
            *fit_args(
                run,
                tiny_dataset,
                "quickstart.yaml",
                "--model.optimizer.lr=1e-4",
                "--model.on_nonfinite_loss=skip",
                "--trainer.max_steps=6",
                "--checkpoint.every_n_train_steps=6",
                f"--ckpt_path={run / 'ckpt' / 'last.ckpt'}",
            ),
        )
    )
    assert "Resuming with changed settings" in out
    assert "optimizer.lr: 0.004 -> 0.0001" in out and "on_nonfinite_loss: 'stop' -> 'skip'" in out
    # the newest checkpoint of the resumed run (Lightning names it last-v1.ckpt beside the copied last.ckpt)
    newest = max((run / "ckpt").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    ckpt = torch.load(newest, weights_only=True)
    assert ckpt["global_step"] == 6
    assert ckpt["hyper_parameters"]["optimizer"]["lr"] == 1e-4
    # the quick start's AdamW group (embedding and norms) takes the new lr; its Muon group keeps muon_lr
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert sorted(g["initial_lr"] for g in groups) == [1e-4, 0.02]
    assert sorted(ckpt["lr_schedulers"][0]["base_lrs"]) == [1e-4, 0.02]


def test_diverged_run_never_overwrites_the_last_good_checkpoint(
    tiny_dataset: Path, tmp_path: Path, in_process
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    succeeds(
        in_process,
        "fit",
        *fit_args(
            good,
            tiny_dataset,
            "quickstart-baseline.yaml",
            "--trainer.max_steps=2",
            "--checkpoint.every_n_train_steps=1",
        ),
    )
    last = good / "ckpt" / "last.ckpt"
    error, out, _ = in_process(  # fails on a traceback in stderr
        "fit",
        *fit_args(
            good,
            tiny_dataset,
            "quickstart-baseline.yaml",  # AdamW on every weight: lr 1e6 overflows (Muon's steps have unit scale)
            "--model.optimizer.lr=1e6",
            "--model.schedule.warmup_steps=0",
            "--trainer.max_steps=12",
            "--checkpoint.every_n_train_steps=1",
            f"--ckpt_path={last}",
        ),
    )
    assert error is not None, out[-2000:]
    assert "non-finite" in error.lower()
    for path in (good / "ckpt").glob("*.ckpt"):  # every checkpoint written, before and after divergence
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path
