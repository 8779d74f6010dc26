"""The LightningModule: next-token loss, AdamW groups, LR schedule, perplexity, NaN guard, checkpoints."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT
from lightning_llm.optim import OptimizerConfig, ScheduleConfig, lr_factor
from lightning_llm.precision import training_dtype


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the run stops and the last good checkpoint stays as it was."""


class NonFiniteTracker:
    """Remembers, on the loss's device, the first optimizer step whose loss was not finite.

    ``record`` only launches two small kernels; nothing is read back to the host until ``first_step``,
    which the module calls at logging intervals (when Lightning reads the loss anyway) and before saving.
    """

    def __init__(self) -> None:
        self._first: torch.Tensor | None = None

    def record(self, loss: torch.Tensor, step: int) -> None:
        if self._first is None or self._first.device != loss.device:
            self._first = torch.full((), -1, dtype=torch.int64, device=loss.device)
        bad = ~torch.isfinite(loss.detach()) & (self._first < 0)
        self._first = torch.where(bad, step, self._first)

    def first_step(self) -> int | None:
        """The first non-finite step recorded, or None (one host read)."""
        if self._first is None:
            return None
        step = int(self._first)
        return step if step >= 0 else None


class LitGPT(L.LightningModule):
    """Trains a ``GPT`` on batches of token windows (B, T + 1).

    Args:
        config: The model architecture and its components.
        optimizer: AdamW settings.
        schedule: Learning-rate schedule.
        global_batch_size: Sequences per optimizer step across all devices; sets gradient accumulation
            (must be a multiple of data.batch_size x world size). None: no accumulation beyond the trainer's.
        global_batch_tokens: The same in tokens (global_batch_size x block_size); only one of the two.
        compile: true or "blocks": torch.compile each transformer block (regional, fast to compile);
            "model": the whole model, vocabulary head and fused loss included, in one graph (nanoGPT's
            way; single device or DDP only); false: eager.
        activation_checkpointing: Recompute each block's activations in the backward pass to save memory.
        tensor_parallel: With ModelParallelStrategy, shard linear layers over the tensor-parallel mesh dim.
        on_nonfinite_loss: "stop" raises at the first NaN/inf loss (the last checkpoint stays intact);
            "skip" drops that step's update and continues (single process only).
        max_skipped_steps: With "skip", stop the run once more steps than this were skipped in all, or
            3 in a row (a model that keeps producing NaN is not recovering).
    """

    def __init__(
        self,
        config: GPTConfig,
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008 - frozen-in-use default, never mutated
        schedule: ScheduleConfig = ScheduleConfig(),  # noqa: B008
        global_batch_size: int | None = None,
        global_batch_tokens: int | None = None,
        compile: bool | Literal["blocks", "model"] = False,
        activation_checkpointing: bool = False,
        tensor_parallel: bool = False,
        on_nonfinite_loss: Literal["stop", "skip"] = "stop",
        max_skipped_steps: int = 20,
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
                "max_skipped_steps": max_skipped_steps,
            }
        )
        self.global_batch_size = global_batch_size
        self.global_batch_tokens = global_batch_tokens
        self.compile = compile
        self.activation_checkpointing = activation_checkpointing
        self.tensor_parallel = tensor_parallel
        self.on_nonfinite_loss = on_nonfinite_loss
        self.max_skipped_steps = max_skipped_steps
        self.skipped_in_a_row = 0
        self.model: GPT | None = None
        self.val_loss = MeanMetric()
        self.val_ppl = Perplexity()
        self.skipped_steps = 0
        self.nonfinite = NonFiniteTracker()

    # -- model construction -------------------------------------------------------------------------
    def _precision_dtype(self) -> torch.dtype:
        return training_dtype(str(self.trainer.precision) if self._trainer is not None else "32-true")

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
        if self.on_nonfinite_loss == "skip":
            # reads the loss on the host: one synchronisation per step on a GPU (said once at fit start)
            if not torch.isfinite(loss):
                self.skipped_steps += 1
                self.skipped_in_a_row += 1
                self.log("train/skipped_steps", float(self.skipped_steps))
                if self.skipped_in_a_row >= 3 or self.skipped_steps > self.max_skipped_steps:
                    raise NonFiniteLossError(
                        f"{self.skipped_steps} steps skipped for a non-finite loss ({self.skipped_in_a_row} in a "
                        f"row, at optimizer step {self.global_step}): the model is not recovering "
                        f"(limit: model.max_skipped_steps={self.max_skipped_steps}, 3 in a row). The last "
                        "checkpoint is intact; resume it with a lower --model.optimizer.lr or gradient clipping."
                    )
                return None
            self.skipped_in_a_row = 0
        else:
            # no host synchronisation: the flag stays on the device and is read at logging intervals and
            # before every checkpoint save (``_raise_if_nonfinite``)
            self.nonfinite.record(loss, self.global_step)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_fit_start(self) -> None:
        self._check_disk_space()
        if self.on_nonfinite_loss == "skip" and self.device.type != "cpu":
            rank_zero_info(
                "on_nonfinite_loss=skip reads every step's loss on the host (one synchronisation per step); "
                "'stop' checks at logging intervals and before each save instead."
            )

    def _check_disk_space(self) -> None:
        """Refuse to start when the checkpoint directory cannot hold one checkpoint (weights and AdamW's two
        moments in fp32, the bulk of the file), rather than failing at the first save."""
        import shutil
        from pathlib import Path

        callback = self.trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        if not dirpath or not self.trainer.is_global_zero:
            return
        existing = next((p for p in [Path(dirpath), *Path(dirpath).parents] if p.exists()), None)
        if existing is None:
            return
        need = 12 * sum(p.numel() for p in self.parameters())  # fp32 weights + exp_avg + exp_avg_sq
        free = shutil.disk_usage(existing).free
        if free < need:
            raise ValueError(
                f"The checkpoint directory {dirpath} has {free / 2**20:,.0f} MiB free but one checkpoint of this "
                f"model needs about {need / 2**20:,.0f} MiB. Free some space or point --checkpoint.dirpath at "
                "another disk."
            )

    def on_train_end(self) -> None:
        if self.skipped_steps:
            rank_zero_warn(
                f"{self.skipped_steps} training steps were skipped for a non-finite loss "
                "(on_nonfinite_loss=skip); their batches did not update the model."
            )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = max(1, self.trainer.log_every_n_steps)
        if self.trainer.global_step % every == 0:
            self._raise_if_nonfinite()

    def on_validation_start(self) -> None:
        self._raise_if_nonfinite()

    def _raise_if_nonfinite(self) -> None:
        step = self.nonfinite.first_step()
        if step is None:
            return
        raise NonFiniteLossError(
            f"Non-finite training loss at optimizer step {step} (found at step {self.global_step}). "
            "The run stopped; no checkpoint was written after that step, so the last one is intact and can "
            "be resumed with --ckpt_path last. Try a lower learning rate (--model.optimizer.lr), more warmup "
            "(--model.schedule.warmup_steps), gradient clipping (--trainer.gradient_clip_val 1.0), "
            "32-true or bf16-mixed precision instead of a 16-bit one, or --model.on_nonfinite_loss skip."
        )

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
        if not self._clips_itself():
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        from lightning.pytorch.strategies import FSDPStrategy

        algorithm = gradient_clip_algorithm or "norm"
        if isinstance(self.trainer.strategy, FSDPStrategy):  # FSDP1: the norm over all shards
            if algorithm != "norm":
                raise ValueError(
                    "FSDP1 clips gradients by norm only; set --trainer.gradient_clip_algorithm norm."
                )
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)  # type: ignore[union-attr]
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if algorithm == "norm":  # foreach kernels, no host synchronisation
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val, foreach=True)
        else:
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val, foreach=True)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
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
        kwargs: dict[str, Any] = {"fused": True} if fused else {"foreach": True}
        try:
            opt = torch.optim.AdamW(self.param_groups(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kwargs)
        except (RuntimeError, ValueError) as err:  # e.g. fused not supported for DTensor params on this build
            if cfg.fused:
                raise
            rank_zero_warn(f"AdamW: fused kernel unavailable here ({err}); using the foreach implementation")
            opt = torch.optim.AdamW(
                self.param_groups(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=True
            )
        total = self.sched_cfg.max_steps or int(self.trainer.estimated_stepping_batches)
        if self.sched_cfg.warmup_steps >= total:
            rank_zero_warn(
                f"model.schedule.warmup_steps={self.sched_cfg.warmup_steps} is not shorter than the schedule's "
                f"{total} optimizer steps: the learning rate never reaches its peak {self.optim_cfg.lr} "
                f"(it ends at {self.optim_cfg.lr * total / max(1, self.sched_cfg.warmup_steps):.3g})."
            )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, self.sched_cfg, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a checkpoint of a diverged model must never replace the last good one
        self._raise_if_nonfinite()
        self._check_finite_weights(checkpoint.get("state_dict", {}))
        checkpoint["model_config"] = self.config.to_dict()
        tok = getattr(self._trainer.datamodule, "tokenizer", None) if self._trainer is not None else None
        if tok is not None:
            checkpoint["tokenizer"] = tok.to_dict()

    def _check_finite_weights(self, state: dict[str, Any]) -> None:
        """Refuse to save non-finite weights (one host read per save; every rank takes part)."""
        floats = {
            name: v.to_local() if hasattr(v, "to_local") else v  # a DTensor shard: check what this rank holds
            for name, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and v.numel()
        }
        flags = torch.stack([torch.isfinite(t).all() for t in floats.values()]) if floats else None
        finite = bool(flags.all()) if flags is not None else True
        if self._trainer is not None:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        bad = (
            [name for name, ok in zip(floats, flags.tolist(), strict=True) if not ok]
            if flags is not None
            else []
        )
        raise NonFiniteLossError(
            f"The weights became non-finite ({len(bad)} tensors, e.g. {', '.join(bad[:3]) or 'on another rank'})"
            f" at step {self.global_step}; no checkpoint was written, so the last one is intact. "
            "Resume with --ckpt_path last and a lower learning rate (--model.optimizer.lr) or gradient "
            "clipping (--trainer.gradient_clip_val 1.0)."
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("model_config")
        if saved is None:
            return
        current = self.config.to_dict()
        diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items()))
            hint = (
                " vocab_size follows the dataset's tokenizer (padded to a multiple of 64): resume on the "
                "dataset the checkpoint was trained on (--data.path)."
                if "vocab_size" in diff
                else ""
            )
            raise ValueError(
                f"Cannot resume: the checkpoint was trained with a different model config ({lines}). "
                "Resume with the config the run was started with, or start a new run without --ckpt_path."
                + hint
            )
        self._apply_changed_settings(checkpoint)

    def _apply_changed_settings(self, checkpoint: dict[str, Any]) -> None:
        """Settings that may change on resume (optimizer, schedule, NaN policy, batch) win over the
        checkpoint's, and each change is said once. The optimizer's saved state would otherwise restore
        the old learning rate, weight decay and betas."""
        old = checkpoint.get("hyper_parameters", {})
        new = dict(self.hparams)
        changes = []
        for key in sorted(set(new) - {"config"}):
            before, after = old.get(key), new[key]
            if isinstance(before, dict) and isinstance(after, dict):
                changes += [
                    f"{key}.{k}: {before.get(k)!r} -> {v!r}" for k, v in after.items() if before.get(k) != v
                ]
            elif key in old and before != after:
                changes.append(f"{key}: {before!r} -> {after!r}")
        if changes:
            rank_zero_info("Resuming with changed settings (the command line wins): " + "; ".join(changes))
        cfg = self.optim_cfg
        for state in checkpoint.get("optimizer_states", []):
            for i, group in enumerate(state.get("param_groups", [])):
                base = group.get("initial_lr") or cfg.lr
                group["lr"] = group["lr"] * cfg.lr / base  # keep the schedule's position
                group["initial_lr"] = cfg.lr
                group["betas"], group["eps"] = tuple(cfg.betas), cfg.eps
                if i == 0:  # the decay group (param_groups: decay first, then no-decay)
                    group["weight_decay"] = cfg.weight_decay
        for sched in checkpoint.get("lr_schedulers", []):
            if "base_lrs" in sched:
                sched["base_lrs"] = [cfg.lr] * len(sched["base_lrs"])
