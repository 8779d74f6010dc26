"""Component contracts live in the components: a plugin whose layers are named unlike the built-ins' gets
the right init, tensor-parallel plan, parameter count and FLOPs, and one that declares nothing (or cannot
honour a model-wide option) fails at build time with the fix in the message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from plugin_mlp import GatedMLP
from torch import nn

from lightning_llm.components.mlp import FeedForward
from lightning_llm.components.norm import Norm
from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT
from lightning_llm.perf import flops_per_token, meta_model
from lightning_llm.registry import MLP, NORM, ComponentError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32, bias=False)


class UndeclaredMLP(GatedMLP):
    """Says nothing about which layer writes back into the residual stream."""

    residual_projections = FeedForward.residual_projections  # type: ignore[assignment]


class NotAFeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, *, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.w_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(x)


class BadPlanMLP(GatedMLP):
    def tp_plan(self):  # type: ignore[override]
        return {"w_out": "row", "w_nowhere": "colwise"}


class NoDropoutMLP(GatedMLP):
    def __init__(self, dim: int, hidden_dim: int, *, bias: bool = False) -> None:
        super().__init__(dim, hidden_dim, bias=bias)


class BiaslessNorm(Norm):
    """A norm that takes eps but not bias."""

    def __init__(self, dim: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class EpslessNorm(BiaslessNorm):
    def __init__(self, dim: int, *, bias: bool = False) -> None:
        super().__init__(dim)


# -- init ------------------------------------------------------------------------------------------
def test_plugin_mlp_residual_projection_gets_the_residual_init_std(register_plugin) -> None:
    """std 0.02 for w_gate/w_in, 0.02 / sqrt(2 * n_layer) = 0.01 for w_out, measured on 256 x 1024 layers."""
    register_plugin(MLP, "test-gated", GatedMLP)
    torch.manual_seed(0)
    cfg = GPTConfig(**{**SMALL, "n_embd": 256, "intermediate_size": 1024, "mlp": "test-gated"})
    model = GPT(cfg, device_type="cpu")
    for block in model.blocks:
        stds = {
            name: float(lin.weight.detach().double().std())
            for name, lin in block.mlp.named_children()
            if name != "drop"
        }
        assert stds["w_out"] == pytest.approx(0.01, rel=0.02), stds
        assert stds["w_gate"] == pytest.approx(0.02, rel=0.02), stds
        assert stds["w_in"] == pytest.approx(0.02, rel=0.02), stds
        assert float(block.attn.proj.weight.detach().double().std()) == pytest.approx(0.01, rel=0.03)
        assert float(block.attn.qkv.weight.detach().double().std()) == pytest.approx(0.02, rel=0.03)


@pytest.mark.parametrize(("mlp", "inputs"), [("gelu", ["fc"]), ("swiglu", ["gate", "up"])])
def test_builtin_mlps_keep_their_init_and_plan(tiny_config, mlp: str, inputs: list[str]) -> None:
    torch.manual_seed(0)
    model = GPT(tiny_config(n_embd=256, intermediate_size=1024, mlp=mlp), device_type="cpu")
    block = model.blocks[0]
    assert block.mlp.residual_projections() == [block.mlp.proj]
    assert block.mlp.tp_plan() == {**{n: "colwise" for n in inputs}, "proj": "rowwise"}
    assert float(block.mlp.proj.weight.detach().double().std()) == pytest.approx(0.01, rel=0.02)
    for name in inputs:
        assert float(getattr(block.mlp, name).weight.detach().double().std()) == pytest.approx(0.02, rel=0.02)


# -- tensor-parallel plan --------------------------------------------------------------------------
def test_plugin_mlp_tp_plan_follows_its_residual_projection(register_plugin) -> None:
    register_plugin(MLP, "test-gated", GatedMLP)
    with torch.device("meta"):
        model = GPT(GPTConfig(**SMALL, mlp="test-gated"), device_type="meta")
    for block in model.blocks:
        assert block.tp_plan() == {
            "attn.qkv": "colwise",
            "attn.proj": "rowwise",
            "mlp.w_gate": "colwise",
            "mlp.w_in": "colwise",
            "mlp.w_out": "rowwise",
        }


def test_builtin_block_tp_plan_is_megatron(tiny_config) -> None:
    with torch.device("meta"):
        model = GPT(tiny_config(mlp="gelu"), device_type="meta")
    assert model.blocks[0].tp_plan() == {
        "attn.qkv": "colwise",
        "attn.proj": "rowwise",
        "mlp.fc": "colwise",
        "mlp.proj": "rowwise",
    }


# -- counts and FLOPs from the built module --------------------------------------------------------
@pytest.mark.parametrize("tie", [True, False])
def test_plugin_mlp_counts_and_flops_come_from_its_own_layers(register_plugin, tie: bool) -> None:
    register_plugin(MLP, "test-gated", GatedMLP)
    cfg = GPTConfig(
        **{**SMALL, "intermediate_size": 80, "norm": "rmsnorm", "tie_embeddings": tie}, mlp="test-gated"
    )
    model = meta_model(cfg)
    V, C, H, L = cfg.vocab_size, cfg.n_embd, 80, cfg.n_layer
    mlp = model.blocks[0].mlp
    mlp_params = sum(lin.in_features * lin.out_features for lin in (mlp.w_gate, mlp.w_in, mlp.w_out))
    assert mlp_params == 3 * C * H
    attn = C * (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim + C * C  # type: ignore[operator]
    n_matmul = L * (attn + mlp_params + 2 * C) + C + V * C  # blocks (2 rmsnorms each), final norm, head
    assert model.num_params(include_embedding=False) == n_matmul
    # lookup tables are left out of N: the learned position table, and the token embedding unless tied
    assert model.num_params() == n_matmul + cfg.block_size * C + (0 if tie else V * C)
    assert flops_per_token(model, 12) == 6.0 * n_matmul + 12.0 * L * C * 12
    assert flops_per_token(model) == 6.0 * n_matmul + 12.0 * L * C * cfg.block_size


def _old_num_params(cfg: GPTConfig, include_embedding: bool = True) -> int:
    """The former ``GPTConfig.num_params``, by component names: a reference for the built-ins only."""
    c, h = cfg.n_embd, cfg.intermediate_size
    kv = cfg.n_kv_head * cfg.head_dim  # type: ignore[operator]
    b = int(cfg.bias)
    attn = c * (c + 2 * kv) + b * (c + 2 * kv) + c * c + b * c
    n_in = 2 if cfg.mlp.name == "swiglu" else 1  # type: ignore[union-attr]
    mlp = n_in * (c * h + b * h) + h * c + b * c  # type: ignore[operator]
    norm = c * (2 if cfg.norm.name == "layernorm" and cfg.bias else 1)  # type: ignore[union-attr]
    qk_norm = 2 * cfg.head_dim if cfg.qk_norm else 0  # one scale of head_dim for q, one for k
    n = cfg.n_layer * (attn + qk_norm + mlp + 2 * norm) + norm
    if include_embedding:
        n += cfg.vocab_size * c * (1 if cfg.tie_embeddings else 2)
        if cfg.positional.name == "learned":  # type: ignore[union-attr]
            n += cfg.block_size * c
    return n


def _old_flops_per_token(cfg: GPTConfig, seq_len: int) -> float:
    """The former ``GPTConfig.flops_per_token``: 6 (non-embedding + head) + 12 L C T."""
    n = _old_num_params(cfg, include_embedding=False) + cfg.vocab_size * cfg.n_embd
    return 6.0 * n + 12.0 * cfg.n_layer * cfg.n_embd * seq_len


def _builtin_configs() -> list[tuple[str, GPTConfig]]:
    presets = [
        (p.name, GPTConfig(**yaml.safe_load(p.read_text())["model"]["config"]))
        for p in CONFIGS.glob("*.yaml")
    ]
    variants = [
        ("gpt2-124m-default", GPTConfig()),
        (
            "bias-untied-gqa-swiglu",
            GPTConfig(**{**SMALL, "bias": True}, n_kv_head=2, tie_embeddings=False, mlp="swiglu"),
        ),
        (
            "rmsnorm-gelu-sinusoidal",
            GPTConfig(**SMALL, norm="rmsnorm", positional="sinusoidal", intermediate_size=48),
        ),
        (
            "layernorm-nobias-learned",
            GPTConfig(**SMALL, norm="layernorm", positional="learned", mlp="swiglu"),
        ),
    ]
    return sorted(presets) + variants


@pytest.mark.parametrize(("name", "cfg"), _builtin_configs(), ids=[n for n, _ in _builtin_configs()])
def test_builtin_counts_equal_the_former_formula(name: str, cfg: GPTConfig) -> None:
    model = meta_model(cfg)
    assert model.num_params() == _old_num_params(cfg), name
    for seq_len in (cfg.block_size, 7):
        assert flops_per_token(model, seq_len) == _old_flops_per_token(cfg, seq_len), name


def test_gpt2_124m_numbers_are_unchanged() -> None:
    """nanoGPT's GPT-2 small: 124.48M parameters, 123.69M without the position table, 855.4 MFLOP/token."""
    model = meta_model(GPTConfig())
    assert model.num_params() == 124_475_904
    assert model.num_params(include_embedding=False) == 123_689_472
    assert flops_per_token(model, 1024) == 855_383_040.0


# -- build-time refusals ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_plugin_mlp_without_a_residual_projection_fails_at_build(register_plugin, device: str) -> None:
    register_plugin(MLP, "test-undeclared", UndeclaredMLP)
    with torch.device(device), pytest.raises(ComponentError) as err:
        GPT(GPTConfig(**SMALL, mlp="test-undeclared"), device_type=device)
    msg = str(err.value)
    assert "mlp 'test-undeclared' (UndeclaredMLP)" in msg and "residual_projections()" in msg


def test_mlp_that_is_not_a_feedforward_fails_at_build(register_plugin) -> None:
    register_plugin(MLP, "test-plain-module", NotAFeedForward)
    with pytest.raises(
        ComponentError, match=r"mlp 'test-plain-module' \(NotAFeedForward\) is not a FeedForward"
    ):
        GPT(GPTConfig(**SMALL, mlp="test-plain-module"))


def test_mlp_with_a_wrong_tp_plan_fails_at_build(register_plugin) -> None:
    register_plugin(MLP, "test-bad-plan", BadPlanMLP)
    with pytest.raises(
        ComponentError,
        match=r"'test-bad-plan' \(BadPlanMLP\).tp_plan\(\) must map .*'w_out': 'row', 'w_nowhere'",
    ):
        GPT(GPTConfig(**SMALL, mlp="test-bad-plan"))


def test_norm_without_bias_refuses_bias_true(register_plugin) -> None:
    register_plugin(NORM, "test-biasless", BiaslessNorm)
    with pytest.raises(ComponentError) as err:
        GPT(GPTConfig(**{**SMALL, "bias": True}, norm="test-biasless"))
    msg = str(err.value)
    assert "norm 'test-biasless' has no bias: set model.config.bias: false" in msg
    assert "or set model.config.norm to one that takes bias (" in msg and "layernorm" in msg
    GPT(GPTConfig(**SMALL, norm="test-biasless"))  # bias: false is a no-op for it: builds


def test_rmsnorm_refuses_bias_true() -> None:
    with pytest.raises(
        ComponentError, match=r"norm 'rmsnorm' has no bias: set model.config.bias: false, or .*layernorm"
    ):
        GPT(GPTConfig(**{**SMALL, "bias": True}, norm="rmsnorm"))
    with torch.device("meta"):
        norm = GPT(GPTConfig(**SMALL, norm="rmsnorm"), device_type="meta").norm_f
    assert [n for n, _ in norm.named_parameters()] == ["weight"]


def test_norm_must_take_eps(register_plugin) -> None:
    register_plugin(NORM, "test-epsless", EpslessNorm)
    with pytest.raises(
        ComponentError, match=r"norm 'test-epsless' does not take `eps`, which every norm must"
    ):
        GPT(GPTConfig(**SMALL, norm="test-epsless"))


def test_mlp_without_dropout_refuses_dropout(register_plugin) -> None:
    register_plugin(MLP, "test-no-dropout", NoDropoutMLP)
    with pytest.raises(
        ComponentError,
        match=r"mlp 'test-no-dropout' has no dropout: set model.config.dropout: 0.0, or .*gelu",
    ):
        GPT(GPTConfig(**SMALL, mlp="test-no-dropout", dropout=0.1))
    GPT(GPTConfig(**SMALL, mlp="test-no-dropout"))  # dropout 0.0 is a no-op for it: builds


def test_registered_test_plugins_do_not_leak() -> None:
    """Runs after the tests above in file order: the fixture put the original tables back."""
    assert not [n for n in MLP.names() + NORM.names() if n.startswith("test-")]


# -- generation ------------------------------------------------------------------------------------
def test_generate_does_not_import_the_model() -> None:
    """One direction: model -> generate (``GPT.generate`` is ``generate.generate``), never back."""
    code = "import lightning_llm.generate, sys; assert 'lightning_llm.model' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
