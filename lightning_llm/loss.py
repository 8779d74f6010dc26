"""Fused linear + cross-entropy: the vocabulary head and its loss without the full (N, V) fp32 logits.

With a 50k vocabulary the head dominates a small GPT's training step: the logits of 2048 tokens are
2048 x 50304 numbers, and the plain path (``F.cross_entropy(lm_head(x).float(), y)``) materialises them
several times over (bf16 logits, their fp32 copy, log-softmax output, its zero-filled gradient, the
bf16 copy of that gradient). ``linear_cross_entropy`` instead walks over the rows in chunks and, for each
chunk, computes the logits, the loss and *both gradients* at once in the forward pass::

    z = h_i @ W^T                    (n, V)  in the compute dtype, fp32 accumulation inside the matmul
    for slices of z (CPU: 32 rows, 6.4 MB of fp32 that stays in cache; GPU: the whole chunk at once):
        logp = log_softmax(z, dtype=fp32)
        loss_i = -logp[target]
        z <- exp(logp) - onehot(target)      the logit gradient, written back into z (compute dtype)
    dh_i = z @ W,   dW += z^T @ (h_i * keep) dW accumulated in fp32; ignored rows masked on the C side

The backward pass then only scales the stored ``dh`` (N, C) and ``dW`` (V, C) by the incoming gradient.
Peak extra memory is O(chunk_size * V) instead of O(N * V); the matmul FLOPs are the same as the plain
path's. The row sizes are chosen per device (``plan_for``): cache-sized on a CPU, few large kernels on a
GPU, where nothing in the loss reads a value back to the host (no synchronisation).
This is the approach of e.g. Liger-Kernel's fused linear cross-entropy and Apple's "Cut Your Losses".

Logit soft-capping (``softcap=c``; Gemma 2, modded-nanogpt) trains on ``y = c * tanh(z / c)`` instead of
``z``: the logits stay within (-c, c). In the chunk loop the GEMM writes ``z / c`` (its ``alpha``, free),
each slice takes ``t = tanh(z / c)`` in fp32 and the capped logits ``c * t`` (rounded to the compute dtype,
as ``softcap_logits`` rounds the model's logits) go through the same softmax; the logit gradient follows the
chain rule, ``(softmax(y) - onehot) * (1 - t^2)``, in fp32 and written back into ``z`` in the same pass that
used to copy it there. That is three more elementwise passes per slice (copy, tanh, mul) and one more fp32
scratch of the slice's size; ``softcap=None`` runs exactly the uncapped code.

Under ``torch.autocast`` the compute dtype is the autocast dtype, exactly as ``nn.Linear`` would use;
otherwise it is ``hidden``'s dtype. The softmax and the loss are always computed in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class HeadPlan:
    """How the rows are cut: the sizes that suit one device.

    On a CPU the elementwise softmax work should stay in cache; on a GPU every slice is a batch of kernel
    launches, so the work should be a few large kernels and only memory bounds the chunk.
    """

    chunk_rows: int
    """Rows of logits materialised at once (the matmuls run on (chunk_rows, V) blocks)."""
    slice_rows: int | None
    """Rows of fp32 softmax work done at once inside a chunk; None: the whole chunk in one pass."""
    accumulate_rows: int | None
    """Row blocks of the fp32 dW accumulation of a low-precision partial; None: one pass."""


CPU_PLAN = HeadPlan(chunk_rows=1024, slice_rows=32, accumulate_rows=4096)
"""Measured on 2 AVX-512 cores, V=50304, N=2048 (benchmarks/RESULTS.md): 1024-row chunks in 32-row
slices (32 x 50304 x 4 bytes = 6.4 MB of fp32 stays in cache) were fastest; a whole-tensor mixed-dtype
``+=`` made a 77 MB fp32 temporary, so dW is summed in 4096-row blocks."""

GPU_CHUNK_BYTES = 2 << 30
"""Scratch a chunk may use on an accelerator: its logits in the compute dtype plus one fp32 buffer for the
log-softmax (6 bytes x V a row in bf16). 2 GiB is 6,912 rows of GPT-2's 50304-token vocabulary, so a
16 x 1024 batch takes 3 chunks; the plain head of that batch needs several times the memory (nanoGPT's
eager step peaks 7 GiB above its body). Measured on an H100 with the previous code: 4096-row chunks ran the
step within 2% of one chunk of all rows (55.8 vs 54.8 ms) at 9.5 instead of 15.3 GiB."""


def plan_for(
    device_type: str, n_rows: int, vocab: int, compute_dtype: torch.dtype, fp32_buffers: int = 1
) -> HeadPlan:
    """The row plan for ``device_type``: cache-sized on CPU, memory-sized (few large kernels) elsewhere.

    ``fp32_buffers``: fp32 (rows, V) scratch buffers a chunk uses besides its logits: 1 for the
    log-softmax, 2 with soft-capping (the tanh kept for the chain rule); the GPU chunk shrinks to match.
    """
    if device_type == "cpu":
        return CPU_PLAN
    row_bytes = vocab * (torch.finfo(compute_dtype).bits // 8 + 4 * fp32_buffers)
    rows = max(256, GPU_CHUNK_BYTES // row_bytes // 256 * 256)  # a multiple of 256 keeps the GEMMs tiled
    return HeadPlan(chunk_rows=min(rows, max(n_rows, 1)), slice_rows=None, accumulate_rows=None)


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def _check_softcap(cap: float | None) -> None:
    if cap is not None and not 0 < cap < math.inf:
        raise ValueError(
            f"softcap must be a positive finite number (the logits are capped to (-softcap, softcap); "
            f"Gemma 2 uses 30, modded-nanogpt 15) or None for no capping, got {cap!r}"
        )


def softcap_logits(logits: Tensor, cap: float | None) -> Tensor:
    """``cap * tanh(logits / cap)``: logits squashed into (-cap, cap); ``cap=None`` returns ``logits``.

    Computed in fp32 and rounded back to ``logits``' dtype once, as ``linear_cross_entropy(...,
    softcap=cap)`` rounds its capped logits to the compute dtype before its fp32 softmax: evaluation and
    generation on the logits see what the fused loss trained on, to within that rounding. Differentiable.
    """
    if cap is None:
        return logits
    _check_softcap(cap)
    return (torch.tanh(logits.float() / cap) * cap).to(logits.dtype)


def _softcap_(u: Tensor, cap: float, tanh: Tensor) -> Tensor:
    """In place ``u <- cap * tanh(u)`` for ``u = z / cap`` (n, V); returns ``tanh(u)`` (n, V) in fp32.

    ``tanh``: a reusable fp32 scratch of shape (>= n, V); its first n rows are returned, kept for the
    chain rule (``1 - tanh^2``) after the softmax. The capped logits are rounded to ``u``'s dtype once.
    """
    t = tanh[: u.shape[0]]
    t.copy_(u)  # fp32
    t.tanh_()
    torch.mul(t, cap, out=u)  # computed in fp32, rounded to the compute dtype
    return t


def _softmax_grad_(
    z: Tensor, safe_t: Tensor, logp: Tensor, minus_one: Tensor, tanh: Tensor | None = None
) -> Tensor:
    """Per-row NLL of logits ``z`` (n, V) and, in place, ``z <- softmax(z) - onehot(safe_t)``.

    ``safe_t`` (n, 1) holds valid class ids only (ignored rows are masked by the caller, on the much
    smaller hidden states). The softmax runs in fp32 whatever ``z``'s dtype, in ``logp``: a reusable fp32
    scratch of shape (>= n, V), so the slices of one call allocate nothing. The result is rounded to
    ``z``'s dtype once, at the end. No value is read back to the host: no synchronisation on a GPU.

    With ``tanh`` (n, V) fp32, ``z`` holds soft-capped logits ``c * tanh``; the gradient is taken with
    respect to the logits before capping: ``(softmax(z) - onehot) * (1 - tanh^2)``, in fp32.
    """
    n = z.shape[0]
    logp = logp[:n]
    torch.log_softmax(z, dim=-1, dtype=torch.float32, out=logp)  # (n, V) fp32, one fused pass
    nll = -logp.gather(1, safe_t).squeeze(1)  # (n,)
    probs = logp.exp_()  # softmax, in place
    probs.scatter_add_(1, safe_t, minus_one[:n])  # minus_one: (>= n, 1) fp32 filled with -1
    if tanh is None:
        z.copy_(probs)
    else:  # chain rule through c * tanh(z / c): autograd's own fused kernel, fp32 in, written into z
        torch.ops.aten.tanh_backward.grad_input(probs, tanh, grad_input=z)
    return nll


def _accumulate_(dst: Tensor, src: Tensor, first: bool, rows: int | None) -> None:
    """``dst (+)= src`` for an fp32 ``dst`` and a lower-precision ``src``, in row blocks (None: at once).

    On CPU a mixed-dtype ``dst += src`` converts all of ``src`` into a temporary fp32 tensor first (a
    (V, C) fp32 allocation and an extra pass), so blocks keep that temporary small and in cache; a GPU
    converts inside the kernel, where one launch is best.
    """
    step = rows or dst.shape[0]
    for a in range(0, dst.shape[0], step):
        if first:
            dst[a : a + step].copy_(src[a : a + step])
        else:
            dst[a : a + step] += src[a : a + step]


class _LinearCrossEntropy(torch.autograd.Function):
    """Autograd function: forward computes loss and gradients chunk by chunk, backward scales them."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        plan: HeadPlan,
        ignore_index: int,
        compute_dtype: torch.dtype,
        softcap: float | None,
    ) -> Tensor:
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        h = hidden.to(compute_dtype)  # (N, C)
        w = weight.to(compute_dtype)  # (V, C)
        valid = targets != ignore_index  # (N,)
        safe_targets = torch.where(valid, targets, 0)[:, None]  # (N, 1): ignored rows point at class 0
        # Ignored rows are masked on the hidden side: their loss is multiplied by 0 and their hidden state
        # zeroed for dW, and their rows of dh zeroed: O(N * C) work instead of O(N * V), and no branch on
        # the data (a `bool(valid.all())` would synchronise with the GPU on every call).
        keep = valid.to(compute_dtype)[:, None]  # (N, 1)
        scale = 1.0 / valid.sum().clamp(min=1).to(torch.float32)

        grad_enabled = torch.is_grad_enabled() or any(ctx.needs_input_grad[:2])
        need_dh = grad_enabled and ctx.needs_input_grad[0]
        need_dw = grad_enabled and ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_dh else None
        grad_w = torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if need_dw else None
        nll = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
        # Scratch allocated once per call and reused by every chunk and slice: large fresh allocations
        # are not free (on CPU each comes with new pages from the OS, i.e. page faults and zeroing).
        rows = min(plan.chunk_rows, n_rows)
        sub = min(plan.slice_rows or rows, rows)
        z_buf = torch.empty(rows, vocab, dtype=compute_dtype, device=hidden.device)
        logp = torch.empty(sub, vocab, dtype=torch.float32, device=hidden.device)
        minus_one = torch.full((sub, 1), -1.0, dtype=torch.float32, device=hidden.device)
        tanh_buf = (
            None if softcap is None else torch.empty(sub, vocab, dtype=torch.float32, device=hidden.device)
        )
        partial = (
            torch.empty(weight.shape, dtype=compute_dtype, device=weight.device)
            if need_dw and compute_dtype != torch.float32
            else None
        )

        for start in range(0, n_rows, rows):
            end = min(start + rows, n_rows)
            h_i = h[start:end]  # (n, C)
            z = z_buf[: end - start]  # (n, V): the logits, then in place the logit gradient
            if softcap is None:
                torch.mm(h_i, w.T, out=z)  # in the compute dtype (fp32 accumulation inside the matmul)
            else:  # z / c straight out of the GEMM (its alpha); beta=0: z's old contents are not read
                torch.addmm(z, h_i, w.T, beta=0.0, alpha=1.0 / softcap, out=z)
            for s in range(0, end - start, sub):  # CPU: cache-sized slices; GPU: one pass
                a, e = start + s, min(start + s + sub, end)
                z_s = z[s : s + sub]
                t = None if tanh_buf is None else _softcap_(z_s, softcap, tanh_buf)  # type: ignore[arg-type]
                nll[a:e] = _softmax_grad_(z_s, safe_targets[a:e], logp, minus_one, t)
            if grad_h is not None:
                torch.mm(z, w, out=grad_h[start:end])  # (n, C)
                grad_h[start:end] *= keep[start:end]
            if grad_w is not None:
                h_kept = h_i * keep[start:end]  # ignored rows add nothing to dW
                if partial is None:  # fp32: accumulate in place
                    if start == 0:
                        torch.mm(z.T, h_kept, out=grad_w)
                    else:
                        grad_w.addmm_(z.T, h_kept)
                else:  # bf16/fp16 partial (fp32 inside the matmul), summed in fp32
                    torch.mm(z.T, h_kept, out=partial)
                    _accumulate_(grad_w, partial, first=start == 0, rows=plan.accumulate_rows)
        ctx.save_for_backward(grad_h, grad_w, scale)
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        ctx.consumed = False
        return torch.dot(nll, valid.to(torch.float32)) * scale

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if ctx.consumed:
            raise RuntimeError(
                "linear_cross_entropy's gradients were already handed out (it computes them in the forward "
                "pass and scales them in place): a second backward through the same graph is not supported. "
                "Recompute the loss instead of using retain_graph=True."
            )
        ctx.consumed = True
        grad_h, grad_w, scale = ctx.saved_tensors
        factor = grad_out.to(torch.float32) * scale
        # in place: these buffers belong to this call alone, and a fresh (V, C) fp32 tensor per step costs
        # an allocation (fresh pages from the OS for anything this large) plus a full pass over it
        dh = None if grad_h is None else grad_h.mul_(factor.to(grad_h.dtype)).to(ctx.hidden_dtype)
        dw = None if grad_w is None else grad_w.mul_(factor).to(ctx.weight_dtype)
        return dh, dw, None, None, None, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    chunk_size: int | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
) -> Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, never materialising all logits.

    Args:
        hidden: (N, C) final hidden states.
        weight: (V, C) output-head weight (may be tied to the token embedding; its gradient is
            returned in ``weight``'s dtype and autograd adds it to the embedding's).
        targets: (N,) token ids; entries equal to ``ignore_index`` are left out of the mean.
        chunk_size: rows processed at once; None: the device's plan (``plan_for``: 1024 rows in 32-row
            slices on CPU, about 2 GiB of scratch on a GPU). Peak extra memory is about
            ``chunk_size * V * 6`` bytes in bf16.
        ignore_index: target value to ignore.
        softcap: cap ``c`` of the logits: the loss is the cross-entropy of ``c * tanh(z / c)``, equal to
            ``F.cross_entropy(softcap_logits(hidden @ weight.T, c), targets)``, gradients included.
            None (default): no capping, and none of its work.

    Returns:
        A scalar fp32 tensor: the mean loss over non-ignored rows (0 if all are ignored).

    The gradients are computed in the forward pass, so calling it under ``torch.no_grad`` (or on
    tensors that need no grad) skips that work.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or targets.dim() != 1:
        raise ValueError(
            f"linear_cross_entropy expects hidden (N, C), weight (V, C), targets (N,); got "
            f"{tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(targets.shape)}"
        )
    if hidden.shape[0] != targets.shape[0] or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"shape mismatch: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}, "
            f"targets {tuple(targets.shape)}"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    _check_softcap(softcap)
    compute_dtype = _compute_dtype(hidden)
    buffers = 1 if softcap is None else 2
    plan = plan_for(hidden.device.type, hidden.shape[0], weight.shape[0], compute_dtype, buffers)
    if chunk_size is not None:
        plan = replace(plan, chunk_rows=chunk_size)
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, plan, ignore_index, compute_dtype, softcap)
