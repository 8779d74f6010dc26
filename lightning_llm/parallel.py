"""Parallelism applied from the outside to a model that knows nothing of it (torchtitan's split).

``parallelize`` is called from ``LitGPT.configure_model`` with plain arguments (it knows nothing of
Lightning). Under Lightning's ``ModelParallelStrategy`` the model arrives on the meta device; it gets tensor parallelism (optional), activation checkpointing,
compile, then FSDP2 (``fully_shard`` per block, then the root), and is materialised and initialised last,
shard by shard. DDP and FSDP1 are Lightning's own strategies and need nothing here beyond checkpointing
and compile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lightning_llm.model import GPT

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


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
    """Megatron-style TP inside each block, by the plan its parts declare (``Block.tp_plan``): column-wise
    in-projections, row-wise residual projections.

    The fused qkv rows are grouped per KV head (see ``CausalSelfAttention``), so a column shard holds whole
    query groups; the number of KV heads must be divisible by the TP size.
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = tp_mesh.size()
    n_kv = model.config.n_kv_head
    if n_kv % tp:  # type: ignore[operator]
        raise ValueError(f"tensor parallel size {tp} must divide n_kv_head={n_kv}")
    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    for block in model.blocks:
        plan = {name: styles[style]() for name, style in block.tp_plan().items()}
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


def parallelize(
    model: GPT,
    *,
    device: torch.device,
    mesh: DeviceMesh | None = None,
    tensor_parallel: bool = False,
    activation_checkpointing: bool = False,
    compile: bool | str = False,
    param_dtype: torch.dtype | None = None,
) -> None:
    """Apply tensor parallelism, activation checkpointing, compile and FSDP2 to ``model``, in that order.

    Args:
        model: A GPT, on the meta device when it is to be sharded (materialised here, on ``device``).
        device: The device the model trains on.
        mesh: The device mesh of ``ModelParallelStrategy`` (dims ``data_parallel`` and ``tensor_parallel``);
            None for DDP, FSDP1 and a single device (FSDP1 does its own activation checkpointing, so pass
            ``activation_checkpointing=False`` there).
        tensor_parallel: Shard each block's linear layers over ``mesh["tensor_parallel"]`` (needs ``mesh``).
        activation_checkpointing: Recompute every block's activations in backward.
        compile: False, True or "blocks" (each block), or "model" (one graph; not with ``mesh``).
        param_dtype: FSDP2's compute dtype for parameters (mixed precision); None keeps their dtype.
    """
    if tensor_parallel and mesh is None:
        raise ValueError(
            "tensor_parallel needs trainer.strategy=ModelParallelStrategy (see configs/fsdp2.yaml)"
        )
    if tensor_parallel and mesh["tensor_parallel"].size() > 1:  # type: ignore[index]
        apply_tensor_parallel(model, mesh["tensor_parallel"])  # type: ignore[index]
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        scope = "blocks" if compile is True else str(compile)
        if scope == "model" and mesh is not None:
            raise ValueError(
                "compile: model compiles the whole model in one graph, which FSDP2/tensor parallel wrap per "
                "block; use compile: true (per block) with ModelParallelStrategy."
            )
        apply_compile(model, scope)
    if mesh is not None:
        apply_fsdp2(model, mesh["data_parallel"], param_dtype)
    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device=device)
        with torch.no_grad():
            model.reset_parameters()


def data_parallel_size(strategy: Any) -> int:
    """How many model replicas a global batch is split over: the world size, except under tensor parallelism,
    where the ranks of one tensor-parallel group share a replica (and a batch)."""
    kwargs = getattr(strategy, "distributed_sampler_kwargs", None) or {}
    return int(kwargs.get("num_replicas") or getattr(strategy, "world_size", 1))


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` for parameters on different device meshes (FSDP2 x tensor parallel).

    torch's version stacks the per-parameter norms and refuses DTensors of different meshes (the 1-D
    data-parallel mesh of a replicated norm weight next to the 2-D mesh of a sharded projection). Here the
    norm is taken per (mesh, placements) group with foreach kernels, each group's made whole with one
    collective (``full_tensor``), and the groups combined; no host synchronisation.
    """
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.experimental import implicit_replication

    groups: dict[Any, list[torch.Tensor]] = {}
    for p in params:
        key = (p.grad.device_mesh, p.grad.placements) if isinstance(p.grad, DTensor) else None
        groups.setdefault(key, []).append(p.grad)
    norms = []
    for grads in groups.values():
        norm = torch.nn.utils.get_total_norm(grads, 2.0, foreach=True)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2.0)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # as torch's: scale only when above max_norm
    with implicit_replication():  # the plain scalar coefficient multiplies DTensor gradients
        for grads in groups.values():  # foreach kernels need one mesh per call
            torch._foreach_mul_(grads, coef.to(grads[0].dtype))
    return total
