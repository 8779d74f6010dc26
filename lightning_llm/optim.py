"""Optimizer and learning-rate schedule settings (``model.optimizer``, ``model.schedule``) and the schedule.

Torch-free (configs are read anywhere); ``lightning_llm.optimizers`` builds the optimizer they describe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

OPTIMIZERS = {
    "adamw": "AdamW on every parameter; weight decay on matrices only (model.optimizer.name: adamw, the default)",
    "muon": "Muon (torch.optim.Muon's update) on the blocks' 2-D weights, AdamW on embeddings, head, norms, "
    "biases (model.optimizer.name: muon; DDP and FSDP2, not FSDP1 or tensor parallel)",
}
"""The choices of ``model.optimizer.name``, as ``lightning-llm plugins`` describes them."""


@dataclass
class OptimizerConfig:
    """The optimizer: AdamW for every parameter (``name: adamw``), or Muon for the transformer blocks' weight
    matrices with AdamW for the rest (``name: muon``); built by ``lightning_llm.optimizers``."""

    name: Literal["adamw", "muon"] = "adamw"
    """adamw: AdamW for all parameters, weight decay on weight matrices (2-D and up) except the token
    embedding (and the head tied to it). muon: Muon for the 2-D weight matrices inside the transformer blocks
    (attention qkv and output projection, every MLP linear; the fused qkv matrix is orthogonalised as one
    matrix); AdamW, grouped as with adamw, for everything else: token and learned position embeddings, the
    output head (tied or not), norms, biases and any non-2-D block parameter. Not with FSDP1 or tensor
    parallelism (refused at start); DDP and FSDP2 (ModelParallelStrategy) work."""
    lr: float = 6e-4
    """Peak learning rate (reached at the end of warmup) of AdamW, and of Muon where muon_lr is null."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices; never on norms, biases or embeddings."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    fused: bool | None = None
    """Fused AdamW kernel; None: fused where the device and dtype allow, else foreach."""
    muon_lr: float | None = 0.02
    """muon only: Muon's peak learning rate, scaled by the schedule like lr; null: lr (the choice with
    muon_lr_adjust match_rms_adamw). 0.02 with original is modded-nanogpt's setting. Measured on a small
    llama-style model (2 layers, 64 wide, 150 steps of batch 16 x 64 tokens of data/classics): loss 5.85,
    against 5.98 for AdamW alone at lr 2e-3 and 6.06 for match_rms_adamw at that same lr."""
    muon_lr_adjust: Literal["original", "match_rms_adamw", "spectral_unclamped"] = "original"
    """muon only: per-matrix scaling of Muon's step (torch.optim.Muon's adjust_lr_fn) for a (rows, cols)
    matrix, whose orthogonalised update has RMS about 1 / sqrt(max(rows, cols)). original (Keller Jordan's,
    modded-nanogpt): sqrt(max(1, rows / cols)), with muon_lr about 0.02; match_rms_adamw (Moonshot):
    0.2 x sqrt(max(rows, cols)), making the update's RMS 0.2 x muon_lr like a typical AdamW update, so
    muon_lr: null (= lr) lets one lr serve both optimizers; spectral_unclamped (Bernstein):
    sqrt(rows / cols)."""
    muon_momentum: float = 0.95
    """muon only: momentum of Muon's gradient average, in [0, 1)."""
    muon_nesterov: bool = True
    """muon only: Nesterov momentum (orthogonalise the gradient blended with the average)."""
    muon_ns_steps: int = 5
    """muon only: Newton-Schulz iterations of the orthogonalisation (1 to 99; 5 is Muon's usual)."""
    muon_weight_decay: float | None = None
    """muon only: Muon's decoupled weight decay (torch's form: each matrix shrinks by its lr x this per step,
    so at muon_lr 0.02 the default 0.1 decays 33x faster per step than AdamW's at lr 6e-4; the weights'
    RMS then settles roughly near sqrt(0.1 / width)); null: weight_decay. 0: Keller Jordan's original."""

    def __post_init__(self) -> None:
        problems = []
        if self.name not in ("adamw", "muon"):
            problems.append(f"name must be 'adamw' or 'muon', got {self.name!r}")
        if not self.lr > 0:
            problems.append(f"lr must be positive (e.g. 6e-4), got {self.lr}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1), got {tuple(self.betas)}")
        if not self.eps > 0:
            problems.append(f"eps must be positive, got {self.eps}")
        if self.muon_lr is not None and not self.muon_lr > 0:
            problems.append(f"muon_lr must be positive or null (= lr), got {self.muon_lr}")
        if self.muon_lr_adjust not in ("match_rms_adamw", "original", "spectral_unclamped"):
            problems.append(
                "muon_lr_adjust must be 'match_rms_adamw', 'original' or 'spectral_unclamped', "
                f"got {self.muon_lr_adjust!r}"
            )
        if not 0.0 <= self.muon_momentum < 1.0:
            problems.append(f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if not 1 <= self.muon_ns_steps < 100:
            problems.append(f"muon_ns_steps must be in 1..99, got {self.muon_ns_steps}")
        if self.muon_weight_decay is not None and not self.muon_weight_decay >= 0:
            problems.append(
                f"muon_weight_decay must be >= 0 or null (= weight_decay), got {self.muon_weight_decay}"
            )
        if problems:
            raise ValueError("model.optimizer: " + "; ".join(problems) + ".")

    @property
    def muon_peak_lr(self) -> float:
        """Muon's peak learning rate: muon_lr, or lr where it is None."""
        return self.lr if self.muon_lr is None else self.muon_lr

    @property
    def muon_decay(self) -> float:
        """Muon's weight decay: muon_weight_decay, or weight_decay where it is None."""
        return self.weight_decay if self.muon_weight_decay is None else self.muon_weight_decay


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


MUON_GROUP_KEY = "ns_steps"
"""A key only Muon's parameter groups carry: tells a checkpoint's Muon groups from its AdamW groups."""


def optimizer_mismatch(saved: str, wanted: str) -> str:
    """The error for a checkpoint whose optimizer (``saved``) is not the configured one (``wanted``)."""
    return (
        f"Cannot resume: the checkpoint's optimizer state is {saved}'s but model.optimizer.name is "
        f"{wanted!r}. The saved state (AdamW's moments, Muon's momentum, their parameter groups) cannot "
        f"serve another optimizer. Resume with --model.optimizer.name={saved}, or start a new run from these "
        f"weights with a fresh {wanted} optimizer: --model.init_weights=<the checkpoint> "
        f"--model.optimizer.name={wanted}, without --ckpt_path."
    )


def apply_settings_to_groups(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> list[float]:
    """Set ``cfg``'s settings on optimizer ``groups`` (saved dicts or a live optimizer's); return each peak lr.

    Groups are AdamW's, then with Muon the Muon group (told by its ``ns_steps`` key); ``name: adamw`` keeps
    the decay group first, then the no-decay one, and the Muon layout names each group's ``role`` (see
    ``optimizers.param_groups``). Each learning rate keeps the schedule's position (scaled by new / old
    peak, so applying the same settings twice changes nothing); AdamW's betas, eps and decay group's weight
    decay, and Muon's momentum, Nesterov flag, Newton-Schulz steps, lr adjustment and weight decay are
    replaced. Groups of the other optimizer (AdamW's resumed with muon or the reverse) are refused.
    """
    saved = "muon" if any(MUON_GROUP_KEY in g for g in groups) else "adamw"
    if groups and saved != cfg.name:
        raise ValueError(optimizer_mismatch(saved, cfg.name))
    peaks: list[float] = []
    adamw_index = 0
    for group in groups:
        if MUON_GROUP_KEY in group:
            peak = cfg.muon_peak_lr
            group.update(
                weight_decay=cfg.muon_decay,
                momentum=cfg.muon_momentum,
                nesterov=cfg.muon_nesterov,
                ns_steps=cfg.muon_ns_steps,
                adjust_lr_fn=cfg.muon_lr_adjust,
            )
        else:
            peak = cfg.lr
            group["betas"], group["eps"] = tuple(cfg.betas), cfg.eps
            role = group.get("role") or ("adamw_decay" if adamw_index == 0 else "adamw_no_decay")
            if role == "adamw_decay":
                group["weight_decay"] = cfg.weight_decay
            adamw_index += 1
        base = group.get("initial_lr") or peak
        group["lr"] = group["lr"] * peak / base
        group["initial_lr"] = peak
        peaks.append(peak)
    return peaks


def apply_optimizer_settings(checkpoint: dict[str, Any], cfg: OptimizerConfig) -> None:
    """Rewrite a checkpoint's saved optimizer and scheduler state to ``cfg`` (a resume with new settings;
    see ``apply_settings_to_groups``). Without this, Lightning would restore the old values. FSDP2 and FSDP1
    load the optimizer state straight into the optimizer before this runs (under FSDP2 it is not in
    ``checkpoint`` at all), so ``CheckpointHooks.on_train_start`` sets the settings on the live groups too.
    """
    lrs: list[float] = []
    for n, state in enumerate(checkpoint.get("optimizer_states", [])):
        peaks = apply_settings_to_groups(state.get("param_groups", []), cfg)
        if n == 0:
            lrs = peaks
    for sched in checkpoint.get("lr_schedulers", []):
        if "base_lrs" in sched and len(lrs) != len(sched["base_lrs"]):
            # no optimizer state here (FSDP2 restores it from the distributed checkpoint): Muon's group is last
            lrs = [cfg.lr] * len(sched["base_lrs"])
            if cfg.name == "muon" and lrs:
                lrs[-1] = cfg.muon_peak_lr
        if "base_lrs" in sched:
            sched["base_lrs"] = list(lrs)
