"""Every attention kernel that runs on this machine against an explicit float64 softmax reference.

Parametrized over the ATTENTION registry at collection time, so an installed plugin kernel is tested for
free; kernels that cannot run on CPU are collected and skipped with their own ``unavailable_reason``.
Covers forward and gradients w.r.t. q, k, v; fp32 and bf16; MHA and GQA; T == S, T < S (KV cache) and
T == 1 (decode); with an additive bias where the kernel declares bias support on CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_llm.registry import ATTENTION


def _kernel_params() -> list:
    params = []
    for name in ATTENTION.names():
        reason = ATTENTION.build(name).unavailable_reason("cpu")
        marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


# Tolerances, on outputs/grads of magnitude ~1, against float64 on the *same* (rounded) inputs:
#  fp32: the kernel computes in fp32 (eps 1.2e-7); sums over <= 16 keys and D = 16 stay within 1e-5.
#  bf16: eps 2^-8 = 3.9e-3; q k^T, softmax and p v each round to bf16, so a few ulps: 2e-2.
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def reference_attention(q, k, v, bias=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + bias, bottom-right causal) v in float64; KV heads repeated per group."""
    q, k, v = (x.double() for x in (q, k, v))
    H, T, S, D = q.shape[1], q.shape[2], k.shape[2], q.shape[3]
    group = H // k.shape[1]
    k = torch.stack([k[:, h // group] for h in range(H)], dim=1)  # (B, H, S, D)
    v = torch.stack([v[:, h // group] for h in range(H)], dim=1)
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(D)
    if bias is not None:
        scores = scores + bias.double()
    i = torch.arange(T)[:, None]
    j = torch.arange(S)[None, :]
    scores = scores.masked_fill(j > i + (S - T), float("-inf"))  # query i sees keys 0 .. S - T + i
    p = scores.exp() / scores.exp().sum(-1, keepdim=True)
    return torch.einsum("bhts,bhsd->bhtd", p, v)


@pytest.mark.parametrize("name", _kernel_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n_kv_head", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize(("T", "S"), [(16, 16), (5, 16), (1, 9)], ids=["T=S", "T<S", "decode"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_kernel_matches_fp64_reference(
    name: str, dtype, n_kv_head: int, T: int, S: int, with_bias: bool
) -> None:
    kernel = ATTENTION.build(name)
    caps = kernel.capabilities("cpu")
    if with_bias and not caps.bias:
        pytest.skip(f"{name} declares no additive bias on cpu")
    if dtype not in caps.dtypes:
        pytest.skip(f"{name} declares no {dtype} on cpu")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, T, 16, generator=g).to(dtype).requires_grad_()
    k, v = (torch.randn(2, n_kv_head, S, 16, generator=g).to(dtype).requires_grad_() for _ in range(2))
    bias = torch.randn(1, 4, T, S, generator=g) if with_bias else None
    out = kernel(q, k, v, bias=bias, causal=True)
    assert out.shape == q.shape and out.dtype == dtype
    upstream = torch.randn(out.shape, generator=g)
    (out.float() * upstream).sum().backward()

    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = reference_attention(*leaves, bias)
    (ref * upstream.double()).sum().backward()
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    for label, x, x_ref in zip("qkv", (q, k, v), leaves, strict=True):
        torch.testing.assert_close(
            x.grad.double(), x_ref.grad, **TOL[dtype], msg=lambda m, n=label: f"d{n}: {m}"
        )
