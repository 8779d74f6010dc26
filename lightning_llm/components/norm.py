"""Normalisation layers over the last dimension.

Constructor contract: ``(dim, *, eps, ...)``. Every norm takes ``eps`` (the model passes ``norm_eps``);
``bias`` is optional: a norm that takes it gets the model's ``bias``, and one without it (RMSNorm) refuses
a model with ``bias: true`` at build time rather than silently building without one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_llm.registry import NORM


class Norm(nn.Module):
    """Base class of normalisation layers over the last dimension: ``(dim, *, eps[, bias], ...)``."""

    description: str = ""

    def reset_parameters(self) -> None:
        raise NotImplementedError


@NORM.register("layernorm")
class LayerNorm(Norm):
    """LayerNorm (Ba et al., 2016) with an optional bias (GPT-2 has one; PyTorch's can't be turned off
    before 2.1)."""

    description = "LayerNorm, bias optional (GPT-2)"

    def __init__(self, dim: int, *, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


@NORM.register("rmsnorm")
class RMSNorm(Norm):
    """RMSNorm (Zhang & Sennrich, 2019): x / rms(x) * weight, no mean subtraction, no bias (Llama)."""

    description = "RMSNorm, no bias (Llama)"

    def __init__(self, dim: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
