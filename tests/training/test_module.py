"""The LightningModule in-process: schedule, optimizer groups, accumulation, precision, NaN guard, resume."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_llm.config import GPTConfig
from lightning_llm.data.datamodule import TokenDataModule
from lightning_llm.module import LitGPT, NonFiniteLossError, OptimizerConfig, ScheduleConfig
from lightning_llm.optim import lr_factor

BLOCK = 32


def tiny_config(vocab_size: int, **kw) -> GPTConfig:
    base = dict(
        vocab_size=vocab_size,
        block_size=BLOCK,
        n_layer=2,
        n_head=2,
        n_embd=32,
        bias=False,
        attention="sdpa",
        positional="rope",
        norm="rmsnorm",
        mlp="swiglu",
    )
    return GPTConfig(**{**base, **kw})


def make(path: Path, **kw) -> tuple[LitGPT, TokenDataModule]:
    dm = TokenDataModule(path=str(path), batch_size=4, block_size=BLOCK, num_workers=0, seed=7)
    vocab = (dm.vocab_size + 63) // 64 * 64
    lit = LitGPT(
        tiny_config(vocab),
        optimizer=OptimizerConfig(lr=3e-3),
        schedule=ScheduleConfig(warmup_steps=2, max_steps=50),
        **kw,
    )
    return lit, dm


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def trainer(tmp_path: Path, max_steps: int, callbacks=(), **kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        **kw,
    )


def test_lr_schedule_shapes():
    s = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, s, 100) == pytest.approx(0.1)
    assert lr_factor(9, s, 100) == pytest.approx(1.0)
    assert lr_factor(100, s, 100) == pytest.approx(0.1)
    mid = lr_factor(55, s, 100)
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    w = ScheduleConfig(kind="wsd", warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_factor(50, w, 100) == 1.0 and lr_factor(79, w, 100) == 1.0
    assert lr_factor(90, w, 100) == pytest.approx(0.5)
    assert lr_factor(100, w, 100) == pytest.approx(0.0)


def test_param_groups_no_decay_on_norms_biases_embeddings(tiny_dataset):
    lit, _ = make(tiny_dataset)
    lit.model = __import__("lightning_llm.model", fromlist=["GPT"]).GPT(lit.config)
    decay, no_decay = lit.param_groups()
    names = {id(p): n for n, p in lit.model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "wte.weight" in no_decay_names and "wte.weight" not in decay_names  # tied head included
    assert all("norm" in n for n in no_decay_names if n != "wte.weight")
    assert any("qkv" in n for n in decay_names) and any("mlp" in n for n in decay_names)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(lit.model.parameters()))


def test_global_batch_sets_accumulation(tiny_dataset, tmp_path):
    lit, dm = make(tiny_dataset, global_batch_size=12)
    t = trainer(tmp_path, max_steps=2)
    t.fit(lit, dm)
    assert t.accumulate_grad_batches == 3
    lit, dm = make(tiny_dataset, global_batch_size=10)
    with pytest.raises(ValueError, match="multiple of data.batch_size"):
        trainer(tmp_path, max_steps=1).fit(lit, dm)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_precisions_train_on_cpu(tiny_dataset, tmp_path, precision):
    lit, dm = make(tiny_dataset)
    rec = LossRecorder()
    trainer(tmp_path, max_steps=6, callbacks=[rec], precision=precision).fit(lit, dm)
    assert len(rec.losses) == 6 and all(math.isfinite(v) for v in rec.losses)
    assert rec.losses[-1] < rec.losses[0]


class PoisonAt(L.Callback):
    """Makes the weights NaN before optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.wte.weight.fill_(float("nan"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_dataset, tmp_path):
    lit, dm = make(tiny_dataset)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    with pytest.raises(NonFiniteLossError, match="optimizer step 5"):
        trainer(tmp_path, max_steps=10, callbacks=[ckpt, PoisonAt(5)]).fit(lit, dm)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    # and it resumes
    lit2, dm2 = make(tiny_dataset)
    t = trainer(tmp_path, max_steps=6)
    t.fit(lit2, dm2, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert t.global_step == 6


class NaNLossAt(L.Callback):
    """Makes the loss of the batch at global step ``step`` NaN once (a transient fault, weights untouched)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        model = pl_module.model
        if trainer.global_step == self.step and "forward" not in vars(model):
            real = model.forward

            def nan_once(*args, **kwargs):
                del model.forward  # back to the real method after this call
                return real(*args, **kwargs) * float("nan")

            model.forward = nan_once


def test_nan_loss_skip_policy(tiny_dataset, tmp_path):
    lit, dm = make(tiny_dataset, on_nonfinite_loss="skip")
    trainer(tmp_path, max_steps=3, callbacks=[NaNLossAt(1)], max_epochs=1, limit_train_batches=5).fit(lit, dm)
    assert lit.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in lit.parameters())


def test_skip_policy_never_saves_nonfinite_weights(tiny_dataset, tmp_path):
    """Weights that became NaN can't be skipped away: the run stops before writing them."""
    lit, dm = make(tiny_dataset, on_nonfinite_loss="skip")
    t = trainer(tmp_path, max_steps=3, callbacks=[PoisonAt(1)], max_epochs=1, limit_train_batches=5)
    with pytest.raises(NonFiniteLossError, match="weights became non-finite"):
        t.fit(lit, dm)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_resume_matches_uninterrupted_run(tiny_dataset, tmp_path):
    """N steps, stop, resume N more == 2N uninterrupted steps, losses and data order included."""
    n = 4
    L.seed_everything(0)
    lit, dm = make(tiny_dataset)
    full = LossRecorder()
    trainer(tmp_path / "a", max_steps=2 * n, callbacks=[full]).fit(lit, dm)

    L.seed_everything(0)
    lit, dm = make(tiny_dataset)
    first = LossRecorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "b", save_last=True, every_n_train_steps=n)
    trainer(tmp_path / "b", max_steps=n, callbacks=[first, ckpt]).fit(lit, dm)

    L.seed_everything(123)  # a different seed must not matter: everything comes from the checkpoint
    lit, dm = make(tiny_dataset)
    second = LossRecorder()
    trainer(tmp_path / "b", max_steps=2 * n, callbacks=[second]).fit(
        lit, dm, ckpt_path=tmp_path / "b" / "last.ckpt"
    )
    assert len(first.losses) == n and len(second.losses) == n
    torch.testing.assert_close(
        torch.tensor(first.losses + second.losses), torch.tensor(full.losses), rtol=1e-5, atol=1e-5
    )


def test_resume_with_other_config_is_refused(tiny_dataset, tmp_path):
    lit, dm = make(tiny_dataset)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", save_last=True, every_n_train_steps=2)
    trainer(tmp_path, max_steps=2, callbacks=[ckpt]).fit(lit, dm)
    dm = TokenDataModule(path=str(tiny_dataset), batch_size=4, block_size=BLOCK, num_workers=0)
    other = LitGPT(tiny_config((dm.vocab_size + 63) // 64 * 64, n_layer=3))
    with pytest.raises(Exception, match="n_layer: checkpoint 2 vs config 3"):
        trainer(tmp_path, max_steps=4).fit(other, dm, ckpt_path=tmp_path / "c" / "last.ckpt")


def test_checkpoint_carries_config_and_tokenizer(tiny_dataset, tmp_path):
    from lightning_llm.cli.generate import load_checkpoint

    lit, dm = make(tiny_dataset)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "d", save_last=True, every_n_train_steps=2)
    trainer(tmp_path, max_steps=2, callbacks=[ckpt]).fit(lit, dm)
    model, tok = load_checkpoint(tmp_path / "d" / "last.ckpt")
    assert model.config == lit.config
    assert tok.fingerprint() == dm.tokenizer.fingerprint()
    x = torch.randint(0, dm.vocab_size, (1, 8))
    torch.testing.assert_close(model(x), lit.model.eval()(x))


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(tiny_dataset, tmp_path):
    """compile=True (torch.compile per block, inductor on CPU) gives the eager losses, state-dict keys unchanged."""
    losses = {}
    for compiled in (False, True, "model"):
        L.seed_everything(0)
        lit, dm = make(tiny_dataset, compile=compiled)
        rec = LossRecorder()
        trainer(tmp_path / str(compiled), max_steps=2, callbacks=[rec]).fit(lit, dm)
        losses[compiled] = rec.losses
        keys = set(lit.model.state_dict())
        assert "blocks.0.attn.qkv.weight" in keys
    for compiled in (True, "model"):  # "model": head and fused loss traced in the same graph
        torch.testing.assert_close(
            torch.tensor(losses[compiled]), torch.tensor(losses[False]), rtol=1e-4, atol=1e-4
        )


def test_vocab_smaller_than_tokenizer_is_refused(tiny_dataset, tmp_path):
    dm = TokenDataModule(path=str(tiny_dataset), batch_size=4, block_size=BLOCK)
    lit = LitGPT(tiny_config(dm.vocab_size - 10))
    with pytest.raises(ValueError, match=str(dm.vocab_size)):
        trainer(tmp_path, max_steps=1).fit(lit, dm)


def test_loss_plot_records_each_validation_and_writes_png(tiny_dataset, tmp_path):
    from lightning_llm.callbacks import LossCurvePlot

    lit, dm = make(tiny_dataset)
    plot = LossCurvePlot()
    t = L.Trainer(
        accelerator="cpu",
        max_steps=6,
        val_check_interval=3,
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        default_root_dir=tmp_path,
        callbacks=[plot],
    )
    t.fit(lit, dm)
    assert [s for s, _ in plot.val] == [3, 6]
    assert plot.val[-1][1] == pytest.approx(float(t.callback_metrics["val/loss"]))
    assert len(plot.train) == 6
    assert plot.path.is_file() and plot.path.stat().st_size > 1000


def test_atomic_checkpoint_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    from lightning_llm.checkpointing import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def interrupted_save(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1  # the last good checkpoint, intact
    assert list(tmp_path.iterdir()) == [path]  # no partial file left behind


def test_datamodule_contract_is_declared_not_duck_typed(caplog) -> None:
    """LitGPT reads batch_size, vocab_size and tokenizer through the TokenData protocol: a datamodule with
    them is checked and its tokenizer saved; one without trains, and the module says what it skips."""
    import logging
    from types import SimpleNamespace

    from lightning_llm.module import TokenData

    tok = SimpleNamespace(name="bpe-600", to_dict=lambda: {"kind": "test"})
    good = SimpleNamespace(batch_size=4, vocab_size=600, tokenizer=tok)
    assert isinstance(good, TokenData)
    lit = LitGPT(GPTConfig(vocab_size=640, block_size=8, n_layer=1, n_head=2, n_embd=16), global_batch_size=8)
    one = SimpleNamespace(world_size=1)  # a single-process strategy: one data-parallel replica
    lit.trainer = SimpleNamespace(datamodule=good, world_size=1, strategy=one, accumulate_grad_batches=1)
    lit.setup("fit")
    assert lit.trainer.accumulate_grad_batches == 2
    small = LitGPT(GPTConfig(vocab_size=512, block_size=8, n_layer=1, n_head=2, n_embd=16))
    small.trainer = SimpleNamespace(datamodule=good, world_size=1)
    with pytest.raises(
        ValueError, match=r"bpe-600\) has 600 ids, but model.config.vocab_size is 512.*e.g. 640"
    ):
        small.setup("fit")

    plain = SimpleNamespace(batch_size=4)  # no vocab_size / tokenizer: not TokenData
    lit.trainer = SimpleNamespace(datamodule=plain, world_size=1, strategy=one, accumulate_grad_batches=1)
    with (
        caplog.at_level(logging.INFO),
        pytest.raises(ValueError, match="need a datamodule with a batch_size"),
    ):
        lit.setup("fit")
    assert "checkpoints carry no tokenizer" in caplog.text
    strategy = SimpleNamespace(reduce_boolean_decision=lambda ok, all: ok)
    lit.trainer = SimpleNamespace(datamodule=plain, strategy=strategy)
    ckpt: dict = {"state_dict": {}}
    lit.on_save_checkpoint(ckpt)
    assert "tokenizer" not in ckpt
    lit.token_data = good
    lit.on_save_checkpoint(ckpt)
    assert ckpt["tokenizer"] == {"kind": "test"}


@pytest.mark.parametrize("callback", ["lightning", "ours"])
def test_a_run_that_ends_between_saves_keeps_its_last_steps(tiny_dataset, tmp_path, callback):
    """3 steps saving every 2: Lightning's ModelCheckpoint leaves step 2 in last.ckpt, RunCheckpoint step 3."""
    from lightning_llm.checkpointing import RunCheckpoint

    cls = ModelCheckpoint if callback == "lightning" else RunCheckpoint
    lit, dm = make(tiny_dataset)
    trainer(
        tmp_path, max_steps=3, callbacks=[cls(dirpath=tmp_path, save_last=True, every_n_train_steps=2)]
    ).fit(lit, dm)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"]
    assert saved == (2 if callback == "lightning" else 3)
