"""Causality for every combination of attention x positional x norm x mlp in the registries.

Changing the tokens after position t never changes the logits at positions <= t (and does change a later
one, so the check is not vacuous). Combinations the model refuses at build time on CPU are skipped with
the model's own message.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from lightning_llm.model import IncompatibleComponentsError
from lightning_llm.registry import ATTENTION, MLP, NORM, POSITIONAL

COMBOS = list(itertools.product(ATTENTION.names(), POSITIONAL.names(), NORM.names(), MLP.names()))


@pytest.mark.parametrize(
    ("attention", "positional", "norm", "mlp"), COMBOS, ids=["-".join(c) for c in COMBOS]
)
def test_future_tokens_never_change_past_logits(tiny_model, attention, positional, norm, mlp) -> None:
    try:  # GQA (2 query heads share 1 KV head) so every kernel's grouped path is covered too
        model = tiny_model(attention=attention, positional=positional, norm=norm, mlp=mlp, n_kv_head=1)
    except IncompatibleComponentsError as err:
        pytest.skip(str(err))
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 32, (2, 12), generator=g)
    with torch.no_grad():
        base = model(idx)
        for t in (0, 5, 10):
            changed = idx.clone()
            changed[:, t + 1 :] = torch.randint(0, 32, changed[:, t + 1 :].shape, generator=g)
            changed[:, -1] = (idx[:, -1] + 1) % 32  # at least one future token differs
            out = model(changed)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=1e-6)
            assert not torch.allclose(out[:, -1], base[:, -1]), "future tokens had no effect at all"
