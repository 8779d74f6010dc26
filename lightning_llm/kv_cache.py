"""The static key/value cache of generation, and where its keys sit (for the attention mask).

One ``KVCache`` per layer, allocated once and written in place. Without a sliding window it holds
``max_len`` positions in order, and a step of ``T`` new tokens attends to the views ``[0, start + T)``.
With a window ``W`` it holds only ``length = min(W, max_len)`` positions as a ring buffer: position ``p``
lives in slot ``p % length``. Keys are stored already rotated (RoPE), so their order in the buffer does not
matter to attention; only the mask has to know which position each slot holds, and ``key_positions`` says
that, from the same three numbers ``update`` uses (``start``, ``T``, ``length``), computed once per forward
for all layers. A step that overflows the ring:

* one new token (decoding): it overwrites the slot of position ``start - W``, which is just outside its
  window, and attends to the whole ring;
* several (a prompt longer than the window, or a chunk): they attend to the ring as it was plus the new
  keys (a concatenation, ``length + T`` keys), then the last ``length`` of them are written into the ring.
"""

from __future__ import annotations

import torch
from torch import nn


def cache_length(max_len: int, window: int | None) -> int:
    """Positions a layer's cache holds: all ``max_len`` of them, or the last ``window`` at most."""
    return max_len if window is None else min(window, max_len)


def key_positions(start: int, T: int, length: int, device: torch.device) -> torch.Tensor:
    """Absolute positions (S,) of the keys ``KVCache.update(start, k[T])`` returns; -1 for an empty slot."""
    end = start + T
    if end <= length:  # nothing overwritten yet: positions 0 .. end - 1, in order
        return torch.arange(end, device=device)
    slots = torch.arange(length, device=device)
    if T == 1:  # the ring after writing: slot s holds the latest p <= end - 1 with p % length == s
        return (end - 1) - ((end - 1 - slots) % length)
    before = (start - 1) - ((start - 1 - slots) % length)  # the ring as it was: negative = never written
    return torch.cat([before, torch.arange(start, end, device=device)])  # (length + T,)


class KVCache(nn.Module):
    """A static key/value cache: allocated once for (batch, length), written in place, never grown."""

    def __init__(
        self,
        batch: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        device,
        dtype,
        window: int | None = None,
    ) -> None:
        super().__init__()
        self.length, self.ring = cache_length(max_len, window), window is not None
        shape = (batch, n_kv_head, self.length, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` (B, H_kv, T, D) of positions start .. start + T - 1; return the keys and values to
        attend to, whose positions ``key_positions(start, T, self.length)`` gives."""
        T = k.shape[2]
        end = start + T
        if end <= self.length:
            self.k[:, :, start:end] = k
            self.v[:, :, start:end] = v
            return self.k[:, :, :end], self.v[:, :, :end]  # (B, H_kv, end, D) views, no copy
        if not self.ring:
            raise ValueError(
                f"KV cache of {self.length} positions cannot take positions {start}..{end - 1}: allocate it for "
                "the whole sequence (setup_kv_cache(batch, max_len)); only a sliding-window cache wraps around"
            )
        if T == 1:
            slot = start % self.length
            self.k[:, :, slot : slot + 1] = k
            self.v[:, :, slot : slot + 1] = v
            return self.k, self.v  # (B, H_kv, length, D)
        keys = torch.cat([self.k, k], dim=2)  # (B, H_kv, length + T, D): the old ring, then the new keys
        values = torch.cat([self.v, v], dim=2)
        kept = min(T, self.length)
        slots = torch.arange(end - kept, end, device=k.device) % self.length
        self.k.index_copy_(2, slots, k[:, :, T - kept :])
        self.v.index_copy_(2, slots, v[:, :, T - kept :])
        return keys, values
