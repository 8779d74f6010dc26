"""``lightning-llm prepare-sft / sft / prepare-dpo / dpo / generate --chat`` end to end through the CLI on a
tiny model: the presets' commands as the README gives them (with tiny-model overrides), and resuming either
run gives exactly the weights of an uninterrupted one."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
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
    "--trainer.enable_progress_bar=false",
    "--trainer.log_every_n_steps=1",
]
WORDS = "apple river stone cloud candle mirror garden violet thunder anchor meadow lantern".split()


CLEAN_ENV: dict[str, str] = {}
"""The environment before this module's in-process runs (for its subprocesses)."""


@pytest.fixture(scope="module", autouse=True)
def _isolated_process_state() -> Iterator[None]:
    """The runs here are in-process: keep what they change out of the tests that follow. Lightning sets
    MASTER_PORT in os.environ (later 2-process runs would all inherit that one port), and fit puts the
    allocator in 'cache' mode for good (a later run asking for 'system' could not go back)."""
    with isolated_process_state() as before:
        CLEAN_ENV.update(before)
        yield


def _run(capsys, *argv: str) -> str:
    code, out, err = run_command(capsys, *argv)
    assert code is None, f"{argv[0]} failed: {code}\n{err[-2000:]}"
    return out + err


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def base(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretrained checkpoint (the quick start's preset, 2 steps) to fine-tune."""
    out = tmp_path_factory.mktemp("base")
    capsys = None
    from lightning_llm.cli import main

    main(
        [
            "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), f"--data.path={tiny_dataset}", *TINY,
            "--trainer.max_steps=2", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={out}",
        ]
    )  # fmt: skip
    del capsys
    return out / "checkpoints" / "last.ckpt"


def _post_train(capsys, kind: str, data: Path, base: Path, root: Path, *extra: str) -> Path:
    _run(
        capsys, kind, "--config", str(ROOT / "configs" / f"{kind}-quickstart.yaml"), *TINY,
        f"--data.path={data}", f"--model.init_weights={base}", f"--trainer.default_root_dir={root}",
        "--trainer.val_check_interval=2", "--trainer.limit_val_batches=2", "--model.schedule.warmup_steps=1",
        "--model.schedule.max_steps=4",  # the same schedule whether the run stops at step 2 or not
        *extra,
    )  # fmt: skip
    return root / "checkpoints" / "last.ckpt"


def _metrics(root: Path) -> list[dict[str, str]]:
    with open(root / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa["global_step"] == sb["global_step"] == 4
    assert sa["state_dict"].keys() == sb["state_dict"].keys()
    for k in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k


@pytest.fixture(scope="module")
def sft_data(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sft_data")
    rows = [
        {"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f" {w}"}]}
        for w in WORDS * 4
    ] + [{"instruction": f"Repeat {w}", "input": "twice", "output": f"{w} {w}"} for w in WORDS]
    from lightning_llm.cli import main

    main(
        [
            "prepare-sft", "--source", str(_jsonl(tmp / "chat.jsonl", rows)), "--tokenizer", str(base),
            "--output_dir", str(tmp / "sft"), "--block_size", "32", "--val_fraction", "0.25",
        ]
    )  # fmt: skip
    return tmp / "sft"


@pytest.fixture(scope="module")
def dpo_data(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("dpo_data")
    rows = [
        {"prompt": f"Say {w}.", "chosen": f" {w}", "rejected": f" {WORDS[(i + 5) % len(WORDS)]}"}
        for i, w in enumerate(WORDS * 4)
    ]
    from lightning_llm.cli import main

    main(
        [
            "prepare-dpo", "--source", str(_jsonl(tmp / "prefs.jsonl", rows)), "--tokenizer", str(base),
            "--output_dir", str(tmp / "dpo"), "--block_size", "32", "--val_fraction", "0.25",
        ]
    )  # fmt: skip
    return tmp / "dpo"


@pytest.mark.slow
def test_sft_trains_on_replies_resumes_exactly_and_chats(base, sft_data, tmp_path, capsys) -> None:
    whole = _post_train(capsys, "sft", sft_data, base, tmp_path / "whole", "--trainer.max_steps=4")
    ckpt = torch.load(whole, weights_only=True)
    assert ckpt["chat_template"] == "lightning_llm.chat/1"
    assert "<|assistant|>" in ckpt["tokenizer"]["special_tokens"]
    assert ckpt["hyper_parameters"]["init_weights"] == str(base)
    rows = _metrics(tmp_path / "whole")
    assert any(r.get("val/exact_match") for r in rows) and any(r.get("train/loss") for r in rows)

    first = _post_train(capsys, "sft", sft_data, base, tmp_path / "split", "--trainer.max_steps=2")
    _post_train(
        capsys, "sft", sft_data, base, tmp_path / "split", "--trainer.max_steps=4", "--ckpt_path=last"
    )
    _assert_same_weights(whole, first)

    out = _run(capsys, "generate", "--ckpt_path", str(whole), "--chat", "--prompt", "Say river.",
               "--temperature", "0", "--max_new_tokens", "5")  # fmt: skip
    assert "Say river." not in out.splitlines()[-1]

    out = _run(capsys, "sft", "validate", "--config", str(ROOT / "configs" / "sft-quickstart.yaml"), *TINY,
               f"--data.path={sft_data}", f"--ckpt_path={whole}",
               f"--trainer.default_root_dir={tmp_path / 'val'}")  # fmt: skip
    assert "val/exact_match" in out


@pytest.mark.slow
def test_dpo_logs_preference_metrics_and_resumes_exactly(base, dpo_data, tmp_path, capsys) -> None:
    whole = _post_train(capsys, "dpo", dpo_data, base, tmp_path / "whole", "--trainer.max_steps=4")
    ckpt = torch.load(whole, weights_only=True)
    assert all(k.startswith("model.") for k in ckpt["state_dict"])  # the reference is never saved
    assert ckpt["hyper_parameters"]["beta"] == 0.1
    rows = _metrics(tmp_path / "whole")
    for name in ("train/rewards_chosen", "train/rewards_rejected", "train/margin", "train/accuracy"):
        assert any(r.get(name) for r in rows), name
    assert any(r.get("val/accuracy") for r in rows)

    first = _post_train(capsys, "dpo", dpo_data, base, tmp_path / "split", "--trainer.max_steps=2")
    _post_train(
        capsys, "dpo", dpo_data, base, tmp_path / "split", "--trainer.max_steps=4", "--ckpt_path=last"
    )
    _assert_same_weights(whole, first)


def test_pretraining_on_a_chat_dataset_says_which_command_to_use(sft_data, tmp_path, capsys) -> None:
    code, _, _ = run_command(
        capsys, "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), f"--data.path={sft_data}", *TINY,
        f"--trainer.default_root_dir={tmp_path}",
    )  # fmt: skip
    assert code is not None and "lightning-llm sft" in code


FSDP2_STRATEGY = """
trainer:
  devices: 2
  precision: 32-true
  strategy:
    class_path: lightning.pytorch.strategies.ModelParallelStrategy
    init_args: {data_parallel_size: 2, tensor_parallel_size: 1, process_group_backend: gloo}
model:
  optimizer: {fused: false}
"""


@pytest.mark.slow
def test_dpo_on_2_fsdp2_processes_shards_the_reference_like_the_policy(base, dpo_data, tmp_path) -> None:
    import subprocess
    import sys

    (tmp_path / "fsdp2.yaml").write_text(FSDP2_STRATEGY)
    args = [
        "dpo", "--config", str(ROOT / "configs" / "dpo-quickstart.yaml"), "--config", str(tmp_path / "fsdp2.yaml"),
        *TINY, f"--data.path={dpo_data}", f"--model.init_weights={base}", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--model.schedule.warmup_steps=1",
        "--trainer.callbacks+=shard_report.DPOShardReport", f"--trainer.callbacks.init_args.out_dir={tmp_path}",
    ]  # fmt: skip
    # the environment from before the in-process runs above: Lightning leaves MASTER_PORT, LOCAL_RANK, ... in
    # os.environ, and a child that sees LOCAL_RANK thinks it was launched and waits for its peers
    env = dict(CLEAN_ENV)
    env.update(PYTHONPATH=str(ROOT / "tests" / "training"), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_llm", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("dpo_rank*.json"))]
    assert len(reports) == 2
    for r in reports:
        assert 0.4 < r["policy_local"] < 0.6 and 0.4 < r["reference_local"] < 0.6, r  # both sharded in two
        assert r["same_mesh"] and r["reference_frozen"], r
        assert r["reference_after"] == r["reference_before"], r  # never updated
        assert r["policy_checksum"] != r["reference_after"], r  # the policy was
    assert reports[0]["policy_checksum"] == pytest.approx(reports[1]["policy_checksum"])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_dir()  # a distributed checkpoint, policy only
