"""A LightningDataModule that streams fixed-length token blocks from a prepared dataset (litdata).

Each item is ``block_size + 1`` consecutive tokens; the training step takes ``x = batch[:, :-1]`` and
``y = batch[:, 1:]``. Blocks never overlap and never span two chunk files.

The position of the training loader is part of the module's ``state_dict``, which Lightning stores in
every checkpoint; on resume it is restored into the loader when the loader is created, so the run goes
on with exactly the batches an uninterrupted run would have seen (litdata does not do this by itself
under the Trainer, litData issue #775).

A damaged dataset is refused when the module is created (``integrity.verify_dataset``: marker, indexes,
chunk files and their sizes and headers, tokenizer), and every batch is checked on the CPU, in the
loader, for token ids outside the vocabulary (a chunk overwritten in place).

It reads the dataset through :mod:`lightning_llm.data.layout` and ``integrity`` only: training imports
none of the preparation pipeline (sources, cleaning, dedup, prepare).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_llm.data.errors import DataError, DatasetDamaged, damaged
from lightning_llm.data.integrity import verify_dataset
from lightning_llm.data.layout import INDEX, MARKER, TOKENIZER_DIR, read_marker
from lightning_llm.data.tokenizer import Tokenizer, TokenizerError

__all__ = ["DataError", "TokenDataModule", "CheckedCollate", "ResumableTrainLoader", "collate_tokens"]


def collate_tokens(items: list[Any]) -> torch.Tensor:
    """Stack token blocks (numpy uint16/int32 arrays or tensors) into a ``(B, block_size + 1)`` LongTensor."""
    if isinstance(items[0], torch.Tensor):
        return torch.stack(items).long()
    return torch.from_numpy(np.stack(items).astype(np.int64))


class CheckedCollate:
    """``collate_tokens`` that refuses a batch holding a token id outside ``[0, vocab_size)``.

    Runs where the loader collates (a worker process, or the main one with ``num_workers=0``), on the
    CPU arrays litdata read, before anything goes to a device: a vectorised min/max per batch, no
    device synchronisation. An id out of range means a chunk was overwritten or mixed with another
    dataset's; without the check the embedding fails with an ``IndexError`` (or, on a GPU, a device
    assert) far from the cause.
    """

    def __init__(self, vocab_size: int, dataset: str, split: str) -> None:
        self.vocab_size, self.dataset, self.split = vocab_size, dataset, split

    def __call__(self, items: list[Any]) -> torch.Tensor:
        arrays = [t.numpy() if isinstance(t, torch.Tensor) else t for t in items]
        batch = np.stack(arrays)
        hi, lo = int(batch.max()), int(batch.min())
        if hi >= self.vocab_size or lo < 0:
            bad = hi if hi >= self.vocab_size else lo
            raise damaged(
                self.dataset,
                f"its {self.split} split holds token id {bad}, outside its tokenizer's {self.vocab_size} ids "
                f"(0..{self.vocab_size - 1}): a chunk file was overwritten",
            )
        return torch.from_numpy(batch.astype(np.int64))


class ResumableTrainLoader:
    """The training loader's position as datamodule state (``TokenDataModule`` and the post-training
    datamodules): a position loaded from a checkpoint before the loader exists is applied when it is made.
    Expects ``_train_loader`` and ``_pending_state`` attributes (None at first)."""

    _train_loader: Any
    _pending_state: Any

    def _resume_train_loader(self, loader: Any) -> Any:
        """Keep ``loader`` as the training loader, moved to a position loaded before it existed."""
        self._train_loader = loader
        if self._pending_state is not None:
            loader.load_state_dict(self._pending_state)
            self._pending_state = None
        return loader

    def _loader_position(self) -> Any:
        """The training loader's state, or the one loaded and not yet applied (saved before training
        started, or right after a resume)."""
        return self._train_loader.state_dict() if self._train_loader is not None else self._pending_state

    def _restore_position(self, loader_state: Any) -> None:
        """Apply a saved loader position now, or when the training loader is made."""
        self._pending_state = loader_state
        if loader_state is not None and self._train_loader is not None:
            self._resume_train_loader(self._train_loader)


class TokenDataModule(ResumableTrainLoader, L.LightningDataModule):
    """Batches of token blocks from a directory written by ``lightning-llm prepare``.

    Args:
        path: Prepared dataset directory (holds train/, val/, tokenizer/ and prepared.json).
        batch_size: Blocks per batch (per device).
        block_size: Tokens the model sees per sequence; items hold ``block_size + 1`` tokens.
        num_workers: DataLoader worker processes (0: load in the main process).
        shuffle: Shuffle the training blocks (chunk order and blocks within chunks), seeded.
        seed: Seed of the shuffle; the same seed gives the same batches.
        drop_last: Drop the last incomplete batch of each epoch, so every batch has ``batch_size`` rows.
    """

    def __init__(
        self,
        path: str = "data/classics",
        batch_size: int = 8,
        block_size: int = 256,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 42,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1 or block_size < 1 or num_workers < 0:
            raise DataError(
                f"batch_size and block_size must be positive and num_workers >= 0; "
                f"got batch_size={batch_size}, block_size={block_size}, num_workers={num_workers}"
            )
        self.path = Path(path)
        self.batch_size = batch_size
        self.block_size = block_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self._marker, self._tokenizer = _check_prepared(self.path)
        self._train_loader: Any = None
        self._pending_state: dict[str, Any] | None = None

    # -- what the model needs to know before setup -------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the dataset was written with."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Token ids in the dataset's tokenizer (special tokens included)."""
        return self._tokenizer.vocab_size

    def check_tokenizer(self, expected_fingerprint: str) -> None:
        """Raise if this dataset was tokenized with another tokenizer than ``expected_fingerprint``."""
        actual = self._tokenizer.fingerprint()
        if actual != expected_fingerprint:
            raise TokenizerError(
                f"The dataset {self.path} was tokenized with {self._tokenizer.name} ({actual[:12]}), "
                f"not with the tokenizer the model was trained with ({expected_fingerprint[:12]}). "
                f"Token ids would mean different text: use the dataset the checkpoint was trained on, "
                f"or prepare this corpus with the checkpoint's tokenizer."
            )

    def num_blocks(self, split: str) -> int:
        """Items of ``block_size + 1`` tokens in ``split`` (blocks do not span chunk files)."""
        index = json.loads((self.path / split / INDEX).read_text())
        return sum(int(c["dim"] or 0) // (self.block_size + 1) for c in index["chunks"])

    # -- loaders ------------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> Any:
        from litdata import StreamingDataset
        from litdata.streaming.item_loader import TokensLoader

        if self.num_blocks(split) == 0:
            index = json.loads((self.path / split / INDEX).read_text())
            largest = max((int(c["dim"] or 0) for c in index["chunks"]), default=0)
            raise DataError(
                f"The {split} split of {self.path} is too small for one block of block_size + 1 = "
                f"{self.block_size + 1} tokens (its largest chunk holds {largest}). Use a smaller "
                f"block_size, or prepare more text (a larger corpus or a larger --val_fraction)."
            )
        dataset = StreamingDataset(
            input_dir=str((self.path / split).resolve()),
            item_loader=TokensLoader(block_size=self.block_size + 1),
            shuffle=shuffle,
            seed=self.seed,
            drop_last=self.drop_last,
            # litdata's default shuffles windows of 256 consecutive blocks as units: a long document
            # (a Bible book) then arrives as a run of batches and the loss jumps. Permute every block.
            item_shuffle_window=0,
        )
        self._shard_by_data_parallel_rank(dataset)
        return _loader_class()(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=CheckedCollate(self.vocab_size, str(self.path), split),
            drop_last=self.drop_last,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )

    def _shard_by_data_parallel_rank(self, dataset: Any) -> None:
        """Split the data over data-parallel replicas, not processes.

        litdata splits by global rank. With tensor parallelism the ranks of one tensor-parallel group hold
        shards of one model replica and must read the same batches; the strategy says which replica a rank
        belongs to (``distributed_sampler_kwargs``, what Lightning gives a ``DistributedSampler``). Without
        this, each rank of a group reads its own batch and nothing fails: row-wise projections sum partial
        results of different sequences and the replicated weights drift apart.
        """
        from litdata.utilities.env import _DistributedEnv

        strategy = getattr(self.trainer, "strategy", None)
        kwargs = getattr(strategy, "distributed_sampler_kwargs", None) or {}
        replicas, rank = kwargs.get("num_replicas"), kwargs.get("rank")
        env = dataset.distributed_env
        if replicas is None or (replicas, rank) == (env.world_size, env.global_rank):
            return
        nodes = env.num_nodes if replicas % env.num_nodes == 0 else 1
        dataset.distributed_env = _DistributedEnv(world_size=replicas, global_rank=rank, num_nodes=nodes)

    def train_dataloader(self) -> Any:
        """Shuffled (if ``shuffle``) training batches, resumed from a loaded state if there is one."""
        return self._resume_train_loader(self._loader("train", self.shuffle))

    def val_dataloader(self) -> Any:
        """Validation batches in order (never shuffled)."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> Any:
        """``lightning-llm test`` scores the validation split: prepare writes train and val only (said once)."""
        rank_zero_info(
            f"test: {self.path} has train and val splits only (prepare writes no test split); "
            "testing on the validation split."
        )
        return self._loader("val", shuffle=False)

    # -- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Training loader position, tokenizer fingerprint and block size (saved in Lightning checkpoints)."""
        return {
            "train_loader": self._loader_position(),
            "tokenizer_fingerprint": self._tokenizer.fingerprint(),
            "block_size": self.block_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the training loader position; checks the tokenizer and block size first."""
        self.check_tokenizer(state_dict["tokenizer_fingerprint"])
        if state_dict["block_size"] != self.block_size:
            raise DataError(
                f"The checkpoint was trained on blocks of {state_dict['block_size']} tokens, this datamodule "
                f"makes blocks of {self.block_size}: the loader position cannot be restored. "
                f"Resume with data.block_size={state_dict['block_size']}."
            )
        self._restore_position(state_dict["train_loader"])


_LOADER: Any = None


def _loader_class() -> Any:
    """litdata's ``StreamingDataLoader``, re-raising a worker's ``DatasetDamaged`` with its own message.

    PyTorch re-raises an error of a loader worker with the worker's traceback as its message; the
    damaged-dataset message is cut back out of it, so the CLI prints one paragraph with or without
    workers. (A class built on first use: litdata is imported only when a loader is made.)
    """
    global _LOADER
    if _LOADER is None:
        from litdata import StreamingDataLoader

        class TokenLoader(StreamingDataLoader):
            def __iter__(self) -> Any:
                try:
                    yield from super().__iter__()
                except DatasetDamaged as err:
                    text = str(err)
                    if "Original Traceback" in text:  # from a worker: keep the message, drop the traceback
                        text = text.rstrip().rsplit(f"{DatasetDamaged.__name__}: ", 1)[-1]
                    raise DatasetDamaged(text) from None

        _LOADER = TokenLoader
    return _LOADER


def _check_prepared(path: Path) -> tuple[dict[str, Any], Tokenizer]:
    """The marker and tokenizer of a whole prepared dataset; raises ``DataError`` for anything else.

    Cheap: reads the marker, the indexes, the tokenizer and each chunk's size and header, no tokens.
    """
    hint = f"Prepare it with `lightning-llm prepare --output_dir {path}` (see configs/data/classics.yaml)."
    if not path.is_dir():
        raise DataError(f"No dataset at {path}. {hint}")
    marker = read_marker(path)
    if marker is None:
        raise DataError(f"{path} is not a (completely) prepared dataset: no {MARKER}. {hint}")
    kind = marker.get("kind")
    if kind is not None:  # written by prepare-sft / prepare-dpo: conversations, not token windows
        raise DataError(
            f"{path} is a post-training dataset ({kind}, made by lightning-llm prepare-{kind}), not a pretraining "
            f"corpus: train on it with `lightning-llm {kind} --data.path {path}`, or point --data.path at a "
            "directory made by lightning-llm prepare."
        )
    try:
        tokenizer = Tokenizer.load(path / TOKENIZER_DIR)
    except TokenizerError as err:
        raise damaged(path, str(err).rstrip(".")) from None
    verify_dataset(path, marker, tokenizer.fingerprint())
    return marker, tokenizer
