"""Optimizer and learning-rate schedule settings (``model.optimizer``, ``model.schedule``) and the schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal


@dataclass
class OptimizerConfig:
    """AdamW hyper-parameters."""

    lr: float = 6e-4
    """Peak learning rate (reached at the end of warmup)."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices; never on norms, biases or embeddings."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    fused: bool | None = None
    """Fused AdamW kernel; None: fused where the device and dtype allow, else foreach."""

    def __post_init__(self) -> None:
        problems = []
        if not self.lr > 0:
            problems.append(f"lr must be positive (e.g. 6e-4), got {self.lr}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1), got {tuple(self.betas)}")
        if not self.eps > 0:
            problems.append(f"eps must be positive, got {self.eps}")
        if problems:
            raise ValueError("model.optimizer: " + "; ".join(problems) + ".")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped once per optimizer step."""

    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    """cosine: linear warmup then cosine decay to min_lr; wsd: warmup, stable, then linear decay."""
    warmup_steps: int = 100
    """Optimizer steps of linear warmup from 0 to lr."""
    max_steps: int | None = None
    """Length of the schedule in optimizer steps; None: the trainer's estimated stepping batches."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr."""
    decay_fraction: float = 0.2
    """wsd only: fraction of max_steps spent decaying at the end."""

    def __post_init__(self) -> None:
        problems = []
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1 or null, got {self.max_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            problems.append(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")
        if problems:
            raise ValueError("model.schedule: " + "; ".join(problems) + ".")


def lr_factor(step: int, sched: ScheduleConfig, total: int) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based)."""
    if sched.kind == "constant":
        return min(1.0, (step + 1) / max(1, sched.warmup_steps)) if sched.warmup_steps else 1.0
    if sched.warmup_steps and step < sched.warmup_steps:
        return (step + 1) / sched.warmup_steps
    lo = sched.min_lr_ratio
    if sched.kind == "cosine":
        progress = min(1.0, (step - sched.warmup_steps) / max(1, total - sched.warmup_steps))
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay_start = total - int(sched.decay_fraction * total)
    if step < decay_start:
        return 1.0
    return 1.0 - (1.0 - lo) * min(1.0, (step - decay_start) / max(1, total - decay_start))


def apply_optimizer_settings(checkpoint: dict[str, Any], cfg: OptimizerConfig) -> None:
    """Rewrite a checkpoint's saved AdamW and scheduler state to ``cfg`` (a resume with new settings).

    The learning rate keeps the schedule's position (scaled by new / old peak); betas, eps and the decay
    group's weight decay are replaced. Without this, Lightning would restore the old values.
    """
    for state in checkpoint.get("optimizer_states", []):
        for i, group in enumerate(state.get("param_groups", [])):
            base = group.get("initial_lr") or cfg.lr
            group["lr"] = group["lr"] * cfg.lr / base
            group["initial_lr"] = cfg.lr
            group["betas"], group["eps"] = tuple(cfg.betas), cfg.eps
            if i == 0:  # the decay group (LitGPT.param_groups: decay first, then no-decay)
                group["weight_decay"] = cfg.weight_decay
    for sched in checkpoint.get("lr_schedulers", []):
        if "base_lrs" in sched:
            sched["base_lrs"] = [cfg.lr] * len(sched["base_lrs"])
