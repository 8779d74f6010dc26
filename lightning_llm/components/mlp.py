"""Feed-forward blocks. Constructor: ``(dim, hidden_dim, *, bias, dropout, ...)``; (B, T, dim) -> (B, T, dim).

The contract lives in ``FeedForward``: a subclass says which of its Linear layers write back into the
residual stream (``residual_projections``, by object, not by name). From that the base class derives the
GPT-2 init (``reset_parameters``: those layers get ``std / sqrt(2 * n_layer)``) and the Megatron
tensor-parallel plan (``tp_plan``: those layers row-wise, every other Linear column-wise). The model checks
the declaration once, at build time (``check_feedforward``), so a plugin that declares nothing fails there
instead of training with the wrong init or the wrong sharding.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_llm.registry import MLP, ComponentError

TPStyle = Literal["colwise", "rowwise"]
TP_STYLES = ("colwise", "rowwise")


class FeedForward(nn.Module):
    """Base class of feed-forward blocks: subclasses create their Linear layers and override
    ``residual_projections``; ``reset_parameters`` and ``tp_plan`` follow from it (override them where a
    layer needs something else)."""

    description: str = ""

    def residual_projections(self) -> list[nn.Linear]:
        """The Linear layer(s) whose output is added back to the residual stream (GPT-2's ``c_proj``)."""
        raise NotImplementedError(
            f"{type(self).__qualname__} does not declare its residual projection(s): override "
            "residual_projections() to return the Linear layer(s) that write back into the residual stream"
        )

    def reset_parameters(self, std: float, residual_std: float) -> None:
        """N(0, residual_std) for the residual projections, N(0, std) for every other Linear; zero biases."""
        residual = {id(m) for m in self.residual_projections()}
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if id(module) in residual else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def tp_plan(self) -> dict[str, TPStyle]:
        """Relative module name -> tensor-parallel style: residual projections row-wise (they take the
        sharded hidden units and sum the partial outputs), every other Linear column-wise (it shards the
        hidden units). Correct for any MLP whose hidden units are elementwise between the two."""
        residual = {id(m) for m in self.residual_projections()}
        return {
            name: "rowwise" if id(module) in residual else "colwise"
            for name, module in self.named_modules()
            if isinstance(module, nn.Linear)
        }


def check_feedforward(mlp: nn.Module, name: str) -> None:
    """Fail at build time, naming the component and the fix, where ``mlp`` does not state its contract."""
    where = f"mlp '{name}' ({type(mlp).__qualname__})"
    if not isinstance(mlp, FeedForward):
        raise ComponentError(
            f"{where} is not a FeedForward: subclass lightning_llm.components.mlp.FeedForward and return its "
            "output projection(s) from residual_projections()."
        )
    try:
        residual = list(mlp.residual_projections())
    except NotImplementedError:
        raise ComponentError(
            f"{where} does not declare which Linear writes back into the residual stream: override "
            "residual_projections() to return it (e.g. `return [self.w_out]`). The model initialises it with "
            "the scaled residual std and shards it row-wise under tensor parallelism."
        ) from None
    linears = {id(m) for m in mlp.modules() if isinstance(m, nn.Linear)}
    if not residual or any(id(m) not in linears for m in residual):
        raise ComponentError(
            f"{where}.residual_projections() must return one or more of its own nn.Linear layers, "
            f"got {residual!r}."
        )
    modules = dict(mlp.named_modules())
    plan = mlp.tp_plan()
    bad = {k: v for k, v in plan.items() if k not in modules or v not in TP_STYLES}
    if bad:
        raise ComponentError(
            f"{where}.tp_plan() must map its own submodule names to one of {TP_STYLES}; wrong: {bad}."
        )


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

    def residual_projections(self) -> list[nn.Linear]:
        return [self.proj]


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

    def residual_projections(self) -> list[nn.Linear]:
        return [self.proj]


@MLP.register("relu2")
class ReluSquared(FeedForward):
    """Primer / modded-nanogpt: proj(relu(fc(x))^2) (So et al., 2021, "Primer: Searching for Efficient
    Transformers for Language Modeling"): GPT-2's MLP with the GELU replaced by a squared ReLU.

    ``zero_init_proj``: start the output projection at zero, as modded-nanogpt does, so every block's MLP
    begins as the identity on the residual stream (its weight still gets a gradient on the first step).
    """

    description = "Linear-ReLU²-Linear (Primer, modded-nanogpt)"

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        *,
        bias: bool = False,
        dropout: float = 0.0,
        zero_init_proj: bool = False,
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, hidden_dim, bias=bias)
        self.proj = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.zero_init_proj = zero_init_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.relu(self.fc(x)).square()))

    def residual_projections(self) -> list[nn.Linear]:
        return [self.proj]

    def reset_parameters(self, std: float, residual_std: float) -> None:
        """The base init (GPT-2's), then a zero output projection where ``zero_init_proj`` asks for one."""
        super().reset_parameters(std, residual_std)
        if self.zero_init_proj:
            nn.init.zeros_(self.proj.weight)
