"""Positional encodings.

A positional encoding can act in three places, and implements those it needs:

* ``embed(x, pos)``: added to the token embeddings (learned, sinusoidal);
* ``context(pos, kv_len).rotate(q, k)``: rotates queries and keys in every layer (RoPE);
* ``context(pos, kv_len).bias``: an additive attention bias (ALiBi, in ``plugins/``).

``pos`` holds the positions of the current tokens: shape (T,), the same for every row, or, for a
model with ``document_mask``, shape (B, T), restarting at 0 at every document start in each row. Only an
encoding that declares ``document_positions = True`` is given (B, T) positions (the model refuses the
others at build time). The model calls ``context`` once per forward and hands the result to every layer.
Constructor contract: positional arguments are shapes from the model, keyword-only arguments are the
user's options from YAML.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lightning_llm.registry import POSITIONAL

QK = tuple[torch.Tensor, torch.Tensor]


def _identity(q: torch.Tensor, k: torch.Tensor) -> QK:
    return q, k


@dataclass
class PositionalContext:
    """What every attention layer receives for the current forward."""

    rotate: Callable[[torch.Tensor, torch.Tensor], QK] = _identity
    """Applied to (q, k) of shape (B, H, T, D) after projection."""
    bias: torch.Tensor | None = None
    """Additive attention bias broadcastable to (B, H, T, S), or None."""
    mask: torch.Tensor | None = None
    """Boolean keep-mask broadcastable to (B, H, T, S), set by the model for sliding windows and document
    masking (``lightning_llm.attention_masks``); None: plain causal attention."""


class PositionalEncoding(nn.Module):
    """Base class. ``needs_attention_bias`` tells the model to pick a kernel that accepts a bias;
    ``document_positions`` says that ``embed`` and ``context`` accept per-row positions (B, T)."""

    needs_attention_bias: bool = False
    document_positions: bool = False
    description: str = ""

    def __init__(self, dim: int, n_head: int, head_dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.dim, self.n_head, self.head_dim, self.max_seq_len = dim, n_head, head_dim, max_seq_len

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x

    def context(self, pos: torch.Tensor, kv_len: int) -> PositionalContext:
        return PositionalContext()

    def reset_parameters(self, std: float) -> None:
        """(Re)initialise parameters; called by the model after construction or on a meta device."""


@POSITIONAL.register("none")
class NoPositional(PositionalEncoding):
    """No positional information (causal attention alone still orders tokens: NoPE)."""

    description = "no positional encoding (NoPE)"
    document_positions = True


@POSITIONAL.register("learned")
class LearnedPositional(PositionalEncoding):
    """GPT-2: a trained embedding per absolute position, added to the token embedding."""

    description = "learned absolute position embeddings (GPT-2)"
    document_positions = True

    def __init__(self, dim: int, n_head: int, head_dim: int, max_seq_len: int) -> None:
        super().__init__(dim, n_head, head_dim, max_seq_len)
        self.wpe = nn.Embedding(max_seq_len, dim)

    def embed(self, x, pos):
        return x + self.wpe(pos)  # (B, T, C) + (T, C) or (B, T, C)

    def reset_parameters(self, std: float) -> None:
        nn.init.normal_(self.wpe.weight, mean=0.0, std=std)


def sinusoid_table(pos: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Vaswani et al. (2017): PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d)).

    ``pos`` (T,) or (B, T) -> table (T, dim) or (B, T, dim).
    """
    i2 = torch.arange(0, dim, 2, device=pos.device, dtype=torch.float32)  # 2i
    angle = pos.float()[..., None] / base ** (i2 / dim)  # (..., T, ceil(d/2))
    table = torch.empty(*pos.shape, dim, device=pos.device, dtype=torch.float32)
    table[..., 0::2] = torch.sin(angle)
    table[..., 1::2] = torch.cos(angle[..., : dim // 2])
    return table


@POSITIONAL.register("sinusoidal")
class SinusoidalPositional(PositionalEncoding):
    """Fixed sinusoids added to the token embedding (Attention Is All You Need, section 3.5)."""

    description = "fixed sinusoidal table (Vaswani et al.)"
    document_positions = True

    def __init__(self, dim: int, n_head: int, head_dim: int, max_seq_len: int, *, base: float = 10000.0):
        super().__init__(dim, n_head, head_dim, max_seq_len)
        self.base = base

    def embed(self, x, pos):
        return x + sinusoid_table(pos, self.dim, self.base).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@POSITIONAL.register("rope")
class RoPE(PositionalEncoding):
    """Rotary position embedding (Su et al., 2021), GPT-NeoX/Llama "rotate half" layout.

    Long-context scaling (``scaling``):
      * ``linear``: position interpolation, positions divided by ``factor`` (Chen et al., 2023);
      * ``ntk``: NTK-aware base stretch, ``base * factor ** (d / (d - 2))`` (bloc97, 2023).
    """

    description = "rotary embeddings on q/k (base, linear/ntk scaling)"
    document_positions = True

    def __init__(
        self,
        dim: int,
        n_head: int,
        head_dim: int,
        max_seq_len: int,
        *,
        base: float = 10000.0,
        scaling: str = "none",
        factor: float = 1.0,
    ) -> None:
        super().__init__(dim, n_head, head_dim, max_seq_len)
        if head_dim % 2:
            raise ValueError(f"rope needs an even head dimension, got head_dim={head_dim}")
        if scaling not in ("none", "linear", "ntk"):
            raise ValueError(f"rope: scaling must be one of none, linear, ntk; got {scaling!r}")
        if factor <= 0:
            raise ValueError(f"rope: factor must be positive, got {factor}")
        self.base, self.scaling, self.factor = base, scaling, factor

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        d = self.head_dim
        base = self.base * self.factor ** (d / (d - 2)) if self.scaling == "ntk" else self.base
        return 1.0 / base ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)  # (D/2,)

    def context(self, pos, kv_len):
        p = pos.float() / self.factor if self.scaling == "linear" else pos.float()
        freqs = p[..., None] * self.inv_freq(pos.device)  # (T, D/2) or (B, T, D/2)
        # (1, T, D) or (B, 1, T, D): broadcasts over the heads of q, k (B, H, T, D)
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(-3)
        cos, sin = emb.cos(), emb.sin()

        def rotate(q: torch.Tensor, k: torch.Tensor) -> QK:
            c, s = cos.to(q.dtype), sin.to(q.dtype)
            return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s

        return PositionalContext(rotate=rotate)
