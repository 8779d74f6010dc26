"""Training callbacks: tokens/s and MFU, and a PNG of the loss curves after ``fit``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_llm.module import PRECISION_DTYPES


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype, n: int = 1024, seconds: float = 0.5
) -> float:
    """Achievable matmul FLOP/s on ``device`` in ``dtype`` (an (n x n) @ (n x n) loop), the MFU denominator."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up
    sync()
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        iters += 1
    sync()
    return 2.0 * n**3 * iters / (time.perf_counter() - t0)


class SpeedMonitor(L.Callback):
    """Logs training tokens/s (per device and total) and MFU.

    MFU = achieved model FLOP/s / peak FLOP/s, with FLOPs per token from ``GPTConfig.flops_per_token``
    (PaLM's 6N + 12 L C T) and the peak either given or measured with a matmul loop at the start of fit.

    Args:
        peak_flops: Peak FLOP/s of one device for the training dtype; None measures it (about 1 s).
        log_every_n_steps: Average over and log every this many optimizer steps.
    """

    def __init__(self, peak_flops: float | None = None, log_every_n_steps: int = 10) -> None:
        self.peak_flops = peak_flops
        self.log_every_n_steps = log_every_n_steps
        self._t0: float | None = None
        self._tokens = 0
        self.last: dict[str, float] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.peak_flops is None:
            dtype = PRECISION_DTYPES.get(str(trainer.precision), torch.float32)
            self.peak_flops = measure_matmul_peak(trainer.strategy.root_device, dtype)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens += (batch.shape[1] - 1) * batch.shape[0]
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
        config = pl_module.config  # type: ignore[attr-defined]
        flops = config.flops_per_token(batch.shape[1] - 1) * tps
        self.last = {"perf/tokens_per_s": tps * trainer.world_size, "perf/tokens_per_s_device": tps}
        if self.peak_flops:
            self.last["perf/mfu"] = flops / self.peak_flops
        pl_module.log_dict(self.last, on_step=True, on_epoch=False, rank_zero_only=True)
        self._t0, self._tokens = time.perf_counter(), 0


class LossCurvePlot(L.Callback):
    """Writes ``loss.png`` (training and validation loss against optimizer steps) next to the logs."""

    def __init__(self, filename: str = "loss.png") -> None:
        self.filename = filename
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.train.append((trainer.global_step, float(loss)))

    def on_validation_end(self, trainer, pl_module) -> None:
        # not on_validation_epoch_end: callbacks run before the module's hook that logs val/loss
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None and not trainer.sanity_checking:
            self.val.append((trainer.global_step, float(loss)))

    def state_dict(self) -> dict[str, Any]:
        return {"train": self.train, "val": self.val}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train, self.val = list(state_dict["train"]), list(state_dict["val"])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
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
