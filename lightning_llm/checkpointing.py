"""Crash-safe checkpoint files: a checkpoint is written to a temporary file and renamed into place.

Lightning's default ``TorchCheckpointIO`` opens the target and writes into it, so a crash, a kill or
Ctrl-C during the write leaves a truncated ``last.ckpt`` — and the last good checkpoint is gone. A rename
is atomic on POSIX file systems: readers see either the old file or the complete new one.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
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
        except BaseException as err:  # Ctrl-C or an error mid-write: the old file stays, the partial one goes
            tmp.unlink(missing_ok=True)
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CheckpointWriteError(
                    f"No space left on the device of {path.parent} while writing {path.name} (a checkpoint of "
                    f"about {checkpoint_bytes(checkpoint) / 2**20:,.0f} MiB); the previous checkpoint there is "
                    "intact. Free some space or point --checkpoint.dirpath at another disk, then resume with "
                    "--ckpt_path last."
                ) from err
            raise


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (the previous one is intact)."""


def checkpoint_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint dict: about the size of its file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(checkpoint_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(checkpoint_bytes(v) for v in obj)
    return 0


def check_writable(directory: str | Path, what: str) -> None:
    """Create ``directory`` if needed and write a probe file in it, before any training time is spent."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointWriteError(f"{what} {directory} is a file, not a directory; choose a directory.")
    probe = directory / ".lightning-llm-write-test"
    created = [p for p in [directory, *directory.parents] if not p.exists()]  # removed again below
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
        for path in created:  # deepest first: a run that fails later leaves no empty directories behind
            path.rmdir()
    except OSError as err:
        raise CheckpointWriteError(
            f"{what} {directory} is not writable ({err.strerror or err}); choose a directory this user can "
            "write to."
        ) from err


def check_disk_space(directory: str | Path, need_bytes: int) -> None:
    """Refuse to start a run whose checkpoint directory (or its nearest existing parent) has less room
    than one checkpoint, rather than failing at the first save after the training time is spent."""
    import shutil

    existing = next((p for p in [Path(directory), *Path(directory).parents] if p.exists()), None)
    if existing is None:
        return
    free = shutil.disk_usage(existing).free
    if free < need_bytes:
        raise CheckpointWriteError(
            f"The checkpoint directory {directory} has {free / 2**20:,.0f} MiB free but one checkpoint of this "
            f"model needs about {need_bytes / 2**20:,.0f} MiB. Free some space or point --checkpoint.dirpath at "
            "another disk."
        )


class InterruptNotice(L.Callback):
    """On Ctrl-C, say which checkpoint is the last good one and how to resume (Lightning itself only says
    "attempting graceful shutdown" and exits)."""

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt) or not trainer.is_global_zero:
            return
        ckpt = trainer.checkpoint_callback
        last = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "")
        if last and Path(last).is_file():
            what = f"The last checkpoint, {last}, is intact"
            how = "resume with --ckpt_path last (same --trainer.default_root_dir)"
        else:
            what = "No checkpoint was written before the interrupt"
            how = "the next run starts from scratch"
        print(f"lightning-llm: interrupted at step {trainer.global_step}. {what}; {how}.", file=sys.stderr)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that also saves ``last`` when a run ends between two saves.

    Lightning writes ``last.ckpt`` at the end of training only if the run never saved one: a run of 250 steps
    checkpointing every 100 (or a resumed run that saved nothing new) ends with the weights of step 200 in
    ``last.ckpt``, and the last 50 steps are lost. Here the end of a run saves ``last`` whenever the step moved
    on since the last save.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        behind = trainer.global_step > self._last_global_step_saved
        if self.save_last and behind and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            return
        super().on_train_end(trainer, pl_module)
