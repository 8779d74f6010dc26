"""Positional encodings: RoPE's relative-position property and scaling options; sinusoidal vs the formula."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_llm.components.positional import RoPE, SinusoidalPositional

D = 16


def rope(**options) -> RoPE:
    return RoPE(D * 2, 2, D, 4096, **options)


def rotate_at(pe: RoPE, x: torch.Tensor, pos: float, which: int) -> torch.Tensor:
    """Rotate a (1, 1, 1, D) query (which=0) or key (which=1) as if it stood at position ``pos``."""
    ctx = pe.context(torch.tensor([pos], dtype=torch.float64), int(pos) + 1)
    return ctx.rotate(x, x)[which]


@pytest.mark.parametrize(("m", "n", "shift"), [(0, 0, 7), (5, 2, 100), (3, 9, 1000), (40, 1, 17)])
@pytest.mark.parametrize(
    "options", [{}, {"scaling": "linear", "factor": 4.0}, {"scaling": "ntk", "factor": 8.0}]
)
def test_rope_score_depends_only_on_relative_position(m: int, n: int, shift: int, options: dict) -> None:
    g = torch.Generator().manual_seed(m * 31 + n)
    q, k = torch.randn(2, 1, 1, 1, D, generator=g)
    pe = rope(**options)
    score = (rotate_at(pe, q, m, 0) * rotate_at(pe, k, n, 1)).sum()
    shifted = (rotate_at(pe, q, m + shift, 0) * rotate_at(pe, k, n + shift, 1)).sum()
    # positions enter as fp32 angles p * theta: absolute error ~ p * 1.2e-7 per angle
    assert shifted.item() == pytest.approx(score.item(), abs=1e-3)


def test_rope_is_a_rotation() -> None:
    q = torch.randn(1, 2, 6, D)
    q_rot, _ = rope().context(torch.arange(6), 6).rotate(q, q)
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(q_rot[:, :, 0], q[:, :, 0])  # position 0 is the identity


def test_rope_linear_scaling_is_unscaled_rope_at_pos_over_factor() -> None:
    q = torch.randn(1, 2, 8, D)
    pos = torch.arange(8)
    scaled = rope(scaling="linear", factor=4.0).context(pos, 8).rotate(q, q)[0]
    plain = rope().context(pos.float() / 4.0, 8).rotate(q, q)[0]
    torch.testing.assert_close(scaled, plain)


def test_rope_ntk_scaling_stretches_the_base() -> None:
    factor = 8.0
    ntk = rope(scaling="ntk", factor=factor).inv_freq(torch.device("cpu"))
    stretched = rope(base=10000.0 * factor ** (D / (D - 2))).inv_freq(torch.device("cpu"))
    plain = rope().inv_freq(torch.device("cpu"))
    torch.testing.assert_close(ntk, stretched)
    assert ntk[0] == plain[0] == 1.0  # the fastest frequency is untouched
    # ... and the slowest one is slowed down by exactly the factor
    assert ntk[-1].item() == pytest.approx(plain[-1].item() / factor, rel=1e-5)
    assert not torch.allclose(ntk, plain)


def test_rope_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="scaling"):
        rope(scaling="yarn")
    with pytest.raises(ValueError, match="even head dimension"):
        RoPE(6, 2, 3, 8)


@pytest.mark.parametrize("dim", [16, 15])
def test_sinusoidal_equals_the_formula_in_float64(dim: int) -> None:
    pos = torch.arange(0, 200, 7)
    pe = SinusoidalPositional(dim, 1, dim, 256)
    got = pe.embed(torch.zeros(1, len(pos), dim), pos)[0].double()
    want = torch.empty(len(pos), dim, dtype=torch.float64)
    for r, p in enumerate(pos.tolist()):
        for c in range(dim):
            angle = p / 10000.0 ** ((c - c % 2) / dim)  # PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos
            want[r, c] = math.sin(angle) if c % 2 == 0 else math.cos(angle)
    # fp32 angles up to p = 196: error ~ 196 * 6e-8
    torch.testing.assert_close(got, want, atol=5e-5, rtol=0)
