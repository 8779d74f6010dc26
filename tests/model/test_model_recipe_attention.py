"""The modern recipe's attention: QK-norm, sliding-window attention and document masking.

* QK-norm against a hand-written float64 attention layer; its scales are initialised, trained, not decayed.
* Sliding window: every mask-declaring kernel against a float64 softmax with an explicit window mask;
  one-layer causality (a token reaches exactly the next ``W`` positions); greedy generation with the ring
  buffer cache equals recomputation without a cache, for prompts shorter and longer than the window; the
  cache holds ``W`` positions, not ``block_size``.
* Document masking: a packed row [docA eot docB eot docC] gives each document the logits it gets alone (the
  key equivalence), on every kernel that masks; off, nothing changes; under fake CUDA tensors the masked
  forward reads nothing back to the host and adds a handful of ops; generation follows the same rule.
* Build-time refusals that name what would work.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_llm.attention_masks import CausalMasking
from lightning_llm.components.attention import AttentionCapabilities, AttentionKernel
from lightning_llm.components.positional import (
    LearnedPositional,
    PositionalContext,
    PositionalEncoding,
    RoPE,
    SinusoidalPositional,
)
from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT, IncompatibleComponentsError
from lightning_llm.registry import ATTENTION, POSITIONAL, ComponentError

EOT = 0
TOL = dict(atol=1e-5, rtol=1e-4)  # fp32 against fp64 on the same inputs, outputs of magnitude ~1


def masking_kernels() -> list:
    """Kernels of the registry that declare both masks on CPU (a plugin that does is tested for free)."""
    params = []
    for name in ATTENTION.names():
        kernel = ATTENTION.build(name)
        if kernel.unavailable_reason("cpu") is not None:
            continue
        caps = kernel.capabilities("cpu")
        if caps.window and caps.document_mask:
            params.append(name)
    return params


KERNELS = masking_kernels()


def test_the_builtin_kernels_mask_on_cpu() -> None:
    assert {"naive", "sdpa", "flash"} <= set(KERNELS)


# -- QK-norm ---------------------------------------------------------------------------------------
def rope_fp64(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate-half RoPE written out: pairs (x_i, x_{i + D/2}) rotated by pos * base^(-2i/D)."""
    D = x.shape[-1]
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    angle = pos.double()[:, None] * theta  # (T, D/2)
    c, s = angle.cos(), angle.sin()
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def attention_layer_fp64(attn, x: torch.Tensor, eps: float) -> torch.Tensor:
    """CausalSelfAttention with QK-norm and RoPE, in float64, from its weights and nothing else."""
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    G = H // Hkv
    x = x.double()
    B, T, _ = x.shape
    w = attn.qkv.weight.detach().double().view(Hkv, G + 2, D, -1)  # rows grouped per KV head
    q = torch.einsum("btc,kgdc->bkgtd", x, w[:, :G]).reshape(B, H, T, D)  # head h = kv * G + j
    k = torch.einsum("btc,kdc->bktd", x, w[:, G])  # (B, Hkv, T, D)
    v = torch.einsum("btc,kdc->bktd", x, w[:, G + 1])
    gq, gk = attn.q_norm.weight.detach().double(), attn.k_norm.weight.detach().double()
    q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + eps) * gq
    k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + eps) * gk
    pos = torch.arange(T)
    q, k = rope_fp64(q, pos), rope_fp64(k, pos)
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = scores.softmax(-1) @ v  # (B, H, T, D)
    return y.transpose(1, 2).reshape(B, T, H * D) @ attn.proj.weight.detach().double().T


@pytest.mark.parametrize("attention", KERNELS)
def test_qk_norm_equals_fp64_reference(tiny_model, attention: str) -> None:
    model = tiny_model(attention=attention, positional="rope", qk_norm=True, n_head=4, n_kv_head=2, n_embd=32)
    attn = model.blocks[0].attn
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # scales away from their init of ones, so that they are tested
        attn.q_norm.weight.copy_(1 + 0.5 * torch.randn(attn.head_dim, generator=g))
        attn.k_norm.weight.copy_(1 + 0.5 * torch.randn(attn.head_dim, generator=g))
    x = 3.0 * torch.randn(2, 11, 32, generator=g)  # large inputs: without the norm the scores would differ
    got = attn(x, model.pe.context(torch.arange(11), 11))
    torch.testing.assert_close(got.double(), attention_layer_fp64(attn, x, model.config.norm_eps), **TOL)


def test_qk_norm_scales_get_gradients_init_and_no_decay(tiny_config) -> None:
    cfg = tiny_config(qk_norm=True, positional="rope")
    torch.manual_seed(0)
    model = GPT(cfg, device_type="cpu")
    norms = [m for b in model.blocks for m in (b.attn.q_norm, b.attn.k_norm)]
    idx = torch.randint(0, 32, (2, 12))
    model(idx, idx).backward()
    for norm in norms:
        assert norm.weight.shape == (cfg.head_dim,) and norm.weight.ndim == 1  # 1-D: the no-decay group
        assert torch.equal(norm.weight.detach(), torch.ones(cfg.head_dim))
        assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
        assert torch.isfinite(norm.weight.grad).all()
    with torch.device("meta"):  # the FSDP2 path: built on meta, materialised, then reset_parameters
        meta = GPT(cfg)
    meta.to_empty(device="cpu")
    meta.reset_parameters()
    assert all(torch.equal(b.attn.k_norm.weight.detach(), torch.ones(cfg.head_dim)) for b in meta.blocks)


def test_qk_norm_off_adds_nothing(tiny_model) -> None:
    model = tiny_model(positional="rope")
    assert not any("q_norm" in k or "k_norm" in k for k in model.state_dict())
    assert isinstance(model.blocks[0].attn.q_norm, nn.Identity)


# -- sliding window: kernels -----------------------------------------------------------------------
def masked_reference(q, k, v, keep: torch.Tensor, bias=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + bias) v in float64 over the keys ``keep`` (B|1, 1, T, S) allows."""
    q, k, v = (x.double() for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.double()
    return scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v


def window_keep(T: int, S: int, W: int) -> torch.Tensor:
    """(1, 1, T, S): query i (at position S - T + i) sees keys j with i' - W < j <= i'."""
    i = torch.arange(S - T, S)[:, None]
    j = torch.arange(S)[None, :]
    return ((j <= i) & (j > i - W))[None, None]


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize(("T", "S", "W"), [(16, 16, 4), (16, 16, 1), (5, 16, 3), (1, 9, 4)])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_kernel_with_window_mask_matches_fp64(name: str, T: int, S: int, W: int, with_bias: bool) -> None:
    kernel = ATTENTION.build(name)
    if with_bias and not kernel.capabilities("cpu").bias:
        pytest.skip(f"{name} declares no additive bias on cpu")
    g = torch.Generator().manual_seed(T * S + W)
    q = torch.randn(2, 4, T, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(2, 2, S, 16, generator=g, requires_grad=True) for _ in range(2))
    bias = torch.randn(1, 4, T, S, generator=g) if with_bias else None
    keep = window_keep(T, S, W)
    out = kernel(q, k, v, bias=bias, mask=keep, causal=False)
    upstream = torch.randn(out.shape, generator=g)
    (out * upstream).sum().backward()
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = masked_reference(*leaves, keep, bias)
    (ref * upstream.double()).sum().backward()
    torch.testing.assert_close(out.double(), ref, **TOL)
    for x, x_ref in zip((q, k, v), leaves, strict=True):
        torch.testing.assert_close(x.grad.double(), x_ref.grad, **TOL)


# -- sliding window: model -------------------------------------------------------------------------
@pytest.mark.parametrize("attention", KERNELS)
@pytest.mark.parametrize("positional", ["rope", "learned"])
def test_window_reaches_exactly_w_positions_in_one_layer(tiny_model, attention: str, positional: str) -> None:
    """One layer: token t changes the outputs at t .. t + W - 1 and nothing else (L layers reach L (W - 1))."""
    W = 4
    model = tiny_model(attention=attention, positional=positional, sliding_window=W, n_layer=1, init_std=0.2)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(1, 32, (2, 14), generator=g)
    with torch.no_grad():
        base = model(idx)
        for t in (0, 3, 9):
            changed = idx.clone()
            changed[:, t] = (idx[:, t] + 7) % 32
            diff = (model(changed) - base).abs().amax(dim=(0, 2))  # (T,)
            assert (diff[:t] == 0).all() and (diff[t + W :] == 0).all(), (t, diff)
            assert (diff[t : min(t + W, 14)] > 1e-6).all(), (t, diff)


@pytest.mark.parametrize("attention", KERNELS)
def test_window_equals_full_attention_when_wider_than_the_sequence(tiny_model, attention: str) -> None:
    full = tiny_model(attention=attention, positional="rope")
    windowed = tiny_model(attention=attention, positional="rope", sliding_window=16)
    idx = torch.randint(0, 32, (2, 16))
    torch.testing.assert_close(windowed(idx), full(idx), **TOL)
    assert not torch.allclose(
        tiny_model(attention=attention, positional="rope", sliding_window=3)(idx), full(idx)
    )


def greedy_by_recomputation(model, idx: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        idx = torch.cat([idx, model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


GEN_COMBOS = [  # (attention, positional, n_kv_head): RoPE, a learned table, ALiBi's bias through the ring
    ("sdpa", "rope", 1),
    ("naive", "learned", 2),
    ("flash", "rope", 2),
    ("naive", "alibi", 1),
    ("sdpa", "alibi", 2),
]


@pytest.mark.parametrize(("attention", "positional", "n_kv_head"), GEN_COMBOS)
@pytest.mark.parametrize("prompt_len", [2, 9], ids=["short-prompt", "prompt-longer-than-window"])
def test_window_generation_equals_recomputation(
    tiny_model, attention, positional, n_kv_head, prompt_len
) -> None:
    if positional == "alibi" and "alibi" not in POSITIONAL.names():
        pytest.skip("the lightning-llm-alibi plugin is not installed")
    model = tiny_model(
        dtype=torch.float64,
        attention=attention,
        positional=positional,
        n_kv_head=n_kv_head,
        sliding_window=4,
        block_size=24,
        init_std=0.2,
    )
    prompt = torch.randint(0, 32, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    n = 24 - prompt_len
    cached = model.generate(prompt, n, temperature=0.0)
    torch.testing.assert_close(cached, greedy_by_recomputation(model, prompt, n), rtol=0, atol=0)
    # the logits: a prefill, a chunk of 3 that wraps the ring, then one token at a time
    model.setup_kv_cache(2, 24)
    try:
        steps = [model(cached[:, :prompt_len])[:, -1:]]
        steps.append(model(cached[:, prompt_len : prompt_len + 3], start=prompt_len))
        steps += [model(cached[:, t : t + 1], start=t) for t in range(prompt_len + 3, 23)]
    finally:
        model.clear_kv_cache()
    torch.testing.assert_close(
        torch.cat(steps, dim=1), model(cached[:, :23])[:, prompt_len - 1 :], atol=1e-10, rtol=0
    )


def test_window_cache_holds_the_window_not_the_block(tiny_model) -> None:
    model = tiny_model(sliding_window=4, block_size=64, positional="rope")
    model.setup_kv_cache(3, 64)
    try:
        for block in model.blocks:
            cache = block.attn.kv_cache
            assert cache.k.shape == cache.v.shape == (3, model.config.n_kv_head, 4, model.config.head_dim)
    finally:
        model.clear_kv_cache()
    model.setup_kv_cache(3, 2)  # a shorter generation allocates less than the window
    assert model.blocks[0].attn.kv_cache.k.shape[2] == 2
    model.clear_kv_cache()
    plain = tiny_model(block_size=64, positional="rope")
    plain.setup_kv_cache(3)
    assert plain.blocks[0].attn.kv_cache.k.shape[2] == 64
    plain.clear_kv_cache()


# -- document masking ------------------------------------------------------------------------------
def packed(g: torch.Generator, lengths: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One row [docA eot docB eot docC]: docs after the first start with their eot (it acts as a BOS)."""
    docs = [torch.randint(1, 32, (n,), generator=g) for n in lengths]
    alone = [docs[0]] + [torch.cat([torch.tensor([EOT]), d]) for d in docs[1:]]
    return torch.cat(alone), alone


@pytest.mark.parametrize("attention", KERNELS)
@pytest.mark.parametrize("positional", ["rope", "learned", "sinusoidal", "none"])
@pytest.mark.parametrize("window", [None, 3], ids=["nowindow", "window3"])
def test_packed_documents_get_the_logits_they_get_alone(tiny_model, attention, positional, window) -> None:
    model = tiny_model(
        attention=attention,
        positional=positional,
        document_mask=True,
        eot_id=EOT,
        sliding_window=window,
        n_kv_head=1,
        init_std=0.1,
    )
    g = torch.Generator().manual_seed(0)
    rows = [packed(g, (4, 5, 3)), packed(g, (2, 3, 7))]  # two rows with their documents in other places
    idx = torch.stack([row for row, _ in rows])  # (2, 14)
    with torch.no_grad():
        logits = model(idx)
        for b, (_, alone) in enumerate(rows):
            offset = 0
            for doc in alone:
                own = model(doc[None])[0]  # the document by itself, positions from 0
                torch.testing.assert_close(logits[b, offset : offset + len(doc)], own, **TOL)
                offset += len(doc)
    # ... and the mask does something: without it docB's logits see docA
    unmasked = tiny_model(
        attention=attention, positional=positional, sliding_window=window, n_kv_head=1, init_std=0.1
    )
    assert not torch.allclose(unmasked(idx)[:, 6:], logits[:, 6:], atol=1e-4)


@pytest.mark.parametrize("attention", KERNELS)
def test_document_mask_off_changes_nothing(tiny_model, attention: str) -> None:
    default = tiny_model(attention=attention, positional="rope")
    off = tiny_model(attention=attention, positional="rope", eot_id=EOT, document_mask=False)
    assert type(off.masking) is CausalMasking and type(default.masking) is CausalMasking
    idx = torch.randint(0, 32, (2, 16))
    idx[:, 5] = EOT
    torch.testing.assert_close(off(idx), default(idx), rtol=0, atol=0)
    pos, pctx = off.masking(idx, 0, off.pe)
    assert pctx.mask is None and torch.equal(pos, torch.arange(16))


@pytest.mark.parametrize(
    ("attention", "positional", "window"),
    [("sdpa", "rope", None), ("naive", "learned", None), ("flash", "rope", 3), ("sdpa", "sinusoidal", 5)],
)
def test_document_generation_equals_recomputation(tiny_model, attention, positional, window) -> None:
    """Generation treats its context by the same rule as a forward over it: documents start at each eot in
    the tokens seen so far (the prompt's or generated), positions restart there."""
    model = tiny_model(
        dtype=torch.float64,
        attention=attention,
        positional=positional,
        document_mask=True,
        eot_id=EOT,
        sliding_window=window,
        block_size=24,
        init_std=0.2,
    )
    g = torch.Generator().manual_seed(3)
    seq = torch.randint(1, 32, (2, 24), generator=g)
    seq[0, [3, 9, 10, 17]] = EOT  # eots in the prompt and later, two in a row
    seq[1, [6, 20]] = EOT
    model.setup_kv_cache(2, 24)
    try:  # teacher-forced through the cache: a prefill of 5, a chunk of 4, then one token at a time
        steps = [model(seq[:, :5]), model(seq[:, 5:9], start=5)]
        steps += [model(seq[:, t : t + 1], start=t) for t in range(9, 24)]
    finally:
        model.clear_kv_cache()
    torch.testing.assert_close(torch.cat(steps, dim=1), model(seq), atol=1e-10, rtol=0)
    prompt = seq[:, :8]
    cached = model.generate(prompt, 16, temperature=0.0)
    torch.testing.assert_close(cached, greedy_by_recomputation(model, prompt, 16), rtol=0, atol=0)


@pytest.mark.parametrize("pe", [LearnedPositional(16, 2, 8, 32), SinusoidalPositional(16, 2, 8, 32)])
def test_embed_takes_per_row_positions(pe: PositionalEncoding) -> None:
    pe.reset_parameters(0.02)
    pos = torch.tensor([[0, 1, 2, 0, 1], [3, 4, 0, 1, 2]])
    x = torch.randn(2, 5, 16)
    got = pe.embed(x, pos)
    for b in range(2):
        torch.testing.assert_close(got[b], pe.embed(x[b : b + 1], pos[b])[0], rtol=0, atol=0)


def test_rope_takes_per_row_positions() -> None:
    pe = RoPE(16, 2, 8, 32)
    pos = torch.tensor([[0, 1, 2, 0, 1], [3, 4, 0, 1, 2]])
    q, k = torch.randn(2, 2, 2, 5, 8)
    rq, rk = pe.context(pos, 5).rotate(q, k)
    for b in range(2):
        want = pe.context(pos[b], 5).rotate(q[b : b + 1], k[b : b + 1])
        torch.testing.assert_close((rq[b : b + 1], rk[b : b + 1]), want, rtol=0, atol=0)


# -- the CUDA path without a GPU: no host reads, few ops -------------------------------------------
N_LAYER = 2  # test_gpu_path's SHAPE


def _fake_cuda_forward_ops(**overrides):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from test_gpu_path import SHAPE, OpCounter, _default_dtype
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert SHAPE["n_layer"] == N_LAYER

    cfg = GPTConfig(
        **SHAPE, bias=False, attention="sdpa", positional="rope", norm="rmsnorm", mlp="swiglu", **overrides
    )
    with FakeTensorMode(), torch.device("cuda"), _default_dtype(torch.bfloat16):
        model = GPT(cfg, device_type="cuda", dtype=torch.bfloat16)
        idx = torch.randint(0, SHAPE["vocab_size"], (4, SHAPE["block_size"]))
        assert idx.device.type == "cuda"
        with OpCounter() as counter:
            model(idx, idx)  # DataDependentOutputException on any host read of data
    return counter


def test_masked_forward_has_no_host_sync_and_few_extra_ops() -> None:
    base = _fake_cuda_forward_ops()
    masked = _fake_cuda_forward_ops(document_mask=True, eot_id=EOT, sliding_window=16, qk_norm=True)
    assert base.syncs() == {} and masked.syncs() == {}
    # the mask and positions once per forward (about ten ops; the kernels' own causal masks go), and in
    # each layer one fused rms_norm of q and one of k (measured: +6 in all)
    extra = masked.kernels - base.kernels
    assert 0 < extra <= 12 + N_LAYER * 2 * 2, (extra, (masked.ops - base.ops).most_common(12))


# -- build-time refusals ---------------------------------------------------------------------------
TINY = dict(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16)


@pytest.mark.parametrize(
    ("options", "needed", "off"),
    [
        (dict(sliding_window=4), "sliding_window=4", "sliding_window: null"),
        (dict(document_mask=True, eot_id=EOT), "document_mask: true", "document_mask: false"),
    ],
)
def test_flash_on_cuda_refuses_masks_and_names_kernels_that_can(options, needed: str, off: str) -> None:
    with pytest.raises(IncompatibleComponentsError) as err:
        GPT(
            GPTConfig(**TINY, attention="flash", positional="rope", **options),
            device_type="cuda",
            dtype=torch.bfloat16,
        )
    msg = str(err.value)
    assert needed in msg and off in msg and "Kernels that can: naive, sdpa" in msg, msg
    GPT(
        GPTConfig(**TINY, attention="sdpa", positional="rope", **options),
        device_type="cuda",
        dtype=torch.bfloat16,
    )
    cpu_flash = GPTConfig(**TINY, attention="flash", positional="rope", **options)
    GPT(cpu_flash, device_type="cpu")  # flash on CPU takes masks


class UndeclaredKernel(AttentionKernel):
    """A plugin kernel from before masks: declares nothing about them and takes no ``mask``."""

    def capabilities(self, device_type: str) -> AttentionCapabilities:
        return AttentionCapabilities(bias=True)

    def __call__(self, q, k, v, *, bias=None, dropout_p=0.0, causal=True):
        return ATTENTION.build("naive")(q, k, v, bias=bias, dropout_p=dropout_p, causal=causal)


def test_a_kernel_that_does_not_declare_masks_fails_at_build_and_still_runs_without(register_plugin) -> None:
    register_plugin(ATTENTION, "test-undeclared", UndeclaredKernel)
    for options, what in [
        (dict(sliding_window=4), "a sliding-window mask on cpu"),
        (dict(document_mask=True, eot_id=EOT), "a per-document attention mask on cpu"),
    ]:
        with pytest.raises(IncompatibleComponentsError, match=what) as err:
            GPT(GPTConfig(**TINY, attention="test-undeclared", **options), device_type="cpu")
        can = str(err.value).split("Kernels that can:")[1]
        assert "naive" in can and "sdpa" in can and "test-undeclared" not in can
    model = GPT(GPTConfig(**TINY, attention="test-undeclared", qk_norm=True), device_type="cpu")
    assert model(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 32)  # called without ``mask``


def test_document_mask_needs_eot_id() -> None:
    with pytest.raises(ValueError, match=r"document_mask needs eot_id.*eot_id=tokenizer.eot_id"):
        GPT(GPTConfig(**TINY, document_mask=True), device_type="cpu")
    with torch.device("meta"), pytest.raises(ValueError, match="document_mask needs eot_id"):
        GPT(GPTConfig(**TINY, document_mask=True))


class AbsoluteOnlyPositional(PositionalEncoding):
    """A plugin encoding that knows only (T,) positions (does not declare ``document_positions``)."""

    needs_attention_bias = True

    def context(self, pos: torch.Tensor, kv_len: int) -> PositionalContext:
        return PositionalContext(bias=torch.zeros(1, 1, pos.shape[-1], kv_len))


def test_positional_without_document_positions_is_refused(register_plugin) -> None:
    register_plugin(POSITIONAL, "test-absolute", AbsoluteOnlyPositional)
    with pytest.raises(
        ComponentError, match="positional 'test-absolute' does not take per-document positions"
    ) as e:
        GPT(GPTConfig(**TINY, positional="test-absolute", document_mask=True, eot_id=EOT), device_type="cpu")
    assert "rope" in str(e.value) and "document_mask: false" in str(e.value)
    GPT(
        GPTConfig(**TINY, positional="test-absolute", sliding_window=3), device_type="cpu"
    )  # a window is fine
