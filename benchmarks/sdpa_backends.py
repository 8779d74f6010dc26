"""Which backend ``scaled_dot_product_attention`` ran, and SDPA forced to each backend.

SDPA picks a backend per call from the device, dtype, shape, mask and dropout: on CPU its flash kernel or
math; on CUDA cuDNN attention, FlashAttention-2, memory-efficient attention or math, in an order that has
changed between PyTorch releases (recent ones prefer cuDNN on Hopper). The attention benchmark's ``sdpa``
row is therefore not one kernel, so:

* ``ran_backend`` runs a call under ``torch.profiler`` and reads which fused aten op it dispatched to;
* ``probe_backends`` runs forward + backward with each backend alone (``sdpa_kernel([backend])``) and
  records "ok" or why the backend refused (SDPA's warnings name the failed constraint);
* ``ForcedSDPA`` is an attention kernel restricted to one backend, timed next to the default.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_llm.components.attention import AttentionKernel

BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
"""The backends probed and offered for timing (``ERROR`` is not one; ``OVERRIDEABLE`` is for out-of-tree
devices only)."""

OPS = {
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
    "aten::_scaled_dot_product_attention_math": "math",
}
"""The forward aten op each backend dispatches to (matched exactly, so ``..._backward`` does not count)."""


def ran_backend(fn: Callable[[], Any]) -> str | None:
    """The SDPA backend ``fn()`` dispatched to (the first fused op it ran), None if it ran no SDPA op."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    for event in prof.events():
        backend = OPS.get(event.name)
        if backend is not None:
            return backend
    return None


def _qkv(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    return [torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]


def probe_backends(device: torch.device, dtype: torch.dtype, shape: tuple[int, ...]) -> dict[str, Any]:
    """For causal (B, H, T, D) = ``shape``: the backend SDPA picks by default, and each backend's status.

    Returns ``{"shape", "dtype", "default": name | None, "backends": {name: "ok" | "unavailable: why"}}``;
    "ok" means forward and backward both ran with only that backend enabled.
    """
    q, k, v = _qkv(shape, dtype, device)
    grad = torch.randn(shape, device=device, dtype=dtype)

    def call() -> None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(out, (q, k, v), grad)

    statuses: dict[str, str] = {}
    for name, backend in BACKENDS.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel([backend]):
                    call()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                statuses[name] = "ok"
            except RuntimeError as err:
                why = [str(w.message).strip() for w in caught if "not used because" in str(w.message)]
                statuses[name] = "unavailable: " + (" | ".join(why) or str(err).strip().splitlines()[0])
    return {
        "shape": list(shape),
        "dtype": str(dtype).removeprefix("torch."),
        "default": ran_backend(call),
        "backends": statuses,
    }


def describe_probe(probe: dict[str, Any]) -> str:
    """One line: the default's backend and which backends run, e.g. "default -> cudnn; ok: cudnn, ..."."""
    ok = [n for n, s in probe["backends"].items() if s == "ok"]
    off = [n for n, s in probe["backends"].items() if s != "ok"]
    return f"default -> {probe['default']}; ok: {', '.join(ok) or '-'}; unavailable: {', '.join(off) or '-'}"


class ForcedSDPA(AttentionKernel):
    """SDPA with exactly one backend enabled: raises rather than falling back to another one."""

    def __init__(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown SDPA backend {backend!r}; choose from {sorted(BACKENDS)}")
        self.backend = backend
        self.description = f"SDPA forced to its {backend} backend"

    def __call__(self, q, k, v, *, bias=None, dropout_p=0.0, causal=True):  # type: ignore[no-untyped-def]
        if causal and q.shape[2] != k.shape[2]:
            raise ValueError("ForcedSDPA is causal for T == S only (the benchmark's shapes)")
        with sdpa_kernel([BACKENDS[self.backend]]):
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=dropout_p, is_causal=causal
            )


def forced_name(backend: str) -> str:
    """The benchmark's name for SDPA forced to ``backend``: ``sdpa[cudnn]``."""
    return f"sdpa[{backend}]"


def parse_backends(spec: str) -> list[str]:
    """``all`` / ``none`` / a comma-separated list of backend names, validated."""
    if spec == "all":
        return list(BACKENDS)
    if spec in ("", "none"):
        return []
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown SDPA backend(s) {unknown}; choose from {sorted(BACKENDS)}, all or none")
    return names
