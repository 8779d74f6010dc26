"""Tiny runs of every benchmark's ``main``: it runs, writes valid JSON with the expected keys, and checks
kernels against their references. No timing assertions: these numbers are meaningless at this size.

The CPU peak (the MFU denominator) is measured on a 256^3 matmul here instead of 2048^3: its value is not
under test, and a bf16 2048^3 product takes minutes on a CPU without AVX-512 bf16 instructions.
Tests marked ``gpu`` run the CUDA paths with tiny budgets; they are skipped without a GPU.
"""

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
from benchmarks.common import env_markdown, peak_memory, time_fn  # noqa: E402
from benchmarks.sdpa_backends import ForcedSDPA, probe_backends, ran_backend  # noqa: E402
from lightning_llm import perf  # noqa: E402
from lightning_llm.registry import ATTENTION  # noqa: E402

TINY_MODEL = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--vocab-size", "96"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def small_cpu_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(perf.MEASURE_SIZE, "cpu", 256)


def test_attention_bench_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "attention.json"
    attention.main(
        "--lengths 16,32 --heads 2 --head-dim 8 --check-length 24 --budget-s 0".split() + ["--out", str(out)]
    )
    payload = json.loads(out.read_text())
    keys = {"env", "args", "shape", "results", "skipped", "summary", "plots", "command", "peak"}
    assert keys | {"flops_formula", "sdpa_backends", "defaults_chosen"} <= set(payload)
    assert {"torch", "cpu", "date"} <= set(payload["env"])
    kernels = {r["kernel"] for r in payload["results"]}
    assert {"naive", "sdpa", "flash"} <= kernels
    for row in payload["results"]:
        assert row["status"] == "ok"
        assert row["check_rel_err"] <= attention.TOLERANCE[attention.DTYPES[row["dtype"]]]
        assert {"fwd_s", "fwd_bwd_s", "fwd_mem_bytes", "fwd_bwd_mem_bytes"} <= set(row)
        assert row["fwd_tflops"] > 0 and row["fwd_bwd_pct_of_peak"] > 0
    # on CPU, SDPA's default is its flash kernel (the backend column says so); naive runs no SDPA op
    assert {r["backend"] for r in payload["results"] if r["kernel"] == "sdpa"} == {"flash"}
    assert {r["backend"] for r in payload["results"] if r["kernel"] == "naive"} == {None}
    assert payload["sdpa_backends"]["fp32"]["default"] == "flash"
    # CPU defaults chosen (the options not given), CPU peak measured, the table written next to the JSON
    assert payload["defaults_chosen"] == {"device_type": "cpu", "batch": 1, "dtypes": "fp32,bf16",
                                          "memory_cap_gb": 6.0, "sdpa_backends": "none"}  # fmt: skip
    assert payload["peak"]["bf16"]["source"].startswith("measured: 256^3 bfloat16 matmul")
    assert all(Path(p).exists() for p in payload["plots"])
    printed = capsys.readouterr().out
    assert "| kernel |" in printed and "| sdpa (flash) |" in printed and "defaults for cpu" in printed
    md = out.with_suffix(".md").read_text()
    assert "python -m benchmarks.attention --lengths 16,32" in md and "| sdpa (flash) | flash |" in md


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
    args += " --precisions bf16-mixed"
    train.main([*TINY_MODEL, *args.split(), "--out", str(out)])
    payload = json.loads(out.read_text())
    keys = {"env", "config", "peak", "flops_per_token", "results", "ratios", "profiles", "command"}
    assert keys <= set(payload)
    rows = {r["variant"]: r for r in payload["results"]}
    assert set(rows) == {"nanogpt", "ours", "lightning"}
    malloc = {v: r["malloc"] for v, r in rows.items()}
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert malloc == {"nanogpt": "system", "ours": "cache", "lightning": "cache"}
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["mfu"] > 0 and row["repeats"] == 2
        assert torch.isfinite(torch.tensor(row["loss"]))


def test_train_bench_in_process(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    args = "--block-size 16 --batch 2 --steps 2 --warmup 1 --rounds 0 --variants ours-ce,ours --precisions 32-true"
    train.main([*TINY_MODEL, *args.split(), "--memory", "--profile", "ours:32-true", "--out", str(out)])
    payload = json.loads(out.read_text())
    rows = payload["results"]
    assert [r["variant"] for r in rows] == ["ours-ce", "ours"]
    assert all(r["tokens_per_s"] > 0 and r["step_mem_bytes"] is not None for r in rows)
    assert {r["malloc"] for r in rows} == {"system"}
    assert abs(sum(payload["profiles"][0]["share"].values()) - 1.0) < 0.01


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


# -- per-device defaults, peak, FLOP counts, SDPA backends (CPU) -------------------------------------------


def test_device_defaults_are_chosen_per_device_type() -> None:
    cpu, cuda = train.device_defaults("cpu"), train.device_defaults("cuda")
    assert (cpu["n_layer"], cpu["n_embd"], cpu["n_head"], cpu["block_size"], cpu["batch"]) == (
        6,
        384,
        6,
        256,
        8,
    )
    assert cpu["precisions"] == "32-true,bf16-mixed,bf16-true"
    # GPT-2 124M, batch 16, bf16 autocast
    gpt2 = (cuda["n_layer"], cuda["n_embd"], cuda["n_head"], cuda["block_size"], cuda["vocab_size"])
    assert gpt2 == (12, 768, 12, 1024, 50304) and cuda["batch"] == 16 and cuda["precisions"] == "bf16-mixed"
    a_cpu, a_cuda = attention.device_defaults("cpu"), attention.device_defaults("cuda")
    assert (a_cpu["batch"], a_cpu["heads"], a_cpu["head_dim"]) == (1, 6, 64)
    assert a_cuda["batch"] * a_cuda["heads"] >= 128 and a_cuda["head_dim"] == 128
    assert a_cuda["sdpa_backends"] == "all" and a_cpu["sdpa_backends"] == "none"

    # filling: options given on the command line win, the rest come from the device type (no GPU needed)
    args = train.parse_args(["--batch", "4"])
    chosen = train.resolve_args(args, torch.device("cuda"))
    assert args.batch == 4 and "batch" not in chosen
    assert (args.n_layer, args.n_embd, args.block_size, args.precisions) == (12, 768, 1024, "bf16-mixed")
    args = attention.parse_args(["--heads", "2", "--memory-cap-gb", "1"])
    chosen = attention.resolve_args(args, torch.device("cuda"))
    assert (args.batch, args.heads, args.head_dim, args.dtypes) == (8, 2, 128, "bf16")
    assert "heads" not in chosen and args.memory_cap_gb == 1


def test_attention_flops_formula_by_hand() -> None:
    # B=2, H=3, T=8, D=4: per (batch, head) QK^T and PV are 2*T*T*D = 512 FLOPs each, 1024 together,
    # half of it under the causal mask: 512; times 6 (batch, head) pairs = 3072
    assert attention.attention_flops(2, 3, 8, 4, "fwd") == 3072
    assert attention.attention_flops(2, 3, 8, 4, "bwd") == 2.5 * 3072
    assert attention.attention_flops(2, 3, 8, 4, "fwd_bwd") == 3.5 * 3072
    row = attention.bench_point(ATTENTION.build("sdpa"), (2, 3, 8, 4), torch.float32, CPU, budget_s=0)
    assert row["fwd_tflops"] == pytest.approx(3072 / row["fwd_s"] / 1e12)
    assert row["fwd_bwd_tflops"] == pytest.approx(3.5 * 3072 / row["fwd_bwd_s"] / 1e12)


def test_sdpa_backend_probe_on_cpu() -> None:
    probe = probe_backends(CPU, torch.float32, (1, 2, 16, 8))
    assert probe["default"] == "flash"  # CPU SDPA: its flash kernel where it applies, else math
    assert probe["backends"]["flash"] == "ok" and probe["backends"]["math"] == "ok"
    assert probe["backends"]["cudnn"].startswith("unavailable") and probe["backends"]["efficient"] != "ok"
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    assert ran_backend(lambda: ForcedSDPA("math")(q, k, v)) == "math"
    assert ran_backend(lambda: ATTENTION.build("naive")(q, k, v)) is None
    with pytest.raises(RuntimeError):
        ForcedSDPA("cudnn")(q, k, v)


def test_attention_times_forced_sdpa_backends(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    args = "--lengths 16 --kernels sdpa --dtypes fp32 --heads 2 --head-dim 8 --check-length 16 --budget-s 0"
    attention.main(
        [*args.split(), "--sdpa-backends", "all", "--peak", "measure", "--no-plot", "--out", str(out)]
    )
    payload = json.loads(out.read_text())
    timed = {r["kernel"]: r["backend"] for r in payload["results"]}
    assert timed == {"sdpa": "flash", "sdpa[flash]": "flash", "sdpa[math]": "math"}
    skipped = {s["kernel"] for s in payload["skipped"]}
    assert skipped == {"sdpa[cudnn]", "sdpa[efficient]"}  # probed unavailable on CPU, with the reason


def test_train_peak_flag_is_recorded(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    args = "--block-size 16 --batch 2 --steps 2 --warmup 1 --rounds 0 --variants ours --precisions 32-true"
    train.main([*TINY_MODEL, *args.split(), "--peak", "measure", "--out", str(out)])
    payload = json.loads(out.read_text())
    peak = payload["peak"]
    assert peak["mode"] == "measure" and set(peak) == {"mode", "fp32"}
    assert peak["fp32"]["flops"] > 0 and peak["fp32"]["source"].startswith("measured: 256^3 float32")
    (row,) = payload["results"]
    assert row["mfu"] == pytest.approx(
        payload["flops_per_token"] * row["tokens_per_s"] / peak["fp32"]["flops"]
    )
    assert payload["defaults_chosen"]["device_type"] == "cpu" and row["timing"].startswith("perf_counter")
    md = out.with_suffix(".md").read_text()
    assert "peak (measure: fp32" in md and "measured: 256^3 float32 matmul" in md and "--peak measure" in md
    with pytest.raises(ValueError, match="No peak FLOP/s table entry"):  # the CPU is in no vendor table
        train.main([*TINY_MODEL, *args.split(), "--peak", "table", "--out", str(out)])


def test_train_compile_modes_trace(tmp_path: Path) -> None:
    """``--compile on,model`` builds per-block (ours) and whole-model compiles; the eager backend only
    traces (inductor would take minutes on a CPU), which is what can break here."""
    out = tmp_path / "train.json"
    args = "--block-size 16 --batch 2 --steps 1 --warmup 1 --rounds 0 --precisions 32-true"
    args += " --variants nanogpt,ours-ce,ours,lightning --compile on,model --compile-backend eager"
    train.main([*TINY_MODEL, *args.split(), "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    got = {(r["variant"], r["compile"]): r["compiled"] for r in rows}
    # nanoGPT's "on" already is its whole model: no second nanoGPT point for "model"
    assert got == {("nanogpt", "on"): "whole model"} | {
        (v, mode): desc
        for v in ("ours-ce", "ours", "lightning")
        for mode, desc in (("on", "per block"), ("model", "whole model"))
    }
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_train_ratios_compare_compiled_like_for_like() -> None:
    rows = [
        {"variant": v, "precision": "bf16-mixed", "compile": c, "tokens_per_s": tps}
        for v, c, tps in (
            ("nanogpt", "off", 100),
            ("nanogpt", "on", 200),
            ("ours", "off", 150),
            ("ours", "model", 240),
        )
    ]
    r = train.ratios(rows)
    assert r["ours bf16-mixed compile=model (whole model) / nanogpt bf16-mixed compiled (whole model)"] == 1.2
    assert r["ours bf16-mixed compile=off (no) / nanogpt bf16-mixed eager"] == 1.5


def test_env_markdown_names_gpu_driver_and_versions() -> None:
    env = {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "gpu_memory_gib": 79.1, "gpu_sms": 132,
           "gpu_capability": "9.0", "driver": "550.54.15", "cuda": "12.4", "cudnn": 90100, "torch": "2.5.0",
           "python": "3.11.7", "platform": "Linux", "date": "2026-01-01 00:00 UTC", "cpu": "x", "cpu_cores": 16}  # fmt: skip
    text = env_markdown(env)
    for part in ("NVIDIA H100 80GB HBM3", "driver 550.54.15", "CUDA 12.4", "cuDNN 90100", "torch 2.5.0"):
        assert part in text


# -- CUDA (skipped without a GPU) -------------------------------------------------------------------------


@pytest.mark.gpu
def test_train_bench_cuda_tiny(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    args = "--device cuda --block-size 64 --batch 4 --steps 3 --warmup 2 --rounds 1"
    args += " --variants nanogpt,ours-ce,ours,lightning --precisions bf16-mixed"
    train.main([*TINY_MODEL, *args.split(), "--out", str(out)])
    payload = json.loads(out.read_text())
    env = payload["env"]
    assert env["device"] == "cuda" and env["gpu"] and env["cuda"] and "driver" in env and "cudnn" in env
    assert payload["peak"]["bf16"]["flops"] > 1e12 and payload["peak"]["bf16"]["source"]
    rows = {r["variant"]: r for r in payload["results"]}
    assert set(rows) == {"nanogpt", "ours-ce", "ours", "lightning"}
    for row in rows.values():
        assert row["repeats"] == 3 and all(t > 0 for t in row["times_s"])
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1
        assert row["peak_mem_bytes"] > 0 and row["malloc"] == "-" and "cuda events" in row["timing"]
        assert "page_faults_per_step" not in row
        assert torch.isfinite(torch.tensor(row["loss"]))
    assert "CUDA: --malloc and page-fault counts do not apply" in payload["note"]
    md = out.with_suffix(".md").read_text()
    assert env["gpu"] in md and "peak mem (GiB)" in md


@pytest.mark.gpu
@pytest.mark.slow
def test_train_bench_cuda_compiled(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    args = "--device cuda --block-size 64 --batch 4 --steps 2 --warmup 2 --rounds 1"
    args += " --variants nanogpt,ours,lightning --precisions bf16-mixed --compile off,on,model"
    train.main([*TINY_MODEL, *args.split(), "--out", str(out)])
    payload = json.loads(out.read_text())
    got = {(r["variant"], r["compile"]) for r in payload["results"]}
    assert got == {(v, c) for v in ("nanogpt", "ours", "lightning") for c in ("off", "on")} | {
        ("ours", "model"),
        ("lightning", "model"),
    }
    assert (
        "ours bf16-mixed compile=model (whole model) / nanogpt bf16-mixed compiled (whole model)"
        in payload["ratios"]
    )


@pytest.mark.gpu
def test_attention_bench_cuda_tiny(tmp_path: Path) -> None:
    out = tmp_path / "attention.json"
    args = (
        "--device cuda --lengths 128,256 --batch 2 --heads 4 --head-dim 64 --check-length 128 --budget-s 0.05"
    )
    attention.main([*args.split(), "--no-plot", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["env"]["gpu"] and "driver" in payload["env"]
    assert (
        payload["defaults_chosen"]["dtypes"] == "bf16"
        and payload["defaults_chosen"]["sdpa_backends"] == "all"
    )
    probe = payload["sdpa_backends"]["bf16"]
    assert probe["default"] in ("cudnn", "flash", "efficient", "math")
    rows = payload["results"]
    assert all(r["status"] == "ok" for r in rows)
    assert {r["backend"] for r in rows if r["kernel"] == "sdpa"} <= {"cudnn", "flash", "efficient", "math"}
    ok = [b for b, status in probe["backends"].items() if status == "ok"]
    assert {f"sdpa[{b}]" for b in ok} <= {r["kernel"] for r in rows}  # every backend that runs is timed
    for r in rows:
        assert 0 < r["fwd_bwd_tflops"] and 0 < r["fwd_bwd_pct_of_peak"] < 100
    assert "| sdpa (" in out.with_suffix(".md").read_text()


@pytest.mark.gpu
def test_attention_cuda_defaults_fill_the_device() -> None:
    args = attention.parse_args(["--device", "cuda"])
    attention.resolve_args(args, torch.device("cuda"))
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    assert args.batch * args.heads >= 128 and args.head_dim == 128
    assert args.memory_cap_gb == pytest.approx(total / 2, abs=0.1)
