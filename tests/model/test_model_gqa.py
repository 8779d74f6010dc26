"""GQA against torch's own multi-head attention, built independently with copied weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_llm.components.positional import PositionalContext
from lightning_llm.model import GPT


def plain_mha_from(attn, n_head: int, n_kv_head: int, dim: int) -> nn.MultiheadAttention:
    """``nn.MultiheadAttention`` with our weights; each KV head's rows repeated for its query group.

    Our fused ``qkv`` rows are grouped per KV head, ``[q_0 .. q_{G-1}, k, v]`` (so that a tensor-parallel
    shard holds whole groups); query head ``h = kv * G + j`` uses KV head ``kv``.
    """
    hd, group = dim // n_head, n_head // n_kv_head
    w = attn.qkv.weight.detach().view(n_kv_head, group + 2, hd, dim)
    wq = w[:, :group].reshape(n_head * hd, dim)  # query heads in order kv * G + j
    wk = w[:, group].repeat_interleave(group, dim=0).reshape(n_head * hd, dim)  # head h -> KV head h // G
    wv = w[:, group + 1].repeat_interleave(group, dim=0).reshape(n_head * hd, dim)
    mha = nn.MultiheadAttention(dim, n_head, bias=False, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([wq, wk, wv]))
        mha.out_proj.weight.copy_(attn.proj.weight)
    return mha.eval()


@pytest.mark.parametrize("n_kv_head", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("attention", ["sdpa", "naive", "flash"])
def test_attention_module_equals_torch_mha(tiny_model, attention: str, n_kv_head: int) -> None:
    model = tiny_model(attention=attention, n_head=4, n_kv_head=n_kv_head, n_embd=32, positional="none")
    attn = model.blocks[0].attn
    mha = plain_mha_from(attn, 4, n_kv_head, 32)
    x = torch.randn(2, 9, 32)
    future = torch.ones(9, 9, dtype=torch.bool).triu(1)  # True = may not attend
    want = mha(x, x, x, attn_mask=future, need_weights=False)[0]
    torch.testing.assert_close(attn(x, PositionalContext()), want, atol=1e-5, rtol=1e-5)


def test_gqa_with_all_kv_heads_is_plain_multi_head(tiny_model) -> None:
    """n_kv_head == n_head (explicit) is exactly the default multi-head model."""
    explicit = tiny_model(n_head=4, n_kv_head=4, n_embd=32, positional="rope")
    default = tiny_model(n_head=4, n_embd=32, positional="rope")
    assert default.config.n_kv_head == 4
    default.load_state_dict(explicit.state_dict())
    idx = torch.randint(0, 32, (2, 10))
    torch.testing.assert_close(explicit(idx), default(idx), rtol=0, atol=0)


def test_gqa_shrinks_the_kv_projection() -> None:
    from lightning_llm.config import GPTConfig

    cfg = GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=4, n_kv_head=1, n_embd=32)
    assert GPT(cfg).blocks[0].attn.qkv.weight.shape == ((4 + 2 * 1) * 8, 32)
