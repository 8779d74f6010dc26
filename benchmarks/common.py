"""Shared benchmark helpers: environment record, timing (median after warm-up), peak memory, output.

Timing: ``time_fn`` runs a callable ``warmup`` times, then repeats it until ``max_repeats`` runs or
``budget_s`` seconds, whichever comes first (at least ``min_repeats``), synchronising the device around
every run, and reports the median (plus min and the number of runs).

Peak memory (``peak_memory``) is the *extra* memory a call needs on top of what was allocated before it:

* CUDA: ``torch.cuda.max_memory_allocated() - memory_allocated()`` (the caching allocator's tensor bytes).
* CPU: the kernel's resident-set high-water mark. ``/proc/self/clear_refs`` (``5``) resets ``VmHWM`` to
  the current RSS, the call runs, and the result is ``VmHWM - VmRSS(before)``. For the duration of the
  call glibc is told (``mallopt``) to serve every allocation above 64 KiB with a fresh ``mmap`` and,
  before it, ``malloc_trim(0)`` returns freed heap pages to the OS, so reused heap memory is not
  silently free and every tensor byte touched shows up in the RSS; outside
  measurements the threshold is set to 32 MiB (glibc's dynamic maximum), so timings are not slowed by
  page faults. This counts tensors *and* anything else the call touches (e.g. oneDNN scratch buffers),
  rounded to pages; it is exact, not sampled. Where ``/proc`` is unavailable it returns ``None``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lightning_llm.config import GPTConfig

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_LIBC: Any = None


def env_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Hardware and software the numbers were taken on: CPU/GPU model, cores, versions, date, load."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device.type,
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1m_5m_15m": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import lightning

        info["lightning"] = lightning.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def sync(device: torch.device | str) -> None:
    """Wait for queued device work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], Any],
    device: torch.device | str = "cpu",
    *,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 20,
    budget_s: float = 2.0,
) -> dict[str, float]:
    """Median wall time (seconds) of ``fn()`` after ``warmup`` calls; repeats capped by ``budget_s``."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times)}


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        _LIBC = ctypes.CDLL(name) if name else False
    return _LIBC


def set_mmap_threshold(nbytes: int) -> bool:
    """Allocations above ``nbytes`` get their own mmap (returned to the OS on free); False if unsupported."""
    libc = _libc()
    if not libc or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(nbytes)))


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@contextmanager
def _fresh_pages() -> Iterator[None]:
    set_mmap_threshold(64 * 1024)
    libc = _libc()
    if libc and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)  # give freed heap pages back, so reusing them shows up in the RSS again
    try:
        yield
    finally:
        set_mmap_threshold(32 * 1024 * 1024)


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int | None:
    """Extra bytes at the high-water mark of one ``fn()`` call (see the module docstring)."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with _fresh_pages():
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        except OSError:
            return None
        before = _proc_status_kib("VmRSS")
        fn()
        peak = _proc_status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(peak - before, 0) * 1024


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:.1f} MiB"


def fmt_time(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s * 1e3:.2f} ms" if s < 10 else f"{s:.1f} s"


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or None): CUDA when available, else CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


MODEL_ARGS = (  # (flag, default): the reference model's shape; block size and batch are per benchmark
    ("--n-layer", 6),
    ("--n-embd", 384),
    ("--n-head", 6),
    ("--vocab-size", 50304),
)


def bench_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``lightning-llm bench <name>``, with the module docstring as its description."""
    return argparse.ArgumentParser(
        prog=f"lightning-llm bench {name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_model_args(p: argparse.ArgumentParser, block_size: int, batch: int) -> None:
    """The reference model's shape options (6 layers, 384 wide, 6 heads, vocab 50304) and the batch."""
    for flag, default in MODEL_ARGS:
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--block-size", type=int, default=block_size, help="context length")
    p.add_argument("--batch", type=int, default=batch)


def model_config(args: argparse.Namespace, **extra: Any) -> GPTConfig:
    """The ``GPTConfig`` of ``args``' model options (from ``add_model_args``) plus ``extra`` fields."""
    return GPTConfig(
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_head,
        vocab_size=args.vocab_size,
        block_size=args.block_size,
        **extra,
    )


def model_argv(args: argparse.Namespace) -> list[str]:
    """``args``' model options (from ``add_model_args``) back as command-line flags, for a subprocess."""
    flags = [flag for flag, _ in MODEL_ARGS] + ["--block-size", "--batch"]
    return [f"{flag}={getattr(args, flag[2:].replace('-', '_'))}" for flag in flags]
