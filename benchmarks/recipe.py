"""The modern-recipe ablation: the quick start trained with one change at a time, then combined.

Every run is a real ``lightning-llm fit --config configs/quickstart-baseline.yaml`` (the quick start before
the modern recipe: same data, model size, batch and tokens per step) with a variant's overrides, ``--steps``
optimizer steps (the schedule spans them), a validation every ``--val_every`` steps on the same 10 held-out batches, and a seed. From each run's
``metrics.csv`` it reads the validation loss at every check and the median training tokens/s, and reports
per variant: the loss at each check (mean over seeds, and the spread), and the first step at which the mean
loss reaches ``--target`` (linear interpolation between checks; "-" when it never does).

    python -m benchmarks.recipe --variants baseline,muon --seeds 1337,1 --steps 200 --out benchmarks/results/recipe.json

Runs go to ``runs/recipe/<variant>-s<seed>`` (replaced on every call). ``--parallel 2`` runs two fits at a
time with one thread each (the same total work on a 2-core machine; the tokens/s of such runs are per
thread, so compare time per step only between runs made the same way).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = "configs/quickstart-baseline.yaml"  # the quick start's recipe before #16; variants change it

MUON = ["--model.optimizer.name", "muon"]
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "qk_norm": ["--model.config.qk_norm", "true"],
    # ReLU² has two matrices where SwiGLU has three: 1152 hidden units keep the parameter count equal
    "relu2": ["--model.config.mlp", "relu2", "--model.config.intermediate_size", "1152"],
    "softcap": ["--model.config.logit_softcap", "15"],
    "muon": MUON,
    "wsd": ["--model.schedule.kind", "wsd", "--model.schedule.min_lr_ratio", "0.0"],
    "document_mask": ["--model.config.document_mask", "true"],
    "window128": ["--model.config.sliding_window", "128"],
}
VARIANTS["combined"] = [
    *VARIANTS["qk_norm"],
    *VARIANTS["relu2"],
    *VARIANTS["softcap"],
    *MUON,
    *VARIANTS["wsd"],
]
# On top of "wsd", the schedule Muon trains best with in 200 steps: a short warmup and a longer cooldown
SHORT_WARMUP_LONG_COOLDOWN = [
    "--model.schedule.warmup_steps",
    "10",
    "--model.schedule.decay_fraction",
    "0.4",
]
# The candidate default: no soft-cap and 4 Newton-Schulz steps, the two costs that put "combined" over +10%/step
VARIANTS["modern"] = [
    *VARIANTS["qk_norm"],
    *VARIANTS["relu2"],
    *MUON,
    "--model.optimizer.muon_ns_steps",
    "4",
    *VARIANTS["wsd"],
    *SHORT_WARMUP_LONG_COOLDOWN,
]
VARIANTS["modern_softcap"] = [*VARIANTS["combined"], *SHORT_WARMUP_LONG_COOLDOWN]  # combined has "wsd"
# tuning of "modern", one knob each
VARIANTS["modern_muon_lr_0.04"] = [*VARIANTS["modern"], "--model.optimizer.muon_lr", "0.04"]
VARIANTS["modern_lr_4e-3"] = [*VARIANTS["modern"], "--model.optimizer.lr", "4e-3"]
VARIANTS["modern_decay_0.6"] = [*VARIANTS["modern"], "--model.schedule.decay_fraction", "0.6"]
# leave-one-out of the quick start (= "modern_lr_4e-3"): does each architectural change earn its place there?
VARIANTS["quickstart_no_qk_norm"] = [*VARIANTS["modern_lr_4e-3"], "--model.config.qk_norm", "false"]
VARIANTS["quickstart_swiglu"] = [
    *VARIANTS["modern_lr_4e-3"],
    "--model.config.mlp",
    "swiglu",
    "--model.config.intermediate_size",
    "768",
]
QUICKSTART_VARIANT = "modern_lr_4e-3"  # its model section is configs/quickstart.yaml's (tested)


def run_dir(variant: str, seed: int) -> Path:
    return ROOT / "runs" / "recipe" / f"{variant}-s{seed}"


def command(variant: str, seed: int, steps: int, val_every: int, extra: list[str]) -> list[str]:
    """The ``lightning-llm fit`` command of one run."""
    return [
        sys.executable,
        "-m",
        "lightning_llm",
        "fit",
        "--config",
        BASE_CONFIG,
        "--seed_everything",
        str(seed),
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        str(val_every),
        "--trainer.enable_progress_bar",
        "false",
        "--checkpoint.every_n_train_steps",
        str(steps),
        "--trainer.default_root_dir",
        str(run_dir(variant, seed)),
        *VARIANTS[variant],
        *extra,
    ]


def read_metrics(path: Path) -> dict[str, Any]:
    """Validation loss per step and the median training tokens/s of one run's ``metrics.csv``."""
    val: dict[int, float] = {}
    speed: list[float] = []
    with path.open() as f:
        for row in csv.DictReader(f):
            if row.get("val/loss"):
                val[int(row["step"]) + 1] = float(row["val/loss"])  # logged at the last step of the interval
            if row.get("perf/tokens_per_s"):
                speed.append(float(row["perf/tokens_per_s"]))
    return {
        "val_loss": dict(sorted(val.items())),
        "tokens_per_s": statistics.median(speed) if speed else None,
    }


def steps_to_reach(curve: dict[int, float], target: float) -> float | None:
    """First step at which the loss curve (checks at given steps) reaches ``target``, interpolated."""
    prev: tuple[int, float] | None = None
    for step, loss in curve.items():
        if loss <= target:
            if prev is None:
                return float(step)
            (s0, l0) = prev
            return s0 + (step - s0) * (l0 - target) / (l0 - loss)
        prev = (step, loss)
    return None


def summarise(results: list[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """Per variant: mean and spread of the loss at each check, steps to the target, tokens/s."""
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in results):
        runs = [r for r in results if r["variant"] == variant and r["val_loss"]]
        if not runs:
            continue
        steps = sorted(set.intersection(*(set(r["val_loss"]) for r in runs)))
        mean = {s: statistics.fmean(r["val_loss"][s] for r in runs) for s in steps}
        spread = {s: max(r["val_loss"][s] for r in runs) - min(r["val_loss"][s] for r in runs) for s in steps}
        speeds = [r["tokens_per_s"] for r in runs if r["tokens_per_s"]]
        rows.append(
            {
                "variant": variant,
                "seeds": [r["seed"] for r in runs],
                "mean_val_loss": mean,
                "spread": spread,
                "steps_to_target": steps_to_reach(mean, target),
                "tokens_per_s": statistics.median(speeds) if speeds else None,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], target: float) -> str:
    """The table of RESULTS.md: one row per variant."""
    steps = sorted({s for r in rows for s in r["mean_val_loss"]})
    head = "| variant | seeds | " + " | ".join(f"val@{s}" for s in steps) + f" | steps to {target} | tok/s |"
    lines = [head, "|" + "---|" * (len(steps) + 4)]
    for r in rows:
        cells = [
            f"{r['mean_val_loss'][s]:.3f} ±{r['spread'][s] / 2:.3f}" if s in r["mean_val_loss"] else ""
            for s in steps
        ]
        reach = "-" if r["steps_to_target"] is None else f"{r['steps_to_target']:.0f}"
        speed = "" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.0f}"
        lines.append(
            f"| {r['variant']} | {len(r['seeds'])} | " + " | ".join(cells) + f" | {reach} | {speed} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="baseline,combined", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="1337", help="comma list of seeds (each variant runs once per seed)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per run (the schedule's length)")
    p.add_argument("--val_every", type=int, default=50, help="validation interval in steps")
    p.add_argument(
        "--target", type=float, default=4.34, help="validation loss to reach (today's 400-step loss)"
    )
    p.add_argument("--parallel", type=int, default=1, help="fits run at once (threads split between them)")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON of every run and the summary (merged if present)"
    )
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more fit overrides for every run")
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    jobs = [(v, s) for s in seeds for v in variants]
    results: list[dict[str, Any]] = []
    if args.out and args.out.exists():  # keep earlier runs of other variants/seeds
        done = {(v, s) for v, s in jobs}
        for r in json.loads(args.out.read_text())["runs"]:
            if (r["variant"], r["seed"]) not in done:
                r["val_loss"] = {int(k): v for k, v in r["val_loss"].items()}  # JSON keys are strings
                results.append(r)
    running: list[tuple[str, int, subprocess.Popen[bytes], float]] = []
    while jobs or running:
        while jobs and len(running) < args.parallel:
            variant, seed = jobs.pop(0)
            shutil.rmtree(run_dir(variant, seed), ignore_errors=True)
            run_dir(variant, seed).mkdir(parents=True)
            log = (run_dir(variant, seed).parent / f"{variant}-s{seed}.log").open("wb")
            cmd = command(variant, seed, args.steps, args.val_every, args.extra)
            print(f"[recipe] start {variant} seed {seed}: {' '.join(cmd[2:])}", flush=True)
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((variant, seed, proc, time.time()))
        time.sleep(5)
        for item in list(running):
            variant, seed, proc, started = item
            if proc.poll() is None:
                continue
            running.remove(item)
            metrics = run_dir(variant, seed) / "metrics.csv"
            record = {"variant": variant, "seed": seed, "steps": args.steps, "returncode": proc.returncode}
            record.update(
                read_metrics(metrics) if metrics.exists() else {"val_loss": {}, "tokens_per_s": None}
            )
            record["wall_s"] = round(time.time() - started, 1)
            results.append(record)
            print(
                f"[recipe] done {variant} seed {seed} rc={proc.returncode}: {record['val_loss']}", flush=True
            )
    rows = summarise(results, args.target)
    table = markdown(rows, args.target)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"target": args.target, "runs": results, "summary": rows, "table": table}
        args.out.write_text(json.dumps(payload, indent=1, default=str))


if __name__ == "__main__":
    main()
