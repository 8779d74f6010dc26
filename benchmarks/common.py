"""Shared benchmark helpers: environment record, timing (median after warm-up), peak memory, output.

Timing: ``time_fn`` runs a callable ``warmup`` times, then repeats it until ``max_repeats`` runs or
``budget_s`` seconds, whichever comes first (at least ``min_repeats``), and reports the median (plus min
and the number of runs). On the CPU each run is timed with ``perf_counter``. On CUDA each run is timed
with a pair of CUDA events recorded on the stream around it, with no host synchronisation between runs
(one synchronised run first sizes the repeats to the budget; one synchronisation at the end reads the
events): the time is the GPU's, launch gaps included, and the host can queue ahead as it does in training.

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
        info.update(cuda_info(device))
    return info


def cuda_info(device: torch.device) -> dict[str, Any]:
    """The GPU and its software stack: name, memory, SMs, capability, driver, CUDA runtime, cuDNN."""
    props = torch.cuda.get_device_properties(device)
    return {
        "gpu": torch.cuda.get_device_name(device),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "gpu_sms": props.multi_processor_count,
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_count": torch.cuda.device_count(),
        "driver": cuda_driver_version(device),
        "cuda": torch.version.cuda,  # the runtime torch was built with
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def cuda_driver_version(device: torch.device | None = None) -> str | None:
    """The NVIDIA driver version (e.g. "550.54.15"): nvidia-smi, else NVML, else the CUDA driver API's."""
    import subprocess

    index = torch.device(device).index if device is not None else None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
        if out.returncode == 0 and lines:
            return lines[min(index or 0, len(lines) - 1)]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # not installed, or no NVML library
        pass
    try:  # the highest CUDA version the driver supports, e.g. 12040 -> "CUDA 12.4 driver API"
        libcuda = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        if libcuda.cuDriverGetVersion(ctypes.byref(v)) == 0:
            return f"CUDA {v.value // 1000}.{v.value % 1000 // 10} driver API (release unknown)"
    except OSError:
        pass
    return None


def command_line(bench: str, argv: list[str] | None) -> str:
    """The command that reproduces this run (``argv`` as given to ``main``; None: this process's)."""
    import shlex
    import sys

    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", f"benchmarks.{bench}", *args])


def env_markdown(env: dict[str, Any]) -> str:
    """One paragraph on where the numbers come from, for the head of a results table."""
    if env.get("device") == "cuda":
        hw = (
            f"{env.get('gpu')} ({env.get('gpu_memory_gib')} GiB, {env.get('gpu_sms')} SMs, "
            f"capability {env.get('gpu_capability')}), driver {env.get('driver')}, CUDA {env.get('cuda')}, "
            f"cuDNN {env.get('cudnn')}; host {env.get('cpu')}, {env.get('cpu_cores')} cores"
        )
    else:
        hw = f"{env.get('cpu')}, {env.get('cpu_cores')} cores ({env.get('torch_threads')} torch threads), no GPU used"
    sw = f"torch {env.get('torch')}, lightning {env.get('lightning', '-')}, Python {env.get('python')}"
    load = env.get("load_avg_1m_5m_15m")
    load_s = "" if not load else f", load {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    return f"- device: {hw}\n- software: {sw}, {env.get('platform')}\n- date: {env.get('date')}{load_s}"


def write_markdown(json_path: str | Path, title: str, payload: dict[str, Any], body: str) -> Path:
    """``body`` (tables) under a header with the command line and the environment, next to the JSON."""
    path = Path(json_path).with_suffix(".md")
    head = f"## {title}\n\n```\n{payload.get('command', '')}\n```\n\n{env_markdown(payload['env'])}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}\n{body}\n")
    return path


PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def peak_key(precision: str) -> str:
    """The ``PEAK_DTYPES`` key of a Lightning precision string: the dtype its matmuls run in."""
    from lightning_llm.precision import training_dtype

    dtype = training_dtype(precision)
    return next(k for k, d in PEAK_DTYPES.items() if d == dtype)


def add_peak_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--peak",
        default="auto",
        choices=("auto", "table", "measure"),
        help="MFU / %%-of-peak denominator (lightning_llm.perf.peak_flops): the vendor's dense peak from "
        "Lightning's device table (table; auto where the GPU is in it) or a large matmul measured here "
        "(measure; auto on CPUs and unknown GPUs)",
    )


def peak_table(device: torch.device, dtype_keys: list[str], mode: str) -> dict[str, dict[str, Any]]:
    """``{dtype_key: {"flops", "source"}}`` from ``lightning_llm.perf.peak_flops``, printed once each."""
    from lightning_llm.perf import peak_flops

    out: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(dtype_keys):
        peak = peak_flops(device, PEAK_DTYPES[key], mode)  # type: ignore[arg-type]
        out[key] = {"flops": peak.flops, "source": peak.source}
        print(f"peak {key}: {fmt_flops(peak.flops)} ({peak.source})", flush=True)
    return out


def fmt_flops(flops: float) -> str:
    """FLOP/s in TFLOP/s, or GFLOP/s below 1 TFLOP/s (CPUs)."""
    return f"{flops / 1e12:.4g} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.4g} GFLOP/s"


def peak_header(peaks: dict[str, dict[str, Any]]) -> str:
    """The peaks as a table-header note, e.g. "bf16 989.4 TFLOP/s (table: NVIDIA H100 ...)"."""
    return "; ".join(f"{k} {fmt_flops(v['flops'])} ({v['source']})" for k, v in peaks.items())


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
    """Median time (seconds) of ``fn()`` after ``warmup`` calls; repeats capped by ``budget_s``."""
    for _ in range(warmup):
        fn()
    sync(device)
    if torch.device(device).type == "cuda":
        return _time_cuda(fn, min_repeats, max_repeats, budget_s)
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


def _time_cuda(
    fn: Callable[[], Any], min_repeats: int, max_repeats: int, budget_s: float
) -> dict[str, float]:
    """CUDA-event times of back-to-back ``fn()`` calls; the host synchronises only before and after."""
    t0 = time.perf_counter()
    fn()  # one synchronised call sizes the run to the budget
    torch.cuda.synchronize()
    once = time.perf_counter() - t0
    n = max(min_repeats, min(max_repeats, int(budget_s / max(once, 1e-9))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = [start.elapsed_time(end) / 1e3 for start, end in events]
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


def add_model_args(p: argparse.ArgumentParser, block_size: int | None, batch: int | None) -> None:
    """The reference model's shape options (6 layers, 384 wide, 6 heads, vocab 50304) and the batch.

    ``block_size=None`` (and ``batch=None``) leave every model option unset (None) for the benchmark to
    fill per device (``fill_defaults``).
    """
    per_device = block_size is None
    note = " (default: per device)" if per_device else ""
    for flag, default in MODEL_ARGS:
        p.add_argument(
            flag, type=int, default=None if per_device else default, help=note.strip(" ()") or None
        )
    p.add_argument("--block-size", type=int, default=block_size, help="context length" + note)
    p.add_argument("--batch", type=int, default=batch, help=note.strip(" ()") or None)


def fill_defaults(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """Set every option of ``args`` that is None to its value in ``defaults``; returns those set."""
    chosen = {k: v for k, v in defaults.items() if getattr(args, k, None) is None}
    for k, v in chosen.items():
        setattr(args, k, v)
    return chosen


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
