"""Precision strings in one place, and bf16 on a CPU that only emulates it."""

from __future__ import annotations

import pytest
import torch

from lightning_llm import precision


def test_training_dtype_knows_lightnings_strings_and_refuses_others() -> None:
    assert precision.training_dtype("bf16-mixed") is torch.bfloat16
    assert precision.training_dtype("32-true") is torch.float32
    assert precision.training_dtype("16-mixed") is torch.float16
    with pytest.raises(ValueError, match="Unknown precision 'transformer-engine'"):
        precision.training_dtype("transformer-engine")  # used to become fp32 silently


def test_emulated_bf16_becomes_fp32_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(
        precision, "cpu_bf16_native", lambda: None
    )  # a CPU whose instructions torch can't tell
    monkeypatch.setattr(precision, "cpu_bf16_slowdown", lambda: 40.0)
    chosen, why = precision.cpu_precision("bf16-mixed")
    assert chosen == "32-true"
    assert why is not None and "40x slower" in why and precision.CPU_BF16_ENV in why
    assert precision.cpu_precision("32-true") == ("32-true", None)


def test_native_bf16_or_opt_in_keeps_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: None)
    monkeypatch.setattr(precision, "cpu_bf16_slowdown", lambda: 0.6)
    assert precision.cpu_precision("bf16-mixed") == ("bf16-mixed", None)
    monkeypatch.setattr(precision, "cpu_bf16_slowdown", lambda: 40.0)
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    assert precision.cpu_precision("bf16-true") == ("bf16-true", None)


def test_the_instruction_set_decides_before_any_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_slowdown", lambda: 1.1)  # a timing fooled by a busy machine
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    chosen, why = precision.cpu_precision("bf16-mixed")
    assert chosen == "32-true" and "neither AVX512-BF16 nor AMX" in why
    monkeypatch.setattr(precision, "cpu_bf16_slowdown", lambda: 40.0)
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: True)
    assert precision.cpu_precision("bf16-mixed") == ("bf16-mixed", None)


def test_the_instruction_set_answer_agrees_with_torch_here() -> None:
    import platform

    native = precision.cpu_bf16_native()
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert native == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    else:
        assert native is None


def test_slowdown_is_measured_here() -> None:
    ratio = precision.cpu_bf16_slowdown()
    assert 0.01 < ratio < 1000  # a real measurement, whatever this CPU is


def test_fsdp_param_dtype_follows_the_precision_string() -> None:
    assert precision.fsdp_param_dtype("bf16-mixed") is torch.bfloat16
    assert precision.fsdp_param_dtype("16-mixed") is torch.float16
    assert precision.fsdp_param_dtype("32-true") is None
    assert precision.fsdp_param_dtype("bf16-true") is None  # parameters already are bf16
    with pytest.raises(ValueError, match="Unknown precision 'bf17-mixed'"):
        precision.fsdp_param_dtype("bf17-mixed")


def test_device_precision_checks() -> None:
    with pytest.raises(ValueError, match="16-mixed needs a GPU"):
        precision.check_device_precision("16-mixed", on_cpu=True)
    with pytest.raises(ValueError, match="no bfloat16; use 16-mixed"):
        precision.check_device_precision("bf16-mixed", on_cpu=False, gpu_has_bf16=False)
    precision.check_device_precision("bf16-mixed", on_cpu=True)  # emulated or native: decided at fit
    precision.check_device_precision("16-mixed", on_cpu=False)


def test_parallelize_takes_arguments_not_the_lightning_module() -> None:
    """The single-device path: compile and checkpointing from plain arguments; a meta model is materialised."""
    from lightning_llm.config import GPTConfig
    from lightning_llm.model import GPT
    from lightning_llm.parallel import parallelize

    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    with torch.device("meta"):
        model = GPT(cfg)
    parallelize(model, device=torch.device("cpu"), activation_checkpointing=True)
    assert not any(p.is_meta for p in model.parameters())
    assert all(type(b).__name__ == "CheckpointWrapper" for b in model.blocks)
    assert model.wte.weight.std().item() == pytest.approx(cfg.init_std, rel=0.2)
    with pytest.raises(ValueError, match="tensor_parallel needs trainer.strategy=ModelParallelStrategy"):
        parallelize(GPT(cfg), device=torch.device("cpu"), tensor_parallel=True)
