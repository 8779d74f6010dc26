"""Which keys each query sees: plain causal attention, a sliding window, documents packed in one row.

``GPT.hidden_states`` calls its masking once per forward; the result, positions for the positional
encoding and one ``PositionalContext`` (with the boolean ``mask``), goes to every layer. The masking is
chosen once, at build time (``masking_for``), so the default model builds nothing:

* ``CausalMasking`` (no window, no document mask): positions ``start .. start + T - 1`` (T,), no mask, the
  kernels' own causal mask. The same ops as a model without this module.
* ``WindowDocumentMasking``: a keep-mask from key positions and one lower bound per query,

      mask[b, i, j] = lo[b, i] <= key_pos[j] <= query_pos[i]
      lo[b, i]      = max(doc_start[b, i], query_pos[i] - window + 1, 0)

  where ``doc_start`` is the position of the latest ``eot_id`` at or before the query (an
  ``<|endoftext|>`` starts a document, as a BOS would), found with one ``cummax`` along T. Keys are causal,
  so "same document" is "key at or after the query's document start": no (B, T, T) comparison of document
  ids. Positions restart at each document: ``query_pos - doc_start``, shape (B, T). Everything stays on
  the device: no host reads, the same ops for any data.

Generation (KV cache) follows the same rule as a forward over the whole context: documents are found in
the tokens seen so far (the latest document start of each row is kept between steps), positions restart
at each ``eot_id``, and the window counts absolute positions. A sliding-window cache is a ring buffer whose
key positions come from ``kv_cache.key_positions``; an additive positional bias (ALiBi) is computed for
keys 0 .. start + T - 1 and its columns picked at those positions. (A forward at ``start > 0`` without a
cache sees no earlier tokens, so it counts documents from ``start``.)

Cost: the mask is bool, (1, 1, T, S) for a window, (B, 1, T, S) with documents (16 x 256 x 256: 1 MiB),
built with about ten small ops once per forward; kernels that mask get it in every layer.
"""

from __future__ import annotations

import dataclasses

import torch

from lightning_llm.components.positional import PositionalContext, PositionalEncoding
from lightning_llm.config import GPTConfig
from lightning_llm.kv_cache import key_positions
from lightning_llm.registry import POSITIONAL, ComponentError


class CausalMasking:
    """Full causal attention: absolute positions, no mask (the kernels' own causal mask)."""

    def setup_cache(self, batch: int, length: int, device: torch.device) -> None:
        """A KV cache of ``length`` positions per layer was allocated for ``batch`` rows."""

    def clear_cache(self) -> None:
        """The KV cache was dropped."""

    def __call__(
        self, idx: torch.Tensor, start: int, pe: PositionalEncoding
    ) -> tuple[torch.Tensor, PositionalContext]:
        """(positions for ``pe.embed``, the context of every layer) for tokens ``idx`` (B, T) at ``start``."""
        T = idx.shape[1]
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        return pos, pe.context(pos, start + T)


class WindowDocumentMasking(CausalMasking):
    """Sliding window (``window`` tokens, the query included) and/or documents split at ``eot_id``."""

    def __init__(self, *, window: int | None = None, eot_id: int | None = None) -> None:
        if window is None and eot_id is None:
            raise ValueError(
                "WindowDocumentMasking needs a window, an eot_id or both; else use CausalMasking"
            )
        self.window, self.eot_id = window, eot_id
        self.length: int | None = None
        """Positions per layer of the KV cache (None: no cache, the keys are the current tokens)."""
        self.doc_start: torch.Tensor | None = None
        """(B,) the latest document start of each row seen so far, kept between generation steps."""

    def setup_cache(self, batch: int, length: int, device: torch.device) -> None:
        self.length = length
        if self.eot_id is not None:
            self.doc_start = torch.zeros(batch, dtype=torch.long, device=device)

    def clear_cache(self) -> None:
        self.length, self.doc_start = None, None

    def doc_starts(self, idx: torch.Tensor, qpos: torch.Tensor, start: int) -> torch.Tensor:
        """(B, T) position of the document each token is in: its latest ``eot_id`` at or before it."""
        marks = torch.where(idx == self.eot_id, qpos, 0)  # (B, T): a document starts at each eot
        starts = marks.cummax(dim=1).values
        if self.doc_start is not None:  # generating: a document may have started in an earlier step
            if start > 0:
                starts = torch.maximum(starts, self.doc_start[:, None])
            self.doc_start.copy_(starts[:, -1])
        return starts

    def __call__(
        self, idx: torch.Tensor, start: int, pe: PositionalEncoding
    ) -> tuple[torch.Tensor, PositionalContext]:
        T, device = idx.shape[1], idx.device
        end = start + T
        qpos = torch.arange(start, end, device=device)  # (T,) absolute positions of the queries
        if self.length is None:  # no cache: the keys are the current tokens
            kpos, in_order = qpos, start == 0
        else:
            kpos, in_order = key_positions(start, T, self.length, device), end <= self.length
        pos, lo = qpos, None
        if self.eot_id is not None:
            doc_start = self.doc_starts(idx, qpos, start)  # (B, T)
            pos, lo = qpos - doc_start, doc_start  # positions restart at each document
        if self.window is not None:
            first = qpos - (self.window - 1)  # (T,) the oldest key in the window
            lo = first.clamp(min=0) if lo is None else torch.maximum(lo, first)
        assert lo is not None  # __init__ refuses neither window nor documents
        mask = (kpos >= lo[..., None]) & (kpos <= qpos[:, None])  # (T, S) or (B, T, S)
        pctx = pe.context(pos, end)
        bias = pctx.bias
        if bias is not None and not in_order:  # the bias is over keys 0 .. end - 1: pick the cached ones
            bias = bias.index_select(-1, kpos.clamp(min=0))
        mask = mask.view(-1, 1, *mask.shape[-2:])  # (1 or B, 1, T, S): 4-D, as SDPA's flash backend wants
        return pos, dataclasses.replace(pctx, bias=bias, mask=mask)


def masking_for(window: int | None, eot_id: int | None) -> CausalMasking:
    """The masking a model needs: ``eot_id`` is None unless the model masks documents."""
    if window is None and eot_id is None:
        return CausalMasking()
    return WindowDocumentMasking(window=window, eot_id=eot_id)


def check_masking(config: GPTConfig, pe: PositionalEncoding) -> None:
    """Document masking needs the separator id and a positional encoding that takes per-row positions."""
    if not config.document_mask:
        return
    if config.eot_id is None:
        raise ValueError(
            "GPTConfig.document_mask needs eot_id, the id of <|endoftext|> that separates the packed "
            "documents: `lightning-llm fit` fills it in from the dataset's tokenizer; in Python pass "
            "GPTConfig(..., eot_id=tokenizer.eot_id). Or set document_mask: false."
        )
    if not pe.document_positions:
        name = config.positional.name  # type: ignore[union-attr]
        can = [n for n in POSITIONAL.names() if getattr(POSITIONAL.get(n), "document_positions", False)]
        raise ComponentError(
            f"positional '{name}' does not take per-document positions (B, T), which document_mask: true "
            f"passes (positions restart at every eot_id): set model.config.positional to one that does "
            f"({', '.join(can) or 'none installed'}), or set document_mask: false."
        )
