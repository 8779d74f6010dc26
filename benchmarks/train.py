"""Training-step throughput (tokens/s) and MFU: ours vs a plain nanoGPT-style model, plain loop vs Lightning.

Variants (all the same architecture, batch and data, measured side by side in one process):

* ``nanogpt``: ``benchmarks/nanogpt.py``, its own loop, nanoGPT's optimizer setup, full-logits loss.
* ``ours-ce``: our ``GPT`` in a plain loop with the plain head (``F.cross_entropy`` on the full logits).
* ``ours``: our ``GPT`` in a plain loop (``GPT.forward``: chunked ``linear_cross_entropy``), fused AdamW.
* ``lightning``: ``LitGPT`` in Lightning's ``Trainer`` (no logger, checkpointing or progress bar).

Each point runs in its own fresh process, ``--rounds`` times, alternating the points (``measure_isolated``
says why). ``--malloc shipped`` (default) runs our variants with the host allocator ``lightning-llm fit``
sets up (``lightning_llm/allocator.py``: freed memory kept for reuse) and nanoGPT with glibc's default;
``--malloc system`` / ``cache`` give every variant the same allocator, to separate the two effects.

Precisions: ``32-true`` (fp32), ``bf16-mixed`` (fp32 weights, bf16 autocast), ``bf16-true`` (bf16 weights).
``--compile`` adds ``torch.compile`` of each block (ours, Lightning) or of the whole model (nanoGPT).
MFU is model FLOPs per token (``GPTConfig.flops_per_token``) x tokens/s over the peak matmul FLOP/s
measured at the start of the run, in the same dtype (fp32 for 32-true, bf16 otherwise).

    python -m benchmarks.train --out benchmarks/out/train.json
    python -m benchmarks.train --profile ours-ce:bf16-mixed   # torch.profiler breakdown of one variant
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import (
    add_model_args,
    bench_parser,
    env_info,
    markdown_table,
    model_argv,
    model_config,
    peak_memory,
    time_fn,
    write_json,
)
from benchmarks.nanogpt import NanoConfig, NanoGPT
from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
VARIANTS = ("nanogpt", "ours-ce", "ours", "lightning")
RESULT_TAG = "BENCH-RESULT "
CATEGORIES = (  # profile breakdown: first matching substring of the aten op name wins
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention", ("flash_attention", "scaled_dot_product")),
    (
        "softmax / cross-entropy",
        ("softmax", "nll_loss", "logsumexp", "exp", "cross_entropy", "gather", "scatter"),
    ),
    ("dtype copies", ("aten::copy_", "aten::_to_copy", "aten::to")),
    ("zero fill", ("aten::fill_", "aten::zero_", "aten::zeros")),
    ("optimizer", ("adam", "lerp", "addcdiv", "addcmul", "sqrt", "Optimizer")),
    ("norm / gelu / elementwise", ("layer_norm", "gelu", "aten::add", "aten::mul", "aten::div", "aten::sub")),
)


def measure_peak_flops(dtype: torch.dtype, n: int = 2048, budget_s: float = 3.0) -> float:
    """FLOP/s of an (n x n) @ (n x n) matmul in ``dtype`` on the CPU: the MFU denominator."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = time_fn(lambda: a @ b, warmup=2, min_repeats=5, max_repeats=50, budget_s=budget_s)
    return 2.0 * n**3 / t["min_s"]


def _autocast(precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def plain_step(
    variant: str, config: GPTConfig, precision: str, compile_: bool
) -> Callable[[torch.Tensor], float]:
    """Model + optimizer + one-step closure for the plain-loop variants."""
    torch.manual_seed(0)
    if variant == "nanogpt":
        c = config
        model: torch.nn.Module = NanoGPT(
            NanoConfig(c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd, c.bias)
        )
        opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cpu")  # type: ignore[operator]
        if compile_:
            model = torch.compile(model)  # type: ignore[assignment]
    else:
        model = GPT(config, dtype=torch.bfloat16 if precision == "bf16-true" else torch.float32)
        if compile_:
            from lightning_llm.parallel import apply_compile

            apply_compile(model)  # type: ignore[arg-type]
    if precision == "bf16-true":
        model.to(torch.bfloat16)
    if variant != "nanogpt":
        opt = torch.optim.AdamW(_decay_groups(model, 0.1), lr=6e-4, betas=(0.9, 0.95), fused=True)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if variant == "ours-ce":  # the reference head: full logits, fp32 log-softmax
            logits = model.lm_head(model.hidden_states(x))  # type: ignore[operator]
            return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        return model(x, y)

    def step(batch: torch.Tensor) -> float:
        x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()  # as nanoGPT's get_batch
        with _autocast(precision):
            loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def lightning_run(
    config: GPTConfig, precision: str, compile_: bool, batch: torch.Tensor, steps: int, warmup: int
) -> dict[str, Any]:
    """``LitGPT`` in a ``Trainer``: the step time is the interval between consecutive batch starts."""
    import lightning as L

    from lightning_llm.module import LitGPT, ScheduleConfig

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.last_loss = float("nan")

        def on_train_batch_start(self, *args: Any) -> None:
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, *args: Any) -> None:
            if outputs is not None and self.last_loss != self.last_loss:  # first step's loss (NaN until set)
                self.last_loss = float(outputs["loss"])

        def on_train_end(self, *args: Any) -> None:
            self.starts.append(time.perf_counter())

    class Repeat(torch.utils.data.IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            while True:
                yield batch

    torch.manual_seed(0)
    clock = Clock()
    total = warmup + steps
    lit = LitGPT(config, schedule=ScheduleConfig(warmup_steps=10, max_steps=1000), compile=compile_)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=total,
        logger=False,  # type: ignore[arg-type]
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    loader = torch.utils.data.DataLoader(Repeat(), batch_size=None)
    trainer.fit(lit, train_dataloaders=loader)
    deltas = [b - a for a, b in zip(clock.starts, clock.starts[1:], strict=False)]
    return {"first_step_s": deltas[0], "times_s": deltas[warmup:], "loss": clock.last_loss}


def run_point(
    variant: str,
    precision: str,
    compile_: bool,
    config: GPTConfig,
    batch: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One grid point in this process: first step (compile happens there), warm-up, timed steps."""
    if variant == "lightning":
        return lightning_run(config, precision, compile_, batch, args.steps, args.warmup)
    step = plain_step(variant, config, precision, compile_)
    t0 = time.perf_counter()
    loss = step(batch)
    first = time.perf_counter() - t0
    for _ in range(max(args.warmup - 1, 0)):
        step(batch)
    import resource  # POSIX only, like the allocator this reports on

    times = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    mem = peak_memory(lambda: step(batch)) if args.memory and args.malloc_mode == "system" else None
    return {
        "first_step_s": first,
        "times_s": times,
        "loss": loss,
        "step_mem_bytes": mem,
        # where the allocator's cost shows: minor page faults and kernel time, per timed step
        "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / len(times),
        "sys_s_per_step": (after.ru_stime - before.ru_stime) / len(times),
    }


def malloc_mode(variant: str, policy: str) -> str:
    """The allocator a variant runs with: ``shipped`` = what ``lightning-llm fit`` does for our variants
    (``cache``, see ``lightning_llm/allocator.py``) and glibc's default for the plain nanoGPT baseline."""
    if policy == "shipped":
        return "system" if variant == "nanogpt" else "cache"
    return policy


def measure_isolated(
    points: list[tuple[str, str, bool]], args: argparse.Namespace
) -> dict[tuple[str, str, bool], dict[str, Any]]:
    """Every point in its own fresh process, ``--rounds`` times, alternating the points.

    A fresh process per point: variants sharing one process leave each other a heap state that
    changes their speed, and not evenly (measured once: nanoGPT's step 2.0 s alone in a process,
    2.6-3.1 s alternated with ours in one). Alternating rounds: load from elsewhere hits all points alike.
    """
    merged: dict[tuple[str, str, bool], dict[str, Any]] = {}
    for _ in range(args.rounds):
        for point in points:
            variant, precision, compile_ = point
            res = _spawn_worker(f"{variant}:{precision}:{'on' if compile_ else 'off'}", args)
            if point in merged:
                merged[point]["times_s"] += res["times_s"]
            else:
                merged[point] = res
    for res in merged.values():
        res.update(
            median_s=statistics.median(res["times_s"]), min_s=min(res["times_s"]), repeats=len(res["times_s"])
        )
    return merged


def _spawn_worker(spec: str, args: argparse.Namespace, extra: list[str] | None = None) -> dict[str, Any]:
    """Run ``spec`` (variant:precision:on|off) in a fresh Python process; return its JSON result."""
    root = Path(__file__).resolve().parent.parent
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.train",
        *model_argv(args),
        f"--steps={max(1, -(-args.steps // args.rounds))}",
        f"--warmup={args.warmup}",
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


def _worker(args: argparse.Namespace, config: GPTConfig, batch: torch.Tensor) -> None:
    """The body of a worker process: one grid point (or one profile), printed as a tagged JSON line."""
    from lightning_llm.allocator import configure_allocator

    variant, precision, comp = args.worker.split(":")
    args.malloc_mode = configure_allocator(args.malloc)
    if args.worker_profile:
        res = profile_variant(f"{variant}:{precision}", config, batch)
    else:
        res = run_point(variant, precision, comp == "on", config, batch, args)
    res["malloc"] = args.malloc_mode
    print(RESULT_TAG + json.dumps(res), flush=True)


def profile_variant(spec: str, config: GPTConfig, batch: torch.Tensor, steps: int = 2) -> dict[str, Any]:
    """torch.profiler self-CPU time per category (and the top ops) for ``variant:precision``."""
    from torch.profiler import ProfilerActivity, profile

    variant, precision = spec.split(":")
    step = plain_step(variant, config, precision, False)
    for _ in range(2):
        step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(batch)
    events = [e for e in prof.key_averages() if e.key.startswith(("aten::", "Optimizer"))]
    total = sum(e.self_cpu_time_total for e in events)
    cats: dict[str, float] = {}
    for e in events:
        cat = next((c for c, keys in CATEGORIES if any(k in e.key for k in keys)), "other")
        cats[cat] = cats.get(cat, 0.0) + e.self_cpu_time_total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    return {
        "spec": spec,
        "ms_per_step": total / 1e3 / steps,
        "share": {k: round(v / total, 3) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "top_ops_ms_per_step": {e.key: round(e.self_cpu_time_total / 1e3 / steps, 1) for e in top},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser("train", __doc__)
    add_model_args(p, block_size=256, batch=8)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {VARIANTS}")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help=f"comma-separated, from {PRECISIONS}")
    p.add_argument("--compile", default="off", help="off, on or off,on (grid)")
    p.add_argument(
        "--steps", type=int, default=8, help="timed steps per point, over all rounds (median reported)"
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
        help="host allocator: shipped = cache for our variants (as lightning-llm fit), glibc default for "
        "nanoGPT; system / cache = the same for all (memory is measured under system only)",
    )
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--worker-profile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    p.add_argument("--memory", action="store_true", help="also measure the peak extra RSS of one step")
    p.add_argument(
        "--profile",
        default="",
        help="comma-separated variant:precision to profile (any variant but lightning)",
    )
    p.add_argument("--profile-only", action="store_true", help="skip the timing grid")
    p.add_argument("--out", default="benchmarks/out/train.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the training-step grid, write JSON and print a markdown table."""
    args = parse_args(argv)
    config = model_config(args)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, config.vocab_size, (args.batch, config.block_size + 1), generator=g)
    if args.worker:
        return _worker(args, config, batch)
    tokens = args.batch * config.block_size
    fpt = config.flops_per_token(config.block_size)
    payload: dict[str, Any] = {
        "env": env_info("cpu"),
        "args": vars(args),
        "config": config.to_dict(),
        "tokens_per_step": tokens,
        "flops_per_token": fpt,
        "results": [],
        "profiles": [],
    }
    if not args.profile_only:
        peak = {"fp32": measure_peak_flops(torch.float32), "bf16": measure_peak_flops(torch.bfloat16)}
        payload["peak_matmul_flops"] = peak
        print(
            f"peak matmul: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s",
            flush=True,
        )
        points = [
            (variant, precision, compile_)
            for compile_ in [c.strip() == "on" for c in args.compile.split(",")]
            for precision in args.precisions.split(",")
            for variant in filter(None, args.variants.split(","))
            if not (variant == "nanogpt" and precision == "bf16-true")  # nanoGPT: fp32 or autocast only
        ]
        if args.rounds > 0:
            measured = measure_isolated(points, args)
        else:  # in this process, one point after the other (quick checks; see measure_isolated)
            from lightning_llm.allocator import configure_allocator

            if args.malloc == "shipped":
                print("--rounds 0: one process, so one allocator for every variant: system", flush=True)
            args.malloc_mode = configure_allocator("system" if args.malloc == "shipped" else args.malloc)
            measured = {p: run_point(*p, config, batch, args) for p in points}
            for res in measured.values():
                res.update(
                    median_s=statistics.median(res["times_s"]),
                    min_s=min(res["times_s"]),
                    malloc=args.malloc_mode,
                )
        for (variant, precision, compile_), res in measured.items():
            tps = tokens / res["median_s"]
            dkey = "fp32" if precision == "32-true" else "bf16"
            row = {
                "variant": variant,
                "precision": precision,
                "compile": compile_,
                **res,
                "tokens_per_s": tps,
                "mfu": fpt * tps / peak[dkey],
            }
            payload["results"].append(row)
            print(
                f"  {variant:>9} {precision:>10} compile={compile_!s:<5} {res['median_s'] * 1e3:8.0f} ms"
                f"  {tps:7.0f} tok/s  MFU {row['mfu']:.1%}  loss {res['loss']:.3f}  malloc {res.get('malloc', '-')}",
                flush=True,
            )
        payload["ratios"] = ratios(payload["results"])
    for spec in filter(None, args.profile.split(",")):
        if args.rounds > 0:  # in a fresh process, with the allocator the variant is timed with
            prof = _spawn_worker(f"{spec}:off", args, extra=["--worker-profile"])
        else:
            prof = profile_variant(spec, config, batch)
        payload["profiles"].append(prof)
        print(f"profile {spec}: {prof['ms_per_step']:.0f} ms/step (profiled)", prof["share"])
    out = write_json(args.out, payload)
    print(table(payload))
    if payload.get("ratios"):
        print("\nratios:", payload["ratios"])
    print(f"wrote {out}")


def ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    """Side-by-side throughput ratios (same run): ours / nanoGPT and Lightning / plain loop."""
    by = {(r["variant"], r["precision"], r["compile"]): r["tokens_per_s"] for r in results}
    out = {}
    for (variant, precision, comp), tps in by.items():
        tag = f"{precision}{' compiled' if comp else ''}"
        nano = by.get(("nanogpt", "bf16-mixed", comp))
        if nano and variant in ("ours", "ours-ce", "lightning"):
            out[f"{variant} {tag} / nanogpt bf16-mixed"] = round(tps / nano, 2)
        plain = by.get(("ours", precision, comp))
        if plain and variant == "lightning":
            out[f"lightning / ours plain loop, {tag}"] = round(tps / plain, 3)
    return out


def table(payload: dict[str, Any]) -> str:
    rows = [
        [
            r["variant"],
            r["precision"],
            "yes" if r["compile"] else "no",
            f"{r['median_s'] * 1e3:.0f}",
            f"{r['tokens_per_s']:.0f}",
            f"{r['mfu']:.1%}",
            f"{r['first_step_s']:.1f}",
            f"{r['loss']:.3f}",
            r.get("malloc", "-"),
            "-" if r.get("page_faults_per_step") is None else f"{r['page_faults_per_step'] / 1e3:.0f}k",
            "-" if r.get("sys_s_per_step") is None else f"{r['sys_s_per_step']:.2f}",
        ]
        for r in payload["results"]
    ]
    return markdown_table(
        [
            "variant",
            "precision",
            "compile",
            "step (ms)",
            "tokens/s",
            "MFU",
            "first step (s)",
            "first loss",
            "malloc",
            "page faults/step",
            "sys s/step",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
