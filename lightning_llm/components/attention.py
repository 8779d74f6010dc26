"""Attention kernels: stateless functions of (q, k, v) with one signature.

The attention *module* (``model.CausalSelfAttention``) owns projections, positional rotation and the KV
cache; a kernel only computes ``softmax(q k^T * scale + bias, causal) v``. Shapes::

    q: (B, H, T, D)    k, v: (B, H_kv, S, D) with H % H_kv == 0 (GQA), S >= T
    bias: None or additive, broadcastable to (B, H, T, S)
    mask: None or boolean, broadcastable to (B, H, T, S): True where query i may attend key j
    returns (B, H, T, D)

Causality is bottom-right aligned: query ``i`` (of ``T``) sees keys ``0 .. S - T + i``, which is what a
KV cache needs when ``T`` new tokens attend to ``S`` cached ones.

``mask`` is how the model asks for anything other than plain causal attention (a sliding window,
documents packed in one row, a ring-buffer KV cache whose keys are not in order): it then passes a mask
that already holds causality, with ``causal=False``. A kernel ANDs everything it is given (mask, causal,
bias), so it needs no rule about which wins. Only kernels that declare ``window`` or ``document_mask`` are
ever passed ``mask``: a kernel written before masks existed keeps working for the models it accepts.

Each kernel declares what it can do in ``capabilities(device_type)``; the model checks the combination
it needs once, at build time (``unsupported``), and fails with a message rather than falling back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_llm.registry import ATTENTION

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@dataclass(frozen=True)
class AttentionCapabilities:
    """What a kernel supports on one device type."""

    bias: bool = True
    """Arbitrary additive bias / mask (needed by ALiBi)."""
    dropout: bool = True
    """Dropout on attention probabilities while training."""
    gqa: bool = True
    """Fewer key/value heads than query heads."""
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    """Tensor dtypes it computes in."""
    window: bool = False
    """Sliding-window attention: takes the boolean ``mask`` keyword (a window, and a ring-buffer KV cache)."""
    document_mask: bool = False
    """Attention within documents only: takes a per-row boolean ``mask`` of shape (B, 1, T, S)."""


@dataclass(frozen=True)
class AttentionRequest:
    """What a model needs from its attention kernel."""

    device_type: str
    dtype: torch.dtype
    bias: bool = False
    dropout: bool = False
    gqa: bool = False
    window: bool = False
    document_mask: bool = False


class AttentionKernel:
    """Base class of attention kernels. Subclasses implement ``__call__`` and may override the rest."""

    #: one-line description shown by ``lightning-llm plugins``
    description: str = ""

    def capabilities(self, device_type: str) -> AttentionCapabilities:
        return AttentionCapabilities()

    def unavailable_reason(self, device_type: str) -> str | None:
        """Why this kernel cannot run at all on ``device_type`` here (``None`` if it can)."""
        return None

    def unsupported(self, req: AttentionRequest) -> list[str]:
        """Everything in ``req`` this kernel cannot do (empty when it can do all of it)."""
        reason = self.unavailable_reason(req.device_type)
        if reason:
            return [reason]
        caps = self.capabilities(req.device_type)
        problems = []
        if req.bias and not caps.bias:
            problems.append(f"an additive attention bias on {req.device_type}")
        if req.dropout and not caps.dropout:
            problems.append(f"attention dropout on {req.device_type}")
        if req.gqa and not caps.gqa:
            problems.append("grouped-query attention (n_kv_head < n_head)")
        if req.window and not caps.window:
            problems.append(f"a sliding-window mask on {req.device_type}")
        if req.document_mask and not caps.document_mask:
            problems.append(f"a per-document attention mask on {req.device_type}")
        if req.dtype not in caps.dtypes:
            problems.append(f"dtype {req.dtype} on {req.device_type}")
        return problems

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        causal: bool = True,
    ) -> torch.Tensor:
        raise NotImplementedError


def causal_mask(t: int, s: int, device: torch.device) -> torch.Tensor:
    """Boolean (T, S) mask, True where query i may attend key j (bottom-right aligned)."""
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=s - t)


def expand_kv(k: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, H_kv, S, D) -> (B, H, S, D) by repeating each KV head for its group of query heads."""
    groups = n_head // k.shape[1]
    return k if groups == 1 else k.repeat_interleave(groups, dim=1)


@ATTENTION.register("naive")
class NaiveAttention(AttentionKernel):
    """The readable reference: explicit scores, mask, softmax (in fp32), weighted sum."""

    description = "explicit QK^T, mask, softmax, V (reference; O(T^2) memory)"

    def capabilities(self, device_type: str) -> AttentionCapabilities:
        return AttentionCapabilities(window=True, document_mask=True)

    def __call__(self, q, k, v, *, bias=None, mask=None, dropout_p=0.0, causal=True):
        B, H, T, D = q.shape
        S = k.shape[2]
        k, v = expand_kv(k, H), expand_kv(v, H)  # (B, H, S, D)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))  # (B, H, T, S)
        acc = torch.promote_types(att.dtype, torch.float32)  # fp32 softmax for 16-bit, fp64 stays fp64
        att = att.to(acc)
        if bias is not None:
            att = att + bias.to(acc)
        if causal and T > 1:
            att = att.masked_fill(~causal_mask(T, S, q.device), float("-inf"))
        if mask is not None:
            att = att.masked_fill(~mask, float("-inf"))
        att = torch.softmax(att, dim=-1).to(q.dtype)
        if dropout_p > 0.0:
            att = F.dropout(att, p=dropout_p)
        return att @ v  # (B, H, T, D)


def _sdpa_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    bias: torch.Tensor | None,
    causal: bool,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """The (attn_mask, is_causal) pair for SDPA; is_causal only where top-left == bottom-right.

    A boolean ``mask`` stays boolean when there is no bias (SDPA takes it as it is); with a bias, the
    masked entries become -inf in it.
    """
    T, S = q.shape[2], k.shape[2]
    if causal and T > 1:  # a single new token sees the whole cache
        if bias is None and mask is None and T == S:
            return None, True
        tril = causal_mask(T, S, q.device)
        mask = tril if mask is None else mask & tril
    if mask is None:
        return (None if bias is None else bias.to(q.dtype)), False
    if bias is None:
        return mask, False
    return bias.to(q.dtype).masked_fill(~mask, float("-inf")), False


@ATTENTION.register("sdpa")
class SDPAAttention(AttentionKernel):
    """``torch.nn.functional.scaled_dot_product_attention`` with PyTorch's own backend choice."""

    description = "torch scaled_dot_product_attention, PyTorch picks the backend"

    def capabilities(self, device_type: str) -> AttentionCapabilities:
        return AttentionCapabilities(window=True, document_mask=True)

    def __call__(self, q, k, v, *, bias=None, mask=None, dropout_p=0.0, causal=True):
        mask, is_causal = _sdpa_mask(q, k, bias, causal, mask)
        gqa = k.shape[1] != q.shape[1]
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=gqa
        )


@ATTENTION.register("flash")
class FlashAttention(AttentionKernel):
    """SDPA restricted to its FlashAttention backend: fails rather than falling back to another one.

    PyTorch's flash backend exists on CPU (fp32/bf16/fp64; additive masks yes, so windows and documents
    too; dropout no) and on CUDA (fp16/bf16; dropout yes, arbitrary masks no: no bias, window or documents).
    """

    description = "SDPA forced to its FlashAttention backend (O(T) memory)"

    def capabilities(self, device_type: str) -> AttentionCapabilities:
        if device_type == "cuda":
            return AttentionCapabilities(bias=False, dropout=True, dtypes=(torch.float16, torch.bfloat16))
        return AttentionCapabilities(
            bias=True,
            dropout=False,
            dtypes=(torch.float32, torch.bfloat16, torch.float64),
            window=True,
            document_mask=True,
        )

    def __call__(self, q, k, v, *, bias=None, mask=None, dropout_p=0.0, causal=True):
        mask, is_causal = _sdpa_mask(q, k, bias, causal, mask)
        gqa = k.shape[1] != q.shape[1]
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=gqa
            )
