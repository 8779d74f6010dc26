"""The ``relu2`` MLP (Primer's squared ReLU, modded-nanogpt): the fp64 definition, the build from a config,
its init and tensor-parallel plan from the ``FeedForward`` contract, and a few training steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_llm.components.mlp import ReluSquared, check_feedforward
from lightning_llm.model import GPT
from lightning_llm.registry import MLP


def _reference(mlp: ReluSquared, x: torch.Tensor) -> torch.Tensor:
    """proj(relu(fc(x))^2) written out in fp64."""
    fc_w, proj_w = mlp.fc.weight.double(), mlp.proj.weight.double()
    hidden = x.double() @ fc_w.T
    if mlp.fc.bias is not None:
        hidden = hidden + mlp.fc.bias.double()
    out = torch.clamp(hidden, min=0.0).pow(2) @ proj_w.T
    if mlp.proj.bias is not None:
        out = out + mlp.proj.bias.double()
    return out


@pytest.mark.parametrize("bias", [False, True])
def test_relu2_matches_fp64_reference(bias: bool) -> None:
    torch.manual_seed(0)
    mlp = ReluSquared(24, 96, bias=bias)
    mlp.reset_parameters(std=0.2, residual_std=0.1)
    if bias:  # non-zero biases, so they are part of what is checked
        torch.nn.init.normal_(mlp.fc.bias, std=0.1)
        torch.nn.init.normal_(mlp.proj.bias, std=0.1)
    x = torch.randn(3, 7, 24, requires_grad=True)
    out = mlp(x)
    assert out.shape == (3, 7, 24)
    torch.testing.assert_close(out.double(), _reference(mlp, x), atol=1e-5, rtol=1e-5)

    x64 = x.detach().double().requires_grad_()
    out.sum().backward()
    _reference(mlp, x64).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-5)


def test_relu2_is_registered_with_a_description_and_the_contract() -> None:
    assert MLP.get("relu2") is ReluSquared
    assert ReluSquared.description
    mlp = ReluSquared(16, 64)
    check_feedforward(mlp, "relu2")  # raises on a broken contract
    assert mlp.residual_projections() == [mlp.proj]
    assert mlp.tp_plan() == {"fc": "colwise", "proj": "rowwise"}
    assert mlp.fc.bias is None and mlp.proj.bias is None  # bias off by default (modded-nanogpt)


def test_relu2_builds_in_a_gpt_with_the_gpt2_init(tiny_config) -> None:
    torch.manual_seed(0)
    model = GPT(tiny_config(n_embd=256, intermediate_size=1024, n_layer=2, mlp="relu2"), device_type="cpu")
    for block in model.blocks:
        mlp = block.mlp
        assert isinstance(mlp, ReluSquared)
        assert mlp.fc.weight.shape == (1024, 256) and mlp.proj.weight.shape == (256, 1024)
        assert float(mlp.fc.weight.detach().double().std()) == pytest.approx(0.02, rel=0.02)
        assert float(mlp.proj.weight.detach().double().std()) == pytest.approx(0.01, rel=0.02)  # / sqrt(2 L)
        assert block.tp_plan() == {
            "attn.qkv": "colwise",
            "attn.proj": "rowwise",
            "mlp.fc": "colwise",
            "mlp.proj": "rowwise",
        }


def test_relu2_takes_the_model_wide_bias_and_dropout(tiny_config) -> None:
    model = GPT(tiny_config(mlp="relu2", bias=True, dropout=0.25), device_type="cpu")
    mlp = model.blocks[0].mlp
    assert mlp.fc.bias is not None and mlp.proj.bias is not None
    assert mlp.dropout.p == 0.25


def test_relu2_zero_init_proj_starts_each_mlp_as_identity(tiny_config) -> None:
    torch.manual_seed(0)
    spec = {"name": "relu2", "options": {"zero_init_proj": True}}
    model = GPT(tiny_config(mlp=spec), device_type="cpu")
    x = torch.randn(2, 5, 16)
    for block in model.blocks:
        assert torch.count_nonzero(block.mlp.proj.weight) == 0
        assert float(block.mlp.fc.weight.detach().std()) > 0  # only the output projection is zeroed
        assert torch.equal(block.mlp(x), torch.zeros_like(x))
    idx = torch.randint(0, 32, (2, 16))
    model(idx, idx).backward()
    assert all(float(b.mlp.proj.weight.grad.abs().max()) > 0 for b in model.blocks)  # it still learns


def test_gpt_with_relu2_trains(tiny_config) -> None:
    """A few AdamW steps on one batch: the loss falls well below its start (memorisation)."""
    torch.manual_seed(0)
    model = GPT(tiny_config(mlp="relu2", n_embd=32, intermediate_size=128), device_type="cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 32, (4, 16))
    targets = torch.roll(idx, -1, dims=1)
    losses = []
    for _ in range(30):
        loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses
    logits = model(idx)
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert model(idx, targets).item() == pytest.approx(ref.item(), abs=1e-4)
