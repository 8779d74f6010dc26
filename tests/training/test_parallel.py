"""parallel.py on 2 CPU processes with gloo: tensor parallel and FSDP2 compute what the plain model computes.

``tp-plugin-mlp`` shards a plugin MLP whose layers are not named like the built-ins': the plan comes from
its declared residual projection, not from a layer called ``proj``.
"""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from plugin_mlp import GatedMLP

from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT
from lightning_llm.parallel import apply_activation_checkpointing, apply_fsdp2, apply_tensor_parallel
from lightning_llm.registry import MLP

CFG = GPTConfig(
    vocab_size=96,
    block_size=16,
    n_layer=2,
    n_head=4,
    n_kv_head=2,
    n_embd=32,
    bias=False,
    positional="rope",
    norm="rmsnorm",
    mlp="swiglu",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, mode: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        cfg = CFG
        if mode == "tp-plugin-mlp":  # registered in this worker process only
            MLP.register("test-gated", GatedMLP)
            cfg = dataclasses.replace(CFG, mlp="test-gated")
        torch.manual_seed(0)
        ref = GPT(cfg)
        model = GPT(cfg)
        model.load_state_dict(ref.state_dict())
        idx = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
        mesh = init_device_mesh("cpu", (2,))
        if mode.startswith("tp"):
            apply_tensor_parallel(model, mesh)
        else:
            apply_activation_checkpointing(model)
            apply_fsdp2(model, mesh, param_dtype=None)
        loss = model(idx, idx)
        loss.backward()
        ref_loss = ref(idx, idx)
        ref_loss.backward()
        g = model.wte.weight.grad
        g = g.full_tensor() if hasattr(g, "full_tensor") else g
        queue.put((rank, float((loss - ref_loss).abs()), float((g - ref.wte.weight.grad).abs().max())))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tp", "tp-plugin-mlp", "fsdp2+ac"])
def test_parallel_model_matches_plain_model(mode):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_worker, args=(_free_port(), mode, queue), nprocs=2, start_method="spawn", join=True)
    results = sorted(queue.get() for _ in range(2))
    for rank, dloss, dgrad in results:
        assert dloss < 1e-5, (rank, dloss)
        assert dgrad < 1e-5, (rank, dgrad)


def test_clip_grad_norm_across_two_meshes_matches_an_fp64_reference(tmp_path):
    """FSDP2 x TP leaves gradients on a 1-D and a 2-D mesh, which torch's clip_grad_norm_ refuses to stack;
    ``parallel.clip_grad_norm`` clips them together, as one global norm (one process, meshes of size 1)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from lightning_llm.parallel import clip_grad_norm

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh2 = init_device_mesh("cpu", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
        mesh1 = mesh2["data_parallel"]
        torch.manual_seed(0)
        plain = [torch.randn(8, 4), torch.randn(4), torch.randn(6, 6)]
        grads = [3 * torch.randn_like(t) for t in plain]
        meshes = [(mesh2, [Shard(0), Shard(1)]), (mesh1, [Shard(0)]), (mesh2, [Replicate(), Shard(0)])]
        params = []
        for t, g, (mesh, placements) in zip(plain, grads, meshes, strict=True):
            p = torch.nn.Parameter(distribute_tensor(t, mesh, placements))
            p.grad = distribute_tensor(g, mesh, placements)
            params.append(p)
        with pytest.raises(RuntimeError, match="same mesh"):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        total = clip_grad_norm(params, 1.0)
        ref = torch.cat([g.double().flatten() for g in grads]).norm()
        torch.testing.assert_close(total.double(), ref, rtol=1e-6, atol=0)
        for p, g in zip(params, grads, strict=True):
            torch.testing.assert_close(
                p.grad.full_tensor().double(), g.double() / (ref + 1e-6), rtol=1e-5, atol=1e-7
            )
    finally:
        dist.destroy_process_group()
