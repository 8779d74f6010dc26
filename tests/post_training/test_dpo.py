"""DPO / IPO (``lightning_llm.dpo``): the loss against fp64 formulas, sequence log-probabilities, the frozen
reference, a short run that learns a preference, and a training step without host synchronisation."""

from __future__ import annotations

import copy
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_llm.config import GPTConfig
from lightning_llm.data.tokenizer import Tokenizer
from lightning_llm.dpo import LitDPO, dpo_loss, sequence_logprobs
from lightning_llm.model import GPT
from lightning_llm.optim import OptimizerConfig, ScheduleConfig
from lightning_llm.warm_start import load_initial_weights

VOCAB, BLOCK = 32, 16
PROMPT, REPLY = 4, 6


def tiny_config(**kw: Any) -> GPTConfig:
    base = dict(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, bias=False)
    return GPTConfig(**{**base, **kw})


def save_weights(model: GPT, path: Path) -> Path:
    """A weights-only checkpoint as ``lightning_llm.cli.generate.load_checkpoint`` reads it."""
    tokenizer = Tokenizer("bytes-test", {bytes([i]): i for i in range(256)})
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(
        {"model_config": model.config.to_dict(), "state_dict": state, "tokenizer": tokenizer.to_dict()}, path
    )
    return path


@pytest.fixture
def start_ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_weights(GPT(tiny_config(), device_type="cpu"), tmp_path / "start.ckpt")


def preference_batch(n_pairs: int, seed: int) -> dict[str, torch.Tensor]:
    """Pairs of ``prompt + reply``: chosen counts up from the prompt's last token (mod VOCAB), rejected is
    the same reply reversed. Labels are shifted, -100 on the prompt."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, VOCAB, (n_pairs, PROMPT), generator=g)
    chosen = (prompts[:, -1:] + torch.arange(1, REPLY + 1)) % VOCAB
    seqs = torch.cat([torch.cat([prompts, chosen], 1), torch.cat([prompts, chosen.flip(1)], 1)])  # (2B, P+R)
    labels = seqs[:, 1:].clone()
    labels[:, : PROMPT - 1] = -100
    return {"input_ids": seqs[:, :-1].contiguous(), "labels": labels}


class Pairs(torch.utils.data.Dataset):
    """``preference_batch`` cut into batches; the DataLoader's batch_size must be None."""

    def __init__(self, n_batches: int, pairs: int, seed: int) -> None:
        self.batches = [preference_batch(pairs, seed + i) for i in range(n_batches)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.batches[i]


def loader(n_batches: int, pairs: int, seed: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(Pairs(n_batches, pairs, seed), batch_size=None)


def make_trainer(tmp_path: Path, **kw: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**defaults, **kw})


# -- the loss ---------------------------------------------------------------------------------------
def _reference_formula(pc, pr, rc, rr, beta: float, loss_type: str) -> tuple[torch.Tensor, ...]:
    """fp64 loss, d loss / d policy_chosen, d loss / d policy_rejected, and the metrics, written out."""
    pc, pr, rc, rr = (t.double() for t in (pc, pr, rc, rr))
    n = pc.numel()
    h = (pc - rc) - (pr - rr)
    if loss_type == "sigmoid":
        loss = torch.log1p(torch.exp(-beta * h)).mean()
        d_h = -beta * torch.sigmoid(-beta * h) / n  # d/dh of log(1 + e^{-beta h}), averaged
    else:
        target = 1 / (2 * beta)
        loss = ((h - target) ** 2).mean()
        d_h = 2 * (h - target) / n
    accuracy = torch.tensor([1.0 if x > 0 else 0.5 if x == 0 else 0.0 for x in h.tolist()]).mean()
    metrics = {
        "rewards_chosen": (beta * (pc - rc)).mean(),
        "rewards_rejected": (beta * (pr - rr)).mean(),
        "margin": (beta * h).mean(),
        "accuracy": accuracy.double(),
    }
    return loss, d_h, -d_h, metrics


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_matches_fp64_formula(loss_type: str) -> None:
    g = torch.Generator().manual_seed(3)
    pc, pr, rc, rr = (-40 + 8 * torch.randn(64, generator=g) for _ in range(4))
    pc[:3], pr[:3] = rc[:3], rr[:3]  # policy == reference on three pairs: h is exactly 0 there
    beta = 0.1
    expected_loss, d_pc, d_pr, expected = _reference_formula(pc, pr, rc, rr, beta, loss_type)
    for dtype, tol in ((torch.float32, 2e-5), (torch.float64, 1e-12)):
        policy_c, policy_r = pc.to(dtype).requires_grad_(), pr.to(dtype).requires_grad_()
        loss, metrics = dpo_loss(policy_c, policy_r, rc.to(dtype), rr.to(dtype), beta, loss_type)
        assert loss.dtype == dtype and loss.shape == ()
        torch.testing.assert_close(loss.double(), expected_loss, rtol=tol, atol=tol)
        grad_c, grad_r = torch.autograd.grad(loss, (policy_c, policy_r))
        torch.testing.assert_close(grad_c.double(), d_pc, rtol=tol, atol=tol)
        torch.testing.assert_close(grad_r.double(), d_pr, rtol=tol, atol=tol)
        assert set(metrics) == set(expected)
        for name, value in metrics.items():
            assert not value.requires_grad and value.shape == ()
            torch.testing.assert_close(value.double(), expected[name], rtol=tol, atol=tol, msg=name)


def test_bad_options_are_refused_clearly(start_ckpt: Path) -> None:
    x = torch.zeros(2)
    for beta in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta must be a positive number"):
            dpo_loss(x, x, x, x, beta)
        with pytest.raises(ValueError, match="beta must be a positive number"):
            LitDPO(tiny_config(), init_weights=str(start_ckpt), beta=beta)
    with pytest.raises(ValueError, match="Unknown DPO loss_type 'hinge'; choose one of sigmoid, ipo"):
        dpo_loss(x, x, x, x, 0.1, "hinge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown DPO loss_type 'hinge'"):
        LitDPO(tiny_config(), init_weights=str(start_ckpt), loss_type="hinge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="DPO needs a reference model: set --model.init_weights"):
        LitDPO(tiny_config())
    with pytest.raises(ValueError, match="compile: model compiles GPT.forward"):
        LitDPO(tiny_config(), init_weights=str(start_ckpt), compile="model")
    with pytest.raises(ValueError, match="four \\(B,\\) tensors of the same shape"):
        dpo_loss(x, torch.zeros(3), x, x, 0.1)

    lit = LitDPO(tiny_config(), reference=str(start_ckpt))
    lit.configure_model()
    batch = preference_batch(2, seed=0)
    with pytest.raises(ValueError, match="an even number of rows"):
        lit.compute_loss({k: v[:3] for k, v in batch.items()})
    with pytest.raises(ValueError, match="preference batches"):
        lit.compute_loss(batch["input_ids"])  # type: ignore[arg-type]
    long = torch.zeros(4, BLOCK + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="block_size is 16; set data.block_size"):
        lit.compute_loss({"input_ids": long, "labels": long})


def test_options_are_documented_and_saved_as_plain_hyperparameters(start_ckpt: Path) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(LitDPO, "model")
    text = " ".join(parser.format_help().split())
    assert "--model.beta BETA Strength of the pull towards the reference" in text
    assert (
        "--model.loss_type {sigmoid,ipo}" in text and "--model.reference REFERENCE Checkpoint of the" in text
    )
    assert "--model.init_weights" in text and "--model.optimizer.lr" in text  # LitGPT's, through **kwargs
    lit = LitDPO(tiny_config(), init_weights=str(start_ckpt), beta=0.5, loss_type="ipo")
    assert {k: lit.hparams[k] for k in ("beta", "loss_type", "reference")} == {
        "beta": 0.5,
        "loss_type": "ipo",
        "reference": None,
    }
    assert lit.reference_path == str(start_ckpt) and isinstance(lit.hparams["config"], dict)


# -- sequence log-probabilities ---------------------------------------------------------------------
def test_sequence_logprobs_matches_fp64_full_logits() -> None:
    torch.manual_seed(1)
    model = GPT(tiny_config(), device_type="cpu").train()  # dropout is 0: train mode changes nothing
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, VOCAB, (5, 12), generator=g)
    labels = torch.randint(0, VOCAB, (5, 12), generator=g)
    labels[:, :4] = -100
    labels[1, 9:] = -100  # padding
    labels[3] = -100  # a row with nothing to score: 0
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5])

    model64 = copy.deepcopy(model).double()
    logp = torch.log_softmax(model64(ids), dim=-1)  # (N, T, V) fp64, all at once
    keep = labels != -100
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    expected = (picked * keep).sum(-1)
    (expected * weights.double()).sum().backward()
    expected_grads = {n: p.grad for n, p in model64.named_parameters()}
    assert expected[3] == 0

    for chunk_rows in (None, 1, 2, 5):  # one pass; checkpointed chunks of 1 and 2 rows (an uneven last one)
        model.zero_grad()
        got = sequence_logprobs(model, ids, labels, chunk_rows=chunk_rows)
        assert got.dtype == torch.float32 and got.shape == (5,)
        torch.testing.assert_close(got.double(), expected.detach(), rtol=1e-5, atol=1e-5)
        (got * weights).sum().backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad.double(), expected_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(sequence_logprobs(model, ids, labels, chunk_rows=2), got.detach())


# -- the frozen reference ---------------------------------------------------------------------------
def test_reference_is_frozen_and_outside_the_module(start_ckpt: Path) -> None:
    lit = LitDPO(tiny_config(), init_weights=str(start_ckpt))
    lit.configure_model()
    load_initial_weights(lit.model, start_ckpt)
    lit._load_reference()
    ref = lit.reference_model
    assert isinstance(ref, GPT) and ref is not lit.model and not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    ref_ids = {id(p) for p in ref.parameters()}
    assert not ref_ids & {id(p) for p in lit.parameters()}
    assert all(k.startswith("model.") for k in lit.state_dict()), sorted(lit.state_dict())
    assert all(ref is not m for m in lit.modules())
    before_ref = {k: v.clone() for k, v in ref.state_dict().items()}
    before_policy = {k: v.clone() for k, v in lit.model.state_dict().items()}

    opt = torch.optim.AdamW(lit.parameters(), lr=1e-2)
    loss, _, _ = lit.compute_loss(preference_batch(4, seed=0))
    loss.backward()
    assert all(p.grad is None for p in ref.parameters())
    assert all(p.grad is not None for p in lit.model.parameters())
    opt.step()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, before_ref[k]), k
    changed = [k for k, v in lit.model.state_dict().items() if not torch.equal(v, before_policy[k])]
    assert len(changed) >= len(before_policy) // 2, changed


# -- through Lightning ------------------------------------------------------------------------------
def test_dpo_learns_a_preference_that_holds_out(start_ckpt: Path, tmp_path: Path) -> None:
    """policy == reference: val/loss is log 2 and val/accuracy exactly 1/2; a short run lifts held-out
    accuracy well above; the checkpoint holds the policy only, with plain hyper-parameters."""
    lit = LitDPO(
        tiny_config(),
        init_weights=str(start_ckpt),
        optimizer=OptimizerConfig(lr=1e-2, weight_decay=0.0),
        schedule=ScheduleConfig(kind="constant", warmup_steps=0),
    )
    heldout = loader(2, 32, seed=1000)
    before = make_trainer(tmp_path).validate(lit, heldout, verbose=False)[0]
    assert before["val/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert before["val/accuracy"] == 0.5 and before["val/margin"] == 0.0
    reference = {k: v.clone() for k, v in lit.reference_model.state_dict().items()}

    trainer = make_trainer(tmp_path, max_steps=12)
    trainer.fit(lit, loader(12, 16, seed=0))
    after = make_trainer(tmp_path).validate(lit, heldout, verbose=False)[0]
    assert after["val/accuracy"] >= 0.8, after
    assert after["val/loss"] < 0.5 and after["val/margin"] > 0 > after["val/rewards_rejected"], after
    for k, v in lit.reference_model.state_dict().items():
        assert torch.equal(v, reference[k]), k

    trainer.save_checkpoint(tmp_path / "dpo.ckpt")
    ckpt = torch.load(tmp_path / "dpo.ckpt", weights_only=True)
    assert {k: ckpt["hyper_parameters"][k] for k in ("beta", "loss_type", "reference")} == {
        "beta": 0.1,
        "loss_type": "sigmoid",
        "reference": None,
    }
    assert ckpt["state_dict"] and all(k.startswith("model.") for k in ckpt["state_dict"])


SYNC_OPS = {"aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.nonzero", "aten.equal"}


class SyncCounter(TorchDispatchMode):
    """Counts the dispatched ops that read a value back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: Counter[str] = Counter()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = str(func.overloadpacket).replace("aten::", "aten.")
        self.ops += 1
        if name in SYNC_OPS:
            self.syncs[name] += 1
        return func(*args, **(kwargs or {}))


class CountSteps(L.Callback):
    """A ``SyncCounter`` around each whole training batch: step, backward, clipping, optimizer."""

    def __init__(self) -> None:
        self.counters: list[SyncCounter] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.counters.append(SyncCounter())
        self.counters[-1].__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.counters[-1].__exit__(None, None, None)


def test_training_step_has_no_host_sync(start_ckpt: Path, tmp_path: Path) -> None:
    """Both forwards, the loss, its metrics, the logging and the NaN guard read nothing back (outside the
    logging interval, here never reached); the chunked, checkpointed head path included."""
    lit = LitDPO(
        tiny_config(),
        init_weights=str(start_ckpt),
        loss_type="ipo",
        schedule=ScheduleConfig(kind="constant", warmup_steps=0),
    )
    counter = CountSteps()
    trainer = make_trainer(
        tmp_path, max_steps=2, log_every_n_steps=50, gradient_clip_val=1.0, callbacks=[counter]
    )
    with pytest.MonkeyPatch.context() as mp:  # two rows per chunk: the checkpointed path
        mp.setattr("lightning_llm.dpo.LOGITS_CHUNK_BYTES", 2 * (PROMPT + REPLY - 1) * VOCAB * 8)
        trainer.fit(lit, loader(2, 4, seed=0))
    assert len(counter.counters) == 2
    assert [dict(c.syncs) for c in counter.counters] == [{}, {}]
    assert all(c.ops > 100 for c in counter.counters)  # the mode saw the step's ops
    assert "train/accuracy" in trainer.callback_metrics and "train/margin" in trainer.callback_metrics


def test_skip_mode_drops_a_nonfinite_step(
    start_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """on_nonfinite_loss=skip: a NaN loss skips that step's update and counts it, as LitGPT does."""
    import lightning_llm.dpo as dpo

    calls = []

    def nan_once(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics = dpo_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 1 else loss), metrics

    monkeypatch.setattr(dpo, "dpo_loss", nan_once)
    lit = LitDPO(
        tiny_config(),
        init_weights=str(start_ckpt),
        on_nonfinite_loss="skip",
        schedule=ScheduleConfig(kind="constant", warmup_steps=0),
    )
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(lit, loader(2, 4, seed=0))
    assert len(calls) == 2 and lit.skipped_steps == 1 and lit.skipped_in_a_row == 0


def test_fsdp2_reference_is_sharded_like_the_policy(start_ckpt: Path, tmp_path: Path) -> None:
    """Under ModelParallelStrategy (FSDP2; one gloo process here) the reference is fully_shard-ed on the
    policy's mesh, trains and validates; the reference's weights are resharded after each forward."""
    import torch.distributed as dist
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    lit = LitDPO(
        tiny_config(),
        init_weights=str(start_ckpt),
        schedule=ScheduleConfig(kind="constant", warmup_steps=0),
    )
    strategy = ModelParallelStrategy(
        data_parallel_size=1, tensor_parallel_size=1, process_group_backend="gloo"
    )
    saved_env = dict(os.environ)  # Lightning sets MASTER_PORT & co. in this process's environment
    try:
        trainer = make_trainer(tmp_path, max_steps=2, strategy=strategy)
        trainer.fit(lit, loader(2, 4, seed=0))
        ref, policy = lit.reference_model, lit.model
        assert isinstance(ref, FSDPModule) and isinstance(policy, FSDPModule)
        for name, p in ref.named_parameters():
            q = policy.get_parameter(name)
            assert isinstance(p, DTensor) and isinstance(q, DTensor), name  # resharded, like the policy
            assert p.device_mesh == q.device_mesh and p.placements == q.placements, name
            assert not p.requires_grad and p.grad is None, name
        assert not set(map(id, ref.parameters())) & set(map(id, lit.parameters()))
        result = trainer.validate(lit, loader(1, 8, seed=9), verbose=False)[0]
        assert set(result) == {
            f"val/{m}" for m in ("loss", "accuracy", "margin", "rewards_chosen", "rewards_rejected")
        }
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        # later 2-process runs inherit os.environ: with this run's MASTER_PORT they would all rendezvous on
        # one port (EADDRINUSE in a full test run)
        os.environ.clear()
        os.environ.update(saved_env)
