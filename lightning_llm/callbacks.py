"""Training callbacks: tokens/s and MFU, and a PNG of the loss curves after ``fit``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

from lightning_llm.parallel import data_parallel_size
from lightning_llm.perf import PeakMode, flops_per_token, format_flops, meta_model, peak_flops
from lightning_llm.precision import training_dtype


class SpeedMonitor(L.Callback):
    """Logs training tokens/s (per device and total) and MFU.

    MFU = achieved model FLOP/s / peak FLOP/s, with FLOPs per token from ``perf.flops_per_token`` (PaLM's
    6N + 12 L C T, N counted on the model built on the meta device) and the peak of one device in the
    training dtype (``lightning_llm.perf``): given, from the device table, or measured with a matmul large
    enough to saturate the device. The value and its source are printed once at the start of fit.

    Args:
        peak_flops: Peak FLOP/s of one device for the training dtype; None: found as ``peak`` says.
        peak: auto: the device table (known CUDA GPUs) else a measured matmul (CPU, unknown GPUs);
            table: the table only (error if the device is not in it); measure: always measure (~1 s).
        log_every_n_steps: Average over and log every this many optimizer steps (the GPU is synchronised
            only then).
    """

    def __init__(
        self, peak_flops: float | None = None, peak: PeakMode = "auto", log_every_n_steps: int = 10
    ) -> None:
        self.peak_flops = peak_flops
        self.peak = peak
        self.peak_source = "given (speed.peak_flops)" if peak_flops else None
        self.log_every_n_steps = log_every_n_steps
        self._t0: float | None = None
        self._tokens = 0
        self.last: dict[str, float] = {}
        self._flops_per_token: dict[int, float] = {}  # by sequence length, for the model being fitted

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flops_per_token.clear()
        if self.peak_flops is None:
            dtype = training_dtype(str(trainer.precision))
            found = peak_flops(trainer.strategy.root_device, dtype, self.peak)
            self.peak_flops, self.peak_source = found.flops, found.source
        rank_zero_info(f"MFU peak: {format_flops(self.peak_flops)} per device ({self.peak_source})")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rows, seq = _positions(batch)
        self._tokens += rows * seq
        if trainer.global_step == 0 or trainer.global_step % self.log_every_n_steps:
            return
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        if trainer.device_ids and trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - (self._t0 or time.perf_counter())
        if dt <= 0 or self._tokens == 0:
            return
        tps = self._tokens / dt
        if seq not in self._flops_per_token:  # counted once, on the model built on the meta device
            model = meta_model(pl_module.config)  # type: ignore[attr-defined]
            self._flops_per_token[seq] = flops_per_token(model, seq)
        # tensor-parallel ranks share their batch: the job's tokens come from the data-parallel replicas,
        # and each device does its share of their FLOPs
        replicas = data_parallel_size(trainer.strategy)
        flops = self._flops_per_token[seq] * tps * replicas / trainer.world_size
        self.last = {"perf/tokens_per_s": tps * replicas, "perf/tokens_per_s_device": tps}
        if self.peak_flops:
            self.last["perf/mfu"] = flops / self.peak_flops
        pl_module.log_dict(self.last, on_step=True, on_epoch=False, rank_zero_only=True)
        self._t0, self._tokens = time.perf_counter(), 0


def _positions(batch: Any) -> tuple[int, int]:
    """(rows, positions per row) the model computes on: a (B, T + 1) token window gives (B, T); a post-training
    batch ``{"input_ids": (R, T), ...}`` gives (R, T), padding included (it costs the same FLOPs). For DPO the
    frozen reference's forward is not counted: tokens/s and MFU are the policy's training work."""
    if isinstance(batch, Mapping):
        return int(batch["input_ids"].shape[0]), int(batch["input_ids"].shape[1])
    return int(batch.shape[0]), int(batch.shape[1]) - 1


class LossCurvePlot(L.Callback):
    """Writes ``loss.png`` (training and validation loss against optimizer steps) next to the logs."""

    def __init__(self, filename: str = "loss.png") -> None:
        self.filename = filename
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self._pending: list[tuple[int, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the loss stays on the device until a logging interval: reading it every step would
        # synchronise with the GPU every step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._pending.append((trainer.global_step, loss.detach()))
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            values = torch.stack([v.float() for _, v in self._pending]).tolist()  # one host read
            self.train.extend((s, v) for (s, _), v in zip(self._pending, values, strict=True))
            self._pending = []

    def on_validation_end(self, trainer, pl_module) -> None:
        # not on_validation_epoch_end: callbacks run before the module's hook that logs val/loss
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None and not trainer.sanity_checking:
            self.val.append((trainer.global_step, float(loss)))

    def state_dict(self) -> dict[str, Any]:
        self._flush()
        return {"train": self.train, "val": self.val}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train, self.val = list(state_dict["train"]), list(state_dict["val"])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()
        log_dir = trainer.log_dir  # a collective under some strategies: every rank must ask
        if not trainer.is_global_zero or not self.train:
            return
        self.path = self.write(Path(log_dir or trainer.default_root_dir) / self.filename)

    def write(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(*zip(*self.train, strict=True), label="train", lw=1, alpha=0.8)
        if self.val:
            ax.plot(*zip(*self.val, strict=True), "o-", label="validation")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        print(f"Loss curves written to {path}")
        return path


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, refreshed at logging intervals on accelerators.

    A refresh shows the logged losses, which reads them from the device: at the default refresh rate of
    1 that is a host synchronisation every step on a GPU. On a CPU it costs nothing, so it stays at 1 there.
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self._device_rate: int | None = None

    @property
    def refresh_rate(self) -> int:
        return self._device_rate or super().refresh_rate

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.strategy.root_device.type != "cpu" and super().refresh_rate == 1:
            self._device_rate = max(1, trainer.log_every_n_steps)
            rank_zero_info(
                f"Progress bar refreshes every {self._device_rate} steps (trainer.log_every_n_steps): "
                "each refresh reads the loss from the device."
            )
        super().on_train_start(trainer, pl_module)
