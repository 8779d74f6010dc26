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
    monkeypatch.setattr(precision, "cpu_bf16_slowdown", lambda: 40.0)
    chosen, why = precision.cpu_precision("bf16-mixed")
    assert chosen == "32-true"
    assert why is not None and "40x slower" in why and precision.CPU_BF16_ENV in why
    assert precision.cpu_precision("32-true") == ("32-true", None)


def test_native_bf16_or_opt_in_keeps_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_slowdown", lambda: 0.6)
    assert precision.cpu_precision("bf16-mixed") == ("bf16-mixed", None)
    monkeypatch.setattr(precision, "cpu_bf16_slowdown", lambda: 40.0)
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    assert precision.cpu_precision("bf16-true") == ("bf16-true", None)


def test_slowdown_is_measured_here() -> None:
    ratio = precision.cpu_bf16_slowdown()
    assert 0.01 < ratio < 1000  # a real measurement, whatever this CPU is
