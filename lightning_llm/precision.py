"""Precision names -> dtypes, and the CPU's bfloat16 question, in one place.

Lightning's precision strings ("bf16-mixed", "32-true", ...) are read here for the training dtype of the
model, the MFU peak and the CPU check. A CPU without native bfloat16 matmuls (no AVX-512 BF16 / AMX)
emulates them some 40x slower than fp32 (measured on an AVX2 EPYC: 0.8-1.8 GFLOP/s bf16 vs 45-65 fp32),
so bf16 training there is a trap the package steps around, saying so.
"""

from __future__ import annotations

import functools
import os
import time

import torch

PRECISION_DTYPES = {
    "32-true": torch.float32,
    "32": torch.float32,
    "64-true": torch.float64,
    "bf16-mixed": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "16-mixed": torch.float16,
    "16-true": torch.float16,
}

MIXED_PARAM_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
"""Mixed precisions: parameters stay fp32, matmuls run in this dtype (FSDP2's ``param_dtype``)."""

CPU_BF16_ENV = "LIGHTNING_LLM_CPU_BF16"
"""Set to 1 to train in bf16 on a CPU even where it is emulated (slow)."""

EMULATED_RATIO = 4.0
"""bf16 slower than fp32 by more than this on a 256^3 matmul means no native bf16 (native: about 0.5x)."""


def training_dtype(precision: str) -> torch.dtype:
    """The dtype a precision string computes its matmuls in; unknown strings are an error."""
    try:
        return PRECISION_DTYPES[str(precision)]
    except KeyError:
        raise ValueError(
            f"Unknown precision {precision!r}; lightning-llm knows {', '.join(PRECISION_DTYPES)}."
        ) from None


def fsdp_param_dtype(precision: str) -> torch.dtype | None:
    """FSDP2's mixed-precision ``param_dtype`` for a precision string: None for the "-true" precisions,
    whose parameters already are in the training dtype."""
    training_dtype(precision)  # unknown strings are an error
    return MIXED_PARAM_DTYPES.get(str(precision))


def check_device_precision(precision: str, on_cpu: bool, gpu_has_bf16: bool = True) -> None:
    """Refuse a precision the device cannot do (Lightning would silently switch 16-bit to bf16 on CPU)."""
    if on_cpu and precision in ("16-mixed", "16-true", "16", "transformer-engine"):
        raise ValueError(
            f"trainer.precision={precision} needs a GPU; this run is on the CPU. "
            "Use --trainer.precision bf16-mixed (or bf16-true, 32-true) on CPU."
        )
    if not on_cpu and precision.startswith("bf16") and not gpu_has_bf16:
        raise ValueError(f"trainer.precision={precision}: this GPU has no bfloat16; use 16-mixed or 32-true.")


@functools.cache
def cpu_bf16_slowdown() -> float:
    """How many times slower a 256^3 bf16 matmul is than fp32 on this CPU (best of 3 each, ~0.1 s)."""

    def best(dtype: torch.dtype) -> float:
        a = torch.randn(256, 256, dtype=dtype)
        a @ a
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(torch.bfloat16) / max(best(torch.float32), 1e-9)


def cpu_bf16_native() -> bool | None:
    """Whether this CPU has bfloat16 matmul instructions, where torch can tell: on x86, AVX512-BF16 or AMX.
    None elsewhere (e.g. ARM), or with a torch that cannot say: then ``cpu_bf16_slowdown`` decides.

    The instruction set decides first because a timing can be fooled: on a busy 2-core machine the 256^3
    probe once measured emulated bf16 at 1.1x fp32 and a quick start trained ~20x slower in bf16."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    probes = [
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if any(p is None for p in probes):
        return None
    return any(bool(p()) for p in probes)  # type: ignore[misc]


def cpu_bf16_fast() -> bool:
    """Whether bf16 matmuls run natively on this CPU: by instruction set where torch can tell, else by timing
    (``cpu_bf16_slowdown`` within ``EMULATED_RATIO``). ``fit``'s precision and Muon's orthogonalisation ask this."""
    native = cpu_bf16_native()
    return native if native is not None else cpu_bf16_slowdown() <= EMULATED_RATIO


def cpu_precision(precision: str) -> tuple[str, str | None]:
    """The precision to train with on this CPU, and why it differs from ``precision`` (None: unchanged)."""
    if not str(precision).startswith("bf16") or os.environ.get(CPU_BF16_ENV) == "1":
        return str(precision), None
    if cpu_bf16_fast():
        return str(precision), None
    if cpu_bf16_native() is None:  # decided by timing (cached)
        why = f"a bf16 matmul measured {cpu_bf16_slowdown():.0f}x slower than fp32 here"
    else:
        why = "it has neither AVX512-BF16 nor AMX instructions"
    return "32-true", (
        f"trainer.precision {precision} -> 32-true: this CPU has no native bfloat16 matmul ({why}), so bf16 "
        f"would train many times slower. Set {CPU_BF16_ENV}=1 to keep bf16 anyway."
    )
