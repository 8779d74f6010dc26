"""Host-memory allocator settings for CPU training (glibc ``malloc``).

A training step allocates and frees the same large tensors every step: activations, the vocabulary
head's logit chunks, a (vocab, n_embd) fp32 gradient. With glibc's defaults, allocations above a
threshold (at most 32 MiB) get their own ``mmap`` and go back to the kernel on ``free``, and the heap is
trimmed whenever its free top grows past a threshold. The next step then gets *fresh* pages: one page
fault, and a zeroing by the kernel, per 4 KiB, every step. Measured on the 2-core CPU of
``benchmarks/RESULTS.md`` (6-layer, 384-wide GPT, batch 8 x 256, bf16-mixed): 70-400 thousand page
faults and 0.2-1 s of system time per 1.5-2.5 s step, and the full-logits nanoGPT step twice as many.

``cache`` mode keeps freed memory in the process for reuse, the way PyTorch's CUDA caching allocator
does on GPU: no ``mmap`` for large blocks (``M_MMAP_MAX=0``) and no trimming of the heap
(``M_TRIM_THRESHOLD`` at its maximum). After the first steps a step faults no pages at all. The cost:
the process keeps its peak heap size until it exits (memory is not handed back between steps), and a
fragmented heap can hold somewhat more than the peak of live tensors.

``lightning-llm fit`` / ``validate`` / ``test`` apply ``cache`` by default on Linux with glibc. Set the
environment variable ``LIGHTNING_LLM_MALLOC=system`` to keep glibc's own behaviour. Other platforms
and C libraries are left alone (``unsupported``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV_VAR = "LIGHTNING_LLM_MALLOC"
MODES = ("cache", "system")

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1  # mallopt takes a C int

_applied: str | None = None


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "mallopt") else None


def configure_allocator(mode: str | None = None) -> str:
    """Apply ``mode`` (default: ``$LIGHTNING_LLM_MALLOC``, else ``cache``) to this process's allocator.

    Returns what is in effect: ``cache``, ``system`` or ``unsupported`` (not Linux/glibc). Call it
    before the large allocations start; it is idempotent. ``system`` after ``cache`` cannot undo it
    (glibc has no "reset"), so it raises instead of pretending.
    """
    global _applied
    mode = (mode or os.environ.get(ENV_VAR) or "cache").strip().lower()
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR}={mode!r} is not a mode; choose one of {', '.join(MODES)}")
    if mode == "system":
        if _applied == "cache":
            raise RuntimeError("the allocator is already in 'cache' mode for this process; it cannot go back")
        _applied = _applied or "system"
        return "system"
    if _applied == "cache":
        return "cache"
    libc = _glibc()
    if libc is None:
        return "unsupported"
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    if not ok:
        return "unsupported"
    _applied = "cache"
    return "cache"
