"""The optimizer choice (``model.optimizer.name``): AdamW, or Muon for the blocks' weight matrices with AdamW
for the rest, held in one ``MuonWithAdamW`` for Lightning.

Checked here: which parameters go where; our Muon step against ``torch.optim.Muon`` and the AdamW part against
plain AdamW; the LR schedule on both; no host synchronisation in a step; ``state_dict`` round trips and the
refusal of the other optimizer's state; a Lightning fit that lowers the loss and resumes with its optimizer
state; config validation and refused strategies; and FSDP2 and DDP on 2 gloo processes computing what one
process computes.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_llm import optimizers
from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT
from lightning_llm.optim import OptimizerConfig, ScheduleConfig, apply_optimizer_settings, lr_factor
from lightning_llm.optimizers import MuonWithAdamW, build_optimizer, check_strategy, param_groups

VOCAB = 64
CFG = GPTConfig(
    vocab_size=VOCAB,
    block_size=16,
    n_layer=2,
    n_head=4,
    n_kv_head=2,
    n_embd=32,
    intermediate_size=37,  # odd: FSDP2's row shards of the MLP matrices are uneven (19 + 18)
    bias=True,
    positional="learned",
    norm="layernorm",
    mlp="gelu",
    tie_embeddings=False,
)
MUON = OptimizerConfig(name="muon", lr=1e-2, muon_lr=2e-2, muon_lr_adjust="original", muon_weight_decay=0.05)


def _names(model: torch.nn.Module, params: list[torch.Tensor]) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in params]


def _grads(model: torch.nn.Module, seed: int) -> None:
    """Gradients of the loss on a random batch (the same for every model with the same weights)."""
    idx = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))
    model(idx, idx).backward()


@pytest.mark.parametrize("tied", [False, True])
def test_muon_takes_the_block_matrices_and_adamw_the_rest(tied: bool) -> None:
    model = GPT(GPTConfig(**{**CFG.to_dict(), "tie_embeddings": tied}))
    model.pe.wpe.requires_grad_(False)  # a frozen parameter belongs to no group
    groups = param_groups(model, MUON)
    # a tied head leaves the decay group empty: it is left out (torch.distributed.checkpoint mis-maps it)
    roles = ["adamw_no_decay", "muon"] if tied else ["adamw_decay", "adamw_no_decay", "muon"]
    assert [g["role"] for g in groups] == roles
    named = {g["role"]: _names(model, g["params"]) for g in groups}
    decay, no_decay, muon = (named.get(role, []) for role in ("adamw_decay", "adamw_no_decay", "muon"))
    block_matrices = {
        f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    }
    assert set(muon) == block_matrices
    assert decay == ([] if tied else ["lm_head.weight"])  # an untied head: AdamW, with decay
    assert "wte.weight" in no_decay and "pe.wpe.weight" not in no_decay + decay + muon
    assert all(n.endswith("bias") or "norm" in n for n in no_decay if n != "wte.weight")
    everything = decay + no_decay + muon
    assert len(everything) == len(set(everything))  # nothing twice
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(everything) == trainable  # nothing missing (a tied head is wte.weight)


def test_adamw_stays_as_it_was() -> None:
    model = GPT(CFG)
    groups = param_groups(model, OptimizerConfig())
    assert len(groups) == 2 and [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert "blocks.0.attn.qkv.weight" in _names(model, groups[0]["params"])
    assert not any("role" in g for g in groups)  # the groups and their checkpoints are as they were
    opt = build_optimizer(groups, OptimizerConfig(), fused=True)
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] is True


def _reference(model: GPT, cfg: OptimizerConfig) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """torch's own AdamW and Muon over the groups of ``model``, built by hand."""
    decay, no_decay, muon = param_groups(model, cfg)
    adamw = torch.optim.AdamW(
        [decay, no_decay], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0, foreach=False
    )
    muon_opt = torch.optim.Muon(
        muon["params"],
        lr=cfg.muon_peak_lr,
        weight_decay=cfg.muon_decay,
        momentum=cfg.muon_momentum,
        nesterov=cfg.muon_nesterov,
        ns_steps=cfg.muon_ns_steps,
        adjust_lr_fn=cfg.muon_lr_adjust,
    )
    return adamw, muon_opt


@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
def test_muon_and_adamw_parts_match_torchs_optimizers(adjust: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # torch's Muon orthogonalises in bf16; ours picks per device (fp32 on a CPU without native bf16)
    monkeypatch.setattr(optimizers, "newton_schulz_dtype", lambda device: torch.bfloat16)
    cfg = OptimizerConfig(
        **{**MUON.__dict__, "muon_lr_adjust": adjust, "muon_nesterov": adjust == "original"}
    )
    torch.manual_seed(0)
    ours_model = GPT(CFG)
    ref_model = copy.deepcopy(ours_model)
    initial = ours_model.blocks[0].attn.qkv.weight.detach().clone()
    ours = build_optimizer(param_groups(ours_model, cfg), cfg, fused=False)
    assert isinstance(ours, MuonWithAdamW)
    refs = _reference(ref_model, cfg)
    for step in range(3):
        for model in (ours_model, ref_model):
            _grads(model, step)
        ours.step()
        for opt in refs:
            opt.step()
        ours.zero_grad()
        for opt in refs:
            opt.zero_grad()
    for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
    moved = (ours_model.blocks[0].attn.qkv.weight - initial).abs().max()
    assert moved > 1e-3  # the comparison is not vacuous


def test_the_schedule_scales_every_group_from_its_own_peak() -> None:
    model = GPT(CFG)
    opt = build_optimizer(param_groups(model, MUON), MUON, fused=False)
    sched_cfg = ScheduleConfig(warmup_steps=2, max_steps=10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, sched_cfg, 10))
    for step in range(4):
        _grads(model, step)
        opt.step()
        sched.step()
    factor = lr_factor(4, sched_cfg, 10)
    assert [g["initial_lr"] for g in opt.param_groups] == [1e-2, 1e-2, 2e-2]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-2 * factor, 1e-2 * factor, 2e-2 * factor])
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(2e-2 * factor)  # Muon reads the same group


class _SyncOps(TorchDispatchMode):
    """Records ops that read a tensor's value back to the host (a GPU synchronisation each)."""

    SYNC = {"aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.nonzero", "aten.equal"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = str(func.overloadpacket).replace("aten::", "aten.")
        if name in self.SYNC:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_a_muon_step_reads_nothing_back_to_the_host() -> None:
    model = GPT(CFG)
    opt = build_optimizer(param_groups(model, MUON), MUON, fused=True)
    for step in range(2):  # the first step creates the state
        _grads(model, step)
        with _SyncOps() as ops:
            opt.step()
            opt.zero_grad()
    assert ops.seen == []


def test_state_dict_round_trip_and_the_other_optimizers_state_is_refused() -> None:
    torch.manual_seed(0)
    model = GPT(CFG)
    opt = build_optimizer(param_groups(model, MUON), MUON, fused=False)
    for step in range(2):
        _grads(model, step)
        opt.step()
        opt.zero_grad()
    saved = copy.deepcopy(opt.state_dict())
    assert len(saved["param_groups"]) == 3 and len(saved["state"]) == sum(
        len(g["params"]) for g in opt.param_groups
    )
    twin = copy.deepcopy(model)
    other = build_optimizer(param_groups(twin, MUON), MUON, fused=False)
    other.load_state_dict(saved)
    for a, b in ((model, opt), (twin, other)):
        _grads(a, 5)
        b.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)  # the restored state continues exactly
    assert other.muon.state is other.state and other.muon.param_groups[0] is other.param_groups[2]

    adamw = build_optimizer(param_groups(model, OptimizerConfig()), OptimizerConfig(), fused=False)
    with pytest.raises(ValueError, match="init_weights"):
        other.load_state_dict(adamw.state_dict())
    adamw_ckpt = {"optimizer_states": [adamw.state_dict()], "lr_schedulers": []}
    with pytest.raises(ValueError, match=r"adamw's but model.optimizer.name is 'muon'.*--model.init_weights"):
        apply_optimizer_settings(adamw_ckpt, MUON)
    with pytest.raises(ValueError, match="muon's but model.optimizer.name is 'adamw'"):
        apply_optimizer_settings({"optimizer_states": [saved]}, OptimizerConfig())


@pytest.mark.parametrize("tied", [False, True])
def test_resume_with_new_muon_settings_rewrites_the_muon_group(tied: bool) -> None:
    model = GPT(GPTConfig(**{**CFG.to_dict(), "tie_embeddings": tied}))
    opt = build_optimizer(param_groups(model, MUON), MUON, fused=False)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
        g["lr"] = g["lr"] / 2  # half-way down the schedule
    base_lrs = [g["initial_lr"] for g in opt.param_groups]
    ckpt = {"optimizer_states": [opt.state_dict()], "lr_schedulers": [{"base_lrs": base_lrs}]}
    new = OptimizerConfig(
        name="muon",
        lr=3e-3,
        weight_decay=0.2,
        muon_lr=None,
        muon_lr_adjust="match_rms_adamw",
        muon_momentum=0.9,
        muon_ns_steps=6,
    )
    apply_optimizer_settings(ckpt, new)
    *adamw, muon = ckpt["optimizer_states"][0]["param_groups"]
    decays = {g["role"]: (g["lr"], g["weight_decay"]) for g in adamw}
    assert decays == {"adamw_no_decay": (1.5e-3, 0.0), **({} if tied else {"adamw_decay": (1.5e-3, 0.2)})}
    assert muon["lr"] == pytest.approx(1.5e-3) and muon["initial_lr"] == 3e-3  # muon_lr None: lr
    assert (muon["momentum"], muon["ns_steps"], muon["weight_decay"]) == (0.9, 6, 0.2)
    assert muon["adjust_lr_fn"] == "match_rms_adamw"
    assert ckpt["lr_schedulers"][0]["base_lrs"] == [3e-3] * (2 if tied else 3)
    # FSDP2: the optimizer state is in the distributed checkpoint, not here; Muon's group is the last
    fsdp2 = {"lr_schedulers": [{"base_lrs": [1.0] * len(base_lrs)}]}
    apply_optimizer_settings(fsdp2, MUON)
    assert fsdp2["lr_schedulers"][0]["base_lrs"] == [1e-2] * (len(base_lrs) - 1) + [2e-2]


class _Cycle(torch.utils.data.Dataset):
    """Windows of one fixed random token sequence repeated: learnable, so the loss can fall."""

    def __init__(self) -> None:
        self.tokens = torch.randint(0, VOCAB, (48,), generator=torch.Generator().manual_seed(3)).repeat(8)

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> torch.Tensor:
        start = (5 * i) % 48
        return self.tokens[start : start + 17]


def _fit(
    root: Path, max_steps: int, ckpt_path: str | None = None, optimizer: OptimizerConfig = MUON
) -> tuple[list[float], dict]:
    """A short Lightning fit of ``CFG`` on ``_Cycle``; returns its losses and the optimizer's state dict when
    training started (Lightning is imported here only: the 2-process workers import this module)."""
    import lightning as L

    from lightning_llm.module import LitGPT

    class Record(L.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.start_state: dict = {}

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.start_state = copy.deepcopy(trainer.optimizers[0].state_dict())

        def on_train_batch_end(self, *args: object) -> None:  # (trainer, module, outputs, batch, index)
            self.losses.append(float(args[2]["loss"]))  # type: ignore[index]

    L.seed_everything(0)
    lit = LitGPT(CFG, optimizer=optimizer, schedule=ScheduleConfig(warmup_steps=2, max_steps=24))
    record = Record()
    trainer = L.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        callbacks=[record, L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True)],
    )
    trainer.fit(lit, torch.utils.data.DataLoader(_Cycle(), batch_size=8), ckpt_path=ckpt_path)
    assert isinstance(trainer.optimizers[0], MuonWithAdamW)
    return record.losses, record.start_state


def test_lightning_fit_with_muon_lowers_the_loss_and_resumes_its_state(tmp_path: Path) -> None:
    losses, _ = _fit(tmp_path, 10)
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    groups = saved["optimizer_states"][0]["param_groups"]
    assert [("ns_steps" in g) for g in groups] == [False, False, True]
    losses, start = _fit(tmp_path, 12, ckpt_path=str(tmp_path / "last.ckpt"))
    assert len(losses) == 2
    state, want = start["state"], saved["optimizer_states"][0]["state"]
    assert state.keys() == want.keys() and any("momentum_buffer" in s for s in state.values())
    for i, s in want.items():
        for key, value in s.items():
            assert torch.equal(state[i][key], value), (i, key)
    assert [g["lr"] for g in start["param_groups"]] == [g["lr"] for g in groups]
    with pytest.raises(ValueError, match="muon's but model.optimizer.name is 'adamw'.*init_weights"):
        _fit(tmp_path, 14, ckpt_path=str(tmp_path / "last.ckpt"), optimizer=OptimizerConfig())


def test_config_validation_lists_every_problem() -> None:
    with pytest.raises(ValueError) as err:
        OptimizerConfig(name="muon", muon_lr=-1.0, muon_momentum=1.0, muon_ns_steps=0, muon_weight_decay=-0.1)
    message = str(err.value)
    assert message.startswith("model.optimizer: ")
    for field in ("muon_lr", "muon_momentum", "muon_ns_steps", "muon_weight_decay"):
        assert field in message, field
    with pytest.raises(ValueError, match="name must be 'adamw' or 'muon'"):
        OptimizerConfig(name="sgd")  # type: ignore[arg-type]
    assert OptimizerConfig().name == "adamw"  # existing configs keep AdamW


def test_fsdp1_and_tensor_parallel_are_refused_with_muon() -> None:
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    with pytest.raises(ValueError, match="FSDP1.*ModelParallelStrategy"):
        check_strategy(MUON, FSDPStrategy(), tensor_parallel=False)
    with pytest.raises(ValueError, match="tensor_parallel=false"):
        check_strategy(MUON, None, tensor_parallel=True)
    check_strategy(MUON, DDPStrategy(), tensor_parallel=False)
    check_strategy(OptimizerConfig(), FSDPStrategy(), tensor_parallel=True)  # AdamW: as before


# -- 2 gloo processes -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, idx: torch.Tensor) -> torch.Tensor:
    loss = model(idx, idx)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.detach()


def _backward(model: torch.nn.Module, idx: torch.Tensor, weight: float) -> torch.Tensor:
    loss = model(idx, idx) * weight
    loss.backward()
    return loss.detach()


def _dcp_round_trip(directory: str, mesh) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """A tied-head model (no AdamW decay group) under FSDP2: its optimizer state saved and loaded through
    torch.distributed.checkpoint as Lightning's ModelParallelStrategy does; the loaded optimizer continues
    exactly as the saved one does. Returns the largest differences."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    from lightning_llm.parallel import apply_fsdp2

    torch.manual_seed(1)
    model = GPT(GPTConfig(**{**CFG.to_dict(), "tie_embeddings": True}))
    apply_fsdp2(model, mesh, param_dtype=None)
    idx = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))
    saved = build_optimizer(param_groups(model, MUON), MUON, fused=False)
    for _ in range(2):
        _step(model, saved, idx)
    dcp.save({"optimizer_0": get_optimizer_state_dict(model, saved)}, checkpoint_id=directory)
    loaded = build_optimizer(param_groups(model, MUON), MUON, fused=False)
    target = {"optimizer_0": get_optimizer_state_dict(model, loaded)}
    dcp.load(target, checkpoint_id=directory)
    set_optimizer_state_dict(model, loaded, optim_state_dict=target["optimizer_0"])
    assert [g["role"] for g in loaded.param_groups] == ["adamw_no_decay", "muon"]
    assert "betas" in loaded.adamw.param_groups[0] and "ns_steps" in loaded.muon.param_groups[0]
    diffs = {}
    for p, state in saved.state.items():
        for key, value in state.items():
            other = loaded.state[p][key]
            diff = (value.to_local() - other.to_local()) if hasattr(value, "to_local") else value - other
            diffs[f"dcp {key}"] = max(diffs.get(f"dcp {key}", 0.0), float(diff.abs().max()))
    before = [p.to_local().clone() for p in model.parameters()]
    _step(model, saved, idx)
    after_saved = [p.to_local().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, b in zip(model.parameters(), before, strict=True):
            p.to_local().copy_(b)
    _step(model, loaded, idx)
    diffs["dcp next step"] = max(
        float((p.to_local() - a).abs().max()) for p, a in zip(model.parameters(), after_saved, strict=True)
    )
    return diffs


def _worker(rank: int, port: int, directory: str, queue) -> None:  # type: ignore[no-untyped-def]
    """FSDP2 and DDP, each rank on its half of the batch, against one process averaging both halves' gradients
    (the same sums the all-reduce makes: compared with one backward over the whole batch, float-rounding noise
    in near-null directions of a gradient, which Muon's orthogonalisation scales up to unit singular values,
    moved some weights by 2e-3 after 3 steps, in all three runs alike)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor
        from torch.nn.parallel import DistributedDataParallel

        from lightning_llm.parallel import apply_fsdp2

        torch.manual_seed(0)
        ref = GPT(CFG)
        sharded, replica = copy.deepcopy(ref), copy.deepcopy(ref)
        initial = ref.blocks[0].mlp.fc.weight.detach().clone()
        apply_fsdp2(sharded, init_device_mesh("cpu", (2,)), param_dtype=None)
        ddp = DistributedDataParallel(replica)
        opts = [build_optimizer(param_groups(m, MUON), MUON, fused=False) for m in (ref, sharded, replica)]
        batches = [
            torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(s)) for s in range(3)
        ]
        diffs: dict[str, float] = {}
        for idx in batches:
            # one process, the two halves' gradients averaged: the sum the ranks' all-reduce makes
            ref_loss = sum(_backward(ref, idx[h : h + 2], 0.5) for h in (0, 2))
            opts[0].step()
            opts[0].zero_grad()
            half = idx[2 * rank : 2 * rank + 2]
            for name, model, opt in (("fsdp2", sharded, opts[1]), ("ddp", ddp, opts[2])):
                loss = _step(model, opt, half)
                dist.all_reduce(loss)
                diffs[f"{name} loss"] = max(
                    diffs.get(f"{name} loss", 0.0), float((loss / 2 - ref_loss).abs())
                )
        assert any(isinstance(p, DTensor) for p in opts[1].muon.param_groups[0]["params"])
        for name, model in (("fsdp2", sharded), ("ddp", replica)):
            for (pname, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
                full = p.full_tensor() if isinstance(p, DTensor) else p
                diffs[f"{name} {pname}"] = float((full - q).detach().abs().max())
        moved = float((ref.blocks[0].mlp.fc.weight - initial).abs().max())
        diffs.update(_dcp_round_trip(directory, init_device_mesh("cpu", (2,))))
        queue.put((rank, diffs, moved))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp2_and_ddp_muon_compute_what_one_process_computes(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    args = (_free_port(), str(tmp_path / "dcp"), queue)
    mp.start_processes(_worker, args=args, nprocs=2, start_method="spawn", join=True)
    for _rank, diffs, moved in sorted(queue.get() for _ in range(2)):
        assert moved > 1e-2
        worst = max(diffs, key=diffs.__getitem__)
        assert diffs[worst] <= 1e-6, (worst, diffs[worst])  # bitwise equal here


def test_newton_schulz_dtype_is_chosen_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 on a GPU and on a CPU with native bf16 matmuls; fp32 on a CPU that would emulate bf16."""
    from lightning_llm import precision

    assert optimizers.newton_schulz_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    assert optimizers.newton_schulz_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: True)
    assert optimizers.newton_schulz_dtype(torch.device("cpu")) == torch.bfloat16


NS = ((3.4445, -4.775, 2.0315), 1e-7)


def _newton_schulz_fp64(g: torch.Tensor, steps: int) -> torch.Tensor:
    """Muon's iteration written out in fp64, on X itself: the reference of every path of ``orthogonalize``."""
    (a, b, c), eps = NS
    tall = g.size(-2) > g.size(-1)
    x = g.double().mT if tall else g.double()
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


@pytest.mark.parametrize("shape", [(3, 48, 16), (2, 16, 80), (2, 24, 24), (2, 20, 28)])
@pytest.mark.parametrize("steps", [1, 4, 5])
def test_fp32_orthogonalisation_matches_fp64_and_bf16_is_near(shape: tuple[int, ...], steps: int) -> None:
    """fp32 and fp64 compute Muon's iteration (on the Gram matrix for the wide and tall shapes, on X for the
    near-square ones); torch's bf16 path lands close (its own rounding)."""
    torch.manual_seed(0)
    g = torch.randn(shape, dtype=torch.float64)
    exact = _newton_schulz_fp64(g, steps)
    for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        out = optimizers.orthogonalize(g, NS[0], steps, NS[1], dtype=dtype)
        assert out.dtype == dtype and out.shape == g.shape
        torch.testing.assert_close(out.double(), exact, rtol=0, atol=atol)
    bf16 = optimizers.orthogonalize(g, NS[0], steps, NS[1], dtype=torch.bfloat16)
    assert (bf16.double() - exact).abs().max() < 0.05
    if steps == 5:
        singular = torch.linalg.svdvals(exact)
        assert singular.min() > 0.5 and singular.max() < 1.5  # Muon's iteration: roughly orthogonal


def test_gram_iteration_is_chosen_where_it_saves_flops(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 on a matrix more than 1.5x as wide as tall (either way round) iterates on the Gram matrix, with
    at least 40% fewer FLOPs than the iteration on X for Muon's shapes; bf16 and square matrices do not."""
    from torch.utils.flop_counter import FlopCounterMode

    calls: list[tuple[int, ...]] = []
    real = optimizers._gram_newton_schulz
    monkeypatch.setattr(
        optimizers, "_gram_newton_schulz", lambda x, *a: calls.append(tuple(x.shape)) or real(x, *a)
    )
    g = torch.randn(2, 256, 1152)
    for shape, dtype, gram in [
        ((2, 256, 1152), torch.float32, True),
        ((2, 1152, 256), torch.float32, True),
        ((2, 256, 256), torch.float32, False),
        ((2, 256, 300), torch.float32, False),
        ((2, 256, 1152), torch.bfloat16, False),
    ]:
        calls.clear()
        optimizers.orthogonalize(torch.randn(shape), NS[0], 5, NS[1], dtype=dtype)
        assert bool(calls) == gram, (shape, dtype)
    with FlopCounterMode(display=False) as gram_flops:
        optimizers.orthogonalize(g, NS[0], 5, NS[1], dtype=torch.float32)
    with FlopCounterMode(display=False) as x_flops:
        optimizers.orthogonalize(g, NS[0], 5, NS[1], dtype=torch.bfloat16)
    assert gram_flops.get_total_flops() < 0.6 * x_flops.get_total_flops()
