"""One grid point of ``benchmarks/train.py``: build a variant, run its first step, warm-up and timed steps.

Compile modes (``--compile``):

* ``off``: eager.
* ``on``: as each one ships: nanoGPT compiles the whole model (``torch.compile(model)``, as its
  ``train.py``); ours compiles each block (``lightning_llm.parallel.apply_compile``, what
  ``LitGPT(compile=True)`` does), in the plain loop and in Lightning alike.
* ``model``: one ``torch.compile`` of the whole model for every variant (model, loss and head in one
  graph), so ours and nanoGPT compiled can be compared like for like. For nanoGPT it is the same as ``on``;
  for ours it is the shipped ``apply_compile(model, "model")`` / ``LitGPT(compile="model")`` where the
  package has that scope (``shipped_whole_model_compile``), else ``model.compile(dynamic=False)``, the
  same thing; ``ours-ce`` compiles its forward-plus-plain-loss function.

Timing. CPU: each step between two ``perf_counter`` reads. CUDA: the steps run back to back with no host
synchronisation inside or between them; a CUDA event recorded on the stream before each step (and one
after the last) gives each step's time on the GPU's timeline, launch gaps included; the host synchronises
once before the first event and once after the last. The peak memory is ``torch.cuda.max_memory_allocated``
over the timed steps (stats reset after warm-up): weights, optimizer state, gradients and activations.
The first step (compilation happens there) is timed on its own, with a synchronisation after it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import peak_memory
from benchmarks.nanogpt import NanoConfig, NanoGPT
from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT
from lightning_llm.precision import training_dtype

COMPILE_MODES = ("off", "on", "model")
CATEGORIES = (  # profile breakdown: first matching substring of the aten op name wins
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention", ("flash_attention", "scaled_dot_product", "cudnn_attention", "efficient_attention")),
    (
        "softmax / cross-entropy",
        ("softmax", "nll_loss", "logsumexp", "exp", "cross_entropy", "gather", "scatter"),
    ),
    ("dtype copies", ("aten::copy_", "aten::_to_copy", "aten::to")),
    ("zero fill", ("aten::fill_", "aten::zero_", "aten::zeros")),
    ("optimizer", ("adam", "lerp", "addcdiv", "addcmul", "sqrt", "Optimizer")),
    ("norm / gelu / elementwise", ("layer_norm", "gelu", "aten::add", "aten::mul", "aten::div", "aten::sub")),
)


def compile_desc(variant: str, mode: str) -> str:
    """What ``mode`` compiles for ``variant``: "no", "per block" or "whole model"."""
    if mode == "off":
        return "no"
    return "whole model" if mode == "model" or variant == "nanogpt" else "per block"


def shipped_whole_model_compile() -> bool:
    """Whether ``lightning_llm.parallel.apply_compile`` has the whole-model scope (``compile: model``)."""
    import inspect

    from lightning_llm.parallel import apply_compile

    return "scope" in inspect.signature(apply_compile).parameters


def compile_ours(model: torch.nn.Module, scope: str, backend: str = "inductor") -> None:
    """Compile our GPT per block (``on``) or whole (``model``): the shipped ``apply_compile`` where it
    offers the scope; another backend (``eager``, ``aot_eager``: quick tracing checks) compiles the same
    modules the same way (``dynamic=False``) with that backend."""
    from lightning_llm.parallel import apply_compile

    if backend == "inductor" and scope == "blocks":
        apply_compile(model)  # type: ignore[arg-type]
    elif backend == "inductor" and shipped_whole_model_compile():
        apply_compile(model, scope)  # type: ignore[arg-type, call-arg]
    elif scope == "model":
        model.compile(dynamic=False, backend=backend)
    else:
        for block in model.blocks:  # type: ignore[union-attr]
            block.compile(dynamic=False, backend=backend)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def plain_step(
    variant: str,
    config: GPTConfig,
    precision: str,
    compile_: str,
    device: torch.device,
    compile_backend: str = "inductor",
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Model + optimizer + one-step closure for the plain-loop variants; the step returns the loss tensor
    (detached, not read back: reading it would synchronise with the GPU)."""
    if compile_ not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}; got {compile_!r}")
    torch.manual_seed(0)
    if variant == "nanogpt":
        c = config
        model: torch.nn.Module = NanoGPT(
            NanoConfig(c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd, c.bias)
        ).to(device)
        # nanoGPT's own setup: fused AdamW on CUDA, the for-loop one on CPU
        opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)  # type: ignore[operator]
        if compile_ != "off":
            model = torch.compile(model, backend=compile_backend)  # type: ignore[assignment]
    else:
        # the dtype the kernels run in (bf16 under bf16-mixed autocast), as LitGPT.configure_model passes it
        model = GPT(config, device_type=device.type, dtype=training_dtype(precision)).to(device)
        if compile_ == "on" or (compile_ == "model" and variant == "ours"):
            compile_ours(model, "blocks" if compile_ == "on" else "model", compile_backend)
    if precision == "bf16-true":
        model.to(torch.bfloat16)
    if variant != "nanogpt":
        opt = torch.optim.AdamW(_decay_groups(model, 0.1), lr=6e-4, betas=(0.9, 0.95), fused=True)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if variant == "ours-ce":  # the reference head: full logits, fp32 log-softmax
            logits = model.lm_head(model.hidden_states(x))  # type: ignore[operator]
            return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        return model(x, y)

    if compile_ == "model" and variant == "ours-ce":  # its forward and plain loss as one compiled graph
        loss_fn = torch.compile(loss_fn, dynamic=False, backend=compile_backend)

    def step(batch: torch.Tensor) -> torch.Tensor:
        x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()  # as nanoGPT's get_batch
        with _autocast(device, precision):
            loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def cuda_step_times(step: Callable[[], Any], n: int, device: torch.device) -> tuple[list[float], float]:
    """Per-step seconds of ``n`` back-to-back ``step()`` calls from CUDA events, and the wall mean."""
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(n):
        marks[i].record()
        step()
    marks[n].record()
    torch.cuda.synchronize(device)
    wall = (time.perf_counter() - t0) / n
    return [marks[i].elapsed_time(marks[i + 1]) / 1e3 for i in range(n)], wall


def lightning_run(
    config: GPTConfig,
    precision: str,
    compile_: str,
    batch: torch.Tensor,
    steps: int,
    warmup: int,
    device: torch.device,
    compile_backend: str = "inductor",
) -> dict[str, Any]:
    """``LitGPT`` in a ``Trainer``: a step's time is the interval between consecutive batch starts
    (``perf_counter`` on CPU, CUDA events on the stream on CUDA, no synchronisation between them)."""
    import lightning as L

    from lightning_llm.module import LitGPT, ScheduleConfig

    cuda = device.type == "cuda"
    warmup = max(warmup, 1)  # the first step (compilation, the loss read back) is never timed

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.marks: list[Any] = []
            self.loss = float("nan")
            self.peak: int | None = None

        def _mark(self) -> None:
            if cuda:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                self.marks.append(event)
            else:
                self.marks.append(time.perf_counter())

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            if cuda and batch_idx == warmup:
                torch.cuda.reset_peak_memory_stats(device)
            self._mark()

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, idx: int) -> None:
            if idx == 0 and outputs is not None:  # first step only: reading it back synchronises
                self.loss = float(outputs["loss"])

        def on_train_end(self, *args: Any) -> None:
            self._mark()
            if cuda:
                torch.cuda.synchronize(device)
                self.peak = torch.cuda.max_memory_allocated(device)

        def deltas(self) -> list[float]:
            pairs = zip(self.marks, self.marks[1:], strict=False)
            if cuda:
                return [a.elapsed_time(b) / 1e3 for a, b in pairs]
            return [b - a for a, b in pairs]

    class Compiled(LitGPT):  # where the package cannot compile as asked itself (see run_point's caller)
        def configure_model(self) -> None:
            super().configure_model()  # compile=False: the model comes back eager
            compile_ours(self.model, "model" if compile_ == "model" else "blocks", compile_backend)

    on_device = batch.to(device)  # as the plain loop: the data is already where the model is

    class Repeat(torch.utils.data.IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            while True:
                yield on_device

    torch.manual_seed(0)
    clock = Clock()
    schedule = ScheduleConfig(warmup_steps=10, max_steps=1000)
    if compile_ == "off":
        lit = LitGPT(config, schedule=schedule)
    elif compile_ == "on" and compile_backend == "inductor":  # as shipped: LitGPT(compile=True)
        lit = LitGPT(config, schedule=schedule, compile=True)
    elif compile_ == "model" and compile_backend == "inductor" and shipped_whole_model_compile():
        lit = LitGPT(config, schedule=schedule, compile="model")  # type: ignore[arg-type]
    else:
        lit = Compiled(config, schedule=schedule)
    trainer = L.Trainer(
        accelerator="cuda" if cuda else "cpu",
        devices=[device.index or 0] if cuda else 1,
        precision=precision,  # type: ignore[arg-type]
        max_steps=warmup + steps,
        logger=False,  # type: ignore[arg-type]
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    loader = torch.utils.data.DataLoader(Repeat(), batch_size=None)
    trainer.fit(lit, train_dataloaders=loader)
    deltas = clock.deltas()
    res = {"first_step_s": deltas[0], "times_s": deltas[warmup:], "loss": clock.loss}
    if cuda:
        res.update(peak_mem_bytes=clock.peak, timing="cuda events at batch starts")
    return res


def run_point(
    variant: str,
    precision: str,
    compile_: str,
    config: GPTConfig,
    batch: torch.Tensor,
    args: Any,
    device: torch.device,
) -> dict[str, Any]:
    """One grid point in this process: first step (compile happens there), warm-up, timed steps."""
    if variant == "lightning":
        return lightning_run(
            config, precision, compile_, batch, args.steps, args.warmup, device, args.compile_backend
        )
    step = plain_step(variant, config, precision, compile_, device, args.compile_backend)
    batch = batch.to(device)
    t0 = time.perf_counter()
    loss = float(step(batch))  # reads the loss back: waits for the step
    first = time.perf_counter() - t0
    for _ in range(max(args.warmup - 1, 0)):
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        times, wall = cuda_step_times(lambda: step(batch), args.steps, device)
        return {
            "first_step_s": first,
            "times_s": times,
            "loss": loss,
            "peak_mem_bytes": torch.cuda.max_memory_allocated(device),
            "wall_s_per_step": wall,
            "timing": "cuda events between steps",
        }
    import resource  # POSIX only, like the allocator this reports on

    times = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    mem = peak_memory(lambda: step(batch)) if args.memory and args.malloc_mode == "system" else None
    return {
        "first_step_s": first,
        "times_s": times,
        "loss": loss,
        "step_mem_bytes": mem,
        # where the allocator's cost shows: minor page faults and kernel time, per timed step
        "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / len(times),
        "sys_s_per_step": (after.ru_stime - before.ru_stime) / len(times),
        "timing": "perf_counter around each step",
    }


def profile_variant(
    spec: str, config: GPTConfig, batch: torch.Tensor, device: torch.device, steps: int = 2
) -> dict[str, Any]:
    """torch.profiler self time per category (and the top ops) for ``variant:precision``, eager: CPU time
    on a CPU, GPU kernel time attributed to the aten op that launched it on CUDA."""
    from torch.profiler import ProfilerActivity, profile

    variant, precision = spec.split(":")
    step = plain_step(variant, config, precision, "off", device)
    batch = batch.to(device)
    for _ in range(2):
        step(batch)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(batch)
        if cuda:
            torch.cuda.synchronize(device)

    def self_us(e: Any) -> float:
        if cuda:
            return float(getattr(e, "self_device_time_total", 0.0) or 0.0)
        return float(e.self_cpu_time_total)

    events = [e for e in prof.key_averages() if e.key.startswith(("aten::", "Optimizer"))]
    total = sum(self_us(e) for e in events) or 1.0
    cats: dict[str, float] = {}
    for e in events:
        cat = next((c for c, keys in CATEGORIES if any(k in e.key for k in keys)), "other")
        cats[cat] = cats.get(cat, 0.0) + self_us(e)
    top = sorted(events, key=lambda e: -self_us(e))[:12]
    return {
        "spec": spec,
        "clock": "self GPU kernel time" if cuda else "self CPU time",
        "ms_per_step": total / 1e3 / steps,
        "share": {k: round(v / total, 3) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "top_ops_ms_per_step": {e.key: round(self_us(e) / 1e3 / steps, 1) for e in top},
    }
