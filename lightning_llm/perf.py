"""Peak FLOP/s of a device, the denominator of MFU, and where the number came from.

MFU is only as honest as its peak. A small matmul flatters it badly on a GPU: a 1024^3 bf16 product on an
H100 is launch-bound at a fraction of the chip's rate, which made an MFU of 0.09 read as 0.6. So the peak
is either the vendor's dense figure from Lightning's device table (``get_available_flops``, as nanoGPT's
``estimate_mfu`` divides by the A100's 312 TFLOP/s), or a matmul large enough to saturate the device.
Either way ``Peak.source`` says which, and the training log prints it once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from lightning_llm.config import GPTConfig
    from lightning_llm.model import GPT

PeakMode = Literal["auto", "table", "measure"]

MEASURE_SIZE = {"cuda": 8192, "cpu": 2048}
"""Largest side of the square matmul that measures a peak: 8192^3 saturates an H100 (~1.1 TFLOP a
product). On a CPU the side starts at 256 and doubles up to this while one product takes under 20 ms:
enough to be matmul-bound, and bounded where a dtype is emulated (a CPU without native bf16 runs a
2048^3 bf16 product in minutes)."""


@dataclass(frozen=True)
class Peak:
    """A peak FLOP/s value and where it came from."""

    flops: float
    """FLOP/s of one device."""
    source: str
    """How it was obtained, e.g. "table: NVIDIA H100 80GB HBM3" or "measured: 8192^3 bfloat16 matmul"."""

    def describe(self) -> str:
        return f"{format_flops(self.flops)} ({self.source})"


def format_flops(flops: float) -> str:
    """``989.4 TFLOP/s`` on a GPU, ``64.8 GFLOP/s`` on a CPU."""
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


def _cpu_size(dtype: torch.dtype, largest: int) -> int:
    """The side of a CPU peak matmul: double from 256 while one product takes under 20 ms."""
    n = 256
    while n < largest:
        a = torch.randn(n, n, dtype=dtype)
        t0 = time.perf_counter()
        a @ a
        if time.perf_counter() - t0 >= 0.02:
            break
        n *= 2
    return n


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype, n: int | None = None, seconds: float = 0.5
) -> tuple[float, int]:
    """Achieved FLOP/s of an (n x n) @ (n x n) product repeated for ``seconds`` (at least 3 times), and n.

    ``n`` defaults to ``MEASURE_SIZE`` on CUDA and to a size found by ``_cpu_size`` elsewhere.
    """
    largest = MEASURE_SIZE.get(device.type, 2048)
    n = n or (largest if device.type == "cuda" else _cpu_size(dtype, largest))
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.mm(a, b, out=out)  # warm-up (cuBLAS heuristics, CPU thread pool)
    sync()
    iters, t0 = 0, time.perf_counter()
    while iters < 3 or time.perf_counter() - t0 < seconds:
        torch.mm(a, b, out=out)
        iters += 1
        if device.type == "cuda" and iters % 8 == 0:
            sync()  # keep the clock honest: the launches are asynchronous
    sync()
    return 2.0 * n**3 * iters / (time.perf_counter() - t0), n


def table_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str] | None:
    """The vendor's dense peak for ``device`` in ``dtype`` from Lightning's table, with the device name."""
    if device.type != "cuda":
        return None
    import warnings

    from lightning.fabric.utilities.throughput import get_available_flops

    with warnings.catch_warnings():  # an unknown device is reported by our own log line instead
        warnings.simplefilter("ignore")
        flops = get_available_flops(device, dtype)
    if not flops:
        return None
    return float(flops), torch.cuda.get_device_name(device)


def peak_flops(device: torch.device, dtype: torch.dtype, mode: PeakMode = "auto") -> Peak:
    """Peak FLOP/s of one ``device`` in ``dtype``.

    ``auto``: the device table where the device is in it (CUDA GPUs Lightning knows), else a measured
    matmul of ``MEASURE_SIZE`` (CPUs, unknown GPUs). ``table`` refuses a device without an entry;
    ``measure`` always measures.
    """
    if mode not in ("auto", "table", "measure"):
        raise ValueError(f"peak mode must be auto, table or measure; got {mode!r}")
    if mode != "measure":
        found = table_flops(device, dtype)
        if found is not None:
            flops, name = found
            return Peak(flops, f"table: {name}, {str(dtype).removeprefix('torch.')} dense peak")
        if mode == "table":
            raise ValueError(
                f"No peak FLOP/s table entry for {device} in {dtype} (Lightning's get_available_flops knows "
                "CUDA GPUs only). Use peak 'measure' or give the number (SpeedMonitor peak_flops)."
            )
    flops, n = measure_matmul_peak(device, dtype)
    return Peak(flops, f"measured: {n}^3 {str(dtype).removeprefix('torch.')} matmul on {device.type}")


def meta_model(config: GPTConfig) -> GPT:
    """The model ``config`` describes, built on the meta device: its modules and parameter shapes, with no
    memory and no init (milliseconds at any size). Counts taken here hold whatever the model is later
    sharded into (FSDP1 flattens and shards the parameters of the real one)."""
    from lightning_llm.model import GPT

    with torch.device("meta"):
        return GPT(config, device_type="meta")


def flops_per_token(model: GPT, seq_len: int | None = None) -> float:
    """Training FLOPs per token of a built ``model`` (forward + backward = 3x forward), PaLM appendix B /
    nanoGPT's ``estimate_mfu``: ``6 N + 12 L C T``.

    N: the parameters that take part in a matmul for every token, counted on the built modules
    (``model.num_params(include_embedding=False)``: blocks, final norm, head; not the token-embedding
    lookup nor a learned positional table). 12 L C T: attention scores and values over ``seq_len``
    (default: the block size) positions, causality not discounted, as in PaLM.
    """
    c = model.config
    t = seq_len or c.block_size
    return 6.0 * model.num_params(include_embedding=False) + 12.0 * c.n_layer * c.n_embd * t
