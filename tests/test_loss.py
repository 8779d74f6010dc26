"""``linear_cross_entropy`` against the fp64 ``F.cross_entropy(h @ W^T, y)`` reference: value and gradients."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_llm import loss as loss_mod
from lightning_llm.loss import linear_cross_entropy, softcap_logits

# (atol on the loss, atol on gradients relative to their max magnitude)
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 3e-2)}


def _reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100):
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    loss = F.cross_entropy(h @ w.T, targets, ignore_index=ignore_index)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def _inputs(n: int, c: int, v: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(v, c, generator=g) * 0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, targets


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    scale = expected.abs().max().item() or 1.0
    err = (actual.double() - expected).abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} * {scale:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_matches_reference(dtype: torch.dtype, chunk_size: int) -> None:
    hidden, weight, targets = _inputs(67, 24, 101, dtype)  # 67 rows: no chunk size divides it
    loss = linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size)
    loss.backward()
    ref, dh, dw = _reference(hidden, weight, targets)
    atol, rel = TOLERANCES[dtype]
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref.item()) <= atol * max(1.0, ref.item())
    assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype
    _close(hidden.grad, dh, rel)
    _close(weight.grad, dw, rel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ignore_index(dtype: torch.dtype) -> None:
    hidden, weight, targets = _inputs(50, 16, 40, dtype, seed=1)
    targets[::3] = -100
    targets[-5:] = -100
    loss = linear_cross_entropy(hidden, weight, targets, chunk_size=16)
    loss.backward()
    ref, dh, dw = _reference(hidden, weight, targets)
    atol, rel = TOLERANCES[dtype]
    assert abs(loss.item() - ref.item()) <= atol * max(1.0, ref.item())
    assert torch.all(hidden.grad[::3] == 0)
    _close(hidden.grad, dh, rel)
    _close(weight.grad, dw, rel)


def test_custom_ignore_index_and_all_ignored() -> None:
    hidden, weight, targets = _inputs(20, 8, 30, torch.float32, seed=2)
    targets[:4] = 7
    loss = linear_cross_entropy(hidden, weight, targets, ignore_index=7)
    ref, _, _ = _reference(hidden, weight, targets, ignore_index=7)
    assert abs(loss.item() - ref.item()) < 1e-5
    all_ignored = torch.full_like(targets, -100)
    loss = linear_cross_entropy(hidden, weight, all_ignored)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(hidden.grad == 0)


def test_tied_weight_gradients_add_up() -> None:
    """The head weight shared with an embedding: autograd sums both gradients, as with nn.Linear."""
    torch.manual_seed(3)
    emb = torch.nn.Embedding(30, 12)
    idx = torch.randint(0, 30, (4, 9))
    targets = torch.randint(0, 30, (36,))

    hidden = torch.tanh(emb(idx)).flatten(0, 1)  # (36, 12)
    linear_cross_entropy(hidden, emb.weight, targets, chunk_size=10).backward()
    ours = emb.weight.grad.clone()

    emb.weight.grad = None
    emb64 = emb.double()
    hidden = torch.tanh(emb64(idx)).flatten(0, 1)
    F.cross_entropy(hidden @ emb64.weight.T, targets).backward()
    _close(ours, emb64.weight.grad, 1e-5)


def test_autocast_bf16_matches_plain_autocast_path() -> None:
    """Under autocast the matmuls run in bf16, the softmax in fp32: same numbers as lm_head + F.cross_entropy."""
    hidden, weight, targets = _inputs(40, 32, 64, torch.float32, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, targets, chunk_size=16)
        plain = F.cross_entropy((hidden @ weight.T).float(), targets)
    assert abs(ours.item() - plain.item()) < 1e-3
    ours.backward()
    assert weight.grad.dtype == torch.float32
    _, _, dw = _reference(hidden, weight, targets)
    _close(weight.grad, dw, 3e-2)


def test_scales_with_upstream_gradient_and_no_grad() -> None:
    hidden, weight, targets = _inputs(10, 8, 12, torch.float32, seed=5)
    (3.0 * linear_cross_entropy(hidden, weight, targets)).backward()
    _, dh, _ = _reference(hidden, weight, targets)
    _close(hidden.grad, 3.0 * dh, 1e-5)
    with torch.no_grad():
        value = linear_cross_entropy(hidden, weight, targets)
    assert not value.requires_grad


def test_bf16_weight_gradient_over_many_accumulation_blocks() -> None:
    # V > 2 * 4096: the fp32 accumulation of the per-chunk bf16 partials runs in several row blocks
    hidden, weight, targets = _inputs(23, 8, 9000, torch.bfloat16, seed=7)
    linear_cross_entropy(hidden, weight, targets, chunk_size=5).backward()
    _, dh, dw = _reference(hidden, weight, targets)
    _close(hidden.grad, dh, 3e-2)
    _close(weight.grad, dw, 3e-2)


def test_second_backward_is_refused_not_silently_wrong() -> None:
    # gradients are computed in the forward and scaled in place in the backward: a second backward
    # through the same graph would scale them twice, so it must fail loudly
    hidden, weight, targets = _inputs(10, 8, 12, torch.float32, seed=6)
    loss = linear_cross_entropy(hidden, weight, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


def test_bad_shapes_raise() -> None:
    hidden, weight, targets = _inputs(10, 8, 12, torch.float32)
    with pytest.raises(ValueError, match="shape mismatch"):
        linear_cross_entropy(hidden, weight[:, :4], targets)
    with pytest.raises(ValueError, match="expects hidden"):
        linear_cross_entropy(hidden[None], weight, targets)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(hidden, weight, targets, chunk_size=0)


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_gpt_forward_loss_matches_plain_cross_entropy(tie_embeddings: bool) -> None:
    """``GPT.forward(idx, targets)`` (fused head) against the reference path: full logits + F.cross_entropy."""
    from lightning_llm.config import GPTConfig
    from lightning_llm.model import GPT

    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=16, tie_embeddings=tie_embeddings
    )
    model = GPT(config)
    idx = torch.randint(0, 97, (3, 16))
    targets = torch.randint(0, 97, (3, 16))
    targets[0, :5] = -100

    model(idx, targets).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    loss = model(idx, targets).detach()
    model.zero_grad()
    logits = model.lm_head(model.hidden_states(idx))  # the reference path
    ref = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-5
    for name, p in model.named_parameters():
        _close(ours[name], p.grad.double(), 1e-4)


# -- logit soft-capping ----------------------------------------------------------------------------
def _capped_reference(hidden, weight, targets, cap: float, ignore_index: int = -100):
    """fp64 autograd through the plain definition: cross-entropy of ``cap * tanh(h @ W^T / cap)``."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    loss = F.cross_entropy(cap * torch.tanh(h @ w.T / cap), targets, ignore_index=ignore_index)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def _gpu_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors, the loss's CUDA plan: whole chunks in one pass (no cache-sized slices)."""
    real = loss_mod.plan_for
    monkeypatch.setattr(loss_mod, "plan_for", lambda _device, *a: real("cuda", *a))


@pytest.mark.parametrize("plan", ["cpu-plan", "cuda-plan"])
@pytest.mark.parametrize("cap", [15.0, 1.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [None, 7, 64])
def test_softcap_matches_reference(
    monkeypatch: pytest.MonkeyPatch, plan: str, cap: float, dtype: torch.dtype, chunk_size: int | None
) -> None:
    if plan == "cuda-plan":
        _gpu_plan(monkeypatch)
    hidden, weight, targets = _inputs(67, 24, 101, dtype, seed=8)
    hidden.data *= 4  # logits up to ~40: cap 15 bends the large ones, 1.5 saturates most
    targets[::4] = -100
    loss = linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size, softcap=cap)
    loss.backward()
    ref, dh, dw = _capped_reference(hidden, weight, targets, cap)
    uncapped, _, _ = _reference(hidden, weight, targets)
    assert abs(ref.item() - uncapped.item()) > 0.1  # the cap bites
    atol, rel = TOLERANCES[dtype]
    assert abs(loss.item() - ref.item()) <= atol * max(1.0, ref.item())
    assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype
    assert torch.all(hidden.grad[::4] == 0)
    _close(hidden.grad, dh, rel)
    _close(weight.grad, dw, rel)


@pytest.mark.parametrize("plan", ["cpu-plan", "cuda-plan"])
def test_softcap_under_bf16_autocast(monkeypatch: pytest.MonkeyPatch, plan: str) -> None:
    """bf16 matmuls, fp32 tanh and softmax: within bf16 tolerance of the fp64 reference, and equal to the
    model's logits path (``softcap_logits`` on the autocast logits, then ``F.cross_entropy``)."""
    if plan == "cuda-plan":
        _gpu_plan(monkeypatch)
    hidden, weight, targets = _inputs(300, 32, 64, torch.float32, seed=9)
    hidden.data *= 3
    targets[-20:] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, targets, chunk_size=128, softcap=15.0)
        logits = softcap_logits(hidden @ weight.T, 15.0)
        assert logits.dtype == torch.bfloat16
        plain = F.cross_entropy(logits.float(), targets)
    assert abs(ours.item() - plain.item()) < 1e-3 * plain.item()  # bf16 rounding of z vs z / c
    ours.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    ref, dh, dw = _capped_reference(hidden, weight, targets, 15.0)
    assert abs(ours.item() - ref.item()) < 2e-2 * max(1.0, ref.item())
    _close(hidden.grad, dh, 3e-2)
    _close(weight.grad, dw, 3e-2)


def test_softcap_equals_cross_entropy_of_softcap_logits() -> None:
    """One definition for both paths: the fused loss and autograd through ``softcap_logits`` agree."""
    hidden, weight, targets = _inputs(40, 16, 50, torch.float32, seed=10)
    hidden.data *= 5
    loss = linear_cross_entropy(hidden, weight, targets, chunk_size=9, softcap=3.0)
    loss.backward()
    ours = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    plain = F.cross_entropy(softcap_logits(hidden @ weight.T, 3.0), targets)
    plain.backward()
    assert loss.item() == pytest.approx(plain.item(), abs=1e-5)
    torch.testing.assert_close(ours[0], hidden.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(ours[1], weight.grad, atol=1e-6, rtol=1e-4)


def test_softcap_logits() -> None:
    z = torch.linspace(-100, 100, 201, dtype=torch.bfloat16, requires_grad=True)
    assert softcap_logits(z, None) is z
    y = softcap_logits(z, 15.0)
    assert y.dtype == torch.bfloat16 and y.abs().max() <= 15.0
    expected = (15.0 * torch.tanh(z.detach().double() / 15.0)).to(torch.bfloat16)  # fp32-exact, rounded once
    assert torch.equal(y.detach(), expected)
    y.float().sum().backward()  # differentiable: d/dz = 1 - tanh^2, 1 at 0, ~0 far out
    assert z.grad[100].item() == pytest.approx(1.0) and z.grad[0].abs().item() < 1e-4
    with pytest.raises(ValueError, match="softcap must be a positive"):
        softcap_logits(z, 0.0)


def test_softcap_none_is_the_uncapped_path() -> None:
    """``softcap=None`` dispatches exactly the ops of a call without it (no tanh, no addmm), same bits;
    a huge cap is the identity up to rounding."""
    hidden, weight, targets = _inputs(67, 24, 101, torch.float32, seed=11)
    with _OpLog() as plain:
        base = linear_cross_entropy(hidden, weight, targets, chunk_size=16)
    with _OpLog() as none:
        same = linear_cross_entropy(hidden, weight, targets, chunk_size=16, softcap=None)
    assert none.ops == plain.ops
    assert not {"aten.tanh_", "aten.addmm", "aten.tanh_backward"} & set(none.ops)
    assert torch.equal(base, same)
    huge = linear_cross_entropy(hidden, weight, targets, chunk_size=16, softcap=1e6)
    assert huge.item() == pytest.approx(base.item(), rel=1e-6)


def test_softcap_gpu_plan_adds_few_ops_and_no_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU plan, one chunk: the cap costs three elementwise kernels (copy, tanh, mul; the GEMM scales by
    1/c and tanh_backward replaces the final copy) and reads nothing back to the host."""
    _gpu_plan(monkeypatch)
    hidden, weight, targets = _inputs(64, 16, 96, torch.bfloat16, seed=12)
    with _OpLog() as plain:
        linear_cross_entropy(hidden, weight, targets)
    with _OpLog() as capped:
        linear_cross_entropy(hidden, weight, targets, softcap=15.0)
    extra = capped.ops.total() - plain.ops.total()
    assert extra == 3, (capped.ops, plain.ops)
    assert not {"aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.nonzero"} & set(capped.ops)


def test_softcap_gpu_chunk_counts_its_second_fp32_buffer() -> None:
    plain = loss_mod.plan_for("cuda", 1 << 20, 50304, torch.bfloat16)
    capped = loss_mod.plan_for("cuda", 1 << 20, 50304, torch.bfloat16, 2)
    assert capped.chunk_rows < plain.chunk_rows and capped.chunk_rows % 256 == 0
    assert capped.chunk_rows * 50304 * (2 + 4 + 4) <= loss_mod.GPU_CHUNK_BYTES
    assert loss_mod.plan_for("cpu", 4096, 50304, torch.bfloat16, 2) == loss_mod.CPU_PLAN


@pytest.mark.parametrize("cap", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_softcap_raises(cap: float) -> None:
    hidden, weight, targets = _inputs(10, 8, 12, torch.float32)
    with pytest.raises(ValueError, match="softcap must be a positive finite number .* or None"):
        linear_cross_entropy(hidden, weight, targets, softcap=cap)


class _OpLog(TorchDispatchMode):
    """The aten ops dispatched while active, as a Counter of names (views and metadata left out)."""

    VIEWS = {"aten.view", "aten.t", "aten.slice", "aten.squeeze", "aten.unsqueeze", "aten.detach",
             "aten.empty", "aten.expand", "aten.transpose", "aten.alias", "aten.select"}  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = str(func.overloadpacket).replace("aten::", "aten.")
        if name not in self.VIEWS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))
