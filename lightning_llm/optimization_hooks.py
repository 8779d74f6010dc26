"""``LitGPT``'s optimisation hooks: parameter groups, the optimizer and LR schedule, gradient clipping.

A mixin of ``module.LitGPT`` (kept apart so the module holds the training computation only). The optimizer is
AdamW, or Muon on the blocks' matrices with AdamW for the rest (``optimizers``); the schedule is a
``LambdaLR`` over ``optim.lr_factor``. Clipping runs here, not in Lightning's precision plugin, wherever no
GradScaler is involved, so that fused AdamW and clipping go together (``_clips_itself`` says where).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_llm import optimizers
from lightning_llm.optim import lr_factor
from lightning_llm.parallel import clip_grad_norm


class OptimizationHooks:
    """``configure_optimizers`` and ``configure_gradient_clipping`` of ``LitGPT`` (expects its attributes:
    ``model``, ``optim_cfg``, ``sched_cfg``, ``tensor_parallel``, and a Lightning ``trainer``)."""

    def param_groups(self) -> list[dict[str, Any]]:
        """The groups of model.optimizer: AdamW decay (weight matrices), no-decay (norms, biases, embeddings,
        a tied head), and with Muon its group (the blocks' 2-D weights); see ``optimizers.param_groups``."""
        return optimizers.param_groups(self.model, self.optim_cfg)  # type: ignore[arg-type]

    def _clips_itself(self) -> bool:
        """Whether ``configure_gradient_clipping`` clips here instead of Lightning's precision plugin.

        Lightning's mixed-precision plugin refuses clipping with a fused optimizer (it assumes the
        optimizer unscales a GradScaler's gradients itself) and FSDP1's precision plugin refuses norm
        clipping altogether. Where no GradScaler is involved (fp32, bf16) the gradients are already
        unscaled, so the module clips them itself: fused AdamW and clipping together, on any strategy
        but ModelParallelStrategy (FSDP2/TP), where Lightning's path handles the DTensor gradients.
        """
        from lightning.pytorch.strategies import ModelParallelStrategy

        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return scaler is None and not isinstance(self.trainer.strategy, ModelParallelStrategy)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if not gradient_clip_val:
            return
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        algorithm = gradient_clip_algorithm or "norm"
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        unscaled = getattr(self.trainer.precision_plugin, "scaler", None) is None
        if isinstance(self.trainer.strategy, ModelParallelStrategy) and algorithm == "norm" and unscaled:
            clip_grad_norm(params, gradient_clip_val)  # torch's refuses gradients on two meshes (FSDP2 x TP)
            return
        if not self._clips_itself():
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if isinstance(self.trainer.strategy, FSDPStrategy):  # FSDP1: the norm over all shards
            if algorithm != "norm":
                raise ValueError(
                    "FSDP1 clips gradients by norm only; set --trainer.gradient_clip_algorithm norm."
                )
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)  # type: ignore[union-attr]
            return
        if algorithm == "norm":  # foreach kernels, no host synchronisation
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val, foreach=True)
        else:
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val, foreach=True)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        optimizers.check_strategy(cfg, self.trainer.strategy, self.tensor_parallel)
        fused = cfg.fused
        if fused is None:
            # fused AdamW: one kernel per parameter group on GPU; only where the clipping can be done here
            # (no GradScaler; see ``_clips_itself``) or no clipping is asked for
            clip = bool(self.trainer.gradient_clip_val)
            fused = self.device.type in ("cuda", "cpu") and (not clip or self._clips_itself())
            if not fused:
                rank_zero_info(
                    "AdamW: foreach implementation (fused would conflict with gradient clipping under "
                    f"{self.trainer.precision} precision on {type(self.trainer.strategy).__name__})"
                )
        opt = optimizers.build_optimizer(self.param_groups(), cfg, fused=fused)
        total = self.sched_cfg.max_steps or int(self.trainer.estimated_stepping_batches)
        if self.sched_cfg.warmup_steps >= total:
            rank_zero_warn(
                f"model.schedule.warmup_steps={self.sched_cfg.warmup_steps} is not shorter than the schedule's "
                f"{total} optimizer steps: the learning rate never reaches its peak {self.optim_cfg.lr} "
                f"(it ends at {self.optim_cfg.lr * total / max(1, self.sched_cfg.warmup_steps):.3g})."
            )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, self.sched_cfg, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
