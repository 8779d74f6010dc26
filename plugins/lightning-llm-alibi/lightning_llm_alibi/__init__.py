"""ALiBi: Attention with Linear Biases (Press, Smith & Lewis, 2021, https://arxiv.org/abs/2108.12409).

No position is added to the embeddings and nothing rotates q/k. Instead every head ``h`` adds
``m_h * (j - i)`` to the score of query position ``i`` and key position ``j`` (a penalty growing linearly
with distance, since ``j <= i`` under the causal mask). The slopes ``m_h`` are a geometric sequence.

This package registers itself only through its entry point (``lightning_llm.positional: alibi``);
lightning-llm discovers it on the first lookup of a name it does not know.
"""

from __future__ import annotations

import math

import torch

from lightning_llm.components.positional import PositionalContext, PositionalEncoding

__all__ = ["ALiBi", "alibi_slopes"]
__version__ = "0.1.0"


def _power_of_two_slopes(n: int, max_bias: float) -> list[float]:
    """Paper, section 3: for n heads, start at 2^(-max_bias/n) and multiply by it for every next head."""
    ratio = 2.0 ** (-max_bias / n)
    return [ratio ** (i + 1) for i in range(n)]


def alibi_slopes(n_head: int, max_bias: float = 8.0) -> list[float]:
    """Head-specific slopes. For 8 heads: 1/2, 1/4, ..., 1/256.

    When ``n_head`` is not a power of two the paper takes the slopes of the closest smaller power of two
    ``p`` and fills the remaining ``n_head - p`` heads with every other slope of ``2 p`` heads
    (reference implementation, ``get_slopes`` in ofirpress/attention_with_linear_biases).
    """
    if n_head < 1:
        raise ValueError(f"alibi needs at least one head, got n_head={n_head}")
    p = 2 ** math.floor(math.log2(n_head))
    slopes = _power_of_two_slopes(p, max_bias)
    if p < n_head:
        slopes += _power_of_two_slopes(2 * p, max_bias)[0::2][: n_head - p]
    return slopes


class ALiBi(PositionalEncoding):
    """Linear attention biases per head; needs an attention kernel that accepts an additive bias."""

    needs_attention_bias = True
    description = "ALiBi linear attention biases (Press et al., 2021); needs a bias-capable kernel"

    def __init__(
        self, dim: int, n_head: int, head_dim: int, max_seq_len: int, *, max_bias: float = 8.0
    ) -> None:
        super().__init__(dim, n_head, head_dim, max_seq_len)
        if max_bias <= 0:
            raise ValueError(f"alibi: max_bias must be positive, got {max_bias}")
        self.max_bias = max_bias
        # a buffer so it follows .to(device); not persistent: it is derived from n_head, not learned
        self.register_buffer(
            "slopes", torch.tensor(alibi_slopes(n_head, max_bias), dtype=torch.float32), persistent=False
        )

    def context(self, pos: torch.Tensor, kv_len: int) -> PositionalContext:
        """Bias (1, H, T, S): ``slope_h * (key_pos - query_pos)`` for queries at ``pos`` and keys 0..S-1."""
        key_pos = torch.arange(kv_len, device=pos.device, dtype=torch.float32)  # (S,)
        distance = key_pos[None, :] - pos.to(torch.float32)[:, None]  # (T, S), <= 0 where not masked
        return PositionalContext(bias=self.slopes[None, :, None, None] * distance[None, None])  # (1, H, T, S)

    def reset_parameters(self, std: float) -> None:
        """Recompute the slopes (the buffer is empty after building on the meta device)."""
        if not self.slopes.is_meta:
            with torch.no_grad():
                self.slopes.copy_(torch.tensor(alibi_slopes(self.n_head, self.max_bias)))
