"""ALiBi as an installed plugin: slopes, bias, discovery, kernel parity, training, build-time checks."""

from __future__ import annotations

import pytest
import torch
from lightning_llm_alibi import ALiBi, alibi_slopes

from lightning_llm.components.positional import PositionalEncoding
from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT, IncompatibleComponentsError
from lightning_llm.registry import POSITIONAL


def tiny(attention: str, **kw) -> GPTConfig:
    base = dict(vocab_size=32, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, bias=False)
    return GPTConfig(**{**base, **kw}, attention=attention, positional="alibi")


def test_slopes_power_of_two_follow_the_paper() -> None:
    # Press et al. (2021), section 3: 8 heads -> 1/2^1 ... 1/2^8
    assert alibi_slopes(8) == pytest.approx([2.0**-i for i in range(1, 9)])
    assert alibi_slopes(4) == pytest.approx([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8])


def test_slopes_non_power_of_two_interleave_the_next_power() -> None:
    # 6 heads: the 4-head slopes, then every other slope of 8 heads (1/2, 1/8)
    assert alibi_slopes(6) == pytest.approx([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3])
    assert alibi_slopes(12)[8:] == pytest.approx([2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5])
    assert len(alibi_slopes(12)) == 12


@pytest.mark.parametrize(("start", "t", "kv_len"), [(0, 6, 6), (5, 1, 6), (3, 2, 5)])
def test_bias_is_slope_times_relative_position(start: int, t: int, kv_len: int) -> None:
    pe = ALiBi(32, 4, 8, 16)
    bias = pe.context(torch.arange(start, start + t), kv_len).bias
    assert bias is not None and bias.shape == (1, 4, t, kv_len)
    slopes = alibi_slopes(4)
    for h in range(4):
        for i in range(t):
            for j in range(kv_len):
                assert bias[0, h, i, j].item() == pytest.approx(slopes[h] * (j - (start + i)))
    assert pe.needs_attention_bias and isinstance(pe, PositionalEncoding)


def test_discovered_through_the_installed_entry_point() -> None:
    entry = POSITIONAL.entry("alibi")
    assert entry.obj is ALiBi
    assert entry.source.startswith("lightning-llm-alibi ")


def test_sdpa_and_naive_agree_on_logits_and_grads() -> None:
    torch.manual_seed(0)
    ref = GPT(tiny("naive"))
    other = GPT(tiny("sdpa"))
    other.load_state_dict(ref.state_dict())
    idx = torch.randint(0, 32, (2, 12))
    tgt = torch.randint(0, 32, (2, 12))
    torch.testing.assert_close(other(idx), ref(idx), atol=1e-5, rtol=1e-5)
    ref(idx, tgt).backward()
    other(idx, tgt).backward()
    for (name, p_ref), p_other in zip(ref.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(p_other.grad, p_ref.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
def test_a_few_steps_reduce_the_loss(attention: str) -> None:
    torch.manual_seed(0)
    model = GPT(tiny(attention))
    seq = torch.arange(8).repeat(2)[None]  # a tiny repeated sequence: easy to memorise
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_flash_with_alibi_fails_at_build_time_on_cuda() -> None:
    with pytest.raises(IncompatibleComponentsError, match="additive attention bias") as err:
        GPT(tiny("flash"), device_type="cuda", dtype=torch.bfloat16)
    assert "alibi" in str(err.value) and "sdpa" in str(err.value) and "naive" in str(err.value)


def test_flash_with_alibi_works_on_cpu() -> None:
    torch.manual_seed(0)
    flash = GPT(tiny("flash"), device_type="cpu")
    ref = GPT(tiny("naive"))
    ref.load_state_dict(flash.state_dict())
    idx = torch.randint(0, 32, (1, 10))
    torch.testing.assert_close(flash(idx), ref(idx), atol=1e-5, rtol=1e-5)


def test_meta_device_build_then_materialise() -> None:
    """Sharded training builds on the meta device; reset_parameters must restore the slopes."""
    with torch.device("meta"):
        model = GPT(tiny("sdpa"))
    model.to_empty(device="cpu")
    model.reset_parameters()
    torch.testing.assert_close(model.pe.slopes, torch.tensor(alibi_slopes(4)))
