"""Shared fixtures for the model tests: a factory of tiny configs and models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT

TINY: dict[str, Any] = dict(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=False)


@pytest.fixture
def tiny_config() -> Callable[..., GPTConfig]:
    """``tiny_config(**overrides)``: a 2-layer, 16-wide config that builds in milliseconds."""
    return lambda **kw: GPTConfig(**{**TINY, **kw})


@pytest.fixture
def tiny_model(tiny_config) -> Callable[..., GPT]:
    """``tiny_model(seed=0, dtype=..., **overrides)``: a seeded tiny GPT in eval mode."""

    def make(seed: int = 0, dtype: torch.dtype = torch.float32, **kw: Any) -> GPT:
        torch.manual_seed(seed)
        return GPT(tiny_config(**kw), device_type="cpu", dtype=dtype).to(dtype).eval()

    return make
