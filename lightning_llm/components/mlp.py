"""Feed-forward blocks. Constructor: ``(dim, hidden_dim, *, bias, dropout, ...)``.

Every MLP names its output projection ``proj``: the model initialises it with the scaled residual std
(GPT-2: ``std / sqrt(2 * n_layer)``) through ``reset_parameters``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_llm.registry import MLP


class FeedForward(nn.Module):
    """Base class: subclasses create ``self.proj`` (back to ``dim``) and any input projections."""

    description: str = ""

    def reset_parameters(self, std: float, residual_std: float) -> None:
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if name == "proj" else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


@MLP.register("gelu")
class GeluMLP(FeedForward):
    """GPT-2: Linear(dim, hidden) -> GELU -> Linear(hidden, dim) -> dropout."""

    description = "Linear-GELU-Linear (GPT-2)"

    def __init__(
        self, dim: int, hidden_dim: int, *, bias: bool = True, dropout: float = 0.0, approximate: str = "tanh"
    ) -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.fc = nn.Linear(dim, hidden_dim, bias=bias)
        self.proj = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


@MLP.register("swiglu")
class SwiGLU(FeedForward):
    """Llama: proj(silu(gate(x)) * up(x)) (Shazeer, 2020, "GLU Variants Improve Transformer")."""

    description = "SiLU-gated linear unit (Llama)"

    def __init__(self, dim: int, hidden_dim: int, *, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden_dim, bias=bias)
        self.up = nn.Linear(dim, hidden_dim, bias=bias)
        self.proj = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.silu(self.gate(x)) * self.up(x)))
