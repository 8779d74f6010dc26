"""A test-only callback (imported by the CLI subprocesses through PYTHONPATH) that reports, per rank, how
much of the model and optimizer state that rank holds, and where training started and ended."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import torch


def _local_numel(t: torch.Tensor) -> int:
    return t.to_local().numel() if hasattr(t, "to_local") else t.numel()


class ShardReport(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.first_step: int | None = None
        self.groups: list[dict] = []
        self.loss_finite = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step is None:
            self.first_step = trainer.global_step
            # the optimizer's settings as the first step sees them (after any resume)
            self.groups = [
                {k: v for k, v in g.items() if k in ("lr", "initial_lr", "weight_decay", "betas", "eps")}
                for g in trainer.optimizers[0].param_groups
            ]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.loss_finite &= math.isfinite(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module) -> None:
        params = list(pl_module.model.parameters())
        opt = trainer.optimizers[0]
        opt_numel = sum(
            _local_numel(v)
            for s in opt.state.values()
            for k, v in s.items()
            if torch.is_tensor(v) and k in ("exp_avg", "exp_avg_sq")
        )
        checksum = sum(
            float(p.full_tensor().double().sum())
            if hasattr(p, "full_tensor")
            else float(p.detach().double().sum())
            for p in params
        )
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "global_step": trainer.global_step,
            "first_step_seen": self.first_step,
            "first_step_groups": self.groups,
            "total_params": sum(p.numel() for p in params),
            "local_params": sum(_local_numel(p) for p in params),
            "local_optimizer_numel": opt_numel,
            "param_checksum": checksum,
            "loss_finite": self.loss_finite,
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


class DPOShardReport(L.Callback):
    """Per rank, for ``lightning-llm dpo``: how much of the policy and of the frozen reference this rank holds,
    whether the reference is on the policy's mesh, and the full reference checksum before and after training."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.before: float | None = None

    @staticmethod
    def _checksum(params: list[torch.Tensor]) -> float:
        return sum(
            float((p.full_tensor() if hasattr(p, "full_tensor") else p.detach()).double().sum())
            for p in params
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.before is None:  # after on_fit_start loaded the reference's weights
            self.before = self._checksum(list(pl_module.reference_model.parameters()))

    def on_train_end(self, trainer, pl_module) -> None:
        ref = list(pl_module.reference_model.parameters())
        policy = list(pl_module.model.parameters())
        report = {
            "rank": trainer.global_rank,
            "policy_local": sum(_local_numel(p) for p in policy) / sum(p.numel() for p in policy),
            "reference_local": sum(_local_numel(p) for p in ref) / sum(p.numel() for p in ref),
            "same_mesh": all(
                getattr(r, "device_mesh", None) == getattr(p, "device_mesh", None)
                for r, p in zip(ref, policy, strict=True)
            ),
            "reference_frozen": not any(p.requires_grad for p in ref),
            "reference_before": self.before,
            "reference_after": self._checksum(ref),
            "policy_checksum": self._checksum(policy),
        }
        (self.out_dir / f"dpo_rank{trainer.global_rank}.json").write_text(json.dumps(report))
