"""An lm-evaluation-harness model (``lm_eval.api.model.LM``) for our ``GPT`` and ``Tokenizer``.

The three request types of lm-eval, on a model whose context is ``config.block_size`` tokens:

* ``loglikelihood(context, continuation)``: the summed log-probability of the continuation's tokens and
  whether greedy decoding would have produced all of them. Requests are scored in batches (longest first,
  right-padded: the model is causal, so padding after a sequence never changes what comes before it); a
  context too long for the block is cut from the left, the continuation always kept whole (one longer
  than the block itself is scored in windows, as below, the first conditioned on the context's end).
* ``loglikelihood_rolling(text)``: the log-likelihood of a whole text, the first token conditioned on
  ``<|endoftext|>``. The text is cut into disjoint windows of ``block_size`` predicted tokens, each
  conditioned on as much preceding text as still fits in the block (lm-eval's rolling scheme with one
  token of context for full windows, more for the last, shorter one); every token is predicted once.
* ``generate_until(context, gen_kwargs)``: greedy decoding (or sampling when the task asks for it) with
  our KV-cache generation, stopped at the task's ``until`` strings, at ``<|endoftext|>`` or after
  ``max_gen_toks`` tokens; the context is cut from the left to leave room for them.

lm-eval is an optional extra: this module imports it at the top, so import it only where lm-eval is
wanted (``lightning-llm eval`` does, lazily). Without it, importing this module is a ``UserError`` that
names ``pip install 'lightning-llm[eval]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import closing
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lightning_llm.cli import UserError
from lightning_llm.data.tokenizer import ENDOFTEXT, Tokenizer
from lightning_llm.generate import generate_tokens
from lightning_llm.model import GPT

MISSING_LM_EVAL = (
    "lightning-llm eval needs EleutherAI's lm-evaluation-harness, which is not installed here. Install "
    "the optional extra with: pip install 'lightning-llm[eval]' (it pins the lm_eval version that is tested)."
)

try:
    from lm_eval.api.model import LM
except ImportError as err:  # pragma: no cover - exercised by a test that hides lm_eval
    raise UserError(MISSING_LM_EVAL) from err

log = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256
HEAD_CHUNK = 4096
"""Positions sent through the vocabulary head at once (bounds the (N, vocab) log-softmax in memory)."""

Row = tuple[list[int], int]
"""A scoring row: tokens (context then target) and how many of them are context (>= 1)."""


def windows(seq: Sequence[int], first: int, block: int) -> list[Row]:
    """The scoring rows that predict ``seq[first:]`` (given ``seq[:first]``, ``first >= 1``) with a model
    whose context is ``block`` tokens: one row per ``block`` predicted tokens.

    The window that predicts ``seq[s:e]`` reads the ``block`` tokens before ``seq[e - 1]`` (fewer at the
    start of ``seq``), so it is conditioned on as much of what precedes it as fits; every token of
    ``seq[first:]`` is predicted exactly once.
    """
    rows: list[Row] = []
    for s in range(first, len(seq), block):
        e = min(s + block, len(seq))
        a = max(0, e - 1 - block)  # the row is seq[a:e]: input seq[a:e-1] (<= block tokens), targets seq[s:e]
        rows.append((list(seq[a:e]), s - a))
    return rows


def rolling_rows(tokens: Sequence[int], prefix: int, block: int) -> list[Row]:
    """The rows of a whole text's log-likelihood: ``tokens`` after ``prefix`` (``<|endoftext|>``), in
    disjoint windows of ``block`` predicted tokens (lm-eval's rolling windows with ``context_len=1``)."""
    return windows([prefix, *tokens], 1, block)


class GPTEvalLM(LM):
    """lm-eval's model interface over a loaded ``GPT`` (any device and dtype) and its ``Tokenizer``.

    Args:
        model: The model, already on its device and in its dtype (``load_checkpoint`` gives one).
        tokenizer: The tokenizer it was trained with.
        batch_size: Sequences per forward pass for the log-likelihood requests (generation runs one
            request at a time).
        max_gen_toks: Tokens to generate when a task does not say (``max_gen_toks`` in its gen kwargs).
        seed: Seed of the sampler, for tasks that ask for ``do_sample``.
        progress: Show progress bars (None: only on a terminal).
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        batch_size: int = 16,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        seed: int = 1234,
        progress: bool | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise UserError(f"--batch_size {batch_size}: score at least 1 sequence at a time.")
        self.model = model.eval()
        self.tok = tokenizer
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks
        self.seed = seed
        self.progress = progress
        self._device = next(model.parameters()).device

    # -- what lm-eval reads about the model ---------------------------------------------------------
    @property
    def max_length(self) -> int:
        """The longest context: the model's block size."""
        return int(self.model.config.block_size)

    @property
    def eot_token_id(self) -> int:
        return self.tok.eot_id

    @property
    def tokenizer_name(self) -> str:
        """Keys lm-eval's request cache (requests are tokenized differently by different tokenizers)."""
        return f"lightning_llm-{self.tok.name}-{self.tok.fingerprint()[:16]}"

    def get_model_info(self) -> dict[str, Any]:
        """Added to the ``config`` section of lm-eval's results."""
        dtype = next(self.model.parameters()).dtype
        return {
            "model_num_parameters": self.model.num_params(),
            "model_dtype": str(dtype).removeprefix("torch."),
            "block_size": self.max_length,
            "tokenizer": self.tok.name,
        }

    # -- tokenization ------------------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of ``context`` and of ``continuation`` as they are tokenized together.

        Whitespace at the end of the context is moved to the continuation (BPE attaches a space to the
        word after it), and the pair is encoded as one text, so the continuation's tokens are the ones the
        model sees after that context. Should a token straddle the boundary (no split of the joint ids
        starts with the context's own ids), the two are encoded apart. An empty context is
        ``<|endoftext|>``, the start of a document.
        """
        stripped = context.rstrip()
        continuation = context[len(stripped) :] + continuation
        if not stripped:
            return [self.tok.eot_id], self.tok.encode(continuation)
        ctx = self.tok.encode(stripped)
        whole = self.tok.encode(stripped + continuation)
        if whole[: len(ctx)] == ctx:
            return ctx, whole[len(ctx) :]
        return ctx, self.tok.encode(continuation)

    # -- scoring -----------------------------------------------------------------------------------
    def _bar(self, total: int, desc: str, disable_tqdm: bool) -> tqdm:
        disable = True if disable_tqdm else (None if self.progress is None else not self.progress)
        return tqdm(total=total, desc=desc, unit="req", disable=disable)

    @torch.no_grad()
    def score_rows(self, rows: Sequence[Row], bar: tqdm | None = None) -> list[tuple[float, bool]]:
        """Log-probability of each row's target tokens given what precedes them, and whether each target
        token is the most likely one there; rows are at most ``block_size + 1`` tokens long."""
        block = self.max_length
        out: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        for at in range(0, len(order), self.batch_size):
            batch = [i for i in order[at : at + self.batch_size] if len(rows[i][0]) > rows[i][1]]
            if batch:
                self._score_batch(rows, batch, block, out)
            if bar is not None:
                bar.update(len(order[at : at + self.batch_size]))
        return out

    def _score_batch(
        self, rows: Sequence[Row], batch: list[int], block: int, out: list[tuple[float, bool]]
    ) -> None:
        width = max(len(rows[i][0]) for i in batch) - 1
        inputs = torch.full((len(batch), width), self.tok.eot_id, dtype=torch.long)
        which, where, targets = [], [], []
        for b, i in enumerate(batch):
            tokens, n_context = rows[i]
            if n_context < 1 or len(tokens) > block + 1:
                raise ValueError(f"scoring row of {len(tokens)} tokens does not fit block_size {block}")
            inputs[b, : len(tokens) - 1] = torch.tensor(tokens[:-1])
            span = range(n_context - 1, len(tokens) - 1)  # positions whose next token is a target
            which += [b] * len(span)
            where += list(span)
            targets += tokens[n_context:]
        hidden = self.model.hidden_states(inputs.to(self._device))  # (B, T, C)
        dev = self._device
        picked = hidden[torch.tensor(which, device=dev), torch.tensor(where, device=dev)]  # (N, C)
        target = torch.tensor(targets, device=dev)
        logp, greedy = [], []
        for lo in range(0, len(targets), HEAD_CHUNK):
            logits = self.model.logits(picked[lo : lo + HEAD_CHUNK]).float()
            lp = F.log_softmax(logits, dim=-1)
            t = target[lo : lo + HEAD_CHUNK]
            logp.append(lp.gather(-1, t[:, None])[:, 0].double())
            greedy.append(logits.argmax(dim=-1) == t)
        logp_all, greedy_all = torch.cat(logp).cpu(), torch.cat(greedy).cpu()
        owner = torch.tensor(which)
        for b, i in enumerate(batch):
            mine = owner == b
            out[i] = (float(logp_all[mine].sum()), bool(greedy_all[mine].all()))

    def score_spans(
        self, spans: Sequence[tuple[list[int], int]], desc: str, disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """``(log p(seq[first:] | seq[:first]), is_greedy)`` of each ``(seq, first)``, any length: spans
        longer than the block are scored in ``windows`` (all of them batched together)."""
        rows: list[Row] = []
        owners: list[int] = []
        for n, (seq, first) in enumerate(spans):
            cut = windows(seq, first, self.max_length)
            rows += cut
            owners += [n] * len(cut)
        with self._bar(len(rows), desc, disable_tqdm) as bar:
            scored = self.score_rows(rows, bar)
        totals = [0.0] * len(spans)
        greedy = [True] * len(spans)
        for n, (logp, is_greedy) in zip(owners, scored, strict=True):
            totals[n] += logp
            greedy[n] = greedy[n] and is_greedy
        return list(zip(totals, greedy, strict=True))

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is_greedy)`` of each ``(context, continuation)`` request."""
        spans = []
        for req in requests:
            ctx, cont = self.encode_pair(*req.args)
            spans.append((ctx + cont, len(ctx)))
        results = self.score_spans(spans, "loglikelihood", disable_tqdm)
        for req, result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text (``(text,)`` requests), scored in disjoint rolling windows."""
        spans = [([self.tok.eot_id, *self.tok.encode(req.args[0])], 1) for req in requests]
        totals = [logp for logp, _ in self.score_spans(spans, "loglikelihood_rolling", disable_tqdm)]
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation --------------------------------------------------------------------------------
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Text generated after each ``(context, gen_kwargs)`` request, cut before the first stop string."""
        generator = torch.Generator(device=self._device).manual_seed(self.seed)
        outputs = []
        with self._bar(len(requests), "generate_until", disable_tqdm) as bar:
            for req in requests:
                context, gen_kwargs = req.args
                text = self.generate_one(context, dict(gen_kwargs or {}), generator)
                self.cache_hook.add_partial("generate_until", req.args, text)
                outputs.append(text)
                bar.update(1)
        return outputs

    def generate_one(
        self, context: str, gen_kwargs: dict[str, Any], generator: torch.Generator | None = None
    ) -> str:
        """One ``generate_until`` request: greedy unless ``do_sample`` (then temperature/top_k/top_p)."""
        until = gen_kwargs.pop("until", None)
        stops = [until] if isinstance(until, str) else list(until or [])
        stops = [s for s in stops if s and s != ENDOFTEXT]  # the end-of-text token stops generation itself
        max_new = gen_kwargs.pop("max_gen_toks", gen_kwargs.pop("max_new_tokens", self.max_gen_toks))
        do_sample = bool(gen_kwargs.pop("do_sample", False))
        temperature = float(gen_kwargs.pop("temperature", 1.0 if do_sample else 0.0))
        top_k = int(gen_kwargs.pop("top_k", None) or 0) or None  # 0: off, as in transformers
        top_p = gen_kwargs.pop("top_p", None)
        if gen_kwargs:
            log.warning("generate_until: ignoring generation settings %s", sorted(gen_kwargs))
        if not do_sample:
            temperature = 0.0
        block = self.max_length
        max_new = max(1, min(int(max_new), block - 1))
        ids = (self.tok.encode(context) or [self.tok.eot_id])[-(block - max_new) :]
        idx = torch.tensor([ids], device=self._device)
        new: list[int] = []
        steps = generate_tokens(
            self.model, idx, max_new, temperature, top_k, top_p, self.tok.eot_id, generator
        )
        with closing(steps):  # frees the KV cache even when a stop string ends the loop early
            for step in steps:
                token = int(step[0, 0])
                if token == self.tok.eot_id:
                    break
                new.append(token)
                if stops and _cut(self.tok.decode(new), stops) is not None:
                    break
        text = self.tok.decode(new)
        cut = _cut(text, stops)
        return text if cut is None else text[:cut]


def _cut(text: str, stops: Sequence[str]) -> int | None:
    """Where the first of ``stops`` begins in ``text`` (None: none occurs)."""
    found = [at for at in (text.find(s) for s in stops) if at >= 0]
    return min(found) if found else None
