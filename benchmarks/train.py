"""Training-step throughput (tokens/s) and MFU: ours vs a plain nanoGPT-style model, plain loop vs Lightning.

Variants (all the same architecture, batch and data):

* ``nanogpt``: ``benchmarks/nanogpt.py``, its own loop, nanoGPT's optimizer setup, full-logits loss.
* ``ours-ce``: our ``GPT`` in a plain loop with the plain head (``F.cross_entropy`` on the full logits).
* ``ours``: our ``GPT`` in a plain loop (``GPT.forward``: chunked ``linear_cross_entropy``), fused AdamW.
* ``lightning``: ``LitGPT`` in Lightning's ``Trainer`` (no logger, checkpointing or progress bar).

Devices (``--device auto|cpu|cuda``, default auto: CUDA when there is one). Defaults are chosen per device
(``device_defaults``, printed at the start; any option given wins):

* CPU: the reference model (6 layers, 384 wide, 6 heads, block 256, vocab 50304), batch 8, precisions
  32-true, bf16-mixed and bf16-true.
* CUDA: GPT-2 124M (12 layers, 768 wide, 12 heads, block 1024, vocab 50304), batch 16, bf16-mixed; fp32
  matmuls may use TF32 (``torch.set_float32_matmul_precision("high")``, as nanoGPT allows TF32).

Each point runs in its own fresh process, ``--rounds`` times, alternating the points (``measure_isolated``
says why). On the CPU ``--malloc shipped`` (default) runs our variants with the host allocator
``lightning-llm fit`` sets up (``lightning_llm/allocator.py``: freed memory kept for reuse) and nanoGPT with
glibc's default; ``--malloc system`` / ``cache`` give every variant the same allocator, to separate the two
effects, and each worker records its page faults. On CUDA the step's tensors live in the CUDA caching
allocator, so ``--malloc`` and the page-fault counts do not apply and are skipped (the output says so);
the peak GPU memory of the timed steps is recorded instead. How steps are timed, per device, and what
``--compile off|on|model`` compiles for each variant: ``benchmarks/train_step.py``.

Precisions: ``32-true`` (fp32), ``bf16-mixed`` (fp32 weights, bf16 autocast), ``bf16-true`` (bf16 weights).
MFU is model FLOPs per token (``perf.flops_per_token``) x tokens/s over the peak FLOP/s of
``lightning_llm.perf.peak_flops`` in the same dtype (fp32 for 32-true, bf16 otherwise): ``--peak auto``
takes the vendor's dense peak from Lightning's device table where the GPU is in it and measures a large
matmul otherwise (CPUs); the value and its source are in the JSON and the table header.

    python -m benchmarks.train --out benchmarks/out/train.json
    python -m benchmarks.train --device cuda --compile off,on,model --out benchmarks/out/train_cuda.json
    python -m benchmarks.train --profile ours-ce:bf16-mixed   # torch.profiler breakdown of one variant
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    add_model_args,
    add_peak_arg,
    bench_parser,
    command_line,
    env_info,
    fill_defaults,
    markdown_table,
    model_argv,
    model_config,
    peak_header,
    peak_key,
    peak_table,
    resolve_device,
    write_json,
    write_markdown,
)
from benchmarks.train_step import COMPILE_MODES, compile_desc, profile_variant, run_point
from lightning_llm.config import GPTConfig
from lightning_llm.perf import flops_per_token, meta_model

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
VARIANTS = ("nanogpt", "ours-ce", "ours", "lightning")
RESULT_TAG = "BENCH-RESULT "
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {  # the reference model, sized for a few CPU cores
        "n_layer": 6,
        "n_embd": 384,
        "n_head": 6,
        "vocab_size": 50304,
        "block_size": 256,
        "batch": 8,
        "precisions": ",".join(PRECISIONS),
        "steps": 8,
        "warmup": 3,
    },
    "cuda": {  # GPT-2 124M as nanoGPT trains it (its batch 12 rounded to 16)
        "n_layer": 12,
        "n_embd": 768,
        "n_head": 12,
        "vocab_size": 50304,
        "block_size": 1024,
        "batch": 16,
        "precisions": "bf16-mixed",
        "steps": 40,
        "warmup": 5,
    },
}
CUDA_NOTE = (
    "CUDA: --malloc and page-fault counts do not apply (the step's tensors live in the CUDA caching "
    "allocator) and are skipped; each point still runs in a fresh process; peak GPU memory is recorded."
)


def device_defaults(device_type: str) -> dict[str, Any]:
    """Model shape, batch, precisions, steps and warm-up for ``device_type`` (other devices: the CPU's)."""
    return dict(DEVICE_DEFAULTS.get(device_type, DEVICE_DEFAULTS["cpu"]))


def resolve_args(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Fill the options left unset with ``device``'s defaults; returns (and prints) what was filled."""
    chosen = fill_defaults(args, device_defaults(device.type))
    if chosen and not args.worker:
        print(f"defaults for {device.type}: " + ", ".join(f"{k}={v}" for k, v in chosen.items()), flush=True)
    return chosen


def malloc_mode(variant: str, policy: str) -> str:
    """The allocator a variant runs with: ``shipped`` = what ``lightning-llm fit`` does for our variants
    (``cache``, see ``lightning_llm/allocator.py``) and glibc's default for the plain nanoGPT baseline."""
    if policy == "shipped":
        return "system" if variant == "nanogpt" else "cache"
    return policy


Point = tuple[str, str, str]  # (variant, precision, compile mode)


def grid(args: argparse.Namespace) -> list[Point]:
    """The grid points of ``args``: compile modes x precisions x variants."""
    modes = [c.strip() for c in args.compile.split(",")]
    bad = [m for m in modes if m not in COMPILE_MODES]
    if bad:
        raise ValueError(f"--compile takes {COMPILE_MODES} (comma-separated); got {bad}")
    return [
        (variant, precision, mode)
        for mode in modes
        for precision in args.precisions.split(",")
        for variant in filter(None, args.variants.split(","))
        if not (variant == "nanogpt" and precision == "bf16-true")  # nanoGPT: fp32 or autocast only
        and not (variant == "nanogpt" and mode == "model" and "on" in modes)  # the same as its "on"
    ]


def measure_isolated(points: list[Point], args: argparse.Namespace) -> dict[Point, dict[str, Any]]:
    """Every point in its own fresh process, ``--rounds`` times, alternating the points.

    A fresh process per point: variants sharing one process leave each other a heap state that
    changes their speed, and not evenly (measured once on a CPU: nanoGPT's step 2.0 s alone in a process,
    2.6-3.1 s alternated with ours in one). Alternating rounds: load from elsewhere hits all points alike.
    """
    merged: dict[Point, dict[str, Any]] = {}
    for _ in range(args.rounds):
        for point in points:
            res = _spawn_worker(":".join(point), args)
            if point in merged:
                merged[point]["times_s"] += res["times_s"]
                if res.get("peak_mem_bytes") is not None:
                    merged[point]["peak_mem_bytes"] = max(
                        merged[point]["peak_mem_bytes"], res["peak_mem_bytes"]
                    )
            else:
                merged[point] = res
    return merged


def _spawn_worker(spec: str, args: argparse.Namespace, extra: list[str] | None = None) -> dict[str, Any]:
    """Run ``spec`` (variant:precision:off|on|model) in a fresh Python process; return its JSON result."""
    root = Path(__file__).resolve().parent.parent
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.train",
        *model_argv(args),
        f"--device={args.device}",
        f"--steps={max(1, -(-args.steps // max(args.rounds, 1)))}",
        f"--warmup={args.warmup}",
        f"--compile-backend={args.compile_backend}",
        *(["--memory"] if args.memory else []),
        f"--malloc={malloc_mode(spec.split(':')[0], args.malloc)}",
        f"--worker={spec}",
        *(extra or []),
    ]
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        cmd, cwd=root, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_TAG) :])


def _set_allocator(policy: str, device: torch.device) -> str:
    """Configure the host allocator on CPU; on CUDA leave it alone (``-``: not applicable)."""
    if device.type == "cuda":
        return "-"
    from lightning_llm.allocator import configure_allocator

    return configure_allocator(policy)


def _worker(args: argparse.Namespace, config: GPTConfig, batch: torch.Tensor, device: torch.device) -> None:
    """The body of a worker process: one grid point (or one profile), printed as a tagged JSON line."""
    variant, precision, comp = args.worker.split(":")
    args.malloc_mode = _set_allocator(args.malloc, device)
    if args.worker_profile:
        res = profile_variant(f"{variant}:{precision}", config, batch, device)
    else:
        res = run_point(variant, precision, comp, config, batch, args, device)
    res["malloc"] = args.malloc_mode
    print(RESULT_TAG + json.dumps(res), flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser("train", __doc__)
    add_model_args(p, block_size=None, batch=None)  # per device: see device_defaults
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {VARIANTS}")
    p.add_argument(
        "--precisions",
        default=None,
        help=f"comma-separated, from {PRECISIONS} (default: all on CPU, bf16-mixed on CUDA)",
    )
    p.add_argument(
        "--compile",
        default="off",
        help="off, on (as shipped: nanoGPT whole model, ours per block), model (whole model for all), "
        "or a comma-separated grid, e.g. off,on,model",
    )
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (inductor: as shipped; eager / aot_eager: quick tracing checks)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per point, over all rounds (median reported; default 8 CPU, 40 CUDA)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="fresh processes per point, alternating the points; 0 = all points in this process",
    )
    p.add_argument(
        "--malloc",
        default="shipped",
        choices=("shipped", "system", "cache"),
        help="CPU host allocator: shipped = cache for our variants (as lightning-llm fit), glibc default for "
        "nanoGPT; system / cache = the same for all (memory is measured under system only); unused on CUDA",
    )
    add_peak_arg(p)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--worker-profile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps first (compile happens here; default 3 CPU, 5 CUDA)",
    )
    p.add_argument("--memory", action="store_true", help="CPU: also measure the peak extra RSS of one step")
    p.add_argument(
        "--profile",
        default="",
        help="comma-separated variant:precision to profile (any variant but lightning)",
    )
    p.add_argument("--profile-only", action="store_true", help="skip the timing grid")
    p.add_argument(
        "--out", default="benchmarks/out/train.json", help="JSON output; the markdown table goes next to it"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the training-step grid, write JSON and markdown, print the table."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    args.device = str(device)
    defaults = resolve_args(args, device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for 32-true, as nanoGPT; the peak then is TF32's
    config = model_config(args)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, config.vocab_size, (args.batch, config.block_size + 1), generator=g)
    if args.worker:
        return _worker(args, config, batch, device)
    cuda = device.type == "cuda"
    if cuda:
        print(CUDA_NOTE, flush=True)
    tokens = args.batch * config.block_size
    fpt = flops_per_token(meta_model(config), config.block_size)
    payload: dict[str, Any] = {
        "command": command_line("train", argv),
        "env": env_info(device),
        "args": vars(args),
        "defaults_chosen": {"device_type": device.type, **defaults},
        "config": config.to_dict(),
        "tokens_per_step": tokens,
        "flops_per_token": fpt,
        "results": [],
        "profiles": [],
    }
    if cuda:
        payload["note"] = CUDA_NOTE
    if not args.profile_only:
        points = grid(args)
        dkeys = [peak_key(p) for _, p, _ in points]
        peaks = peak_table(device, dkeys, args.peak)
        if cuda:
            torch.cuda.empty_cache()  # a measured peak's matrices: give them back before the workers run
        payload["peak"] = {"mode": args.peak, **peaks}
        if args.rounds > 0:
            measured = measure_isolated(points, args)
        else:  # in this process, one point after the other (quick checks; see measure_isolated)
            if args.malloc == "shipped" and not cuda:
                print("--rounds 0: one process, so one allocator for every variant: system", flush=True)
            args.malloc_mode = _set_allocator("system" if args.malloc == "shipped" else args.malloc, device)
            measured = {p: run_point(*p, config, batch, args, device) for p in points}
            for res in measured.values():
                res["malloc"] = args.malloc_mode
        for (variant, precision, comp), res in measured.items():
            median = statistics.median(res["times_s"])
            tps = tokens / median
            peak = peaks[peak_key(precision)]
            row = {
                "variant": variant,
                "precision": precision,
                "compile": comp,
                "compiled": compile_desc(variant, comp),
                **res,
                "median_s": median,
                "min_s": min(res["times_s"]),
                "repeats": len(res["times_s"]),
                "tokens_per_s": tps,
                "mfu": fpt * tps / peak["flops"],
                "peak_flops": peak["flops"],
            }
            payload["results"].append(row)
            mem = (
                f"peak {row['peak_mem_bytes'] / 2**30:.1f} GiB"
                if cuda
                else f"malloc {res.get('malloc', '-')}"
            )
            print(
                f"  {variant:>9} {precision:>10} compile={comp:<5} {median * 1e3:8.1f} ms"
                f"  {tps:8.0f} tok/s  MFU {row['mfu']:.1%}  loss {res['loss']:.3f}  {mem}",
                flush=True,
            )
        payload["ratios"] = ratios(payload["results"])
    for spec in filter(None, args.profile.split(",")):
        if args.rounds > 0:  # in a fresh process, with the allocator the variant is timed with
            prof = _spawn_worker(f"{spec}:off", args, extra=["--worker-profile"])
        else:
            prof = profile_variant(spec, config, batch, device)
        payload["profiles"].append(prof)
        print(f"profile {spec}: {prof['ms_per_step']:.1f} ms/step (profiled)", prof["share"])
    out = write_json(args.out, payload)
    body = table(payload) if payload["results"] else "(no timing grid: --profile-only)"
    if payload.get("ratios"):
        body += "\n\nRatios (tokens/s, same run):\n\n" + "\n".join(
            f"- {k}: {v}" for k, v in payload["ratios"].items()
        )
    md = write_markdown(out, "Training step", payload, body)
    print(body)
    print(f"wrote {out} and {md}")


def ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    """Side-by-side throughput ratios (same run): ours / nanoGPT and Lightning / plain loop.

    Against nanoGPT in bf16-mixed, eager vs eager and compiled vs compiled (nanoGPT compiled is always its
    whole model), and every eager variant against nanoGPT compiled.
    """
    by = {(r["variant"], r["precision"], r["compile"]): r["tokens_per_s"] for r in results}
    nano_eager = by.get(("nanogpt", "bf16-mixed", "off"))
    nano_comp = by.get(("nanogpt", "bf16-mixed", "on")) or by.get(("nanogpt", "bf16-mixed", "model"))
    out = {}
    for (variant, precision, comp), tps in by.items():
        if variant == "nanogpt":
            continue
        tag = f"{variant} {precision} compile={comp} ({compile_desc(variant, comp)})"
        if comp == "off" and nano_eager:
            out[f"{tag} / nanogpt bf16-mixed eager"] = round(tps / nano_eager, 2)
        if nano_comp:
            out[f"{tag} / nanogpt bf16-mixed compiled (whole model)"] = round(tps / nano_comp, 2)
        plain = by.get(("ours", precision, comp))
        if plain and variant == "lightning":
            out[f"lightning / ours plain loop, {precision} compile={comp}"] = round(tps / plain, 3)
    return out


def _f(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, fmt)


def table(payload: dict[str, Any]) -> str:
    """The results as markdown, headed by the peak FLOP/s the MFU column divides by (value and source)."""
    cuda = payload["env"].get("device") == "cuda"
    headers = ["variant", "precision", "compile", "step (ms)", "tokens/s", "MFU"]
    headers += ["peak mem (GiB)"] if cuda else []
    headers += ["first step (s)", "first loss"]
    headers += [] if cuda else ["malloc", "page faults/step", "sys s/step"]
    rows = []
    for r in payload["results"]:
        row = [
            r["variant"],
            r["precision"],
            r.get("compiled", r["compile"]),
            f"{r['median_s'] * 1e3:.1f}" if cuda else f"{r['median_s'] * 1e3:.0f}",
            f"{r['tokens_per_s']:.0f}",
            f"{r['mfu']:.1%}",
        ]
        row += [_f(r.get("peak_mem_bytes"), ".2f", 1 / 2**30)] if cuda else []
        row += [f"{r['first_step_s']:.1f}", f"{r['loss']:.3f}"]
        if not cuda:
            row += [
                r.get("malloc", "-"),
                _f(r.get("page_faults_per_step"), ".0f", 1e-3)
                + ("k" if r.get("page_faults_per_step") is not None else ""),
                _f(r.get("sys_s_per_step"), ".2f"),
            ]
        rows.append(row)
    peak = payload.get("peak", {})
    cfg = payload["config"]
    note = (
        f"- {cfg['n_layer']} layers, {cfg['n_embd']} wide, {cfg['n_head']} heads, block {cfg['block_size']}, "
        f"vocab {cfg['vocab_size']}, batch {payload['args']['batch']} ({payload['tokens_per_step']} tokens/step); "
        f"median of {payload['results'][0]['repeats']} timed steps ({payload['results'][0].get('timing', '-')})\n"
        f"- MFU = {payload['flops_per_token']:.4g} FLOPs/token x tokens/s / peak ({peak.get('mode', '-')}: "
        f"{peak_header({k: v for k, v in peak.items() if k != 'mode'})}).\n"
    )
    if payload.get("note"):
        note += f"- {payload['note']}\n"
    return note + "\n" + markdown_table(headers, rows)


if __name__ == "__main__":
    main()
