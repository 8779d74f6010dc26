"""Crash-safe checkpoint files: a checkpoint is written to a temporary file and renamed into place.

Lightning's default ``TorchCheckpointIO`` opens the target and writes into it, so a crash, a kill or
Ctrl-C during the write leaves a truncated ``last.ckpt`` — and the last good checkpoint is gone. A rename
is atomic on POSIX file systems: readers see either the old file or the complete new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes ``path.tmp`` and then ``os.replace``\\ s it over ``path``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)  # object stores: one PUT
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:  # Ctrl-C or an error mid-write: the old file stays, the partial one goes
            tmp.unlink(missing_ok=True)
            raise
