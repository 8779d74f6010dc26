"""Direct Preference Optimization (Rafailov et al., 2023) and IPO (Azar et al., 2023) against a frozen reference.

A batch holds preference pairs as ``{"input_ids": (2B, T), "labels": (2B, T)}``: rows 0..B-1 are the chosen
sequences (prompt + chosen reply), rows B..2B-1 the rejected ones of the same pairs in the same order, and
``labels[r, t]`` is the token that follows ``input_ids[r, :t+1]`` (-100 on the prompt and padding). A reply's
log-probability is the *sum* of its tokens' (``sequence_logprobs``), and DPO trains the policy to raise
``log pi(chosen) - log pi_ref(chosen)`` above ``log pi(rejected) - log pi_ref(rejected)``.

The reference is a live frozen copy, not a table of precomputed log-probabilities. ``LitDPO`` builds a second
``GPT`` of the policy's config right after the policy, on the same device and in the same dtype, parallelised
the same way (``parallelize`` with the same mesh: under FSDP2 its weights are sharded like the policy's,
under tensor parallelism split like them), frozen (``requires_grad_(False)``, ``eval()``) and *not* a
submodule: it is not in ``state_dict()``, ``parameters()``, the optimizer or the checkpoints, and is
reloaded from its file at every start (resume included). Costs: one extra forward per step (no backward, no
activations kept) and one more copy of the weights (sharded where the policy is; no gradients or optimizer
state). It buys: any preference dataset works as it is, with no precomputing pass to redo for every new
reference, tokenizer or data change. (Lightning's FSDP1 ``FSDPStrategy`` does not wrap the reference: each
rank holds all of it; ``ModelParallelStrategy``, i.e. FSDP2, shards it.)

DPO needs per-sequence sums (the fused loss gives a mean), so the head runs here, in chunks of rows. Under
FSDP2 ``hidden_states`` is registered as a forward method of both models, so it all-gathers like ``forward``
(the policy's root, head included, stays gathered until its backward, as FSDP2 keeps a root's; the reference
is resharded after each forward). ``compile: model`` compiles only ``GPT.forward`` and is refused.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchmetrics import MeanMetric

from lightning_llm.chat import IGNORE_INDEX
from lightning_llm.config import GPTConfig
from lightning_llm.loss import GPU_CHUNK_BYTES
from lightning_llm.model import GPT
from lightning_llm.module import LitGPT

LossType = Literal["sigmoid", "ipo"]
LOSS_TYPES: tuple[str, ...] = get_args(LossType)
METRICS = ("loss", "accuracy", "margin", "rewards_chosen", "rewards_rejected")
"""What validation and test report, as ``val/<name>`` and ``test/<name>``."""

LOGITS_CHUNK_BYTES = GPU_CHUNK_BYTES
"""Scratch one chunk of rows may use for its logits (compute dtype) and fp32 log-softmax: the fused loss's."""


# -- log-probabilities ------------------------------------------------------------------------------
def logits_chunk_rows(n_rows: int, seq_len: int, vocab: int, compute_dtype: torch.dtype) -> int:
    """Rows whose logits (compute dtype) and fp32 log-softmax fit in ``LOGITS_CHUNK_BYTES`` (at least 1)."""
    row_bytes = max(1, seq_len * vocab * (torch.finfo(compute_dtype).bits // 8 + 4))
    return max(1, min(n_rows, LOGITS_CHUNK_BYTES // row_bytes))


def _chunk_logprobs(head: Callable[[Tensor], Tensor], hidden: Tensor, labels: Tensor) -> Tensor:
    """Summed log p(label) of each row of ``hidden`` (n, T, C): logits through ``head`` (``GPT.logits``: the
    vocabulary head, soft-capped where the model caps), softmax in fp32."""
    logp = torch.log_softmax(head(hidden), dim=-1, dtype=torch.float32)  # (n, T, V) fp32
    keep = labels != IGNORE_INDEX  # (n, T)
    picked = logp.gather(-1, torch.where(keep, labels, 0).unsqueeze(-1)).squeeze(-1)  # (n, T)
    return torch.where(keep, picked, 0.0).sum(dim=-1)  # (n,)


def sequence_logprobs(
    model: GPT, input_ids: Tensor, labels: Tensor, *, chunk_rows: int | None = None
) -> Tensor:
    """Sum over the positions whose label is not -100 of log p(label | prefix): one fp32 value per row.

    ``model`` is a GPT, plain or parallelised (under FSDP2 with ``hidden_states`` registered as a forward
    method, as ``LitDPO`` does); ``labels[:, t]`` is the token after ``input_ids[:, :t+1]``; ``chunk_rows``:
    rows whose logits exist at once (None: as many as fit in ``LOGITS_CHUNK_BYTES``). Returns (N,) fp32;
    gradients flow to the model when grad mode is on.

    The trunk runs once over all rows (``model.hidden_states``); the (N, T, V) logits never exist at once:
    the head and an fp32 log-softmax run on chunks of rows. Chunk sizes come from shapes only, so nothing is
    read back from the device. When more than one chunk is needed and gradients are wanted, each chunk is
    activation-checkpointed: backward recomputes its logits (one more head matmul) instead of keeping
    every chunk's fp32 log-softmax alive until then; a batch that fits in one chunk takes the plain path.
    """
    if input_ids.shape != labels.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids and labels must both be (N, T); got {tuple(input_ids.shape)} and {tuple(labels.shape)}"
        )
    hidden = model.hidden_states(input_ids)  # (N, T, C)
    n_rows, seq_len = input_ids.shape
    if chunk_rows is None:
        device_type = hidden.device.type
        autocast = torch.is_autocast_enabled(device_type)
        compute = torch.get_autocast_dtype(device_type) if autocast else hidden.dtype
        chunk_rows = logits_chunk_rows(n_rows, seq_len, model.config.vocab_size, compute)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    if chunk_rows >= n_rows:
        return _chunk_logprobs(model.logits, hidden, labels)
    recompute = torch.is_grad_enabled() and (hidden.requires_grad or model.lm_head.weight.requires_grad)
    out = []
    for start in range(0, n_rows, chunk_rows):
        h, y = hidden[start : start + chunk_rows], labels[start : start + chunk_rows]
        if recompute:  # the head has no randomness: no RNG state to save and restore
            out.append(
                checkpoint(_chunk_logprobs, model.logits, h, y, use_reentrant=False, preserve_rng_state=False)
            )
        else:
            out.append(_chunk_logprobs(model.logits, h, y))
    return torch.cat(out)


# -- the loss ---------------------------------------------------------------------------------------
def check_dpo_options(beta: float, loss_type: str) -> None:
    """``beta`` must be a positive finite number and ``loss_type`` one of ``LOSS_TYPES``."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (0 < beta < math.inf):
        raise ValueError(
            f"DPO beta must be a positive number (the strength of the pull towards the reference; "
            f"0.1 is usual), got {beta!r}."
        )
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"Unknown DPO loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}.")


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    loss_type: LossType = "sigmoid",
) -> tuple[Tensor, dict[str, Tensor]]:
    """The DPO or IPO loss of B preference pairs, and its metrics.

    Every input is (B,): the *summed* per-token log-probabilities of a whole reply (``sequence_logprobs``),
    never a per-token average, for DPO and IPO alike. With h = (pc - rc) - (pr - rr), the policy's log-ratio
    to the reference on the chosen reply minus that on the rejected one:

    * ``sigmoid`` (DPO, Rafailov et al.): mean of -log sigmoid(beta * h);
    * ``ipo`` (IPO, Azar et al.): mean of (h - 1 / (2 beta))^2, which pulls h to the margin 1 / (2 beta),
      in summed nats (TRL averages per token for IPO: its betas do not carry over).

    Computed in at least fp32 (fp64 inputs stay fp64). The metrics are detached scalars:
    ``rewards_chosen`` = mean beta (pc - rc), ``rewards_rejected`` = mean beta (pr - rr), ``margin`` = mean
    of their difference (beta h), ``accuracy`` = mean of [h > 0] + [h == 0] / 2 (exactly 1/2 when the policy
    is the reference). Nothing is read back to the host.
    """
    check_dpo_options(beta, loss_type)
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or policy_chosen.dim() != 1:
        raise ValueError(f"dpo_loss expects four (B,) tensors of the same shape; got shapes {sorted(shapes)}")
    dtype = torch.promote_types(policy_chosen.dtype, torch.float32)
    pc, pr, rc, rr = (t.to(dtype) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected))
    chosen, rejected = pc - rc, pr - rr  # log-ratios to the reference
    h = chosen - rejected
    if loss_type == "sigmoid":
        loss = -F.logsigmoid(beta * h).mean()
    else:
        loss = (h - 1.0 / (2.0 * beta)).square().mean()
    with torch.no_grad():
        h = h.detach()
        rewards_chosen, rewards_rejected = beta * chosen.detach(), beta * rejected.detach()
        metrics = {
            "rewards_chosen": rewards_chosen.mean(),
            "rewards_rejected": rewards_rejected.mean(),
            "margin": (rewards_chosen - rewards_rejected).mean(),
            "accuracy": ((h > 0).to(dtype) + 0.5 * (h == 0).to(dtype)).mean(),
        }
    return loss, metrics


# -- the LightningModule ----------------------------------------------------------------------------
class LitDPO(LitGPT):
    """Preference alignment of a ``GPT`` with DPO or IPO against a frozen reference model.

    Takes every argument of ``LitGPT`` (``init_weights`` is the model DPO starts from, usually an SFT
    checkpoint) and trains on batches ``{"input_ids": (2B, T), "labels": (2B, T)}`` of B chosen rows then
    the B rejected rows of the same pairs. Logs ``train/loss``, ``train/rewards_chosen``,
    ``train/rewards_rejected``, ``train/margin`` and ``train/accuracy`` every step, and the same as
    ``val/...`` / ``test/...`` averaged over the pairs of an evaluation.

    Args:
        beta: Strength of the pull towards the reference (DPO's temperature; IPO's target margin is
            1 / (2 beta) in summed log-probability). Must be > 0.
        loss_type: "sigmoid": DPO's -log sigmoid(beta h); "ipo": IPO's (h - 1/(2 beta))^2. Both on the
            log-probabilities summed over each reply's tokens.
        reference: Checkpoint of the frozen reference model (a lightning-llm checkpoint file, or an FSDP2
            checkpoint directory). Default: init_weights, the model DPO starts from; one of the two is
            required. It is never trained or saved, and is reloaded from this file at every start,
            resume included, so the file must stay where it is.
    """

    def __init__(
        self,
        config: GPTConfig,
        *,
        beta: float = 0.1,
        loss_type: LossType = "sigmoid",
        reference: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        check_dpo_options(beta, loss_type)
        if reference is None and self.init_weights is None:
            raise ValueError(
                "DPO needs a reference model: set --model.init_weights to the checkpoint to start from (usually "
                "the SFT model; it is also the reference), or --model.reference to a reference checkpoint."
            )
        if self.compile == "model":
            raise ValueError(
                "compile: model compiles GPT.forward, which DPO does not call (it needs each sequence's "
                "summed log-probability, from hidden_states and the head in chunks); use compile: true "
                "(each block)."
            )
        self.beta = float(beta)
        self.loss_type: LossType = loss_type
        self.reference = reference
        # plain types, next to LitGPT's, so checkpoints still load with torch.load(weights_only=True)
        self.save_hyperparameters(
            {**self.hparams, "beta": self.beta, "loss_type": str(loss_type), "reference": reference}
        )
        self.dpo_metrics = nn.ModuleDict({name: MeanMetric(nan_strategy="disable") for name in METRICS})
        self._reference: GPT | None = None  # set in configure_model, outside the module tree
        self._reference_loaded = False

    @property
    def reference_path(self) -> str:
        """The checkpoint the reference is loaded from: ``reference``, else ``init_weights``."""
        return str(self.reference if self.reference is not None else self.init_weights)

    @property
    def reference_model(self) -> GPT | None:
        """The frozen reference (None before ``configure_model``); not a submodule of this module."""
        return self._reference

    # -- model construction -------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the policy (``LitGPT``), then the reference: same config, device, dtype and parallelism
        (sharded like the policy under FSDP2), compiled alike, without activation checkpointing, frozen."""
        if self._reference is not None:
            return
        super().configure_model()
        from torch.distributed.fsdp import register_fsdp_forward_method

        reference = self.build_gpt(activation_checkpointing=False, frozen=True)  # no backward through it
        reference.requires_grad_(False).eval()
        # sequence_logprobs calls hidden_states, not forward: under FSDP2 it must all-gather like forward
        # (no-op on an unsharded model)
        register_fsdp_forward_method(self.model, "hidden_states")
        register_fsdp_forward_method(reference, "hidden_states")
        object.__setattr__(self, "_reference", reference)  # not registered: no state_dict, parameters, .to()

    def _load_reference(self) -> None:
        """Load the reference's weights from ``reference_path`` (once per process)."""
        if self._reference_loaded:
            return
        if self._reference is None:
            raise RuntimeError(
                "LitDPO.configure_model() must build the models before the reference is loaded."
            )
        from lightning_llm.warm_start import load_initial_weights

        tokenizer = self.token_data.tokenizer if self.token_data is not None else None
        load_initial_weights(self._reference, self.reference_path, tokenizer)
        self._reference.eval()
        self._reference_loaded = True
        rank_zero_info(
            f"DPO reference (frozen; not trained, not saved): the weights of {self.reference_path}."
        )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._load_reference()
        if self.init_weights is None and self.trainer.ckpt_path is None:
            rank_zero_warn(
                f"DPO starts the policy from random weights: --model.init_weights is not set (the reference, "
                f"{self.reference_path}, is not copied into the policy). Set --model.init_weights to the model "
                "to align, usually the same checkpoint."
            )

    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._load_reference()

    def on_test_start(self) -> None:
        super().on_test_start()
        self._load_reference()

    # -- steps --------------------------------------------------------------------------------------
    def _pairs(self, batch: Any) -> tuple[Tensor, Tensor, int]:
        """``input_ids`` and ``labels`` of a preference batch, checked (shapes only), and its pair count."""
        if not isinstance(batch, dict) or "input_ids" not in batch or "labels" not in batch:
            got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(
                f"DPO trains on preference batches {{'input_ids': (2B, T), 'labels': (2B, T)}} (prepare-dpo "
                f"data: B chosen rows, then the B rejected rows of the same pairs); got {got}."
            )
        input_ids, labels = batch["input_ids"], batch["labels"]
        rows = input_ids.shape[0] if input_ids.dim() == 2 else 0
        if input_ids.shape != labels.shape or rows == 0 or rows % 2:
            raise ValueError(
                "input_ids and labels must both be (2B, T), an even number of rows (B chosen, then B "
                f"rejected); got {tuple(input_ids.shape)} and {tuple(labels.shape)}."
            )
        seq_len = input_ids.shape[1]
        if seq_len > self.config.block_size:
            raise ValueError(
                f"The data yields sequences of {seq_len} tokens but the model's block_size is "
                f"{self.config.block_size}; set data.block_size <= model.config.block_size."
            )
        return input_ids, labels, rows // 2

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], int]:
        """The DPO loss of a preference batch, its metrics (``dpo_loss``) and its number of pairs.

        One policy forward over all 2B rows (with gradients when grad mode is on) and one reference forward
        under ``torch.no_grad()``.
        """
        input_ids, labels, pairs = self._pairs(batch)
        if self._reference is None:
            raise RuntimeError("LitDPO.configure_model() must be called before a step.")
        policy = sequence_logprobs(self.model, input_ids, labels)  # type: ignore[arg-type]
        with torch.no_grad():
            ref = sequence_logprobs(self._reference, input_ids, labels)
        _reshard(self._reference)
        loss, metrics = dpo_loss(
            policy[:pairs], policy[pairs:], ref[:pairs], ref[pairs:], self.beta, self.loss_type
        )
        return loss, metrics, pairs

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:  # type: ignore[override]
        loss, metrics, pairs = self.compute_loss(batch)
        if self.drop_nonfinite(loss):
            return None
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=pairs)
        for name, value in metrics.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, batch_size=pairs)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:  # type: ignore[override]
        loss, metrics, pairs = self.compute_loss(batch)
        for name, value in {"loss": loss.detach(), **metrics}.items():
            self.dpo_metrics[name].update(value, weight=pairs)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:  # type: ignore[override]
        """The validation computation on the test loader."""
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, prefix: str) -> None:
        # the metrics sync over ranks in compute(); Lightning need not reduce them again
        for name, metric in self.dpo_metrics.items():
            self.log(
                f"{prefix}/{name}", metric.compute(), prog_bar=name in ("loss", "accuracy"), sync_dist=False
            )
            metric.reset()


def _reshard(model: nn.Module) -> None:
    """Free what an FSDP2 model keeps gathered after a forward that no backward follows (the reference's).

    FSDP2 keeps the root's parameters (embeddings, head) and the last block's gathered after forward, and
    clears its per-iteration records, only at the end of the backward that usually comes next.
    ``reset_iter_state`` (newer torch) reshards every group and clears the records; else each module is
    resharded. No-op for an unsharded model; nothing is read back to the host.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return
    reset = getattr(model, "reset_iter_state", None)
    if callable(reset):
        reset()
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
