"""Gradient clipping done by the module: fused AdamW with clipping, and FSDP1's norm over all shards.

Lightning's mixed-precision plugin refuses clipping with a fused optimizer and FSDP1's precision plugin
refuses norm clipping altogether (the FSDP1 preset crashed at its first optimizer step on a GPU), so the
module clips itself wherever no GradScaler is involved. The FSDP1 path runs for real in the gpu-marked
``test_fsdp1_preset_trains_on_gpu``; here its dispatch is checked with a stand-in root module.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy
from torch import nn

from lightning_llm.config import GPTConfig
from lightning_llm.module import LitGPT

CONFIG = GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)


def _lit(strategy: object, scaler: object = None) -> tuple[LitGPT, torch.optim.Optimizer]:
    lit = LitGPT(CONFIG)
    lit.configure_model()
    lit.trainer = SimpleNamespace(strategy=strategy, precision_plugin=SimpleNamespace(scaler=scaler))
    idx = torch.randint(0, 64, (2, 16))
    (lit.model(idx, idx) * 1000).backward()  # large gradients, so clipping has work to do
    return lit, torch.optim.AdamW(lit.parameters(), fused=True)


def _norm(lit: LitGPT) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in lit.parameters()])).item()


def test_norm_clipping_with_fused_adamw() -> None:
    lit, opt = _lit(SingleDeviceStrategy(torch.device("cpu")))
    assert _norm(lit) > 1.0
    lit.configure_gradient_clipping(opt, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    assert _norm(lit) == pytest.approx(0.5, rel=1e-4)


def test_value_clipping() -> None:
    lit, opt = _lit(SingleDeviceStrategy(torch.device("cpu")))
    lit.configure_gradient_clipping(opt, gradient_clip_val=1e-3, gradient_clip_algorithm="value")
    assert max(p.grad.abs().max().item() for p in lit.parameters()) == pytest.approx(1e-3)


class _FSDPRoot(nn.Module):
    """Stands in for FSDP1's root module: records the call to its sharded-norm clipping."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[float] = []

    def clip_grad_norm_(self, max_norm: float) -> None:
        self.calls.append(max_norm)


def test_fsdp1_clips_with_the_root_module() -> None:
    strategy = FSDPStrategy()
    strategy.model = root = _FSDPRoot()
    lit, opt = _lit(strategy)
    before = _norm(lit)
    lit.configure_gradient_clipping(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert root.calls == [1.0]
    assert _norm(lit) == before  # the norm over all shards is FSDP's to compute: nothing clipped locally
    with pytest.raises(ValueError, match="FSDP1 clips gradients by norm only"):
        lit.configure_gradient_clipping(opt, gradient_clip_val=1.0, gradient_clip_algorithm="value")


def test_with_a_grad_scaler_lightning_clips(monkeypatch: pytest.MonkeyPatch) -> None:
    """16-mixed: the scaler's gradients must be unscaled first, which Lightning's path does."""
    lit, opt = _lit(SingleDeviceStrategy(torch.device("cpu")), scaler=object())
    calls = []
    monkeypatch.setattr(lit, "clip_gradients", lambda *a: calls.append(a))
    lit.configure_gradient_clipping(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert calls == [(opt, 1.0, "norm")]
