"""Parallelism applied from the outside to a model that knows nothing of it (torchtitan's split).

``parallelize`` is called from ``LitGPT.configure_model``. Under Lightning's ``ModelParallelStrategy`` the
model arrives on the meta device; it gets tensor parallelism (optional), activation checkpointing,
compile, then FSDP2 (``fully_shard`` per block, then the root), and is materialised and initialised last,
shard by shard. DDP and FSDP1 are Lightning's own strategies and need nothing here beyond checkpointing
and compile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lightning_llm.model import GPT

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from lightning_llm.module import LitGPT


def apply_activation_checkpointing(model: GPT) -> None:
    """Recompute every block's activations during backward (non-reentrant checkpointing)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.blocks):
        model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=True)


def apply_compile(model: GPT, scope: str = "blocks") -> None:
    """torch.compile in place: each block (repeated blocks share one compiled graph), or the whole model.

    ``model`` puts embeddings, blocks, the head and the fused loss in one graph, so inductor fuses the
    loss's elementwise softmax work into a few kernels; ``blocks`` compiles faster and composes with FSDP2.
    """
    if scope == "model":
        model.compile(dynamic=False)
        return
    if scope != "blocks":
        raise ValueError(f"compile scope must be 'blocks' or 'model', got {scope!r}")
    for block in model.blocks:
        block.compile(dynamic=False)


def apply_tensor_parallel(model: GPT, tp_mesh: DeviceMesh) -> None:
    """Megatron-style TP inside each block: column-wise in-projections, row-wise out-projections.

    The fused qkv rows are grouped per KV head (see ``CausalSelfAttention``), so a column shard holds whole
    query groups; the number of KV heads must be divisible by the TP size.
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = tp_mesh.size()
    n_kv = model.config.n_kv_head
    if n_kv % tp:  # type: ignore[operator]
        raise ValueError(f"tensor parallel size {tp} must divide n_kv_head={n_kv}")
    for block in model.blocks:
        plan: dict[str, object] = {"attn.qkv": ColwiseParallel(), "attn.proj": RowwiseParallel()}
        for name, child in block.mlp.named_children():
            if isinstance(child, nn.Linear):
                plan[f"mlp.{name}"] = RowwiseParallel() if name == "proj" else ColwiseParallel()
        parallelize_module(block, tp_mesh, plan)  # type: ignore[arg-type]


def apply_fsdp2(model: GPT, dp_mesh: DeviceMesh, param_dtype: torch.dtype | None) -> None:
    """Shard every block, then the root (embeddings, final norm, head), with ``fully_shard`` (FSDP2)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    kwargs = {"mesh": dp_mesh, **({"mp_policy": mp} if mp else {})}
    for i, block in enumerate(model.blocks):
        # the last block's params are needed right away in backward: don't reshard them after forward
        fully_shard(block, reshard_after_forward=i < len(model.blocks) - 1, **kwargs)
    fully_shard(model, **kwargs)


def parallelize(lit: LitGPT, model: GPT) -> None:
    """Apply what ``lit``'s settings and the trainer's strategy ask for."""
    strategy = lit._trainer.strategy if lit._trainer is not None else None
    from lightning.pytorch.strategies import ModelParallelStrategy

    model_parallel = isinstance(strategy, ModelParallelStrategy)
    if model_parallel:
        mesh = lit.device_mesh
        if lit.tensor_parallel and mesh["tensor_parallel"].size() > 1:
            apply_tensor_parallel(model, mesh["tensor_parallel"])
    elif lit.tensor_parallel:
        raise ValueError(
            "tensor_parallel needs trainer.strategy=ModelParallelStrategy (see configs/fsdp2.yaml)"
        )
    if lit.activation_checkpointing and not _fsdp1(strategy):
        apply_activation_checkpointing(model)
    if lit.compile:
        scope = "blocks" if lit.compile is True else str(lit.compile)
        if scope == "model" and model_parallel:
            raise ValueError(
                "compile: model compiles the whole model in one graph, which FSDP2/tensor parallel wrap per "
                "block; use compile: true (per block) with ModelParallelStrategy."
            )
        apply_compile(model, scope)
    if model_parallel:
        precision = str(lit.trainer.precision)
        param_dtype = torch.bfloat16 if precision == "bf16-mixed" else None
        if precision == "16-mixed":
            param_dtype = torch.float16
        apply_fsdp2(model, lit.device_mesh["data_parallel"], param_dtype)
    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device=lit.trainer.strategy.root_device)
        with torch.no_grad():
            model.reset_parameters()


def _fsdp1(strategy: object) -> bool:
    """FSDP1 does its own activation checkpointing (``activation_checkpointing_policy`` in the preset)."""
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)
