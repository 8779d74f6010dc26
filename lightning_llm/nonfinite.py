"""The NaN guard's parts: the error, a device-side record of the first bad step, and a weights check.

``LitGPT`` records every step's loss here without reading it on the host, reads the record at logging
intervals and before each save, and checks the weights it is about to save.
"""

from __future__ import annotations

from typing import Any

import torch


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the run stops and the last good checkpoint stays as it was."""


class NonFiniteTracker:
    """Remembers, on the loss's device, the first optimizer step whose loss was not finite.

    ``record`` only launches two small kernels; nothing is read back to the host until ``first_step``,
    which the module calls at logging intervals (when Lightning reads the loss anyway) and before saving.
    """

    def __init__(self) -> None:
        self._first: torch.Tensor | None = None

    def record(self, loss: torch.Tensor, step: int) -> None:
        if self._first is None or self._first.device != loss.device:
            self._first = torch.full((), -1, dtype=torch.int64, device=loss.device)
        bad = ~torch.isfinite(loss.detach()) & (self._first < 0)
        self._first = torch.where(bad, step, self._first)

    def first_step(self) -> int | None:
        """The first non-finite step recorded, or None (one host read)."""
        if self._first is None:
            return None
        step = int(self._first)
        return step if step >= 0 else None


def nonfinite_tensors(state: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether every floating tensor of ``state`` is finite, and the names of those that are not.

    One host read for the whole state (the flags are stacked on the device first). A DTensor is checked
    through ``to_local()``: each rank sees its own shard, so callers reduce the answer over ranks.
    """
    floats = {
        name: v.to_local() if hasattr(v, "to_local") else v
        for name, v in state.items()
        if torch.is_tensor(v) and v.is_floating_point() and v.numel()
    }
    if not floats:
        return True, []
    flags = torch.stack([torch.isfinite(t).all() for t in floats.values()])
    if bool(flags.all()):
        return True, []
    return False, [name for name, ok in zip(floats, flags.tolist(), strict=True) if not ok]
