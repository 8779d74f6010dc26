"""Build-time capability checks: a kernel that can't serve the model fails in GPT(...), with a remedy."""

from __future__ import annotations

import pytest
import torch

from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT, IncompatibleComponentsError

TINY = dict(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16)


def test_flash_with_attention_dropout_fails_for_cpu_training() -> None:
    cfg = GPTConfig(**TINY, attention="flash", attn_dropout=0.1)
    with pytest.raises(IncompatibleComponentsError) as err:
        GPT(cfg, device_type="cpu")
    msg = str(err.value)
    assert "attention dropout on cpu" in msg and "attn_dropout=0.1" in msg
    assert "Kernels that can: naive, sdpa" in msg and "attn_dropout: 0.0" in msg
    GPT(cfg, device_type="cpu", check_training=False)  # inference never applies dropout: fine


def test_flash_with_alibi_fails_on_cuda_and_names_alternatives() -> None:
    cfg = GPTConfig(**TINY, attention="flash", positional="alibi")
    with pytest.raises(IncompatibleComponentsError) as err:
        GPT(cfg, device_type="cuda", dtype=torch.bfloat16)
    msg = str(err.value)
    assert "additive attention bias on cuda" in msg and "positional 'alibi' needs an attention bias" in msg
    assert "naive" in msg and "sdpa" in msg
    GPT(GPTConfig(**TINY, attention="sdpa", positional="alibi"), device_type="cuda")  # a bias kernel is fine


def test_flash_dtype_check_on_cuda() -> None:
    with pytest.raises(IncompatibleComponentsError, match="dtype torch.float32 on cuda"):
        GPT(GPTConfig(**TINY, attention="flash"), device_type="cuda", dtype=torch.float32)


def test_meta_device_skips_the_check() -> None:
    with torch.device("meta"):
        model = GPT(GPTConfig(**TINY, attention="flash", attn_dropout=0.1))
    assert all(p.is_meta for p in model.parameters())
