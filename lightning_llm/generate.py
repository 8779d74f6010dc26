"""Sampling with the model's static KV cache: temperature, top-k, top-p (nucleus), EOS, streaming.

This module does not import the model: it works on anything with the ``CachedLM`` methods (``GPT`` has
them), so the dependency runs one way, ``model`` -> ``generate`` (``GPT.generate`` is ``generate``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol

import torch


class CachedLM(Protocol):
    """What sampling needs from a model: its block size, final hidden states, head and a static KV cache."""

    config: Any
    """Has ``block_size``, the longest context."""
    training: bool

    def hidden_states(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor: ...

    def logits(self, x: torch.Tensor) -> torch.Tensor: ...

    def setup_kv_cache(
        self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None
    ) -> None: ...

    def clear_kv_cache(self) -> None: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


def check_sampling(temperature: float, top_k: int | None = None, top_p: float | None = None) -> None:
    """Refuse sampling settings that would otherwise be silently ignored or reinterpreted (ValueError).

    ``temperature`` >= 0 (0: greedy); ``top_k`` None (off) or >= 1; ``top_p`` None (off) or in (0, 1].
    """
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(
            f"temperature {temperature} is out of range: use 0 for greedy decoding (always the most likely "
            "token) or a positive value (e.g. 0.8; higher is more random)."
        )
    if top_k is not None and top_k < 1:
        raise ValueError(
            f"top_k {top_k} is out of range: it must be at least 1 (1 is greedy), or null (None) to sample "
            "from the whole vocabulary."
        )
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(
            f"top_p {top_p} is outside (0, 1]: it is the probability mass of the most likely tokens kept "
            "for sampling (e.g. 0.9; 1 keeps all), or null (None) for no nucleus filtering."
        )


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token id (B, 1) from last-position logits (B, V). ``temperature <= 0`` is greedy."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def _last_logits(model: CachedLM, idx: torch.Tensor, start: int) -> torch.Tensor:
    """Logits (B, V) of the last position only: the vocabulary head runs on one position, not T."""
    return model.logits(model.hidden_states(idx, start)[:, -1])


@torch.no_grad()
def generate_tokens(
    model: CachedLM,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield one (B, 1) tensor of new token ids per step: a prefill of the prompt, then one token at a time.

    The cache is static (allocated once for prompt + new tokens); the context is capped at the model's
    block size, so the prompt plus ``max_new_tokens`` must fit in it (a ValueError otherwise, never a silent
    cap). Sampling settings are checked by ``check_sampling``.
    """
    B, T = idx.shape
    block = model.config.block_size
    check_sampling(temperature, top_k, top_p)
    if T == 0:
        raise ValueError("generate needs a prompt of at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if T + max_new_tokens > block:
        raise ValueError(
            f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's block_size {block}; "
            f"lower max_new_tokens to {max(block - T, 0)} or shorten the prompt."
        )
    was_training = model.training
    model.eval()
    model.setup_kv_cache(B, T + max_new_tokens)
    try:
        logits = _last_logits(model, idx, 0)  # prefill: (B, V)
        pos = T
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B, 1)
            if eos_id is not None:
                nxt = nxt.masked_fill(done[:, None], eos_id)
                done |= nxt[:, 0] == eos_id
            yield nxt
            if eos_id is not None and bool(done.all()):
                break
            if i == max_new_tokens - 1:
                break
            logits = _last_logits(model, nxt, pos)
            pos += 1
    finally:
        model.clear_kv_cache()
        model.train(was_training)


@torch.no_grad()
def generate(
    model: CachedLM,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue ``idx`` (B, T) by up to ``max_new_tokens`` tokens (``generate_tokens``); returns (B, T + n)."""
    new = list(generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, eos_id, generator))
    return torch.cat([idx, *new], dim=1) if new else idx
