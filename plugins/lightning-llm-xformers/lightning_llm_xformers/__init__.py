"""An attention kernel on ``xformers.ops.memory_efficient_attention`` (CUDA only).

Layout: our kernels take (B, H, T, D); xformers takes (B, M, H, K), so q/k/v are transposed on the way in
and the output on the way out (views, no copies). Causality is bottom-right aligned (a KV cache puts T new
queries after S - T cached keys), which is xformers' ``LowerTriangularFromBottomRightMask``; it equals
``LowerTriangularMask`` when T == S.

GQA: key/value heads are repeated to the query heads (``expand_kv``). xformers' 5-D (B, M, G, H, K) form
would avoid that copy, but its backward operators (cutlass, flash) do not accept 5-D inputs, so training
would fail; the repeat is correct for forward and backward on every operator.

Additive bias: passed as a tensor, causal mask folded in as -inf. xformers wants the bias rows aligned to
16 bytes, so the tensor is cut from a buffer whose last dimension is padded to a multiple of 8.

Availability is decided at build time (``unavailable_reason``), never in ``forward``: xformers has no CPU
kernels, may not be importable, or may be built for another torch/CUDA than the one installed.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any

import torch

from lightning_llm.components.attention import AttentionCapabilities, AttentionKernel, causal_mask, expand_kv
from lightning_llm.registry import ATTENTION

__all__ = ["XFormersAttention", "runnable_kernels"]
__version__ = "0.1.0"

INSTALL_HINT = "pip install 'lightning-llm-xformers[xformers]' (xformers wheels pin a torch and CUDA version)"
WORKING_PAIRS = {"0.0.35": "torch==2.10.0"}
"""xformers release -> the torch release its PyPI wheels were built for (its ``cpp_lib.json``: 0.0.35 was
built for 2.10.0+cu128), pinned together by this distribution's ``xformers`` extra."""
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.cache
def _import_xformers() -> tuple[ModuleType | None, str | None, str | None]:
    """(xformers.ops, why it failed to import, why its C++/CUDA extensions failed to load), once."""
    xlogger = logging.getLogger("xformers")
    level = xlogger.level
    xlogger.setLevel(logging.ERROR)  # its import warns about the C++ build; we report that ourselves
    try:
        import xformers.ops as xops
    except Exception as err:  # ImportError, or a torch ABI mismatch surfacing as something else
        return None, f"xformers is not importable ({err!r}); install it with: {INSTALL_HINT}", None
    finally:
        xlogger.setLevel(level)
    try:
        from xformers import _cpp_lib

        cpp_err = _cpp_lib._cpp_library_load_exception
    except Exception:  # private module moved: nothing more to report
        cpp_err = None
    return xops, None, (" ".join(str(cpp_err).split()) if cpp_err is not None else None)


def installed_build() -> dict[str, Any] | None:
    """The versions the installed xformers was built for (its ``cpp_lib.json``), read without importing it.

    Returns ``{"xformers": ..., "torch": "2.10.0+cu128", "cuda": 1208}`` or None if xformers or the file
    is missing (a source build may not write one).
    """
    import importlib.metadata
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.find_spec("xformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "cpp_lib.json"
    try:
        version = json.loads(path.read_text())["version"]
        return {
            "xformers": importlib.metadata.version("xformers"),
            "torch": str(version["torch"]),
            "cuda": version.get("cuda"),
        }
    except (OSError, ValueError, KeyError, TypeError, importlib.metadata.PackageNotFoundError):
        return None


def build_mismatch(build: dict[str, Any], torch_version: str, torch_cuda: str | None) -> str | None:
    """Why an xformers build for ``build["torch"]``/``build["cuda"]`` can't load its operators under this
    torch (release and CUDA major must match: the C++ extensions link against torch's ABI), or None."""
    built_torch = build["torch"].split("+")[0]
    have_torch = torch_version.split("+")[0]
    cuda = build.get("cuda")
    built_cuda = f"{cuda // 100}.{cuda % 100}" if isinstance(cuda, int) else None
    problems = []
    if built_torch != have_torch:
        problems.append(f"torch {built_torch} (you have {have_torch})")
    if built_cuda and torch_cuda and built_cuda.split(".")[0] != torch_cuda.split(".")[0]:
        problems.append(f"CUDA {built_cuda} (your torch is built with CUDA {torch_cuda})")
    if not problems:
        return None
    pair = WORKING_PAIRS.get(build["xformers"], f"the torch release xformers {build['xformers']} names")
    return (
        f"xformers {build['xformers']} was built for {' and '.join(problems)}, so its C++/CUDA operators "
        f"cannot load. Working pair: {pair} with xformers=={build['xformers']} ({INSTALL_HINT}); or choose "
        "attention sdpa or flash, which need no extra package"
    )


def xformers_ops() -> ModuleType:
    """``xformers.ops``; raises ImportError with the install hint if it is missing."""
    xops, err, _ = _import_xformers()
    if xops is None:
        raise ImportError(err)
    return xops


@functools.cache
def _probe_cuda(dtype: torch.dtype) -> str | None:
    """Run one tiny causal attention on the current GPU; the error (first line) if no operator can."""
    try:
        q = torch.randn(1, 4, 2, 64, device="cuda", dtype=dtype)  # (B, M, H, K)
        mask = xformers_ops().fmha.attn_bias.LowerTriangularFromBottomRightMask()
        xformers_ops().memory_efficient_attention(q, q, q, attn_bias=mask)
        torch.cuda.synchronize()
    except Exception as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        return f"{type(err).__name__}: {lines[0] if lines else err!r}"
    return None


_listing = False  # set while asking other kernels, so two kernels that list each other cannot recurse


def runnable_kernels(device_type: str) -> list[str]:
    """Registered attention kernels (other than xformers) that have no unavailable reason on ``device_type``."""
    global _listing
    if _listing:
        return []
    _listing = True
    try:
        names = []
        for entry in ATTENTION.entries():
            if entry.obj is XFormersAttention:
                continue
            try:
                if ATTENTION.build(entry.name).unavailable_reason(device_type) is None:
                    names.append(entry.name)
            except Exception:  # a kernel that can't even be built is not one to recommend
                continue
        return names
    finally:
        _listing = False


class XFormersAttention(AttentionKernel):
    """``xformers.ops.memory_efficient_attention``: CUTLASS / FlashAttention kernels picked by xformers."""

    description = "xformers memory_efficient_attention (CUDA only; bias, dropout, GQA by KV repeat)"

    def unavailable_reason(self, device_type: str) -> str | None:
        xops, import_err, cpp_err = _import_xformers()
        if xops is None:
            return import_err
        if device_type != "cuda":
            here = ", ".join(runnable_kernels(device_type)) or "none"
            return (
                f"xformers has no {device_type.upper()} kernels (memory_efficient_attention runs on CUDA only); "
                f"attention kernels that run on {device_type} here: {here}"
            )
        if torch.version.cuda is None:
            return f"this PyTorch ({torch.__version__}) is built without CUDA; xformers needs a CUDA build"
        build = installed_build()
        mismatch = build and build_mismatch(build, torch.__version__, torch.version.cuda)
        if mismatch:
            return mismatch
        if not torch.cuda.is_available():
            return "no CUDA device is visible (torch.cuda.is_available() is False)"
        failures = {dt: _probe_cuda(dt) for dt in (torch.float16, torch.bfloat16)}
        if all(failures.values()):
            reason = f"xformers found no attention operator for this GPU: {failures[torch.bfloat16]}"
            if cpp_err:
                reason += f". Its C++/CUDA extensions did not load: {cpp_err}"
            return f"{reason}. Reinstall with: {INSTALL_HINT}"
        return None

    def capabilities(self, device_type: str) -> AttentionCapabilities:
        if device_type != "cuda":
            return AttentionCapabilities(bias=False, dropout=False, gqa=False, dtypes=())
        dtypes = tuple(dt for dt in _CUDA_DTYPES if torch.cuda.is_available() and _probe_cuda(dt) is None)
        return AttentionCapabilities(bias=True, dropout=True, gqa=True, dtypes=dtypes or _CUDA_DTYPES[:2])

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        causal: bool = True,
    ) -> torch.Tensor:
        xops = xformers_ops()
        H, S = q.shape[1], k.shape[2]
        # xformers is not autocast-aware: under autocast q is bf16/fp16 while a KV cache may hold fp32
        k, v = expand_kv(k, H).to(q.dtype), expand_kv(v, H).to(q.dtype)  # (B, H, S, D)
        attn_bias = _attn_bias(xops, q, S, bias, causal)
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=attn_bias, p=dropout_p
        )  # (B, T, H, D)
        return out.transpose(1, 2)  # (B, H, T, D)


def _attn_bias(xops: ModuleType, q: torch.Tensor, S: int, bias: torch.Tensor | None, causal: bool) -> Any:
    """xformers' ``attn_bias`` argument: a mask type when there is no bias, else an aligned tensor."""
    if bias is None:
        return xops.fmha.attn_bias.LowerTriangularFromBottomRightMask() if causal else None
    B, H, T = q.shape[0], q.shape[1], q.shape[2]
    padded = -(-S // 8) * 8  # rows start on 16-byte boundaries (8 x 16-bit, also fine for fp32)
    out = torch.empty(B, H, T, padded, device=q.device, dtype=q.dtype)[..., :S]  # (B, H, T, S)
    out.copy_(bias.expand(B, H, T, S))
    if causal:
        out.masked_fill_(~causal_mask(T, S, q.device), float("-inf"))
    return out
