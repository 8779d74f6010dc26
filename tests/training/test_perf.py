"""The MFU denominator: a device-table peak or a saturating matmul, and the log line that says which."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from lightning_llm import perf
from lightning_llm.callbacks import SpeedMonitor


def test_cpu_peak_is_measured_with_a_large_matmul() -> None:
    peak = perf.peak_flops(torch.device("cpu"), torch.float32)
    n = int(peak.source.split("^")[0].removeprefix("measured: "))
    assert n in (256, 512, 1024, 2048)  # doubled while a product takes < 20 ms
    assert peak.source == f"measured: {n}^3 float32 matmul on cpu"
    # a 2-core CPU does tens to hundreds of GFLOP/s in fp32; a broken timer would be far off
    assert 1e9 < peak.flops < 1e13
    assert "FLOP/s (measured" in peak.describe()


def test_table_is_preferred_where_the_device_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf, "table_flops", lambda d, dt: (989.4e12, "NVIDIA H100 80GB HBM3"))
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda *a, **k: pytest.fail("measured despite a table"))
    peak = perf.peak_flops(torch.device("cpu"), torch.bfloat16)
    assert peak.flops == 989.4e12
    assert peak.source == "table: NVIDIA H100 80GB HBM3, bfloat16 dense peak"


def test_measure_mode_ignores_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf, "table_flops", lambda d, dt: (989.4e12, "NVIDIA H100 80GB HBM3"))
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda device, dtype: (7.0e14, 8192))
    assert perf.peak_flops(torch.device("cpu"), torch.bfloat16, "measure").flops == 7.0e14


def test_table_mode_refuses_an_unknown_device() -> None:
    with pytest.raises(ValueError, match="No peak FLOP/s table entry for cpu"):
        perf.peak_flops(torch.device("cpu"), torch.float32, "table")
    with pytest.raises(ValueError, match="auto, table or measure"):
        perf.peak_flops(torch.device("cpu"), torch.float32, "guess")  # type: ignore[arg-type]


def test_emulated_dtype_keeps_the_cpu_measurement_short() -> None:
    import time

    t0 = time.perf_counter()
    flops, n = perf.measure_matmul_peak(torch.device("cpu"), torch.bfloat16, seconds=0.1)
    # a CPU without native bf16 stays at a small size; one with it may grow to 2048
    assert flops > 0 and n >= 256 and time.perf_counter() - t0 < 30


def test_cuda_sizes_saturate_the_device() -> None:
    # 8192^3 is where an H100's bf16 matmul reaches its plateau (~780-800 TFLOP/s measured); the first
    # round's 1024^3 was launch-bound and made the logged MFU 6-8x too high
    assert perf.MEASURE_SIZE["cuda"] >= 8192


def test_speed_monitor_logs_the_peak_and_its_source(monkeypatch, caplog) -> None:
    monkeypatch.setattr(perf, "table_flops", lambda d, dt: None)
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda device, dtype: (2.5e11, 2048))
    trainer = SimpleNamespace(
        precision="bf16-mixed", strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    monitor = SpeedMonitor()
    with caplog.at_level(logging.INFO):
        monitor.on_fit_start(trainer, None)  # type: ignore[arg-type]
    assert monitor.peak_flops == 2.5e11
    assert "MFU peak: 250.0 GFLOP/s per device (measured: 2048^3 bfloat16 matmul on cpu)" in caplog.text


def test_speed_monitor_given_peak_is_said_to_be_given(caplog) -> None:
    trainer = SimpleNamespace(precision="32-true", strategy=SimpleNamespace(root_device=torch.device("cpu")))
    with caplog.at_level(logging.INFO):
        SpeedMonitor(peak_flops=1e12).on_fit_start(trainer, None)  # type: ignore[arg-type]
    assert "1.0 TFLOP/s per device (given (speed.peak_flops))" in caplog.text


def test_speed_monitor_mfu_uses_the_flops_of_the_built_model() -> None:
    """GPT-2 124M at T = 1024: 855,383,040 FLOPs/token (6 x 123.69M + 12 L C T), counted on a meta build."""
    from lightning_llm.config import GPTConfig

    logged: dict[str, float] = {}
    pl_module = SimpleNamespace(config=GPTConfig(), log_dict=lambda d, **kw: logged.update(d))
    trainer = SimpleNamespace(
        global_step=10,
        accumulate_grad_batches=1,
        device_ids=[],
        world_size=1,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
    monitor = SpeedMonitor(peak_flops=1e12, log_every_n_steps=10)
    batch = torch.zeros(2, 1025, dtype=torch.long)
    monitor.on_train_batch_start(trainer, pl_module, batch, 0)  # type: ignore[arg-type]
    monitor.on_train_batch_end(trainer, pl_module, None, batch, 0)  # type: ignore[arg-type]
    tps = logged["perf/tokens_per_s_device"]
    assert logged["perf/mfu"] == pytest.approx(855_383_040.0 * tps / 1e12, rel=1e-12)
