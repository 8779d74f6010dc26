"""TokenDataModule: batches, seeded shuffling, exact resume from a checkpoint, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_llm.data.datamodule import DataError, TokenDataModule
from lightning_llm.data.layout import MARKER
from lightning_llm.data.tokenizer import TokenizerError, gpt2_tokenizer


def take(loader, n: int) -> list[torch.Tensor]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def dm(path: Path, **kw) -> TokenDataModule:
    return TokenDataModule(str(path), **{"batch_size": 4, "block_size": 64, **kw})


def test_batches_are_long_blocks_of_real_text(tiny_dataset):
    data = dm(tiny_dataset, shuffle=False)
    assert data.vocab_size == 512 == data.tokenizer.vocab_size  # known before setup, for link_arguments
    assert data.num_blocks("train") > 300
    batch = take(data.train_dataloader(), 1)[0]
    assert batch.shape == (4, 65) and batch.dtype == torch.int64
    assert 0 <= int(batch.min()) and int(batch.max()) < data.vocab_size
    text = data.tokenizer.decode(batch[0].tolist())
    assert sum(c.isalpha() for c in text) > len(text) / 2
    val = take(data.val_dataloader(), 1)[0]
    assert val.shape == (4, 65)


def test_shuffle_is_seeded(tiny_dataset):
    a, b = (
        take(dm(tiny_dataset, seed=1).train_dataloader(), 4),
        take(dm(tiny_dataset, seed=1).train_dataloader(), 4),
    )
    c = take(dm(tiny_dataset, seed=2).train_dataloader(), 4)
    ordered = take(dm(tiny_dataset, shuffle=False).train_dataloader(), 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, ordered, strict=True))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_manual_resume_continues_exactly(tiny_dataset, num_workers):
    data = dm(tiny_dataset, num_workers=num_workers)
    it = iter(data.train_dataloader())
    for _ in range(5):
        next(it)
    state = data.state_dict()
    expected = [next(it) for _ in range(4)]

    resumed = dm(tiny_dataset, num_workers=num_workers)
    resumed.load_state_dict(state)
    got = take(resumed.train_dataloader(), 4)
    assert all(torch.equal(x, y) for x, y in zip(expected, got, strict=True))


class Recorder(L.LightningModule):
    """Records every training batch; its single parameter never changes (lr 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch.clone())
        return (self.w * batch.float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_resume_sees_the_batches_of_an_uninterrupted_run(tiny_dataset, tmp_path):
    kw = dict(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, max_steps=10, default_root_dir=tmp_path,
    )  # fmt: skip
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    full = Recorder()
    L.Trainer(callbacks=[ckpt], **kw).fit(full, dm(tiny_dataset, batch_size=2))
    saved = torch.load(tmp_path / "ckpt" / "epoch=0-step=4.ckpt", weights_only=False)
    assert saved["TokenDataModule"]["train_loader"]["num_samples_yielded"] == 8  # 4 steps x 2, no prefetch

    resumed = Recorder()
    L.Trainer(**kw).fit(
        resumed, dm(tiny_dataset, batch_size=2), ckpt_path=tmp_path / "ckpt" / "epoch=0-step=4.ckpt"
    )
    assert len(resumed.seen) == 6
    assert all(torch.equal(x, y) for x, y in zip(full.seen[4:], resumed.seen, strict=True))


def test_resume_checks_tokenizer_and_block_size(tiny_dataset):
    state = dm(tiny_dataset).state_dict()
    with pytest.raises(DataError, match="block_size=64"):
        dm(tiny_dataset, block_size=32).load_state_dict(state)
    with pytest.raises(TokenizerError, match="tokenized with bpe-512"):
        dm(tiny_dataset).load_state_dict({**state, "tokenizer_fingerprint": gpt2_tokenizer().fingerprint()})


def test_tokenizer_check(tiny_dataset):
    data = dm(tiny_dataset)
    data.check_tokenizer(data.tokenizer.fingerprint())
    with pytest.raises(TokenizerError, match="not with the tokenizer the model was trained with"):
        data.check_tokenizer(gpt2_tokenizer().fingerprint())


def test_missing_unprepared_and_too_small(tiny_dataset, tmp_path):
    with pytest.raises(DataError, match="No dataset at .*lightning-llm prepare"):
        dm(tmp_path / "nope")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_dataset, partial)
    (partial / MARKER).unlink()
    with pytest.raises(DataError, match="not a .*prepared dataset.*lightning-llm prepare"):
        dm(partial)
    with pytest.raises(DataError, match="too small for one block"):
        dm(tiny_dataset, block_size=10**7).train_dataloader()
    with pytest.raises(DataError, match="batch_size"):
        dm(tiny_dataset, batch_size=0)
