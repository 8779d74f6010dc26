"""A plugin MLP whose layers are named unlike the built-ins, shared by the contract and parallel tests.

Importable from any test module: pytest puts ``tests/`` (the directory of the root conftest) on ``sys.path``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_llm.components.mlp import FeedForward


class GatedMLP(FeedForward):
    """A plugin MLP named unlike the built-ins: w_out(silu(w_gate(x)) * w_in(x))."""

    def __init__(self, dim: int, hidden_dim: int, *, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.w_gate = nn.Linear(dim, hidden_dim, bias=bias)
        self.w_in = nn.Linear(dim, hidden_dim, bias=bias)
        self.w_out = nn.Linear(hidden_dim, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.w_out(F.silu(self.w_gate(x)) * self.w_in(x)))

    def residual_projections(self) -> list[nn.Linear]:
        return [self.w_out]
