"""The real ``lightning-llm`` CLI on tiny overrides of the shipped presets: in subprocesses where a test needs a
process of its own (the quick start's fit, 2-process and Ctrl-C runs), otherwise in-process (``in_process``,
``cli_runner``), without ~10-15 s of Python, torch and Lightning start-up per command."""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_runner import isolated_process_state, run_command

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--model.config.n_layer=2",
    "--model.config.n_head=2",
    "--model.config.n_kv_head=null",
    "--model.config.n_embd=32",
    "--model.config.intermediate_size=64",
    "--model.config.block_size=32",
    "--data.batch_size=4",
    "--data.num_workers=0",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
]


def cli(*args: str, cwd: Path, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    # the callbacks the presets name live in tests/training; that module imports tests/cli_runner
    path = os.pathsep.join(str(ROOT / "tests" / d) for d in ("training", ""))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_llm", *args],
        cwd=cwd,
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    if check and proc.returncode:
        raise AssertionError(
            f"lightning-llm {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def fit_args(tmp_path: Path, data: Path, preset: str, *extra: str) -> list[str]:
    """The arguments of ``lightning-llm fit`` (after the subcommand) that ``fit`` passes."""
    return [
        "--config",
        str(ROOT / "configs" / preset),
        f"--data.path={data}",
        *TINY,
        f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        *extra,
    ]


def fit(tmp_path: Path, data: Path, preset: str, *extra: str, check: bool = True):
    return cli("fit", *fit_args(tmp_path, data, preset, *extra), cwd=tmp_path, check=check)


def succeeds(run, command: str, *args: str) -> tuple[str, str]:
    """(stdout, stderr) of an in-process ``lightning-llm COMMAND ARGS`` that must succeed (``run``:
    the ``in_process`` fixture, or ``run_command`` with its capsys)."""
    code, out, err = run(command, *args)
    assert code is None, (
        f"lightning-llm {command} {' '.join(args)} failed: {code}\n{out[-3000:]}\n{err[-5000:]}"
    )
    return out, err


@pytest.mark.slow
def test_quickstart_fit_then_generate(tiny_dataset, tmp_path, capsys, monkeypatch):
    # fit in a process of its own, as the quick start runs it: it puts that process's allocator in cache mode
    proc = fit(
        tmp_path,
        tiny_dataset,
        "quickstart.yaml",
        "--trainer.max_steps=12",
        "--trainer.val_check_interval=6",
        "--checkpoint.every_n_train_steps=6",
        "--speed.log_every_n_steps=2",
    )
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert "host allocator keeps freed memory" in proc.stderr  # lightning_llm/allocator.py
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_file()
    logs = next((tmp_path / "logs").rglob("metrics.csv"))
    rows = list(csv.DictReader(logs.open()))
    cols = set(rows[0])
    assert {"train/loss", "val/loss", "val/ppl", "perf/tokens_per_s", "perf/mfu"} <= cols
    assert any(c.startswith("lr-MuonWithAdamW") for c in cols)  # the quick start trains with Muon + AdamW
    ppl = [float(r["val/ppl"]) for r in rows if r.get("val/ppl")]
    vloss = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert ppl and abs(ppl[-1] - torch.tensor(vloss[-1]).exp().item()) / ppl[-1] < 1e-3
    assert next((tmp_path / "logs").rglob("loss.png")).stat().st_size > 1000
    # the commands that read the checkpoint: in this process (isolated; each subprocess would pay ~10-15 s
    # of start-up)
    monkeypatch.chdir(tmp_path)
    with isolated_process_state():

        def run(*argv: str) -> tuple[str | None, str, str]:
            return run_command(capsys, *argv, logs=True)

        args = (
            "generate",
            "--ckpt_path",
            str(last),
            "--prompt",
            "ROMEO:",
            "--max_new_tokens",
            "20",
            "--seed",
            "3",
        )
        out, again = (succeeds(run, *args)[0] for _ in range(2))
        assert out.startswith("ROMEO:") and len(out) > len("ROMEO:") + 5
        assert again == out  # seeded

        # validate and test score the checkpoint (test on the validation split, and says so)
        scores = {}
        for sub in ("validate", "test"):
            stdout, stderr = succeeds(
                run,
                sub,
                "--config",
                str(ROOT / "configs" / "quickstart.yaml"),
                f"--data.path={tiny_dataset}",
                *TINY,
                f"--trainer.default_root_dir={tmp_path / sub}",
                "--trainer.limit_test_batches=2",  # the batches validation saw (TINY: limit_val_batches=2)
                f"--ckpt_path={last}",
            )
            prefix = "val" if sub == "validate" else "test"
            found = re.search(rf"{prefix}/loss\D+?([0-9]+\.[0-9]+)", stdout)
            assert found, stdout[-2000:]
            scores[sub] = float(found.group(1))
        assert "testing on the validation split" in stderr + stdout
    assert scores["test"] == pytest.approx(scores["validate"], rel=1e-4)
    assert scores["validate"] == pytest.approx(vloss[-1], rel=1e-3)  # the last validation of fit


def _refused(capsys, *argv: str) -> tuple[object, str]:
    """(exit code, stderr) of an in-process ``lightning-llm ARGV`` that must fail: a one-paragraph message (the
    exit code) or the parser's usage error (exit code 2, the message in stderr), never a traceback. The tests
    that call it take the ``in_process`` fixture for its isolation: ``fit`` sets up the process's allocator
    before it parses its arguments."""
    from lightning_llm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    code, err = exit_info.value.code, capsys.readouterr().err
    assert code not in (0, None)
    err += code if isinstance(code, str) else ""  # sys.exit(message) prints it to stderr
    assert "Traceback" not in err
    return code, err


def test_unknown_yaml_key_fails_before_training(tiny_dataset, tmp_path, in_process, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"config": {"n_layers": 2}}}))
    _, err = _refused(capsys, "fit", "--config", str(bad), f"--data.path={tiny_dataset}")
    assert "n_layers" in err


def test_unknown_component_fails_with_the_available_names(tiny_dataset, tmp_path, in_process, capsys):
    _, err = _refused(
        capsys, "fit", *fit_args(tmp_path, tiny_dataset, "quickstart.yaml", "--model.config.attention=flashy")
    )
    assert "flashy" in err and "naive" in err and "sdpa" in err
    assert not (tmp_path / "ckpt").exists()


def test_16_bit_mixed_precision_on_cpu_is_refused(tiny_dataset, tmp_path, in_process, capsys):
    _, err = _refused(
        capsys,
        "fit",
        *fit_args(
            tmp_path, tiny_dataset, "quickstart.yaml", "--trainer.precision=16-mixed", "--trainer.max_steps=1"
        ),
    )
    assert "16-mixed" in err and "bf16-mixed" in err


def test_generate_prompt_longer_than_block_size(tiny_dataset, tmp_path, in_process):
    succeeds(
        in_process,
        "fit",
        *fit_args(
            tmp_path,
            tiny_dataset,
            "quickstart.yaml",
            "--trainer.max_steps=1",
            "--checkpoint.every_n_train_steps=1",
        ),
    )
    code, _, _ = in_process(
        "generate", "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"), "--prompt", "word " * 200
    )
    assert code is not None and "block size" in code


def test_quickstart_recipe_fits_with_muon_and_generates_capped(tiny_dataset, tmp_path, capsys, in_process):
    """configs/quickstart.yaml (the modern recipe) end to end at tiny width, with the document mask and
    soft-capping on top: Muon + AdamW groups in the log, the loss falls, the checkpoint carries the recipe,
    and generate samples from the soft-capped head."""
    out, err = succeeds(
        in_process,
        "fit",
        *fit_args(
            tmp_path,
            tiny_dataset,
            "quickstart.yaml",
            "--model.config.document_mask=true",
            "--model.config.logit_softcap=15",
            "--trainer.log_every_n_steps=2",
            "--model.schedule.warmup_steps=2",
            "--trainer.max_steps=16",
            "--trainer.val_check_interval=8",
            "--checkpoint.every_n_train_steps=8",
        ),
    )
    rows = list(csv.DictReader(next((tmp_path / "logs").rglob("metrics.csv")).open()))
    assert any(c.startswith("lr-MuonWithAdamW") for c in rows[0])
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < losses[0] - 0.3
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    config = ckpt["hyper_parameters"]["config"]
    assert config["qk_norm"] and config["logit_softcap"] == 15.0 and config["mlp"]["name"] == "relu2"
    assert config["document_mask"] and config["eot_id"] is not None  # filled in from the dataset
    text, _ = succeeds(
        in_process, "generate", "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"), "--prompt", "ROMEO:",
        "--max_new_tokens", "12", "--seed", "3",
    )  # fmt: skip
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")


def test_every_preset_parses_and_builds_on_meta(tiny_dataset, capsys, in_process):
    """Config hub: each YAML in configs/ parses with the real parser and its model builds on the meta device.
    (``in_process``: isolated, since ``main`` sets up the allocator before it parses.)"""
    from jsonargparse import ArgumentParser

    from lightning_llm.dpo import LitDPO
    from lightning_llm.model import GPT
    from lightning_llm.module import LitGPT

    presets = sorted((ROOT / "configs").glob("*.yaml"))
    # post-training presets run through their own command (and DPO's module has more options)
    commands = {"sft": ("sft", LitGPT), "dpo": ("dpo", LitDPO)}
    assert len(presets) >= 5
    for preset in presets:
        raw = yaml.safe_load(preset.read_text())
        command, module = commands.get(preset.stem.split("-")[0], ("fit", LitGPT))
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(module, "model")
        cfg = parser.parse_object({"model": raw["model"]})
        lit = parser.instantiate(cfg).model
        with torch.device("meta"):
            model = GPT(lit.config, device_type="meta")
        assert model.num_params() >= model.num_params(include_embedding=False) > 0, preset.name
        assert "trainer" in raw and "data" in raw, preset.name
        # the whole preset (trainer, strategy, callbacks too) through the real LightningCLI parser
        from lightning_llm.cli import main

        with pytest.raises(SystemExit) as exit_info:
            main([command, "--config", str(preset), f"--data.path={tiny_dataset}", "--print_config"])
        assert exit_info.value.code in (0, None), preset.name
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["config"]["n_layer"] == raw["model"]["config"]["n_layer"], preset.name


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "lightning_llm", "--help"], capture_output=True, text=True)
    for cmd in ("fit", "prepare", "generate", "plugins", "bench"):
        assert cmd in out.stdout


@pytest.mark.slow
def test_ddp_two_processes_gloo(tiny_dataset, tmp_path):
    fit(
        tmp_path,
        tiny_dataset,
        "ddp.yaml",
        "--trainer.max_steps=3",
        "--model.global_batch_size=16",
        "--checkpoint.every_n_train_steps=3",
        "--trainer.callbacks+=shard_report.ShardReport",
        f"--trainer.callbacks.init_args.out_dir={tmp_path}",
    )
    reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert len(reports) == 2
    assert all(r["world_size"] == 2 and r["accumulate_grad_batches"] == 2 for r in reports)
    assert reports[0]["param_checksum"] == pytest.approx(reports[1]["param_checksum"])  # replicas in sync
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_checkpoint(tiny_dataset, tmp_path):
    import signal
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        f"--data.path={tiny_dataset}",
        *TINY,
        f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--trainer.max_steps=100000",
        "--checkpoint.every_n_train_steps=2",
        "--trainer.val_check_interval=1000",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_llm", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    last = tmp_path / "ckpt" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # let it get into the middle of more steps (and maybe a checkpoint write)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert last.is_file(), out[-3000:]
    ckpt = torch.load(last, weights_only=True)  # complete and loadable
    assert ckpt["global_step"] >= 2
    assert not list((tmp_path / "ckpt").glob(".*.tmp"))
    fit(
        tmp_path,
        tiny_dataset,
        "quickstart.yaml",
        f"--trainer.max_steps={ckpt['global_step'] + 2}",
        f"--ckpt_path={last}",
        "--checkpoint.every_n_train_steps=2",
    )
    assert torch.load(last, weights_only=True)["global_step"] == ckpt["global_step"] + 2


@pytest.mark.gpu
def test_fsdp1_preset_trains_on_gpu(tiny_dataset, tmp_path):
    fit(
        tmp_path,
        tiny_dataset,
        "fsdp1.yaml",
        "--trainer.devices=1",
        "--trainer.max_steps=3",
        "--checkpoint.every_n_train_steps=3",
    )
    assert (tmp_path / "ckpt" / "last.ckpt").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "bf16-true"])
def test_gpu_precisions(tiny_dataset, tmp_path, precision):
    fit(
        tmp_path,
        tiny_dataset,
        "quickstart.yaml",
        "--trainer.accelerator=gpu",
        f"--trainer.precision={precision}",
        "--trainer.max_steps=3",
        "--checkpoint.every_n_train_steps=3",
    )
    assert (tmp_path / "ckpt" / "last.ckpt").exists()


def test_fit_help_documents_every_config_field(in_process, capsys):
    from dataclasses import fields

    from lightning_llm.cli import main
    from lightning_llm.config import GPTConfig

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code in (0, None)
    text = " ".join(capsys.readouterr().out.split())
    assert "Number of key/value heads (GQA; 1 = MQA)" in text
    assert "Peak learning rate" in text
    for f in fields(GPTConfig):
        if f.name != "vocab_size":  # linked from data.vocab_size (the dataset's tokenizer), not settable
            assert f"--model.config.{f.name}" in text
