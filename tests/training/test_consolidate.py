"""Distributed checkpoints on 2 gloo processes through the real CLI: an FSDP2 run's checkpoint directory
consolidates into one file (``lightning-llm consolidate``) holding exactly the weights the run held, that file
resumes training, generate and export read the directory directly, and ``configs/tp.yaml`` (dp 1 x tp 2)
trains, resumes from ``--ckpt_path last`` and consolidates.

The fit subprocesses import this module (``PYTHONPATH=tests/training``) for ``FullWeights``.
"""

from __future__ import annotations

import csv
import json
import math
import pickle
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from test_cli import fit

from lightning_llm.cli import UserError, main
from lightning_llm.config import GPTConfig
from lightning_llm.consolidate import consolidate_checkpoint
from lightning_llm.model import GPT
from lightning_llm.optim import ScheduleConfig, lr_factor

PROMPT = "The "


class FullWeights(L.Callback):
    """In the fit subprocesses: at the end of training, rank 0 saves the model's full weights (DTensors
    gathered with ``full_tensor``, a collective every rank takes part in) to ``<out_dir>/full_weights.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        full = {
            name: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()
            for name, t in pl_module.state_dict().items()
        }
        if trainer.global_rank == 0:
            torch.save(full, self.out_dir / "full_weights.pt")


def _fit_2_processes(out: Path, data: Path, preset: str, *extra: str) -> Path:
    """A 3-step fit of ``preset`` (tiny model) that checkpoints at step 3; returns the run's directory."""
    fit(
        out,
        data,
        preset,
        "--trainer.max_steps=3",
        "--checkpoint.every_n_train_steps=3",
        "--trainer.log_every_n_steps=1",
        "--trainer.callbacks+=test_consolidate.FullWeights",
        f"--trainer.callbacks.init_args.out_dir={out}",
        *extra,
    )
    return out


@pytest.fixture(scope="module")
def fsdp2_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of a 3-step ``configs/fsdp2.yaml`` run (dp 2) with ``ckpt/last.ckpt`` (a distributed
    checkpoint directory) and ``full_weights.pt`` (what the run held at the end)."""
    out = tmp_path_factory.mktemp("fsdp2_run")
    report = ("--trainer.callbacks+=shard_report.ShardReport", f"--trainer.callbacks.init_args.out_dir={out}")
    return _fit_2_processes(out, tiny_dataset, "fsdp2.yaml", *report)


def _shard_reports(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run.glob("rank*.json"))]


@pytest.mark.slow
def test_fsdp2_shards_the_model_and_the_optimizer_state(fsdp2_run: Path) -> None:
    reports = _shard_reports(fsdp2_run)
    assert len(reports) == 2
    for r in reports:
        assert 0.4 < r["local_params"] / r["total_params"] < 0.6, r
        assert 0.4 < r["local_optimizer_numel"] / (2 * r["total_params"]) < 0.6, r
        assert r["loss_finite"]
    assert (fsdp2_run / "ckpt" / "last.ckpt").is_dir()  # a distributed checkpoint


@pytest.mark.slow
def test_fsdp2_resumes_its_directory_on_2_processes(
    fsdp2_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """Resumed with new optimizer settings, which win although the strategy loads the optimizer state (and
    with it the old settings) straight from the directory, after ``on_load_checkpoint``."""
    fit(
        tmp_path,
        tiny_dataset,
        "fsdp2.yaml",
        "--trainer.max_steps=5",
        f"--ckpt_path={fsdp2_run / 'ckpt' / 'last.ckpt'}",
        "--model.optimizer.weight_decay=0.05",
        "--model.optimizer.betas=[0.8, 0.9]",
        "--model.optimizer.lr=0.0012",
        "--trainer.callbacks+=shard_report.ShardReport",
        f"--trainer.callbacks.init_args.out_dir={tmp_path}",
    )
    reports = _shard_reports(tmp_path)
    assert [r["global_step"] for r in reports] == [5, 5]
    assert all(r["first_step_seen"] == 3 for r in reports)  # resumed, not restarted
    before = _shard_reports(fsdp2_run)[0]["first_step_groups"]
    assert before[0]["weight_decay"] == 0.1 and before[0]["betas"] != [0.8, 0.9]  # the preset's
    for r in reports:
        decay, no_decay = r["first_step_groups"]
        assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
        assert decay["betas"] == no_decay["betas"] == [0.8, 0.9]
        for group in (decay, no_decay):  # the new peak, at the schedule's position (step 3 of the warmup)
            assert group["initial_lr"] == 0.0012
            assert group["lr"] == pytest.approx(0.0012 * lr_factor(3, ScheduleConfig(), total=3))


def _assert_equals_the_run(ckpt: dict, run: Path) -> None:
    """Every weight of ``ckpt`` is a plain tensor equal to the run's; keys and shapes are a fresh GPT's."""
    state = ckpt["state_dict"]
    assert all(type(t) is torch.Tensor for t in state.values())  # no DTensors
    config = GPTConfig.from_dict(ckpt["model_config"])
    with torch.device("meta"):
        fresh = {f"model.{k}": v for k, v in GPT(config, device_type="meta").state_dict().items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in fresh.items()}
    held = torch.load(run / "full_weights.pt", weights_only=True)
    assert state.keys() == held.keys()
    for name, tensor in held.items():
        assert torch.equal(state[name], tensor), name


def _main(capsys: pytest.CaptureFixture, *argv: str) -> tuple[str, str]:
    """``lightning-llm ARGV`` in this process: (stdout, stderr); an error paragraph fails the test."""
    main(list(argv))
    cap = capsys.readouterr()
    return cap.out, cap.err


def _error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """The one-paragraph error of ``lightning-llm ARGV`` (it must fail that way, without a traceback)."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert isinstance(exc.value.code, str) and exc.value.code.startswith("error: "), exc.value.code
    assert "Traceback" not in capsys.readouterr().err
    return exc.value.code


# -- FSDP2 (dp 2) ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_consolidate_writes_the_weights_the_sharded_run_held(fsdp2_run: Path, tmp_path: Path, capsys):
    directory = fsdp2_run / "ckpt" / "last.ckpt"
    assert (directory / ".metadata").is_file()
    out = tmp_path / "one.ckpt"
    stdout, _ = _main(capsys, "consolidate", "--ckpt_path", str(directory), "--out", str(out))
    assert f"wrote {out}" in stdout and "resumable" in stdout and "generate --ckpt_path" in stdout
    assert not list(tmp_path.glob(".*.tmp"))
    ckpt = torch.load(out, weights_only=True)
    _assert_equals_the_run(ckpt, fsdp2_run)
    assert ckpt["global_step"] == 3 and "tokenizer" in ckpt and "hyper_parameters" in ckpt
    (opt,) = ckpt["optimizer_states"]
    trained = {n for g in opt["param_groups"] for n in g["params"]}
    assert set(opt["state"]) == trained and "model.wte.weight" in trained  # keyed by parameter name
    for name in trained:
        assert opt["state"][name]["exp_avg"].shape == ckpt["state_dict"][name].shape

    # --out exists: refused without --overwrite, replaced with it; --weights_only drops the optimizer
    assert "exists" in _error(capsys, "consolidate", "--ckpt_path", str(directory), "--out", str(out))
    _main(
        capsys,
        "consolidate",
        "--ckpt_path",
        str(directory),
        "--out",
        str(out),
        "--overwrite",
        "--weights_only",
    )
    small = torch.load(out, weights_only=True)
    assert "optimizer_states" not in small and small["state_dict"].keys() == ckpt["state_dict"].keys()


@pytest.mark.slow
def test_consolidated_file_resumes_fit_on_one_process(fsdp2_run: Path, tiny_dataset: Path, tmp_path: Path):
    one = tmp_path / "one.ckpt"
    ckpt = consolidate_checkpoint(fsdp2_run / "ckpt" / "last.ckpt")
    torch.save(ckpt, one)
    fit(
        tmp_path,
        tiny_dataset,
        "fsdp2.yaml",
        "--trainer.strategy=auto",
        "--trainer.devices=1",
        "--trainer.max_steps=4",
        "--checkpoint.every_n_train_steps=4",
        f"--ckpt_path={one}",
    )
    resumed = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 4  # continued from step 3, not restarted
    # each parameter got its own AdamW state back (one more step on it), not another one's of its shape
    (before,), (after,) = ckpt["optimizer_states"], resumed["optimizer_states"]
    names = [name for group in before["param_groups"] for name in group["params"]]
    ids = [i for group in after["param_groups"] for i in group["params"]]
    beta2 = before["param_groups"][0]["betas"][1]
    for name, i in zip(names, ids, strict=True):
        old, new = before["state"][name], after["state"][i]
        assert float(new["step"]) == float(old["step"]) + 1, name
        assert torch.all(new["exp_avg_sq"] >= beta2 * old["exp_avg_sq"] * (1 - 1e-5)), name


@pytest.mark.slow
def test_generate_and_export_read_the_directory(fsdp2_run: Path, tmp_path: Path, capsys):
    from lightning_llm.cli.generate import load_checkpoint

    directory = str(fsdp2_run / "ckpt" / "last.ckpt")
    one = tmp_path / "one.ckpt"
    torch.save(consolidate_checkpoint(directory, weights_only=True), one)
    args = ("--prompt", PROMPT, "--max_new_tokens", "12", "--temperature", "0", "--seed", "3")
    from_dir, err = _main(capsys, "generate", "--ckpt_path", directory, *args)
    assert "distributed checkpoint directory, consolidated in memory" in err
    from_file, _ = _main(capsys, "generate", "--ckpt_path", str(one), *args)
    assert from_dir == from_file and from_dir.startswith(PROMPT) and len(from_dir) > len(PROMPT) + 1

    (model_dir, _), (model_file, _) = load_checkpoint(directory), load_checkpoint(one)
    idx = torch.randint(0, model_dir.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model_dir(idx), model_file(idx), rtol=0, atol=0)
    capsys.readouterr()

    pytest.importorskip("transformers")
    hf = tmp_path / "hf"
    stdout, _ = _main(capsys, "export", "--ckpt_path", directory, "--to", "hf", "--out", str(hf))
    assert f"wrote {hf}" in stdout  # export checks the transformers model's logits against ours
    assert (hf / "config.json").is_file() and (hf / "model.safetensors").is_file()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_bad_directories_are_refused_with_what_is_wrong(tmp_path: Path, capsys):
    import torch.distributed.checkpoint as dcp

    with pytest.raises(UserError, match="does not exist"):
        consolidate_checkpoint(tmp_path / "nope")
    a_file = tmp_path / "model.ckpt"
    a_file.write_bytes(b"x")
    with pytest.raises(UserError, match="is a file, not a directory"):
        consolidate_checkpoint(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"not a distributed checkpoint: it has no \.metadata"):
        consolidate_checkpoint(empty)
    err = _error(capsys, "generate", "--ckpt_path", str(empty))
    assert f"--ckpt_path {empty} is a directory but not a distributed checkpoint" in err

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / ".metadata").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(UserError, match="not a readable torch.distributed.checkpoint index"):
        consolidate_checkpoint(garbage)

    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "code-ran"
    (evil / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UserError, match=r"is refused: it refers to (io|builtins)\.open"):
        consolidate_checkpoint(evil)
    assert not marker.exists()

    plain = tmp_path / "plain-dcp"  # torch.distributed.checkpoint without Lightning: no meta.pt
    dcp.save({"w": torch.ones(3)}, checkpoint_id=plain)
    with pytest.raises(UserError, match="not a Lightning checkpoint: it has no meta.pt"):
        consolidate_checkpoint(plain)
    torch.save({"global_step": 1}, plain / "meta.pt")
    with pytest.raises(UserError, match="not a lightning-llm one: its meta.pt has no model_config"):
        consolidate_checkpoint(plain)
    torch.save({"global_step": 1, "model_config": {}}, plain / "meta.pt")
    with pytest.raises(
        UserError, match=r"holds no model weights \(its index has no state_dict entries, only w\)"
    ):
        consolidate_checkpoint(plain)


@pytest.mark.slow
def test_an_incomplete_copy_is_refused(fsdp2_run: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(fsdp2_run / "ckpt" / "last.ckpt", copy)
    (copy / "__1_0.distcp").unlink()
    with pytest.raises(UserError, match=r"incomplete distributed checkpoint: .* __1_0\.distcp"):
        consolidate_checkpoint(copy)
    (copy / "meta.pt").unlink()
    with pytest.raises(UserError, match="no meta.pt"):
        consolidate_checkpoint(copy)


class Payload:
    """Creates ``path`` when unpickled: proof that loading ran code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# -- tensor parallel (dp 1 x tp 2) ----------------------------------------------------------------------
REPORT = ("--trainer.callbacks+=shard_report.ShardReport",)


def _reports(run: Path) -> list[dict]:
    """The ``ShardReport`` of each rank (then removed, for the next fit in the same directory)."""
    paths = sorted(run.glob("rank*.json"))
    reports = [json.loads(p.read_text()) for p in paths]
    for p in paths:
        p.unlink()
    return reports


@pytest.fixture(scope="module")
def tp_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of a 3-step ``configs/tp.yaml`` run (dp 1 x tp 2), as ``fsdp2_run``, plus each rank's
    ``ShardReport`` (``rank*.json``)."""
    out = tmp_path_factory.mktemp("tp_run")
    return _fit_2_processes(
        out, tiny_dataset, "tp.yaml", *REPORT, f"--trainer.callbacks.init_args.out_dir={out}"
    )


@pytest.mark.slow
def test_tensor_parallel_preset_trains_one_replica_and_consolidates(tp_run: Path, capsys):
    reports = _reports(tp_run)
    assert [r["global_step"] for r in reports] == [3, 3]
    for r in reports:
        assert r["world_size"] == 2 and r["loss_finite"]
        assert 0.5 < r["local_params"] / r["total_params"] < 0.95, r  # the blocks' linear layers are split
    # the two ranks hold one replica: they train on the same batches, so the replicated weights stay equal
    assert reports[0]["param_checksum"] == reports[1]["param_checksum"]
    last = tp_run / "ckpt" / "last.ckpt"
    assert (last / ".metadata").is_file()
    ckpt = consolidate_checkpoint(last)
    _assert_equals_the_run(ckpt, tp_run)
    assert ckpt["global_step"] == 3 and len(ckpt["optimizer_states"]) == 1
    stdout, err = _main(
        capsys, "generate", "--ckpt_path", str(last), "--prompt", PROMPT, "--max_new_tokens", "8"
    )
    assert "consolidated in memory" in err
    assert stdout.startswith(PROMPT) and len(stdout) > len(PROMPT) + 1


def _train_losses(run: Path) -> dict[int, float]:
    """Step -> train/loss, from the run's metrics.csv file(s)."""
    losses = {}
    for path in sorted((run / "logs").rglob("metrics.csv")):
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                losses[int(row["step"])] = float(row["train/loss"])
    return losses


@pytest.mark.slow
def test_tensor_parallel_preset_resumes_from_last(tp_run: Path, tiny_dataset: Path):
    fit(
        tp_run,
        tiny_dataset,
        "tp.yaml",
        "--trainer.max_steps=5",
        "--checkpoint.every_n_train_steps=3",  # as the first run: the checkpoint callback's state resumes too
        "--ckpt_path=last",
        "--trainer.log_every_n_steps=1",
        *REPORT,
        f"--trainer.callbacks.init_args.out_dir={tp_run}",
    )
    reports = _reports(tp_run)
    assert [r["global_step"] for r in reports] == [5, 5]
    assert all(r["first_step_seen"] == 3 and r["loss_finite"] for r in reports)  # resumed, not restarted
    assert reports[0]["param_checksum"] == reports[1]["param_checksum"]
    losses = _train_losses(tp_run)
    assert {3, 4} <= set(losses) and all(math.isfinite(v) for v in losses.values()), losses
    assert (
        consolidate_checkpoint(tp_run / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 5
    )  # saved at the end
