"""Bad training input ends as one clear paragraph, before any training time is spent (issue #11, 3/9/11)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_llm.cli import main
from lightning_llm.cli import train as train_cli
from lightning_llm.module import LitGPT, NonFiniteLossError, OptimizerConfig, ScheduleConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _system_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process fits must not switch the test process's allocator (benchmarks run in it later)."""
    monkeypatch.setenv("LIGHTNING_LLM_MALLOC", "system")


def _fit_error(tmp_path: Path, data: Path, *args: str) -> str:
    argv = [
        "fit",
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        f"--data.path={data}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
        "--trainer.enable_progress_bar=false",
        *args,
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return str(exit_info.value.code)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(lr=-1e-3), "lr must be positive"),
        (dict(lr=0.0), "lr must be positive"),
        (dict(weight_decay=-0.1), "weight_decay must be >= 0"),
        (dict(betas=(0.9, 1.5)), r"betas must be two numbers in \[0, 1\)"),
        (dict(eps=0.0), "eps must be positive"),
    ],
)
def test_optimizer_settings_are_checked(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(warmup_steps=-1), "warmup_steps must be >= 0"),
        (dict(min_lr_ratio=1.5), r"min_lr_ratio must be in \[0, 1\]"),
        (dict(decay_fraction=-0.2), r"decay_fraction must be in \[0, 1\]"),
        (dict(max_steps=0), "max_steps must be >= 1"),
    ],
)
def test_schedule_settings_are_checked(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**kwargs)


def test_negative_lr_through_the_cli_is_one_paragraph(tmp_path, tiny_dataset) -> None:
    msg = _fit_error(tmp_path, tiny_dataset, "--model.optimizer.lr=-1")
    assert "lr must be positive" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_accelerator_without_a_gpu(tmp_path, tiny_dataset) -> None:
    msg = _fit_error(tmp_path, tiny_dataset, "--trainer.accelerator=gpu")
    assert "no CUDA GPU" in msg and "--trainer.accelerator cpu" in msg


@pytest.mark.parametrize("url", ["https://example.com/last.ckpt", "s3://bucket/run/last.ckpt"])
def test_url_ckpt_path_is_refused(tmp_path, tiny_dataset, url, monkeypatch) -> None:
    monkeypatch.delenv(train_cli.REMOTE_CKPT_ENV, raising=False)
    msg = _fit_error(tmp_path, tiny_dataset, f"--ckpt_path={url}")
    assert "is a URL" in msg and "weights_only=False" in msg and train_cli.REMOTE_CKPT_ENV in msg


def test_weights_only_false_is_refused(tmp_path, tiny_dataset, monkeypatch) -> None:
    monkeypatch.delenv(train_cli.REMOTE_CKPT_ENV, raising=False)
    msg = _fit_error(tmp_path, tiny_dataset, "--weights_only=false")
    assert "full pickle" in msg and train_cli.REMOTE_CKPT_ENV in msg
    monkeypatch.setenv(train_cli.REMOTE_CKPT_ENV, "1")
    train_cli.check_checkpoint_source("https://example.com/x.ckpt", False)  # the explicit opt-in


@pytest.mark.parametrize("damage", ["truncated", "random", "missing"])
def test_a_damaged_ckpt_path_is_refused_before_anything_is_built(tmp_path, tiny_dataset, damage) -> None:
    """Was: torch's "failed finding central directory" traceback from inside Trainer.fit."""
    import io

    ckpt = tmp_path / "last.ckpt"
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(1000)}}, buf)
    if damage == "truncated":
        ckpt.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif damage == "random":
        ckpt.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    msg = _fit_error(tmp_path, tiny_dataset, f"--ckpt_path={ckpt}")
    expected = (
        "no such file" if damage == "missing" else "is not a readable PyTorch checkpoint: it is truncated"
    )
    assert expected in msg and str(ckpt) in msg
    ckpt.write_bytes(buf.getvalue())
    train_cli.check_checkpoint_file(ckpt)  # a whole archive passes
    train_cli.check_checkpoint_file("last")  # Lightning's aliases are Lightning's to resolve
    with pytest.raises(train_cli.UserError, match="not a distributed checkpoint"):
        train_cli.check_checkpoint_file(tmp_path)  # a directory without .metadata


def test_skip_policy_stops_when_the_model_does_not_recover() -> None:
    """Three non-finite losses in a row end the run with what happened (was: exit 0 on a NaN model)."""
    from lightning_llm.config import GPTConfig

    lit = LitGPT(
        GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16), on_nonfinite_loss="skip"
    )
    lit.configure_model()
    lit.log = lambda *a, **k: None  # no trainer attached: logging is not what is tested here
    nan_model = lit.model

    class Nan(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.tensor(float("nan"))

    lit.model = Nan()
    batch = torch.randint(0, 64, (2, 9))
    assert lit.training_step(batch, 0) is None and lit.training_step(batch, 1) is None
    with pytest.raises(NonFiniteLossError, match="3 in a row"):
        lit.training_step(batch, 2)
    lit.model = nan_model
    assert lit.skipped_steps == 3


def test_unwritable_output_locations_fail_before_training(tmp_path, tiny_dataset) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    msg = _fit_error(tmp_path, tiny_dataset, f"--trainer.default_root_dir={a_file}")
    assert "--trainer.default_root_dir" in msg and "is a file" in msg
    msg = _fit_error(tmp_path, tiny_dataset, f"--checkpoint.dirpath={a_file / 'sub'}")
    assert "--checkpoint.dirpath" in msg and "not writable" in msg


def test_disk_full_during_a_save_is_explained_and_keeps_the_old_checkpoint(tmp_path, monkeypatch) -> None:
    import errno

    from lightning_llm import checkpointing

    io = checkpointing.AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, target)

    def full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", full)
    with pytest.raises(checkpointing.CheckpointWriteError, match="No space left on the device") as err:
        io.save_checkpoint({"w": torch.zeros(1024)}, target)
    assert "previous checkpoint there is intact" in str(err.value) and "MiB" in str(err.value)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["w"].tolist() == [1.0, 1.0, 1.0]
    assert not list(tmp_path.glob(".*.tmp"))


def test_too_little_disk_for_one_checkpoint_is_refused_at_start(tmp_path, monkeypatch) -> None:
    import shutil
    from types import SimpleNamespace

    from lightning_llm.checkpointing import CheckpointWriteError
    from lightning_llm.config import GPTConfig

    lit = LitGPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16))
    lit.configure_model()
    lit.trainer = SimpleNamespace(
        checkpoint_callback=SimpleNamespace(dirpath=str(tmp_path / "ckpt")), is_global_zero=True
    )
    lit._check_disk_space()  # plenty of space here
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=1024))
    with pytest.raises(CheckpointWriteError, match="has 0 MiB free but one checkpoint of this model needs"):
        lit._check_disk_space()
