"""Tiny runs of every benchmark's ``main``: it runs, writes valid JSON with the expected keys, and checks
kernels against their references. No timing assertions: these numbers are meaningless at this size."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``benchmarks`` lives next to the package, not inside it
    sys.path.insert(0, str(ROOT))

from benchmarks import attention, generate, train  # noqa: E402
from benchmarks.common import peak_memory, time_fn  # noqa: E402

TINY_MODEL = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--vocab-size", "96"]


def test_attention_bench_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "attention.json"
    attention.main(
        "--lengths 16,32 --heads 2 --head-dim 8 --check-length 24 --budget-s 0".split() + ["--out", str(out)]
    )
    payload = json.loads(out.read_text())
    assert {"env", "args", "shape", "results", "skipped", "summary", "plots"} <= set(payload)
    assert {"torch", "cpu", "date"} <= set(payload["env"])
    kernels = {r["kernel"] for r in payload["results"]}
    assert {"naive", "sdpa", "flash"} <= kernels
    for row in payload["results"]:
        assert row["status"] == "ok"
        assert row["check_rel_err"] <= attention.TOLERANCE[attention.DTYPES[row["dtype"]]]
        assert {"fwd_s", "fwd_bwd_s", "fwd_mem_bytes", "fwd_bwd_mem_bytes"} <= set(row)
    assert all(Path(p).exists() for p in payload["plots"])
    assert "| kernel |" in capsys.readouterr().out


def test_attention_check_fails_loudly_on_a_wrong_kernel() -> None:
    def not_causal(q, k, v, *, bias=None, dropout_p=0.0, causal=True):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=False)

    with pytest.raises(AssertionError, match="disagrees with the fp64 reference"):
        attention.check_kernel("not-causal", not_causal, (1, 2, 16, 8), torch.float32, torch.device("cpu"))


def test_attention_skips_points_over_the_memory_cap(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    args = (
        "--lengths 16,64 --kernels naive --dtypes fp32 --heads 1 --head-dim 8 --check-length 16 --budget-s 0"
    )
    attention.main([*args.split(), "--memory-cap-gb", "1e-12", "--no-plot", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"].startswith("skipped (memory)") or rows[0]["fwd_bwd_mem_bytes"] in (0, None)


def test_train_bench_tiny(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    # one fresh worker process per point (the default way), the allocator as shipped
    args = "--block-size 16 --batch 2 --steps 2 --warmup 1 --rounds 1 --variants nanogpt,ours,lightning"
    args += " --precisions bf16-mixed --profile ours:bf16-mixed"
    train.main([*TINY_MODEL, *args.split(), "--out", str(out)])
    payload = json.loads(out.read_text())
    keys = {"env", "config", "peak_matmul_flops", "flops_per_token", "results", "ratios", "profiles"}
    assert keys <= set(payload)
    rows = {r["variant"]: r for r in payload["results"]}
    assert set(rows) == {"nanogpt", "ours", "lightning"}
    malloc = {v: r["malloc"] for v, r in rows.items()}
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert malloc == {"nanogpt": "system", "ours": "cache", "lightning": "cache"}
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["mfu"] > 0 and row["repeats"] == 2
        assert torch.isfinite(torch.tensor(row["loss"]))
    assert abs(sum(payload["profiles"][0]["share"].values()) - 1.0) < 0.01


def test_train_bench_in_process(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    args = "--block-size 16 --batch 2 --steps 2 --warmup 1 --rounds 0 --variants ours-ce,ours --precisions 32-true"
    train.main([*TINY_MODEL, *args.split(), "--memory", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in rows] == ["ours-ce", "ours"]
    assert all(r["tokens_per_s"] > 0 and r["step_mem_bytes"] is not None for r in rows)
    assert {r["malloc"] for r in rows} == {"system"}


def test_generate_bench_tiny(tmp_path: Path) -> None:
    out = tmp_path / "generate.json"
    args = "--block-size 32 --prompt 4 --new-tokens 20 --repeats 1 --dtypes fp32,bf16"
    generate.main([*TINY_MODEL, *args.split(), "--out", str(out)])
    payload = json.loads(out.read_text())
    assert {"env", "config", "results"} <= set(payload)
    for row in payload["results"]:
        assert row["tokens_identical"] is True
        assert row["static (ours)"]["tokens_per_s"] > 0 and row["torch.cat"]["tokens_per_s"] > 0


def test_timing_and_memory_helpers() -> None:
    t = time_fn(lambda: sum(range(100)), warmup=1, min_repeats=3, max_repeats=5, budget_s=0)
    assert t["repeats"] == 3 and t["median_s"] >= 0
    mem = peak_memory(lambda: torch.ones(4_000_000).sum())  # 16 MB
    assert mem is None or mem >= 8_000_000
