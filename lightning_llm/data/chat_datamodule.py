"""LightningDataModules for post-training: ``ChatDataModule`` (SFT) and ``PreferenceDataModule`` (DPO).

They read directories written by ``lightning-llm prepare-sft`` / ``prepare-dpo`` (items: a dict of int32
arrays per record, see :mod:`lightning_llm.data.chat_records`) and yield padded batches, collated on the
CPU in the loader::

    SFT:  {"input_ids": LongTensor (B, T), "labels": LongTensor (B, T)}
    DPO:  {"input_ids": LongTensor (2B, T), "labels": LongTensor (2B, T)}
          rows 0..B-1 the chosen sequences, rows B..2B-1 the rejected ones of the same pairs, in the same
          order (pair i = rows i and B + i)

``labels[b, t]`` is the id to predict after reading ``input_ids[b, : t + 1]``, or -100 (not trained: the
prompt, the roles, padding). ``T`` is the batch's longest sequence rounded up to a multiple of 8 (at most
``block_size``); padding is ``<|endoftext|>`` with label -100.

As ``TokenDataModule``: the directory is checked when the module is made (marker, kind, indexes, chunk
sizes and headers, tokenizer); every batch is checked for ids outside the vocabulary; the training loader's
position is part of ``state_dict`` so a resumed run sees exactly the batches of an uninterrupted one; and the
data is split over data-parallel replicas (not tensor-parallel ranks). Training imports none of the
preparation pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_llm.chat import IGNORE_INDEX
from lightning_llm.data.chat_records import A_KIND, DATA_FORMAT, KINDS, verify_chat_dataset
from lightning_llm.data.datamodule import ResumableTrainLoader, TokenDataModule, _loader_class
from lightning_llm.data.errors import DataError, damaged
from lightning_llm.data.layout import MARKER, TOKENIZER_DIR, read_marker
from lightning_llm.data.tokenizer import Tokenizer, TokenizerError

__all__ = ["ChatCollate", "ChatDataModule", "PreferenceDataModule"]

PAD_MULTIPLE = 8


class ChatCollate:
    """Pads a list of stored items into the batch of its ``kind`` (see the module docstring).

    Runs where the loader collates (a worker, or the main process), on CPU numpy arrays: one vectorised
    range check of the ids and labels per batch, no device synchronisation.
    """

    def __init__(
        self, kind: str, vocab_size: int, pad_id: int, block_size: int, dataset: str, split: str
    ) -> None:
        self.kind, self.vocab_size, self.pad_id, self.block_size = kind, vocab_size, pad_id, block_size
        self.dataset, self.split = dataset, split

    def __call__(self, items: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        if self.kind == "sft":
            rows = [(it["input_ids"], it["labels"]) for it in items]
        else:
            rows = [(it["chosen_input_ids"], it["chosen_labels"]) for it in items]
            rows += [(it["rejected_input_ids"], it["rejected_labels"]) for it in items]
        longest = max(len(ids) for ids, _ in rows)
        if longest > self.block_size:
            raise DataError(
                f"The {self.split} split of {self.dataset} holds a sequence of {longest} tokens, more than "
                f"block_size {self.block_size}. Use a larger data.block_size, or prepare the data again with "
                f"--block_size {self.block_size}."
            )
        width = min(self.block_size, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for i, (ids, lab) in enumerate(rows):
            input_ids[i, : len(ids)] = ids
            labels[i, : len(lab)] = lab
        trained = labels[labels != IGNORE_INDEX]
        lo = min(int(input_ids.min()), int(trained.min()) if trained.size else 0)
        hi = max(int(input_ids.max()), int(trained.max()) if trained.size else 0)
        if lo < 0 or hi >= self.vocab_size:
            raise damaged(
                self.dataset,
                f"its {self.split} split holds token id {hi if hi >= self.vocab_size else lo}, outside its "
                f"tokenizer's {self.vocab_size} ids: a chunk file was overwritten",
            )
        return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}


class _PostTrainingData(ResumableTrainLoader, L.LightningDataModule):
    """What the SFT and DPO datamodules share; ``kind`` says which prepared directories they read."""

    kind: ClassVar[str] = "sft"

    def __init__(
        self,
        path: str,
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
        self._marker, self._tokenizer = self._check_prepared()
        self._train_loader: Any = None
        self._pending_state: dict[str, Any] | None = None

    def _check_prepared(self) -> tuple[dict[str, Any], Tokenizer]:
        path, name, command = self.path, type(self).__name__, f"lightning-llm prepare-{self.kind}"
        hint = f"Prepare it with `{command} --output_dir {path}`."
        if not path.is_dir():
            raise DataError(f"No dataset at {path}. {hint}")
        marker = read_marker(path)
        if marker is None:
            raise DataError(f"{path} is not a (completely) prepared dataset: no {MARKER}. {hint}")
        kind = marker.get("kind")
        if kind not in KINDS:
            raise DataError(
                f"{path} is a pretraining dataset (made by lightning-llm prepare); {name} reads {self.kind} "
                f"datasets made by `{command}`. {hint}"
            )
        if kind != self.kind:
            other = (
                "PreferenceDataModule (lightning-llm dpo)"
                if kind == "dpo"
                else "ChatDataModule (lightning-llm sft)"
            )
            raise DataError(
                f"{path} is {A_KIND[kind]} (made by lightning-llm prepare-{kind}); {name} reads {self.kind} "
                f"datasets made by `{command}`. Read it with {other}, or give {A_KIND[self.kind]}."
            )
        if marker.get("data_format") != DATA_FORMAT:
            raise DataError(
                f"{path} was written in format {marker.get('data_format')!r}, this version reads {DATA_FORMAT!r}. "
                f"Prepare it again with `{command} --overwrite true`."
            )
        try:
            tokenizer = Tokenizer.load(path / TOKENIZER_DIR)
        except TokenizerError as err:
            raise damaged(path, str(err).rstrip(".")) from None
        verify_chat_dataset(path, marker, tokenizer.fingerprint())
        longest = int(marker["counts"]["longest"])
        if longest > self.block_size:
            raise DataError(
                f"{path} holds sequences of up to {longest} tokens (prepared with --block_size "
                f"{marker['block_size']}), longer than data.block_size {self.block_size}: they would not fit the "
                f"model. Use data.block_size >= {longest} with a model whose block_size is at least as large, "
                f"or prepare the data again with --block_size {self.block_size} (longer records are then refused)."
            )
        return marker, tokenizer

    # -- what the model needs to know before setup -------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        """The chat tokenizer the dataset was written with."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Token ids in the dataset's tokenizer (chat tokens included)."""
        return self._tokenizer.vocab_size

    @property
    def pad_id(self) -> int:
        """The id that pads a batch's shorter sequences (``<|endoftext|>``; its labels are -100)."""
        return self._tokenizer.eot_id

    @property
    def longest(self) -> int:
        """Tokens in the dataset's longest sequence."""
        return int(self._marker["counts"]["longest"])

    def num_records(self, split: str) -> int:
        """Records (conversations or preference pairs) in ``split``."""
        return int(self._marker["splits"][split]["records"])

    def check_tokenizer(self, expected_fingerprint: str) -> None:
        """Raise if this dataset was tokenized with another tokenizer than ``expected_fingerprint``."""
        actual = self._tokenizer.fingerprint()
        if actual != expected_fingerprint:
            raise TokenizerError(
                f"The dataset {self.path} was tokenized with {self._tokenizer.name} + chat tokens ({actual[:12]}), "
                f"not with the tokenizer the model uses ({expected_fingerprint[:12]}). Prepare it with "
                f"`lightning-llm prepare-{self.kind} --tokenizer CHECKPOINT` for the checkpoint you fine-tune."
            )

    # -- loaders ------------------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> Any:
        from litdata import StreamingDataset

        dataset = StreamingDataset(
            input_dir=str((self.path / split).resolve()),
            shuffle=self.shuffle and train,
            seed=self.seed,
            # training: only whole batches; evaluation (None): every record on one process, and equal
            # counts on every replica when distributed (litdata's default), so no rank waits on another
            drop_last=self.drop_last if train else None,
            item_shuffle_window=0,  # permute every record, not windows of consecutive ones
        )
        TokenDataModule._shard_by_data_parallel_rank(self, dataset)  # type: ignore[arg-type]
        collate = ChatCollate(self.kind, self.vocab_size, self.pad_id, self.block_size, str(self.path), split)
        return _loader_class()(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            drop_last=self.drop_last if train else None,  # litdata hands it to the dataset (same as above)
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )

    def train_dataloader(self) -> Any:
        """Shuffled (if ``shuffle``) training batches, resumed from a loaded state if there is one."""
        return self._resume_train_loader(self._loader("train", train=True))

    def val_dataloader(self) -> Any:
        """Validation batches in order (never shuffled), every record."""
        return self._loader("val", train=False)

    def test_dataloader(self) -> Any:
        """The validation split (prepare-sft / prepare-dpo write train and val only; said once)."""
        rank_zero_info(
            f"test: {self.path} has train and val splits only (prepare-{self.kind} writes no test split); "
            "testing on the validation split."
        )
        return self._loader("val", train=False)

    # -- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Training loader position, dataset and tokenizer fingerprints (saved in Lightning checkpoints)."""
        return {
            "train_loader": self._loader_position(),
            "kind": self.kind,
            "dataset_fingerprint": self._marker["fingerprint"],
            "tokenizer_fingerprint": self._tokenizer.fingerprint(),
            "block_size": self.block_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the training loader position; checks that the dataset is the one it was saved with."""
        self.check_tokenizer(state_dict["tokenizer_fingerprint"])
        if (
            state_dict.get("kind") != self.kind
            or state_dict.get("dataset_fingerprint") != self._marker["fingerprint"]
        ):
            raise DataError(
                f"The checkpoint was trained on another dataset than {self.path} (its "
                f"records or settings differ), so its position in the data cannot be restored. Resume with the "
                f"dataset it was trained on, or start a new run from the checkpoint's weights instead of resuming."
            )
        self._restore_position(state_dict["train_loader"])


class ChatDataModule(_PostTrainingData):
    """Batches of conversations from a directory written by ``lightning-llm prepare-sft``.

    Each batch is ``{"input_ids": (B, T), "labels": (B, T)}`` (LongTensors); ``labels`` are -100 except on
    the assistant's replies and their ``<|end|>``.

    Args:
        path: Prepared SFT dataset directory (holds train/, val/, tokenizer/ and prepared.json).
        batch_size: Conversations per batch (per device).
        block_size: Longest sequence allowed, in tokens (at most the model's block size); the dataset's
            longest conversation must fit. Batches are padded to their own longest sequence (a multiple of 8).
        num_workers: DataLoader worker processes (0: load in the main process).
        shuffle: Shuffle the training conversations, seeded.
        seed: Seed of the shuffle; the same seed gives the same batches.
        drop_last: Drop the last incomplete training batch of each epoch (validation keeps every record).
    """

    kind: ClassVar[str] = "sft"

    def __init__(
        self,
        path: str = "data/classics-sft",
        batch_size: int = 8,
        block_size: int = 256,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 42,
        drop_last: bool = True,
    ) -> None:
        super().__init__(path, batch_size, block_size, num_workers, shuffle, seed, drop_last)


class PreferenceDataModule(_PostTrainingData):
    """Batches of preference pairs from a directory written by ``lightning-llm prepare-dpo``.

    Each batch is ``{"input_ids": (2B, T), "labels": (2B, T)}`` (LongTensors): rows 0..B-1 are the chosen
    sequences and rows B..2B-1 the rejected ones of the same pairs, in the same order (pair i = rows i and
    B + i). ``labels`` are -100 except on the reply and its ``<|end|>``.

    Args:
        path: Prepared DPO dataset directory (holds train/, val/, tokenizer/ and prepared.json).
        batch_size: Preference pairs per batch (per device); a batch holds twice as many sequences.
        block_size: Longest sequence allowed, in tokens (at most the model's block size); the dataset's
            longest prompt + reply must fit. Batches are padded to their own longest sequence (a multiple of 8).
        num_workers: DataLoader worker processes (0: load in the main process).
        shuffle: Shuffle the training pairs, seeded.
        seed: Seed of the shuffle; the same seed gives the same batches.
        drop_last: Drop the last incomplete training batch of each epoch (validation keeps every record).
    """

    kind: ClassVar[str] = "dpo"

    def __init__(
        self,
        path: str = "data/classics-dpo",
        batch_size: int = 8,
        block_size: int = 256,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 42,
        drop_last: bool = True,
    ) -> None:
        super().__init__(path, batch_size, block_size, num_workers, shuffle, seed, drop_last)
