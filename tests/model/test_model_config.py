"""GPTConfig validation and its torch-free import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lightning_llm.config import ComponentSpec, GPTConfig
from lightning_llm.model import GPT
from lightning_llm.registry import ComponentError


def test_n_head_must_divide_n_embd() -> None:
    with pytest.raises(ValueError, match=r"n_head=5 does not divide n_embd=32.*Pick n_head from"):
        GPTConfig(n_head=5, n_embd=32)


def test_n_kv_head_must_divide_n_head() -> None:
    with pytest.raises(
        ValueError, match=r"n_kv_head=3 does not divide n_head=4.*Valid n_kv_head values: \[1, 2, 4\]"
    ):
        GPTConfig(n_head=4, n_kv_head=3, n_embd=32)


@pytest.mark.parametrize("field", ["n_layer", "vocab_size", "block_size"])
def test_sizes_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
        GPTConfig(**{field: 0})


def test_dropout_range() -> None:
    with pytest.raises(ValueError, match="attn_dropout must be in"):
        GPTConfig(attn_dropout=1.0)


def test_unknown_component_lists_available() -> None:
    cfg = GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16, norm="batchnorm")
    with pytest.raises(ComponentError, match=r"Unknown norm 'batchnorm'. Available: layernorm, rmsnorm"):
        cfg.check_components()
    with pytest.raises(ComponentError, match="Unknown norm"):
        GPT(cfg)


def test_bad_option_lists_valid_options() -> None:
    cfg = GPTConfig(positional={"name": "rope", "options": {"bse": 1.0}})
    with pytest.raises(ComponentError, match=r"positional 'rope' has no option 'bse'. Valid options: base="):
        cfg.check_components()


def test_component_spec_parsing() -> None:
    cfg = GPTConfig(attention="naive", positional={"name": "rope", "options": {"base": 500.0}})
    assert cfg.attention == ComponentSpec("naive")
    assert cfg.positional == ComponentSpec("rope", {"base": 500.0})
    with pytest.raises(ValueError, match="must be a component name"):
        GPTConfig(mlp={"kind": "gelu"})


def test_config_imports_no_torch() -> None:
    code = "import lightning_llm.config, sys; lightning_llm.config.GPTConfig(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
