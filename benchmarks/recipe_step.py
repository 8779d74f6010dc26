"""Time per training step of the quick start's model: the recipe before #16 against the modern one.

One process, the two models built from the presets' ``model`` sections (``configs/quickstart-baseline.yaml``
and ``configs/quickstart.yaml``), the same random (16, 256) batches, fp32 (this CPU has no native bf16),
one thread each: forward with the fused loss, backward, gradient clipping, the optimizer step. Rounds
alternate the variants, so load on the machine hits both alike; the time is this thread's CPU time
(``time.thread_time``), which other processes on the machine inflate far less than wall-clock time.

    python -m benchmarks.recipe_step --rounds 5
    python -m benchmarks.recipe_step --rounds 5 --components qk_norm,relu2,softcap,muon   # one change each
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT
from lightning_llm.optim import OptimizerConfig
from lightning_llm.optimizers import build_optimizer, param_groups

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"baseline": "configs/quickstart-baseline.yaml", "quickstart": "configs/quickstart.yaml"}
QK_NORM = {"qk_norm": True}
RELU2 = {"mlp": "relu2", "intermediate_size": 1152}  # the parameters of SwiGLU 768
COMPONENTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # name: (preset it changes, model.config overrides, model.optimizer overrides)
    "qk_norm": ("baseline", QK_NORM, {}),
    "relu2": ("baseline", RELU2, {}),
    "softcap": ("baseline", {"logit_softcap": 15.0}, {}),
    "muon": ("baseline", {}, {"name": "muon"}),
    "muon_ns4": ("baseline", {}, {"name": "muon", "muon_ns_steps": 4}),
    "arch_adamw": ("baseline", {**QK_NORM, **RELU2}, {}),
    "quickstart_softcap": ("quickstart", {"logit_softcap": 15.0}, {}),
    "quickstart_ns5": ("quickstart", {}, {"muon_ns_steps": 5}),
}


def build(
    preset: str, vocab: int, config_over: dict[str, Any] | None = None, opt_over: dict[str, Any] | None = None
) -> tuple[GPT, torch.optim.Optimizer]:
    """The preset's model (vocabulary of the classics tokenizer) and its optimizer, as ``fit`` builds them,
    with ``config_over`` / ``opt_over`` on top of its ``model.config`` / ``model.optimizer``."""
    model_cfg: dict[str, Any] = yaml.safe_load((ROOT / preset).read_text())["model"]
    config = GPTConfig(**{**model_cfg["config"], **(config_over or {}), "vocab_size": vocab})
    torch.manual_seed(0)
    model = GPT(config, device_type="cpu")
    opt_cfg = OptimizerConfig(**{**model_cfg.get("optimizer", {}), **(opt_over or {})})
    return model, build_optimizer(param_groups(model, opt_cfg), opt_cfg, fused=True)


def step(model: GPT, opt: torch.optim.Optimizer, batch: torch.Tensor) -> None:
    loss = model(batch[:, :-1], batch[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
    opt.step()
    opt.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument(
        "--components",
        default="",
        help=f"comma list of single changes to time as well: {', '.join(COMPONENTS)}",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = {name: build(path, args.vocab) for name, path in PRESETS.items()}
    for name in filter(None, args.components.split(",")):
        preset, config_over, opt_over = COMPONENTS[name]
        runs[name] = build(PRESETS[preset], args.vocab, config_over, opt_over)
    batch = torch.randint(0, args.vocab, (16, 257), generator=torch.Generator().manual_seed(0))
    for model, opt in runs.values():  # warm-up: allocations, optimizer state
        step(model, opt, batch)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, opt) in runs.items():
            t0 = time.thread_time()
            step(model, opt, batch)
            times[name].append(time.thread_time() - t0)
    base = statistics.median(times["baseline"])
    for name, t in times.items():
        med = statistics.median(t)
        print(
            f"{name:18s} median {med:6.2f} s/step  (min {min(t):.2f}, max {max(t):.2f})  ratio {med / base:.3f}"
        )


if __name__ == "__main__":
    main()
