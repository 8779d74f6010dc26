"""A decoder-only GPT whose attention kernel, positional encoding, norm and MLP are plugins.

Read top to bottom: attention, block, build checks, model. Every component is resolved from its registry
once, in ``GPT.__init__``; ``forward`` has no string checks. The KV cache is in ``kv_cache.py``, the
sliding-window and document masks in ``attention_masks.py``. The model knows nothing of parallelism:
``parallel.py`` applies FSDP2, activation checkpointing and compile from the outside.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_llm.attention_masks import CausalMasking, check_masking, masking_for
from lightning_llm.components.attention import AttentionKernel, AttentionRequest
from lightning_llm.components.mlp import TPStyle, check_feedforward
from lightning_llm.components.norm import RMSNorm
from lightning_llm.components.positional import PositionalContext, PositionalEncoding
from lightning_llm.config import ComponentSpec, GPTConfig
from lightning_llm.generate import generate
from lightning_llm.kv_cache import KVCache, cache_length
from lightning_llm.loss import linear_cross_entropy, softcap_logits
from lightning_llm.registry import (
    ATTENTION,
    MLP,
    NORM,
    POSITIONAL,
    ComponentError,
    Registry,
    accepted_options,
)


class IncompatibleComponentsError(ValueError):
    """The chosen components cannot work together on this device/dtype."""


class QKNorm(RMSNorm):
    """RMSNorm of queries or keys over ``head_dim``, its scale in the dtype of q/k (bf16 under autocast,
    where q/k come out of a bf16 matmul: a float32 scale would keep ``rms_norm`` off its fused kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)


class CausalSelfAttention(nn.Module):
    """Projections, QK-norm, positional rotation and KV cache around a stateless attention kernel.

    QK-norm (``qk_norm``) RMS-normalises each head's queries and keys over ``head_dim`` before the rotation,
    with a learnable scale per channel shared by the heads (as Gemma 3 and Qwen 3), one for q and one for
    k. With unit-RMS q and k the logits q . k / sqrt(D) are bounded by sqrt(D), which keeps them from
    growing with the learning rate; the learnable scales let the model sharpen attention past that bound
    where it needs to, which a parameter-free norm (modded-nanogpt) can only get from a hand-tuned attention
    scale. They cost 2 * head_dim parameters per layer, start at one, and are 1-D: no weight decay.
    """

    def __init__(
        self,
        dim: int,
        n_head: int,
        n_kv_head: int,
        kernel: AttentionKernel,
        *,
        bias: bool,
        attn_dropout: float,
        dropout: float,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, dim // n_head
        self.qkv = nn.Linear(dim, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.q_norm = QKNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = QKNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.kernel = kernel
        self.attn_dropout = attn_dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, pctx: PositionalContext, start: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        G, D = self.n_head // self.n_kv_head, self.head_dim
        # qkv rows are laid out per KV group: [q_0 .. q_{G-1}, k, v] for each KV head, so that a
        # column-wise (tensor-parallel) shard holds whole groups; -1 is the local number of KV heads.
        qkv = self.qkv(x).view(B, T, -1, G + 2, D)  # (B, T, H_kv, G + 2, D)
        # one split: its backward is a single cat (indexing q, k, v out separately would zero-fill and
        # scatter three full-size gradients of qkv in backward)
        q, k, v = qkv.split((G, 1, 1), dim=3)
        q = q.reshape(B, T, -1, D).transpose(1, 2)  # (B, H, T, D), head h = kv * G + j
        k = k.squeeze(3).transpose(1, 2)  # (B, H_kv, T, D)
        v = v.squeeze(3).transpose(1, 2)  # (B, H_kv, T, D)
        q, k = pctx.rotate(self.q_norm(q), self.k_norm(k))  # QK-norm (Identity when off), then RoPE
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(start, k, v)  # (B, H_kv, S, D): S = start + T, or the window's
        dropout_p = self.attn_dropout if self.training else 0.0
        if pctx.mask is None:  # plain causal attention: the kernel's own (bottom-right) causal mask
            y = self.kernel(q, k, v, bias=pctx.bias, dropout_p=dropout_p, causal=True)  # (B, H, T, D)
        else:  # window / documents: the mask holds causality too; only kernels declaring masks get one
            y = self.kernel(q, k, v, bias=pctx.bias, mask=pctx.mask, dropout_p=dropout_p, causal=False)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, H * D)
        return self.resid_dropout(self.proj(y))

    def reset_parameters(self, std: float, residual_std: float) -> None:
        """N(0, std) for qkv, N(0, residual_std) for the residual projection ``proj``; zero biases; QK-norm
        scales to one."""
        nn.init.normal_(self.qkv.weight, mean=0.0, std=std)
        nn.init.normal_(self.proj.weight, mean=0.0, std=residual_std)
        for lin in (self.qkv, self.proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        for norm in (self.q_norm, self.k_norm):
            if isinstance(norm, QKNorm):
                norm.reset_parameters()

    def tp_plan(self) -> dict[str, TPStyle]:
        """Megatron: qkv column-wise (whole KV groups per shard), the residual projection row-wise."""
        return {"qkv": "colwise", "proj": "rowwise"}


NO_OP_DEFAULTS: dict[str, Any] = {"bias": False, "dropout": 0.0}
"""Model-wide defaults that change nothing when a component does not take them."""


def _build(
    registry: Registry[Any], spec: ComponentSpec, *args: Any, required: tuple[str, ...] = (), **defaults: Any
) -> Any:
    """Build a component with the model-wide ``defaults`` (bias, eps, dropout) it takes, then the user's options.

    A default the constructor does not take is left out only where it is a no-op (``NO_OP_DEFAULTS``);
    one that matters (bias true, dropout > 0), or one in ``required`` (a norm's eps), raises a
    ``ComponentError`` that names the component, the option and the fix.
    """
    accepted = accepted_options(registry.get(spec.name))
    kwargs: dict[str, Any] = {}
    for key, value in defaults.items():
        if accepted is None or key in accepted:
            kwargs[key] = value
            continue
        kind, others = registry.kind, ", ".join(_taking(registry, key)) or "none installed"
        if key in required:
            raise ComponentError(
                f"{kind} '{spec.name}' does not take `{key}`, which every {kind} must: add a keyword-only "
                f"`{key}` to its constructor, or set model.config.{kind} to one that takes it ({others})."
            )
        if key not in NO_OP_DEFAULTS or value != NO_OP_DEFAULTS[key]:
            off = str(NO_OP_DEFAULTS.get(key)).lower()  # as YAML writes it: false, 0.0
            raise ComponentError(
                f"{kind} '{spec.name}' has no {key}: "
                + (f"set model.config.{key}: {off}, or " if key in NO_OP_DEFAULTS else "")
                + f"set model.config.{kind} to one that takes {key} ({others})."
            )
    kwargs.update(spec.options)
    return registry.build(spec.name, *args, **kwargs)


def _taking(registry: Registry[Any], option: str) -> list[str]:
    """Names of the components in ``registry`` whose constructor takes ``option``."""
    names = []
    for name in registry.names():
        accepted = accepted_options(registry.get(name))
        if accepted is None or option in accepted:
            names.append(name)
    return names


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig, kernel: AttentionKernel) -> None:
        super().__init__()
        c = config
        self.norm_1 = _build(NORM, c.norm, c.n_embd, required=("eps",), eps=c.norm_eps, bias=c.bias)
        self.attn = CausalSelfAttention(
            c.n_embd,
            c.n_head,
            c.n_kv_head,
            kernel,
            bias=c.bias,
            attn_dropout=c.attn_dropout,
            dropout=c.dropout,
            qk_norm=c.qk_norm,
            norm_eps=c.norm_eps,
        )
        self.norm_2 = _build(NORM, c.norm, c.n_embd, required=("eps",), eps=c.norm_eps, bias=c.bias)
        self.mlp = _build(MLP, c.mlp, c.n_embd, c.intermediate_size, bias=c.bias, dropout=c.dropout)
        check_feedforward(self.mlp, c.mlp.name)  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor, pctx: PositionalContext, start: int = 0) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), pctx, start)
        return x + self.mlp(self.norm_2(x))

    def reset_parameters(self, std: float, residual_std: float) -> None:
        self.norm_1.reset_parameters()
        self.norm_2.reset_parameters()
        self.attn.reset_parameters(std, residual_std)
        self.mlp.reset_parameters(std, residual_std)

    def tp_plan(self) -> dict[str, TPStyle]:
        """Tensor-parallel style of each sharded submodule (relative name), as its parts declare them."""
        return {
            **{f"attn.{name}": style for name, style in self.attn.tp_plan().items()},
            **{f"mlp.{name}": style for name, style in self.mlp.tp_plan().items()},
        }


def check_compatible(
    config: GPTConfig,
    kernel: AttentionKernel,
    pe: PositionalEncoding,
    device_type: str,
    dtype: torch.dtype,
    training: bool = True,
) -> None:
    """Fail at build time, with what conflicts and what would work, if the kernel can't serve this model."""
    req = AttentionRequest(
        device_type=device_type,
        dtype=dtype,
        bias=pe.needs_attention_bias,
        dropout=training and config.attn_dropout > 0,
        gqa=config.n_kv_head != config.n_head,
        window=config.sliding_window is not None,
        document_mask=config.document_mask,
    )
    problems = kernel.unsupported(req)
    if not problems:
        return
    name = config.attention.name  # type: ignore[union-attr]
    unavailable = kernel.unavailable_reason(device_type)
    if unavailable:  # the kernel can't run here at all: its own reason says why and what can
        raise IncompatibleComponentsError(
            f"Attention kernel '{name}' cannot run on {device_type} here: {unavailable}. "
            "Set model.config.attention to a kernel that runs here (lightning-llm plugins lists them)."
        )
    working = [n for n in ATTENTION.names() if n != name and not ATTENTION.build(n).unsupported(req)]
    why = []
    if req.bias:
        why.append(f"positional '{config.positional.name}' needs an attention bias")  # type: ignore[union-attr]
    if req.dropout:
        why.append(f"attn_dropout={config.attn_dropout}")
    if req.window:
        why.append(f"sliding_window={config.sliding_window}")
    if req.document_mask:
        why.append("document_mask: true")
    offs = [
        *(["attn_dropout: 0.0"] if req.dropout else []),
        *(["sliding_window: null"] if req.window else []),
        *(["document_mask: false"] if req.document_mask else []),
    ]
    raise IncompatibleComponentsError(
        f"Attention kernel '{name}' cannot run this model: it does not support {'; '.join(problems)}"
        + (f" (needed because {', '.join(why)})" if why else "")
        + f". Kernels that can: {', '.join(working) or 'none'}. "
        f"Set model.config.attention to one of them" + (f" or set {', '.join(offs)}" if offs else "") + "."
    )


class GPT(nn.Module):
    """Token embedding -> positional encoding -> n_layer blocks -> final norm -> vocabulary head.

    ``device_type``/``dtype`` say where and in what precision the model will run, so that a component
    combination that can't run there fails here, at build time (default: the current default device).
    """

    def __init__(
        self,
        config: GPTConfig,
        *,
        device_type: str | None = None,
        dtype: torch.dtype = torch.float32,
        check_training: bool = True,
    ) -> None:
        super().__init__()
        config.check_components()
        self.config = c = config
        kernel: AttentionKernel = _build(ATTENTION, c.attention)
        self.pe: PositionalEncoding = _build(
            POSITIONAL, c.positional, c.n_embd, c.n_head, c.head_dim, c.block_size
        )
        check_masking(c, self.pe)
        self.masking: CausalMasking = masking_for(c.sliding_window, c.eot_id if c.document_mask else None)
        if device_type is None:
            device_type = torch.get_default_device().type
        if device_type != "meta":
            check_compatible(c, kernel, self.pe, device_type, dtype, training=check_training)
        self.kernel = kernel
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c, kernel) for _ in range(c.n_layer))
        self.norm_f = _build(NORM, c.norm, c.n_embd, required=("eps",), eps=c.norm_eps, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if torch.get_default_device().type != "meta" and not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init, owned by each module: N(0, std), residual projections N(0, std / sqrt(2 n_layer))."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        nn.init.normal_(self.wte.weight, mean=0.0, std=std)
        self.pe.reset_parameters(std)
        for block in self.blocks:
            block.reset_parameters(std, residual_std)
        self.norm_f.reset_parameters()
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=std)

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameters of the built model (a tied head counted once; DTensors count their global size).

        ``include_embedding=False`` leaves out the lookup tables (the token embedding unless it is tied to
        the head, the positional encoding's parameters) and keeps what takes part in a matmul for every
        token: blocks, final norm and head. That is PaLM's N in ``perf.flops_per_token``, and nanoGPT's
        non-embedding count for a tied model. Counted on any device, the meta device included.
        """
        if include_embedding:
            params = list(self.parameters())
        else:
            params = [p for m in (self.blocks, self.norm_f, self.lm_head) for p in m.parameters()]
        return sum(p.numel() for p in {id(p): p for p in params}.values())

    # -- forward ----------------------------------------------------------------------------------
    def hidden_states(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Final-norm hidden states (B, T, C) for token ids ``idx`` (B, T) at positions start..start+T."""
        B, T = idx.shape
        if start + T > self.config.block_size:
            raise ValueError(
                f"Sequence of length {start + T} is longer than the model's block_size "
                f"{self.config.block_size}. Crop the input or train with a larger block_size."
            )
        # positions (T,), or (B, T) restarting at each document; one context (rotation, bias, mask) for all
        pos, pctx = self.masking(idx, start, self.pe)
        x = self.drop(self.pe.embed(self.wte(idx), pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x, pctx, start)
        return self.norm_f(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, start: int = 0
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size); with ``targets`` (B, T) the mean cross-entropy loss instead.

        The loss never materialises the (B*T, vocab_size) logits: ``linear_cross_entropy`` computes head,
        loss and gradients chunk by chunk (equal, within rounding, to ``F.cross_entropy`` on the logits;
        targets equal to -100 are ignored). With ``logit_softcap`` both paths cap the logits the same way.
        """
        x = self.hidden_states(idx, start)
        if targets is None:
            return self.logits(x)
        return linear_cross_entropy(
            x.flatten(0, 1), self.lm_head.weight, targets.flatten(), softcap=self.config.logit_softcap
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The vocabulary head on hidden states ``x`` (..., C), soft-capped when ``logit_softcap`` is set."""
        return softcap_logits(self.lm_head(x), self.config.logit_softcap)

    # -- KV cache ---------------------------------------------------------------------------------
    def setup_kv_cache(
        self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None
    ) -> None:
        """Allocate a static KV cache in every layer (used by ``generate``): ``max_len`` positions, or the
        last ``sliding_window`` of them at most (a ring buffer, ``kv_cache.py``)."""
        c = self.config
        ref = self.wte.weight
        max_len = max_len or c.block_size
        for block in self.blocks:
            block.attn.kv_cache = KVCache(
                batch, c.n_kv_head, max_len, c.head_dim, ref.device, dtype or ref.dtype, c.sliding_window
            )
        self.masking.setup_cache(batch, cache_length(max_len, c.sliding_window), ref.device)

    def clear_kv_cache(self) -> None:
        for block in self.blocks:
            block.attn.kv_cache = None
        self.masking.clear_cache()

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``lightning_llm.generate.generate`` on this model: ``idx`` (B, T) continued to (B, T + n)."""
        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, eos_id, generator)
