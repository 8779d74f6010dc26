"""The optimizer of ``model.optimizer``: AdamW, or Muon for the blocks' weight matrices plus AdamW.

Parameter groups, in the order the optimizer and its checkpoints keep them: AdamW with weight decay (weight
matrices outside Muon's share), AdamW without (norms, biases, the token and position embeddings and a head
tied to the token embedding), then with ``name: muon`` one Muon group: the trainable 2-D weights inside
``GPT.blocks`` (attention qkv and output projection, MLP linears). ``name: adamw`` keeps today's two groups
as they were; the Muon layout names each group (``role``: ``adamw_decay``, ``adamw_no_decay``, ``muon``) for
``optim.apply_optimizer_settings`` and leaves out an empty AdamW group (the decay one, when the head is tied:
torch.distributed.checkpoint's loader maps an empty group that is not the last one to the wrong saved group).

Lightning's automatic optimisation steps one optimizer, so Muon and AdamW are held by ``MuonWithAdamW``, an
optimizer whose ``param_groups`` are both optimizers' groups (the LR schedule, gradient clipping and
``zero_grad`` see every parameter) and whose ``state_dict`` is the ordinary single-optimizer format (so
Lightning's and torch.distributed.checkpoint's save and load work unchanged).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lightning_llm.optim import MUON_GROUP_KEY, OptimizerConfig, optimizer_mismatch


def muon_params(model: nn.Module) -> list[nn.Parameter]:
    """Muon's parameters: the trainable 2-D weights inside ``model.blocks`` that no ``nn.Embedding`` owns
    (attention qkv and output projection, every MLP linear). Frozen parameters are left out."""
    embedded = {id(p) for m in model.blocks.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    found, seen = [], set()
    for p in model.blocks.parameters():
        if p.requires_grad and p.ndim == 2 and id(p) not in embedded and id(p) not in seen:
            seen.add(id(p))
            found.append(p)
    return found


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict[str, Any]]:
    """The parameter groups of ``cfg.name``: AdamW decay, AdamW no-decay, and with muon the Muon group.

    AdamW decays weight matrices (2-D and up) and never norms, biases or embeddings (a tied head is the
    token embedding); each trainable parameter is in exactly one group, frozen ones in none. With muon each
    group carries its ``role`` and an empty AdamW group is left out (see the module's docstring).
    """
    muon = muon_params(model) if cfg.name == "muon" else []
    if cfg.name == "muon" and not muon:
        raise ValueError(
            "model.optimizer.name=muon found no trainable 2-D weight matrix in the transformer blocks "
            "(a model with n_layer 0, frozen blocks, or parameters flattened by FSDP1): use name: adamw."
        )
    taken = {id(p) for p in muon}
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            taken.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay, seen = [], [], {id(p) for p in muon}
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 and id(p) not in taken else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if not muon:
        return groups
    groups[0]["role"], groups[1]["role"] = "adamw_decay", "adamw_no_decay"
    groups = [g for g in groups if g["params"]] or groups[1:]
    return [*groups, {"params": muon, "weight_decay": cfg.muon_decay, "role": "muon"}]


def check_strategy(cfg: OptimizerConfig, strategy: Any, tensor_parallel: bool) -> None:
    """Refuse Muon where its matrices are not whole: FSDP1 and tensor parallelism (DDP and FSDP2 work)."""
    if cfg.name != "muon":
        return
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy):
        raise ValueError(
            "model.optimizer.name=muon does not run under FSDPStrategy (FSDP1): FSDP1 flattens each block's "
            "parameters into 1-D shards, and Muon orthogonalises whole weight matrices. Use "
            "ModelParallelStrategy (FSDP2, configs/fsdp2.yaml), where Muon gathers each sharded matrix's "
            "update, or DDP; or keep FSDP1 with --model.optimizer.name=adamw."
        )
    if tensor_parallel:
        raise ValueError(
            "model.optimizer.name=muon is not supported with model.tensor_parallel=true: Muon's gathering "
            "of sharded matrices is verified for FSDP2's row shards only, not for tensor-parallel (or "
            "FSDP2 x TP strided) layouts. Use FSDP2 alone (--model.tensor_parallel=false) or "
            "--model.optimizer.name=adamw."
        )


def build_optimizer(
    groups: list[dict[str, Any]], cfg: OptimizerConfig, *, fused: bool
) -> torch.optim.Optimizer:
    """AdamW over the groups but the one of role ``muon`` (fused or foreach), plus ``Muon`` over that one,
    combined in a ``MuonWithAdamW``; plain ``torch.optim.AdamW`` for ``name: adamw``.

    Only torch's own refusal of the fused kernel (a device or parameter type it does not cover) falls back to
    foreach, with a warning; a ``fused: true`` the user asked for, or any other error, is raised.
    """

    def adamw_groups() -> list[dict[str, Any]]:  # fresh dicts per try: the optimizer fills in its defaults
        return [dict(g) for g in groups if g.get("role") != "muon"]

    kwargs: dict[str, Any] = {"fused": True} if fused else {"foreach": True}
    try:
        adamw = torch.optim.AdamW(adamw_groups(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kwargs)
    except RuntimeError as err:
        if cfg.fused or "fused" not in str(err).lower():
            raise
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(f"AdamW: fused kernel unavailable here ({err}); using the foreach implementation")
        adamw = torch.optim.AdamW(adamw_groups(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=True)
    muon_groups = [g for g in groups if g.get("role") == "muon"]
    if not muon_groups:
        return adamw
    device = muon_groups[0]["params"][0].device
    ns_dtype = newton_schulz_dtype(device)
    if ns_dtype != torch.bfloat16:
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(
            f"Muon: Newton-Schulz in {ns_dtype} on this {device.type} (no native bf16 matmuls here; bf16 would be "
            "many times slower)"
        )
    muon = Muon(
        muon_groups,
        ns_dtype=ns_dtype,
        lr=cfg.muon_peak_lr,
        weight_decay=cfg.muon_decay,
        momentum=cfg.muon_momentum,
        nesterov=cfg.muon_nesterov,
        ns_steps=cfg.muon_ns_steps,
        adjust_lr_fn=cfg.muon_lr_adjust,
    )
    return MuonWithAdamW(adamw, muon)


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """The dtype Muon orthogonalises in on ``device``: bf16 (torch's choice: fast, and the iteration tolerates
    it) on a GPU and on a CPU with native bf16 matmuls; fp32 on a CPU without them, where bf16 matmuls are
    emulated (30x slower than fp32 on an AVX2 EPYC: Muon's step took seconds) and fp32 costs nothing extra."""
    if device.type == "cpu":
        from lightning_llm import precision

        if not precision.cpu_bf16_fast():
            return torch.float32
    return torch.bfloat16


def orthogonalize(
    update: torch.Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Newton-Schulz orthogonalisation (Muon's) of each matrix of a batch ``(N, rows, cols)``, in ``dtype``
    (``newton_schulz_dtype`` picks it per device).

    Each matrix is scaled to Frobenius norm <= 1, then ``steps`` quintic iterations
    ``X <- (a I + b G + c G^2) X`` with ``G = X X^T`` push its singular values towards 1 (Muon's coefficients
    favour speed: they land roughly between 0.5 and 1.5); a tall matrix is iterated transposed so ``G`` is the
    small (r, r) one. The same computation as ``torch.optim.Muon``, batched over matrices.

    In fp32 or fp64, a matrix more than 1.5 times as wide as tall is iterated on its Gram matrix alone
    (``_gram_newton_schulz``: the same result in fewer FLOPs). In bf16 the iteration runs on ``X`` as torch's
    does: each step there re-derives ``G`` from the current ``X``, which keeps bf16's rounding from piling up.
    """
    a, b, c = coefficients
    x = update.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    if dtype in (torch.float32, torch.float64) and x.size(-1) > 1.5 * x.size(-2) and steps > 1:
        x = _gram_newton_schulz(x, coefficients, steps)
    else:
        for _ in range(steps):
            gram = x @ x.mT  # (N, r, r), r = min(rows, cols)
            poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
            x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b G + c G^2) X
    return x.mT if tall else x


def _gram_newton_schulz(
    x: torch.Tensor, coefficients: tuple[float, float, float], steps: int
) -> torch.Tensor:
    """``steps`` Newton-Schulz iterations of wide matrices ``x`` (N, r, n), carried out on (r, r) matrices.

    Step k multiplies X on the left by ``P_k = a I + b G_k + c G_k^2``, so after it ``X_k = Q_k X_0`` with
    ``Q_k = P_k ... P_0``, and the next Gram matrix is ``G_{k+1} = P_k G_k P_k`` (P_k is symmetric). Tracking
    ``Q`` and ``G`` instead of ``X`` costs two (r, n) products in all (``G_0`` and ``Q X_0``) and at most four
    (r, r) ones a step, against two (r, n) and one (r, r) a step: for s steps ``4 r^2 n + (4 s - 3) 2 r^3``
    FLOPs instead of ``s (4 r^2 n + 2 r^3)``, less whenever n > 1.5 r. For Muon's 4-5 steps on a (256, 1152)
    matrix that is 45% fewer.
    """
    a, b, c = coefficients
    gram = x @ x.mT
    q: torch.Tensor | None = None
    for k in range(steps):
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        poly.diagonal(dim1=-2, dim2=-1).add_(a)  # + a I
        q = poly if q is None else poly @ q
        if k < steps - 1:
            gram = poly @ gram @ poly
    assert q is not None  # steps >= 1
    return q @ x


def lr_scale(adjust: str | None, shape: torch.Size) -> float:
    """Muon's per-matrix step multiplier for ``adjust`` (torch's ``adjust_lr_fn``) and a (rows, cols)
    shape."""
    rows, cols = shape[0], shape[1]
    if adjust == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust == "spectral_unclamped":
        return math.sqrt(rows / cols)
    return math.sqrt(max(1.0, rows / cols))  # "original" / None


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (a view: in-place changes reach the DTensor); a tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _whole(local: torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The full matrix of which ``local`` is this rank's part, laid out as the DTensor ``like`` (one
    all-gather, in ``dtype``); ``local`` itself for a plain tensor."""
    from torch.distributed.tensor import DTensor

    if not isinstance(like, DTensor):
        return local
    part = DTensor.from_local(
        local.to(dtype),
        like.device_mesh,
        like.placements,
        shape=like.shape,
        stride=like.stride(),
        run_check=False,
    )
    return part.full_tensor()


def _part(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's part of a full matrix, laid out as the DTensor ``like`` (a local slice, no
    communication); ``whole`` itself for a plain tensor."""
    from torch.distributed.tensor import DTensor, Replicate

    if not isinstance(like, DTensor):
        return whole
    mesh = like.device_mesh
    full = DTensor.from_local(whole, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return full.redistribute(mesh, like.placements).to_local()


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` (same arguments, defaults, state and update) with two changes to ``step``:

    * matrices of one shape are orthogonalised together (batched matmuls: a few kernels per shape instead of
      per matrix), and the momentum and parameter updates use foreach kernels;
    * parameters sharded as DTensors (FSDP2's row shards) work: the momentum is kept on the shard, the update
      is gathered whole (one all-gather of the bf16 matrix per step, as much traffic again as FSDP2's
      parameter all-gather, and every rank orthogonalises every matrix), and each rank applies its rows.

    The step reads nothing back to the host (no ``.item()``, no data-dependent branch); neither does
    torch's: its learning rates and scales are Python floats, its norms stay on the device.
    """

    def __init__(self, params: Any, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype
        """Dtype of the orthogonalisation and of the FSDP2 all-gather of the update."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Muon step of every parameter with a gradient; ``closure`` (re-evaluating the loss) is run
        first, with gradients enabled, and its loss returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape: dict[Any, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault((tuple(p.shape), p.dtype, p.device), []).append(p)
            for params in by_shape.values():
                self._update(params, group)
        return loss

    def _update(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        """Muon's update of same-shape matrices: momentum, orthogonalisation, weight decay, step."""
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(
                    p.grad, memory_format=torch.preserve_format
                )
        grads = [_local(p.grad) for p in params]
        bufs = [_local(self.state[p]["momentum_buffer"]) for p in params]
        momentum = group["momentum"]
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
        whole = torch.stack([_whole(u, p, self.ns_dtype) for u, p in zip(updates, params, strict=True)])
        ortho = orthogonalize(whole, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
        ortho = ortho.to(params[0].dtype)
        parts = [_part(o, p) for o, p in zip(ortho.unbind(0), params, strict=True)]
        local = [_local(p) for p in params]
        lr, decay = group["lr"], group["weight_decay"]
        if decay:
            torch._foreach_mul_(local, 1 - lr * decay)
        torch._foreach_add_(local, parts, alpha=-lr * lr_scale(group["adjust_lr_fn"], params[0].shape))


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer made of an AdamW and a Muon over disjoint parameters, for Lightning's automatic
    optimisation (which steps one optimizer).

    ``param_groups`` is AdamW's groups then Muon's (the same dicts: an LR scheduler or gradient clipping
    acting here acts on both), ``state`` is shared by both, so ``state_dict`` and ``load_state_dict`` are the
    ordinary ones and round-trip (Lightning's checkpoints, ``torch.distributed.checkpoint`` under FSDP2).
    ``step`` runs the closure once, then steps AdamW and Muon.
    """

    def __init__(self, adamw: torch.optim.Optimizer, muon: torch.optim.Optimizer) -> None:
        self.adamw, self.muon = adamw, muon
        self.n_adamw_groups = len(adamw.param_groups)
        super().__init__(adamw.param_groups + muon.param_groups, defaults={})
        self._link()

    def _link(self) -> None:
        """Point both optimizers at this one's groups and state (after construction and every load)."""
        self.adamw.param_groups = self.param_groups[: self.n_adamw_groups]
        self.muon.param_groups = self.param_groups[self.n_adamw_groups :]
        self.adamw.state = self.muon.state = self.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Run ``closure`` (forward and backward) once with gradients enabled, then step AdamW and Muon."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.adamw.step()
        self.muon.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by a ``MuonWithAdamW`` of the same groups; refuse AdamW's state (a checkpoint
        of a run with ``name: adamw``) with the fix."""
        groups = state_dict.get("param_groups", [])
        if not any(MUON_GROUP_KEY in g for g in groups):
            raise ValueError(optimizer_mismatch("adamw", "muon"))
        super().load_state_dict(state_dict)
        self._link()
