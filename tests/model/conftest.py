"""Shared fixtures for the model tests: a factory of tiny configs and models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT
from lightning_llm.registry import Registry

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


@pytest.fixture
def register_plugin(monkeypatch: pytest.MonkeyPatch) -> Callable[[Registry[Any], str, Any], Any]:
    """``register_plugin(registry, name, obj)``: ``obj`` is a registered component for this test only.

    The registry's table (built-ins and installed plugins loaded first) is swapped for a copy that the
    registration goes into; monkeypatch puts the original back after the test, so nothing leaks into the
    tests parametrized over the registries.
    """

    def register(registry: Registry[Any], name: str, obj: Any) -> Any:
        registry.names()  # load built-ins and entry points into the real table before copying it
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        return registry.register(name, obj, source="test")

    return register
