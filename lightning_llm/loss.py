"""Fused linear + cross-entropy: the vocabulary head and its loss without the full (N, V) fp32 logits.

With a 50k vocabulary the head dominates a small GPT's training step: the logits of 2048 tokens are
2048 x 50304 numbers, and the plain path (``F.cross_entropy(lm_head(x).float(), y)``) materialises them
several times over (bf16 logits, their fp32 copy, log-softmax output, its zero-filled gradient, the
bf16 copy of that gradient). ``linear_cross_entropy`` instead walks over the rows in chunks and, for each
chunk, computes the logits, the loss and *both gradients* at once in the forward pass::

    z = h_i @ W^T                    (n, V)  in the compute dtype, fp32 accumulation inside the matmul
    for 32-row slices of z (6.4 MB of fp32, stays in cache):
        logp = log_softmax(float(z))         fp32
        loss_i = -logp[target]
        z <- exp(logp) - onehot(target)      the logit gradient, written back into z (compute dtype)
    dh_i = z @ W,   dW += z^T @ h_i          dW accumulated in fp32

The backward pass then only scales the stored ``dh`` (N, C) and ``dW`` (V, C) by the incoming gradient.
Peak extra memory is O(chunk_size * V) instead of O(N * V); the matmul FLOPs are the same as the plain
path's, the fp32 elementwise work runs on cache-sized slices instead of DRAM-sized tensors.
This is the approach of e.g. Liger-Kernel's fused linear cross-entropy and Apple's "Cut Your Losses".

Under ``torch.autocast`` the compute dtype is the autocast dtype, exactly as ``nn.Linear`` would use;
otherwise it is ``hidden``'s dtype. The softmax and the loss are always computed in fp32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

DEFAULT_CHUNK_SIZE = 1024
"""Rows per chunk: the matmuls run on (chunk_size, V) blocks and dW is accumulated once per chunk.
Memory grows with it (about ``chunk_size * V * 2`` bytes in bf16); fewer, larger chunks keep the
matmuls efficient and the fp32 dW accumulations few. Measured on 2 AVX-512 cores, V=50304, N=2048:
1024 rows in 32-row slices was the fastest setting (see benchmarks/RESULTS.md)."""

SUB_ROWS = 32
"""Rows of the fp32 softmax work done at once: 32 x 50304 x 4 bytes = 6.4 MB stays in the CPU's cache."""


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def _softmax_grad_(z: Tensor, targets: Tensor, ignore_index: int, work: Tensor) -> Tensor:
    """Summed NLL of logits ``z`` (n, V) and, in place, ``z <- softmax(z) - onehot(targets)`` (0 if ignored).

    The softmax runs in fp32 whatever ``z``'s dtype, in ``work``: a reusable fp32 scratch buffer of
    shape (2, >= n, V) holding the fp32 copy of ``z`` and its log-softmax, so the slices of one call
    allocate nothing. The result is rounded to ``z``'s dtype once, at the end (a mixed-dtype
    ``exp(out=z)`` was measured slower: the CPU kernel goes through an fp32 temporary anyway).
    """
    ok = targets != ignore_index  # (n,)
    all_ok = bool(ok.all())
    safe_t = targets if all_ok else targets.masked_fill(~ok, 0)
    safe_t = safe_t[:, None]  # (n, 1)
    n = z.shape[0]
    zf, logp = work[0, :n], work[1, :n]
    if z.dtype == torch.float32:
        zf = z
    else:
        zf.copy_(z)
    torch.log_softmax(zf, dim=-1, out=logp)  # (n, V) fp32, one fused pass
    nll = -logp.gather(1, safe_t).squeeze(1)  # (n,)
    probs = logp.exp_()  # softmax, in place
    probs.scatter_add_(1, safe_t, torch.full(safe_t.shape, -1.0, dtype=probs.dtype, device=probs.device))
    if not all_ok:
        nll = nll.masked_fill(~ok, 0.0)
        probs.masked_fill_(~ok[:, None], 0.0)
    z.copy_(probs)
    return nll.sum()


def _accumulate_(dst: Tensor, src: Tensor, first: bool, rows: int = 4096) -> None:
    """``dst (+)= src`` for an fp32 ``dst`` and a lower-precision ``src``, in row blocks.

    A mixed-dtype ``dst += src`` converts all of ``src`` into a temporary fp32 tensor first (on CPU a
    (V, C) fp32 allocation and an extra pass); blocks keep that temporary small and in cache.
    """
    for a in range(0, dst.shape[0], rows):
        if first:
            dst[a : a + rows].copy_(src[a : a + rows])
        else:
            dst[a : a + rows] += src[a : a + rows]


class _LinearCrossEntropy(torch.autograd.Function):
    """Autograd function: forward computes loss and gradients chunk by chunk, backward scales them."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        chunk_size: int,
        ignore_index: int,
        compute_dtype: torch.dtype,
    ) -> Tensor:
        n_rows = hidden.shape[0]
        h = hidden.to(compute_dtype)  # (N, C)
        w = weight.to(compute_dtype)  # (V, C)
        valid = targets != ignore_index  # (N,)
        n_valid = valid.sum()
        scale = 1.0 / n_valid.clamp(min=1).to(torch.float32)

        grad_enabled = torch.is_grad_enabled() or any(ctx.needs_input_grad[:2])
        need_dh = grad_enabled and ctx.needs_input_grad[0]
        need_dw = grad_enabled and ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_dh else None
        grad_w = torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if need_dw else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # Scratch allocated once per call and reused by every chunk and slice: large fresh allocations
        # are not free on CPU (each comes with new pages from the OS, i.e. page faults and zeroing).
        rows = min(chunk_size, n_rows)
        z_buf = torch.empty(rows, weight.shape[0], dtype=compute_dtype, device=hidden.device)
        work = torch.empty(2, min(SUB_ROWS, rows), weight.shape[0], dtype=torch.float32, device=hidden.device)
        partial = (
            torch.empty(weight.shape, dtype=compute_dtype, device=weight.device)
            if need_dw and compute_dtype != torch.float32
            else None
        )

        for start in range(0, n_rows, chunk_size):
            end = min(start + chunk_size, n_rows)
            h_i = h[start:end]  # (n, C)
            z = z_buf[: end - start]  # (n, V): the logits, then in place the logit gradient
            torch.mm(h_i, w.T, out=z)  # in the compute dtype (fp32 accumulation inside the matmul)
            t_i = targets[start:end]  # (n,)
            for s in range(0, end - start, SUB_ROWS):  # cache-sized slices for the elementwise work
                loss_sum += _softmax_grad_(z[s : s + SUB_ROWS], t_i[s : s + SUB_ROWS], ignore_index, work)
            if grad_h is not None:
                torch.mm(z, w, out=grad_h[start:end])  # (n, C)
            if grad_w is not None:
                if partial is None:  # fp32: accumulate in place
                    if start == 0:
                        torch.mm(z.T, h_i, out=grad_w)
                    else:
                        grad_w.addmm_(z.T, h_i)
                else:  # bf16/fp16 partial (fp32 inside the matmul), summed in fp32
                    torch.mm(z.T, h_i, out=partial)
                    _accumulate_(grad_w, partial, first=start == 0)
        ctx.save_for_backward(grad_h, grad_w, scale)
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        ctx.consumed = False
        return loss_sum * scale

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
        return dh, dw, None, None, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ignore_index: int = -100,
) -> Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, never materialising all logits.

    Args:
        hidden: (N, C) final hidden states.
        weight: (V, C) output-head weight (may be tied to the token embedding; its gradient is
            returned in ``weight``'s dtype and autograd adds it to the embedding's).
        targets: (N,) token ids; entries equal to ``ignore_index`` are left out of the mean.
        chunk_size: rows processed at once; peak extra memory is about ``chunk_size * V * 10`` bytes.
        ignore_index: target value to ignore.

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
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    compute_dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_size, ignore_index, compute_dtype)
