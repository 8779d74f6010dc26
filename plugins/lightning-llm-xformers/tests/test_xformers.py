"""The xformers kernel: discovery, build-time availability, and numerics against a float64 reference.

CPU tests run everywhere. GPU tests (``-m gpu``) need CUDA and a working xformers build; they compare the
real operator, forward and backward, with an explicit float64 softmax attention.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning_llm_xformers as lx
import pytest
import torch

from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT, IncompatibleComponentsError
from lightning_llm.registry import ATTENTION

HAS_CUDA = torch.cuda.is_available()
gpu_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def reference(q, k, v, bias=None) -> torch.Tensor:
    """Causal (bottom-right) softmax attention in float64, GQA by repeating KV heads."""
    q, k, v = (x.double() for x in (q, k, v))
    H, T, S = q.shape[1], q.shape[2], k.shape[2]
    k, v = (x.repeat_interleave(H // x.shape[1], dim=1) for x in (k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if bias is not None:
        scores = scores + bias.double()
    allowed = torch.arange(S, device=q.device)[None, :] <= torch.arange(T, device=q.device)[:, None] + (S - T)
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def tiny_config(**kw) -> GPTConfig:
    base = dict(
        vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=128, attention="xformers"
    )
    return GPTConfig(**{**base, **kw})


# -- CPU ---------------------------------------------------------------------------------------------
def test_discovered_through_the_installed_entry_point() -> None:
    entry = ATTENTION.entry("xformers")
    assert entry.obj is lx.XFormersAttention
    assert entry.source.startswith("lightning-llm-xformers ")


def test_cpu_reason_names_the_kernels_that_run_here() -> None:
    reason = ATTENTION.build("xformers").unavailable_reason("cpu")
    assert reason is not None and "no CPU kernels" in reason
    for name in ("naive", "sdpa", "flash"):
        assert name in reason
    assert "xformers" not in reason.split("here:")[1]


def test_choosing_it_on_cpu_fails_at_build_time() -> None:
    with pytest.raises(IncompatibleComponentsError) as err:
        GPT(tiny_config(), device_type="cpu")
    msg = str(err.value)
    assert "'xformers'" in msg and "no CPU kernels" in msg and "sdpa" in msg
    assert (
        "cannot run on cpu here: xformers has no CPU kernels" in msg
    )  # was "it does not support xformers has"


def test_not_importable_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lx, "_import_xformers", lambda: (None, "xformers is not importable (boom)", None))
    reason = lx.XFormersAttention().unavailable_reason("cuda")
    assert reason is not None and "not importable" in reason


BUILD_0035 = {"xformers": "0.0.35", "torch": "2.10.0+cu128", "cuda": 1208}


@pytest.mark.parametrize(
    ("torch_version", "torch_cuda", "expect"),
    [
        ("2.10.0+cu128", "12.8", None),
        ("2.10.0", "12.6", None),  # same torch release, same CUDA major: the extensions load
        ("2.14.1+cu130", "13.0", ["torch 2.10.0 (you have 2.14.1)", "CUDA 12.8"]),
        ("2.11.0", "12.8", ["torch 2.10.0 (you have 2.11.0)"]),
        ("2.10.0+cu130", "13.0", ["CUDA 12.8 (your torch is built with CUDA 13.0)"]),
    ],
)
def test_build_mismatch_names_the_working_pair(torch_version, torch_cuda, expect) -> None:
    reason = lx.build_mismatch(BUILD_0035, torch_version, torch_cuda)
    if expect is None:
        assert reason is None
        return
    assert reason is not None
    for part in expect:
        assert part in reason
    assert "torch==2.10.0 with xformers==0.0.35" in reason and "sdpa" in reason


def test_installed_build_is_read_without_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    build = lx.installed_build()
    if build is None:
        pytest.skip("xformers is not installed here (make test installs it)")
    assert build["xformers"] and build["torch"]
    # the real installed record gives the build-time reason on a CUDA device type, before any probe
    monkeypatch.setattr(lx, "_probe_cuda", lambda dt: pytest.fail("probed despite a known mismatch"))
    mismatch = lx.build_mismatch(build, torch.__version__, torch.version.cuda)
    reason = lx.XFormersAttention().unavailable_reason("cuda")
    if torch.version.cuda is not None and mismatch:
        assert reason == mismatch


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without a GPU")
def test_cuda_reason_without_a_gpu() -> None:
    reason = lx.XFormersAttention().unavailable_reason("cuda")
    assert reason is not None and ("CUDA" in reason or "not importable" in reason)


def fake_memory_efficient_attention(query, key, value, attn_bias=None, p=0.0):
    """A stand-in for the xformers operator on CPU, with its layout and bias-alignment rules."""
    assert query.ndim == 4 and query.shape[2] == key.shape[2], "expects (B, M, H, K) with repeated KV heads"
    q, k, v = (x.transpose(1, 2).double() for x in (query, key, value))  # (B, H, M, K)
    B, H, T, S = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    if isinstance(attn_bias, torch.Tensor):
        align = 128 // torch.finfo(attn_bias.dtype).bits
        assert all(attn_bias.stride(d) % align == 0 for d in range(3)), "xformers rejects unaligned bias"
        bias = attn_bias.double()
    elif attn_bias is not None:  # xformers' own mask type, materialised by xformers
        bias = attn_bias.materialize((B, H, T, S), dtype=torch.float64)
    else:
        bias = torch.zeros(T, S, dtype=torch.float64)
    att = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias).softmax(-1)
    return (att @ v).transpose(1, 2).to(query.dtype)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize(("T", "S"), [(7, 7), (3, 10), (1, 5)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_plumbing_matches_reference_with_a_stand_in_operator(
    monkeypatch: pytest.MonkeyPatch, n_kv_head: int, T: int, S: int, with_bias: bool
) -> None:
    """Transposes, the bottom-right mask type, GQA repeat and the aligned bias, without a GPU."""
    real = lx.xformers_ops()
    fake = SimpleNamespace(fmha=real.fmha, memory_efficient_attention=fake_memory_efficient_attention)
    monkeypatch.setattr(lx, "xformers_ops", lambda: fake)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, T, 16, generator=g)
    k, v = (torch.randn(2, n_kv_head, S, 16, generator=g) for _ in range(2))
    bias = torch.randn(1, 4, T, S, generator=g) if with_bias else None
    out = lx.XFormersAttention()(q, k, v, bias=bias)
    torch.testing.assert_close(out.double(), reference(q, k, v, bias), atol=1e-5, rtol=1e-5)


# -- GPU ---------------------------------------------------------------------------------------------
TOL = {torch.bfloat16: 3e-2, torch.float16: 5e-3}  # values ~1: bf16 eps 2^-8, fp16 eps 2^-11, plus summation


@pytest.fixture
def cuda_kernel() -> lx.XFormersAttention:
    """The kernel, failing (not skipping) when a GPU is present but xformers cannot use it."""
    kernel = lx.XFormersAttention()
    reason = kernel.unavailable_reason("cuda")
    if reason is not None:
        pytest.fail(f"a GPU is present but xformers cannot run: {reason}")
    return kernel


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n_kv_head", [8, 2])
@pytest.mark.parametrize(("T", "S"), [(64, 64), (16, 80), (1, 33)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gpu_forward_and_grads_match_fp64(
    cuda_kernel, dtype, n_kv_head: int, T: int, S: int, with_bias: bool
):
    torch.manual_seed(0)
    q = torch.randn(2, 8, T, 64, device="cuda", dtype=dtype, requires_grad=True)
    k, v = (
        torch.randn(2, n_kv_head, S, 64, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2)
    )
    bias = torch.randn(1, 8, T, S, device="cuda") if with_bias else None
    out = cuda_kernel(q, k, v, bias=bias)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = reference(*leaves, bias)
    (ref * grad.double()).sum().backward()
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    for name, x, x_ref in zip("qkv", (q, k, v), leaves, strict=True):
        torch.testing.assert_close(
            x.grad.double(), x_ref.grad, atol=2 * tol, rtol=2 * tol, msg=f"grad {name}"
        )


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("positional", ["rope", "alibi"])
def test_gpu_model_trains_and_matches_naive(cuda_kernel, positional: str) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(positional=positional)
    model = GPT(cfg, device_type="cuda", dtype=torch.bfloat16).cuda()
    naive = GPT(GPTConfig(**{**cfg.to_dict(), "attention": "naive"}), device_type="cuda").cuda()
    naive.load_state_dict(model.state_dict())
    seq = torch.arange(16, device="cuda").repeat(2)[None]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        torch.testing.assert_close(model(seq).float(), naive(seq).float(), atol=5e-2, rtol=5e-2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.to(torch.bfloat16).eval()  # generation exercises the T < S (KV cache) path through the model
    assert model.generate(seq[:, :8], 8, temperature=0.0).shape == (1, 16)
