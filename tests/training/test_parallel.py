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
