"""The LightningModule: next-token loss, AdamW groups, LR schedule, perplexity, NaN guard, checkpoints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT

PRECISION_DTYPES = {
    "32-true": torch.float32,
    "32": torch.float32,
    "64-true": torch.float64,
    "bf16-mixed": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "16-mixed": torch.float16,
    "16-true": torch.float16,
}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the run stops and the last good checkpoint stays as it was."""


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


class LitGPT(L.LightningModule):
    """Trains a ``GPT`` on batches of token windows (B, T + 1).

    Args:
        config: The model architecture and its components.
        optimizer: AdamW settings.
        schedule: Learning-rate schedule.
        global_batch_size: Sequences per optimizer step across all devices; sets gradient accumulation
            (must be a multiple of data.batch_size x world size). None: no accumulation beyond the trainer's.
        global_batch_tokens: The same in tokens (global_batch_size x block_size); only one of the two.
        compile: torch.compile each transformer block.
        activation_checkpointing: Recompute each block's activations in the backward pass to save memory.
        tensor_parallel: With ModelParallelStrategy, shard linear layers over the tensor-parallel mesh dim.
        on_nonfinite_loss: "stop" raises at the first NaN/inf loss (the last checkpoint stays intact);
            "skip" drops that step's update and continues (single process only).
    """

    def __init__(
        self,
        config: GPTConfig,
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008 - frozen-in-use default, never mutated
        schedule: ScheduleConfig = ScheduleConfig(),  # noqa: B008
        global_batch_size: int | None = None,
        global_batch_tokens: int | None = None,
        compile: bool = False,
        activation_checkpointing: bool = False,
        tensor_parallel: bool = False,
        on_nonfinite_loss: Literal["stop", "skip"] = "stop",
    ) -> None:
        super().__init__()
        if global_batch_size is not None and global_batch_tokens is not None:
            raise ValueError("Give global_batch_size (sequences) or global_batch_tokens, not both.")
        if isinstance(config, dict):  # from a checkpoint's hyper-parameters
            config = GPTConfig.from_dict(config)
        config.check_components()  # unknown names / options fail here, before any data is touched
        self.config = config
        self.optim_cfg = (
            OptimizerConfig(**optimizer) if isinstance(optimizer, dict) else optimizer or OptimizerConfig()
        )
        self.sched_cfg = (
            ScheduleConfig(**schedule) if isinstance(schedule, dict) else schedule or ScheduleConfig()
        )
        # plain types only, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(
            {
                "config": config.to_dict(),
                "optimizer": asdict(self.optim_cfg),
                "schedule": asdict(self.sched_cfg),
                "global_batch_size": global_batch_size,
                "global_batch_tokens": global_batch_tokens,
                "compile": compile,
                "activation_checkpointing": activation_checkpointing,
                "tensor_parallel": tensor_parallel,
                "on_nonfinite_loss": on_nonfinite_loss,
            }
        )
        self.global_batch_size = global_batch_size
        self.global_batch_tokens = global_batch_tokens
        self.compile = compile
        self.activation_checkpointing = activation_checkpointing
        self.tensor_parallel = tensor_parallel
        self.on_nonfinite_loss = on_nonfinite_loss
        self.model: GPT | None = None
        self.val_loss = MeanMetric()
        self.val_ppl = Perplexity()
        self.skipped_steps = 0

    # -- model construction -------------------------------------------------------------------------
    def _precision_dtype(self) -> torch.dtype:
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        return PRECISION_DTYPES.get(precision, torch.float32)

    def configure_model(self) -> None:
        """Build the GPT (on the meta device under FSDP2) and apply parallelism from the outside."""
        if self.model is not None:
            return
        device_type = self.trainer.strategy.root_device.type if self._trainer is not None else "cpu"
        self.model = GPT(self.config, device_type=device_type, dtype=self._precision_dtype())
        from lightning_llm import parallel

        parallel.parallelize(self, self.model)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "check_vocab"):
            dm.check_vocab(self.config.vocab_size)  # token ids must fit in the embedding table
        if stage == "fit":
            self._set_accumulation()

    def _set_accumulation(self) -> None:
        target = self.global_batch_size
        if self.global_batch_tokens is not None:
            if self.global_batch_tokens % self.config.block_size:
                raise ValueError(
                    f"global_batch_tokens={self.global_batch_tokens} is not a multiple of block_size="
                    f"{self.config.block_size}; use a multiple, or global_batch_size in sequences."
                )
            target = self.global_batch_tokens // self.config.block_size
        if target is None:
            return
        dm = self.trainer.datamodule
        micro = getattr(dm, "batch_size", None)
        if micro is None:
            raise ValueError("global_batch_size needs a datamodule with a batch_size attribute")
        per_step = micro * self.trainer.world_size
        if target % per_step:
            raise ValueError(
                f"global batch of {target} sequences is not a multiple of data.batch_size ({micro}) x world size "
                f"({self.trainer.world_size}) = {per_step}. Choose a global batch that is, e.g. "
                f"{max(1, target // per_step) * per_step}."
            )
        self.trainer.accumulate_grad_batches = target // per_step

    # -- steps --------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)  # type: ignore[misc]

    def _check_batch(self, batch: torch.Tensor) -> None:
        if batch.shape[1] - 1 > self.config.block_size:
            raise ValueError(
                f"The data yields sequences of {batch.shape[1] - 1} tokens but the model's block_size is "
                f"{self.config.block_size}; set data.block_size <= model.config.block_size."
            )

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
        self._check_batch(batch)
        x, y = batch[:, :-1], batch[:, 1:]
        loss = self.model(x, y)  # type: ignore[misc]
        if not torch.isfinite(loss):
            step = self.global_step
            if self.on_nonfinite_loss == "skip":
                self.skipped_steps += 1
                self.log("train/skipped_steps", float(self.skipped_steps))
                return None
            raise NonFiniteLossError(
                f"Non-finite training loss ({loss.item()}) at optimizer step {step} (batch {batch_idx}). "
                "The run stopped; the last checkpoint written before this step is intact and can be resumed "
                "with --ckpt_path last. Try a lower learning rate (--model.optimizer.lr), more warmup "
                "(--model.schedule.warmup_steps), gradient clipping (--trainer.gradient_clip_val 1.0), "
                "32-true or bf16-mixed precision instead of a 16-bit one, or --model.on_nonfinite_loss skip."
            )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._check_batch(batch)
        x, y = batch[:, :-1], batch[:, 1:]
        logits = self.model(x)  # type: ignore[misc]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        self.val_loss.update(loss, weight=y.numel())
        self.val_ppl.update(logits.float(), y)

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=False)
        self.log("val/ppl", self.val_ppl.compute(), prog_bar=True, sync_dist=False)
        self.val_loss.reset()
        self.val_ppl.reset()

    # -- optimisation -------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: decay on weight matrices; none on norms, biases and embeddings (incl. tied head)."""
        no_decay_ids = set()
        for module in self.model.modules():  # type: ignore[union-attr]
            if isinstance(module, nn.Embedding):
                no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
        decay, no_decay, seen = [], [], set()
        for _, p in self.model.named_parameters():  # type: ignore[union-attr]
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.ndim >= 2 and id(p) not in no_decay_ids else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": self.optim_cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        fused = cfg.fused
        if fused is None:
            # Lightning's AMP plugin refuses gradient clipping with a fused optimizer (it assumes fused
            # AdamW unscales internally), so fused is only the default where that combination can't occur.
            amp_clip = bool(self.trainer.gradient_clip_val) and str(self.trainer.precision).endswith("-mixed")
            fused = self.device.type in ("cuda", "cpu") and not amp_clip
        kwargs: dict[str, Any] = {"fused": True} if fused else {"foreach": True}
        try:
            opt = torch.optim.AdamW(self.param_groups(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kwargs)
        except (RuntimeError, ValueError):  # e.g. fused not supported for DTensor params on this build
            if cfg.fused:
                raise
            opt = torch.optim.AdamW(
                self.param_groups(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=True
            )
        total = self.sched_cfg.max_steps or int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, self.sched_cfg, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["model_config"] = self.config.to_dict()
        tok = getattr(self._trainer.datamodule, "tokenizer", None) if self._trainer is not None else None
        if tok is not None:
            checkpoint["tokenizer"] = tok.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("model_config")
        if saved is None:
            return
        current = self.config.to_dict()
        diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(
                f"Cannot resume: the checkpoint was trained with a different model config ({lines}). "
                "Resume with the config the run was started with, or start a new run without --ckpt_path."
            )
