"""Attention kernels: causal forward and forward+backward time and extra memory over sequence length.

Every kernel registered in ``lightning_llm.registry.ATTENTION`` (plugins included) is run on (B, H, T, D)
tensors; kernels that cannot run on the device (``unavailable_reason``) or in a dtype (``unsupported``)
are listed as skipped with the reason. Before a kernel is timed, its output and its gradients are
checked against an fp64 reference at ``--check-length``; a mismatch raises.

A point is skipped ("skipped (memory)" / "skipped (time)") when the kernel's previous, shorter point
extrapolated quadratically (``x (T / T_prev)^2``) would exceed ``--memory-cap-gb`` / ``--max-point-s``.

Defaults are chosen per device (``device_defaults``, printed at the start): on a CPU the reference
model's heads (B=1, H=6, D=64, fp32 and bf16); on CUDA a shape that fills the GPU (B=8, H=16, D=128, bf16:
B*H = 128 (batch, head) pairs), since B=1 H=6 launches too few thread blocks and every kernel is
launch-bound below T=2048. Any option given on the command line wins.

Achieved TFLOP/s counts causal attention FLOPs as FlashAttention's benchmarks do (``attention_flops``):
forward 4*B*H*T*T*D / 2 (two matmuls, QK^T and PV, of 2*T*T*D per head, half of them masked), backward
2.5x the forward (four matmuls plus QK^T recomputed), fwd+bwd 3.5x the forward. "% of peak" divides by
``lightning_llm.perf.peak_flops`` in the same dtype (``--peak``: the device table or a measured matmul).

``sdpa`` is whatever backend PyTorch picks, so its row is labelled with the backend that ran (read from a
profiled call, ``benchmarks/sdpa_backends.py``), e.g. ``sdpa (cudnn)``. ``--sdpa-backends`` (default on
CUDA: all) also times SDPA forced to each backend that runs at the shape (``sdpa[cudnn]``,
``sdpa[flash]``, ``sdpa[efficient]``, ``sdpa[math]``), and the JSON records each backend's probe.

    python -m benchmarks.attention --lengths 256,512,1024 --out benchmarks/out/attention.json
    python -m benchmarks.attention --device cuda --out benchmarks/out/attention_cuda.json
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch

from benchmarks.common import (
    add_peak_arg,
    bench_parser,
    command_line,
    env_info,
    fill_defaults,
    fmt_bytes,
    fmt_flops,
    fmt_time,
    markdown_table,
    peak_header,
    peak_memory,
    peak_table,
    resolve_device,
    time_fn,
    write_json,
    write_markdown,
)
from benchmarks.sdpa_backends import (
    ForcedSDPA,
    describe_probe,
    forced_name,
    parse_backends,
    probe_backends,
    ran_backend,
)
from lightning_llm.components.attention import AttentionRequest, causal_mask
from lightning_llm.registry import ATTENTION

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}  # max error / max |ref|

DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    # the reference model's attention (384 wide, 6 heads of 64): what a CPU run trains
    "cpu": {
        "batch": 1,
        "heads": 6,
        "head_dim": 64,
        "lengths": "256,512,1024,2048,4096,8192",
        "dtypes": "fp32,bf16",
        "memory_cap_gb": 6.0,
        "sdpa_backends": "none",
    },
    # enough (batch, head) pairs to fill a GPU (B*H = 128, D = 128, as FlashAttention's own benchmarks);
    # memory_cap_gb None: half the device's memory (resolved in ``run``)
    "cuda": {
        "batch": 8,
        "heads": 16,
        "head_dim": 128,
        "lengths": "512,1024,2048,4096,8192,16384",
        "dtypes": "bf16",
        "memory_cap_gb": None,
        "sdpa_backends": "all",
    },
}
FLOPS_FORMULA = (
    "causal attention, FlashAttention benchmark convention: fwd = 4*B*H*T*T*D/2 "
    "(QK^T and PV, 2*T*T*D each per head, half masked); bwd = 2.5*fwd (4 matmuls + QK^T recomputed); "
    "fwd+bwd = 3.5*fwd"
)


def device_defaults(device_type: str) -> dict[str, Any]:
    """The default shape, lengths, dtypes, memory cap and forced SDPA backends for ``device_type``."""
    return dict(DEVICE_DEFAULTS.get(device_type, DEVICE_DEFAULTS["cpu"]))


def attention_flops(B: int, H: int, T: int, D: int, mode: str = "fwd") -> float:
    """FLOPs of causal attention on (B, H, T, D), ``mode`` "fwd", "bwd" or "fwd_bwd" (``FLOPS_FORMULA``)."""
    fwd = 4.0 * B * H * T * T * D / 2  # two matmuls of 2*T*T*D per (batch, head), causal: half of them
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd_bwd": 3.5 * fwd}[mode]


def resolve_args(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Fill the options left unset with ``device``'s defaults; returns what was filled (and prints it)."""
    chosen = fill_defaults(args, device_defaults(device.type))
    if args.memory_cap_gb is None:  # CUDA: half the device, so a point that fits leaves room to measure
        total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 12 * 2**30
        args.memory_cap_gb = round(total / 2 / 2**30, 1)
        chosen["memory_cap_gb"] = args.memory_cap_gb
    if chosen:
        print(
            f"defaults for {device.type}: " + ", ".join(f"{k}={v}" for k, v in chosen.items()),
            f"(B*H = {args.batch * args.heads})",
            flush=True,
        )
    return chosen


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax(q k^T / sqrt(D)) v in fp64: the ground truth every kernel is checked against."""
    q, k, v = q.double(), k.double(), v.double()
    T, S, D = q.shape[2], k.shape[2], q.shape[3]
    att = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (B, H, T, S)
    att = att.masked_fill(~causal_mask(T, S, q.device), float("-inf"))
    return att.softmax(dim=-1) @ v  # (B, H, T, D)


def _qkv(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, seed: int = 0
) -> list[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_() for _ in range(3)]


def check_kernel(
    name: str, kernel: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> float:
    """Max relative error of output and q/k/v gradients vs fp64; raises AssertionError above tolerance."""
    q, k, v = _qkv(shape, dtype, device, seed=1)
    out = kernel(q, k, v, causal=True)
    grad = torch.randn_like(out)
    out.backward(grad)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference_attention(q64, k64, v64)
    ref.backward(grad.double())
    worst = 0.0
    for what, got, want in (
        ("output", out, ref),
        ("dq", q.grad, q64.grad),
        ("dk", k.grad, k64.grad),
        ("dv", v.grad, v64.grad),
    ):
        err = (got.double() - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
        worst = max(worst, err)
        if not err <= TOLERANCE[dtype]:  # also catches NaN
            raise AssertionError(
                f"attention kernel '{name}' disagrees with the fp64 reference in {what} "
                f"({dtype}, shape {shape}): relative error {err:.3g} > {TOLERANCE[dtype]}"
            )
    return worst


def bench_point(
    kernel: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, budget_s: float
) -> dict[str, Any]:
    """Times and extra memory of one (kernel, dtype, shape) point."""
    q, k, v = _qkv(shape, dtype, device)
    grad = torch.randn(shape, device=device, dtype=dtype)

    def fwd() -> None:
        with torch.no_grad():
            kernel(q, k, v, causal=True)

    def fwd_bwd() -> None:
        out = kernel(q, k, v, causal=True)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
        del out, dq, dk, dv

    backend = ran_backend(fwd_bwd)  # also fwd+bwd's warm-up call
    t_fwd = time_fn(fwd, device, budget_s=budget_s)
    t_fb = time_fn(fwd_bwd, device, warmup=0, budget_s=budget_s)
    B, H, T, D = shape
    return {
        "backend": backend,
        "fwd_s": t_fwd["median_s"],
        "fwd_repeats": t_fwd["repeats"],
        "fwd_bwd_s": t_fb["median_s"],
        "fwd_bwd_repeats": t_fb["repeats"],
        "fwd_tflops": attention_flops(B, H, T, D, "fwd") / t_fwd["median_s"] / 1e12,
        "fwd_bwd_tflops": attention_flops(B, H, T, D, "fwd_bwd") / t_fb["median_s"] / 1e12,
        "fwd_mem_bytes": peak_memory(fwd, device),
        "fwd_bwd_mem_bytes": peak_memory(fwd_bwd, device),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    defaults = resolve_args(args, device)
    lengths = sorted(int(x) for x in args.lengths.split(","))
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    names = args.kernels.split(",") if args.kernels else ATTENTION.names()
    forced = parse_backends(args.sdpa_backends)
    check_shape = (args.batch, args.heads, args.check_length, args.head_dim)
    probes = {dname: probe_backends(device, DTYPES[dname], check_shape) for dname in dtypes}
    for dname, probe in probes.items():
        print(f"sdpa backends, {dname}, B,H,T,D = {check_shape}: {describe_probe(probe)}", flush=True)
    peaks = peak_table(device, dtypes, args.peak)
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for name in names + [forced_name(b) for b in forced]:
        kernel = ForcedSDPA(name[5:-1]) if name.startswith("sdpa[") else ATTENTION.build(name)
        reason = kernel.unavailable_reason(device.type)
        if reason:
            skipped.append({"kernel": name, "dtype": "all", "reason": reason})
            continue
        for dname in dtypes:
            dtype = DTYPES[dname]
            problems = kernel.unsupported(AttentionRequest(device_type=device.type, dtype=dtype))
            if isinstance(kernel, ForcedSDPA) and probes[dname]["backends"][kernel.backend] != "ok":
                problems.append(probes[dname]["backends"][kernel.backend])
            if problems:
                skipped.append({"kernel": name, "dtype": dname, "reason": "; ".join(problems)})
                continue
            err = check_kernel(name, kernel, check_shape, dtype, device)
            prev: dict[str, Any] | None = None
            for T in lengths:
                row: dict[str, Any] = {"kernel": name, "dtype": dname, "T": T, "check_rel_err": err}
                if prev is not None and prev.get("status") == "ok":
                    growth = (T / prev["T"]) ** 2
                    mem = (prev["fwd_bwd_mem_bytes"] or 0) * growth
                    if mem > args.memory_cap_gb * 2**30:
                        row["status"] = f"skipped (memory): ~{mem / 2**30:.1f} GiB predicted"
                    elif prev["fwd_bwd_s"] * growth > args.max_point_s:
                        row["status"] = (
                            f"skipped (time): ~{prev['fwd_bwd_s'] * growth:.0f} s per call predicted"
                        )
                if "status" not in row:
                    try:
                        row.update(
                            bench_point(
                                kernel,
                                (args.batch, args.heads, T, args.head_dim),
                                dtype,
                                device,
                                args.budget_s,
                            )
                        )
                        row["status"] = "ok"
                        for key in ("fwd", "fwd_bwd"):
                            row[f"{key}_pct_of_peak"] = (
                                100 * row[f"{key}_tflops"] * 1e12 / peaks[dname]["flops"]
                            )
                    except torch.OutOfMemoryError:
                        row["status"] = "skipped (out of memory)"
                        torch.cuda.empty_cache()
                    except RuntimeError as err:  # a forced backend may refuse a length it passed the probe at
                        if not isinstance(kernel, ForcedSDPA):
                            raise
                        row["status"] = f"failed: {str(err).strip().splitlines()[0][:200]}"
                tflops = fmt_flops(row["fwd_bwd_tflops"] * 1e12) if "fwd_bwd_tflops" in row else ""
                print(
                    f"  {label(row):>20} {dname} T={T:<5} {row['status']:<10} "
                    f"fwd+bwd {fmt_time(row.get('fwd_bwd_s'))} {tflops}",
                    flush=True,
                )
                results.append(row)
                prev = row
    return {
        "env": env_info(device),
        "args": vars(args),
        "defaults_chosen": {"device_type": device.type, **defaults},
        "shape": f"B,H,T,D = {args.batch},{args.heads},T,{args.head_dim}",
        "flops_formula": FLOPS_FORMULA,
        "peak": {"mode": args.peak, **peaks},
        "sdpa_backends": probes,
        "results": results,
        "skipped": skipped,
        "summary": summarize(results),
    }


def _slope(rows: list[dict[str, Any]], key: str) -> float | None:
    """Log-log slope of ``key`` over T across the longest half of the measured points (1 = linear)."""
    pts = [(r["T"], r[key]) for r in rows if r.get("status") == "ok" and r.get(key)]
    pts = pts[len(pts) // 2 :] if len(pts) >= 4 else pts
    if len(pts) < 2:
        return None
    xs, ys = [math.log(t) for t, _ in pts], [math.log(y) for _, y in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Speed-ups vs naive at every length, and memory/time growth exponents per kernel and dtype."""
    out: dict[str, Any] = {"speedup_vs_naive_fwd_bwd": {}, "memory_exponent": {}, "time_exponent": {}}
    by = {(r["kernel"], r["dtype"], r["T"]): r for r in results if r.get("status") == "ok"}
    for (kernel, dtype, T), r in by.items():
        base = by.get(("naive", dtype, T))
        if base and kernel != "naive":
            out["speedup_vs_naive_fwd_bwd"][f"{kernel}/{dtype}/T={T}"] = round(
                base["fwd_bwd_s"] / r["fwd_bwd_s"], 2
            )
    for kernel, dtype in sorted({(k, d) for k, d, _ in by}):
        rows = sorted((r for (k, d, _), r in by.items() if (k, d) == (kernel, dtype)), key=lambda r: r["T"])
        for key, name in (("fwd_bwd_mem_bytes", "memory_exponent"), ("fwd_bwd_s", "time_exponent")):
            s = _slope(rows, key)
            out[name][f"{kernel}/{dtype}"] = None if s is None else round(s, 2)
    return out


def plot(payload: dict[str, Any], out_dir: str) -> list[str]:
    """Time and memory vs sequence length (log-log), one panel per dtype; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in payload["results"] if r.get("status") == "ok"]
    dtypes = sorted({r["dtype"] for r in rows})
    paths = []
    for what, keys, ylabel in (
        ("time", (("fwd_s", "--", "fwd"), ("fwd_bwd_s", "-", "fwd+bwd")), "median time per call (s)"),
        (
            "memory",
            (("fwd_mem_bytes", "--", "fwd"), ("fwd_bwd_mem_bytes", "-", "fwd+bwd")),
            "extra memory (bytes)",
        ),
    ):
        fig, axes = plt.subplots(
            1, max(len(dtypes), 1), figsize=(6 * max(len(dtypes), 1), 4.5), squeeze=False
        )
        for ax, dtype in zip(axes[0], dtypes, strict=False):
            for kernel in sorted({r["kernel"] for r in rows}):
                sel = sorted(
                    (r for r in rows if r["kernel"] == kernel and r["dtype"] == dtype), key=lambda r: r["T"]
                )
                for key, style, curve in keys:
                    pts = [(r["T"], r[key]) for r in sel if r.get(key)]
                    if pts:
                        ax.plot(*zip(*pts, strict=True), style, marker="o", label=f"{kernel} {curve}")
            ax.set(
                xscale="log",
                yscale="log",
                xlabel="sequence length T",
                ylabel=ylabel,
                title=f"causal attention {what}, {dtype}, {payload['shape']}",
            )
            ax.set_xscale("log", base=2)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = f"{out_dir}/attention_{what}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def label(row: dict[str, Any]) -> str:
    """The kernel's name, with the SDPA backend that ran where the name does not say it: sdpa (cudnn)."""
    backend = row.get("backend")
    if backend and backend != row["kernel"] and not row["kernel"].startswith("sdpa["):
        return f"{row['kernel']} ({backend})"
    return row["kernel"]


def _num(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, fmt)


def table(payload: dict[str, Any]) -> str:
    """The results as markdown: a note (shape, FLOP count, peak and its source, SDPA probes), the table."""
    cuda = payload["env"].get("device") == "cuda"
    unit, scale = ("TFLOP/s", 1.0) if cuda else ("GFLOP/s", 1e3)  # CPUs run at tens of GFLOP/s
    rows = [
        [
            label(r),
            r.get("backend") or "-",
            r["dtype"],
            r["T"],
            fmt_time(r.get("fwd_s")),
            fmt_time(r.get("fwd_bwd_s")),
            _num(r.get("fwd_tflops"), ".3g", scale),
            _num(r.get("fwd_bwd_tflops"), ".3g", scale),
            _num(r.get("fwd_pct_of_peak"), ".1f"),
            _num(r.get("fwd_bwd_pct_of_peak"), ".1f"),
            fmt_bytes(r.get("fwd_mem_bytes")),
            fmt_bytes(r.get("fwd_bwd_mem_bytes")),
            r["status"],
        ]
        for r in payload["results"]
    ]
    rows += [
        [s["kernel"], "-", s["dtype"], "-", "-", "-", "-", "-", "-", "-", "-", "-", f"skipped: {s['reason']}"]
        for s in payload["skipped"]
    ]
    headers = ["kernel", "SDPA backend", "dtype", "T", "fwd", "fwd+bwd", f"fwd {unit}", f"fwd+bwd {unit}"]
    headers += ["fwd % of peak", "fwd+bwd % of peak", "fwd extra mem", "fwd+bwd extra mem", "status"]
    peak = payload.get("peak", {})
    note = (
        f"- {payload['shape']}, causal; FLOPs: {payload.get('flops_formula', '-')}\n"
        f"- peak ({peak.get('mode', '-')}): {peak_header({k: v for k, v in peak.items() if k != 'mode'})}\n"
        + "".join(
            f"- SDPA backends, {d}: {describe_probe(p)}\n"
            for d, p in payload.get("sdpa_backends", {}).items()
        )
    )
    return note + "\n" + markdown_table(headers, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser("attention", __doc__)
    p.add_argument(
        "--lengths",
        default=None,
        help="comma-separated sequence lengths (default: 256..8192 CPU, 512..16384 CUDA)",
    )
    p.add_argument(
        "--dtypes",
        default=None,
        help=f"comma-separated, from {sorted(DTYPES)} (default: fp32,bf16 CPU, bf16 CUDA)",
    )
    p.add_argument(
        "--kernels", default="", help="comma-separated kernel names (default: every registered one)"
    )
    p.add_argument("--batch", type=int, default=None, help="default: 1 on CPU, 8 on CUDA")
    p.add_argument(
        "--heads", type=int, default=None, help="default: 6 on CPU (the reference model), 16 on CUDA"
    )
    p.add_argument("--head-dim", type=int, default=None, help="default: 64 on CPU, 128 on CUDA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--sdpa-backends",
        default=None,
        help="also time SDPA forced to these backends (cudnn, flash, efficient, math; all; none), where "
        "they run; default: all on CUDA, none on CPU",
    )
    add_peak_arg(p)
    p.add_argument("--check-length", type=int, default=256, help="T of the fp64 correctness check")
    p.add_argument("--budget-s", type=float, default=1.5, help="time budget per measurement (>= 3 runs)")
    p.add_argument(
        "--memory-cap-gb",
        type=float,
        default=None,
        help="skip points predicted to need more (default: 6 on CPU, half the GPU's memory on CUDA)",
    )
    p.add_argument(
        "--max-point-s", type=float, default=15.0, help="skip points predicted to take longer per call"
    )
    p.add_argument("--out", default="benchmarks/out/attention.json", help="JSON output; PNGs go next to it")
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the attention benchmark, write JSON (+ PNGs) and print a markdown table."""
    args = parse_args(argv)
    torch.manual_seed(0)
    payload = {"command": command_line("attention", argv), **run(args)}
    out = write_json(args.out, payload)
    if not args.no_plot:
        payload["plots"] = plot(payload, str(out.parent))
        write_json(out, payload)
    md = write_markdown(out, "Attention kernels", payload, table(payload))
    print(table(payload))
    print("\nsummary:", payload["summary"])
    print(f"wrote {out} and {md}")


if __name__ == "__main__":
    main()
