"""Start training from the weights of another checkpoint (``--model.init_weights PATH``).

A run's own checkpoints resume with ``--ckpt_path`` (weights, optimizer, step, schedule). ``init_weights``
takes only the *weights* of a model, e.g. one made by ``lightning-llm import`` from a transformers directory,
or a finished pretraining run to fine-tune, and starts a new run from them: step 0, fresh optimizer.

What must agree is checked before a step is taken: the architecture (every ``model.config`` field except
those that do not change the weights: the attention kernel, dropout, init_std), and the tokenizer (the
dataset's token ids must mean what they meant to the checkpoint's model). A vocabulary that grew, e.g. padded
to a multiple of 64 or extended by new special tokens, keeps the checkpoint's rows and gives each new row the
mean of the old ones (in the embedding and an untied head).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_llm.config import GPTConfig

FREE_FIELDS = frozenset({"attention", "dropout", "attn_dropout", "init_std"})
"""``model.config`` fields that may differ from the checkpoint's: they do not change what the weights mean."""

VOCAB_TENSORS = ("wte.weight", "lm_head.weight")


class WarmStartError(ValueError):
    """The checkpoint given as ``init_weights`` does not fit the model or data of this run."""


def check_config(saved: GPTConfig, current: GPTConfig, source: str) -> None:
    """Refuse a checkpoint whose architecture differs from this run's (naming each field and its fix)."""
    old, new = saved.to_dict(), current.to_dict()
    diff = {k: (old.get(k), v) for k, v in new.items() if k not in FREE_FIELDS and old.get(k) != v}
    vocab = diff.pop("vocab_size", None)
    if vocab is not None and vocab[0] > vocab[1]:
        diff["vocab_size"] = vocab  # a smaller table cannot hold the checkpoint's rows
    if not diff:
        return
    lines = "; ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in sorted(diff.items()))
    fixes = " ".join(f"--model.config.{k} {_cli_value(a)}" for k, (a, _) in sorted(diff.items()))
    raise WarmStartError(
        f"--model.init_weights {source} holds a different architecture than this run ({lines}). "
        f"Start from it with the checkpoint's architecture, e.g. {fixes}."
    )


def _cli_value(value: Any) -> str:
    if isinstance(value, dict):  # a component with options
        return "'" + str(value).replace("'", '"') + "'"
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_tokenizer(saved: dict[str, Any] | None, data_tokenizer: Any | None, source: str) -> list[int]:
    """The dataset must be tokenized with the checkpoint's tokenizer, or with that tokenizer plus special
    tokens (e.g. the chat template's). Returns the ids of the added special tokens: ids the checkpoint's
    model never saw, whose rows are reset to the mean embedding."""
    if saved is None or data_tokenizer is None:
        return []
    theirs, ours = saved.get("fingerprint"), data_tokenizer.fingerprint()
    if theirs == ours:
        return []
    saved_special = {str(k): int(v) for k, v in (saved.get("special_tokens") or {}).items()}
    base = data_tokenizer.base() if hasattr(data_tokenizer, "base") else data_tokenizer
    kept = all(data_tokenizer.special_tokens.get(k) == v for k, v in saved_special.items())
    if kept and _base_fingerprint(saved) == base.fingerprint():
        return sorted(set(data_tokenizer.special_tokens.values()) - set(saved_special.values()))
    raise WarmStartError(
        f"--model.init_weights {source} was trained with tokenizer {saved.get('name')!r} "
        f"({str(theirs)[:12]}) but the dataset is tokenized with {data_tokenizer.name!r} ({ours[:12]}): "
        "the same ids would mean different text. Prepare the data with the checkpoint's tokenizer "
        "(e.g. lightning-llm prepare --tokenizer gpt2 for a GPT-2 checkpoint)."
    )


def _base_fingerprint(saved: dict[str, Any]) -> str | None:
    """Fingerprint of a stored tokenizer without its extra special tokens."""
    from lightning_llm.data.tokenizer import Tokenizer, TokenizerError

    try:
        return Tokenizer.from_dict(saved).base().fingerprint()
    except (TokenizerError, KeyError, TypeError, ValueError):
        return None


def grow_vocab(state: dict[str, torch.Tensor], vocab_size: int, reset_ids: list[int] | None = None) -> int:
    """Extend the embedding and head rows of ``state`` to ``vocab_size``; each new row, and each row in
    ``reset_ids`` (new special tokens whose rows the checkpoint's model never trained), is the mean of the
    other old rows. Returns how many rows were added or reset."""
    added = 0
    for key in VOCAB_TENSORS:
        weight = state.get(key)
        if weight is None:
            continue
        old = weight.shape[0]
        reset = [i for i in (reset_ids or []) if i < old]
        keep = torch.ones(old, dtype=torch.bool)
        keep[reset] = False
        mean = weight[keep].float().mean(dim=0, keepdim=True).to(weight.dtype)
        grown = max(0, vocab_size - old)
        if grown:
            weight = torch.cat([weight, mean.expand(grown, -1)])
        if reset:
            weight = weight.clone() if not grown else weight
            weight[reset] = mean
        state[key] = weight
        added = grown + len(reset)
    return added


def load_initial_weights(model: nn.Module, path: str | Path, data_tokenizer: Any | None = None) -> str:
    """Copy the weights of the checkpoint at ``path`` into ``model`` (a GPT, plain or sharded by FSDP2 /
    tensor parallel: each rank keeps its shard). Returns the line to log."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from lightning_llm.cli.generate import load_checkpoint  # every check of a checkpoint file, in one place

    source = str(path)
    donor, tokenizer = load_checkpoint(path, "cpu", torch.float32)
    check_config(donor.config, model.config, source)
    new_ids = check_tokenizer(tokenizer.to_dict() if tokenizer is not None else None, data_tokenizer, source)
    state = donor.state_dict()
    del donor
    added = grow_vocab(state, model.config.vocab_size, new_ids)
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["wte.weight"]
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))
    grown = f"; {added} new vocabulary rows set to the mean embedding" if added else ""
    if new_ids:
        grown += f" (incl. the dataset tokenizer's {len(new_ids)} new special tokens)"
    return f"Starting from the weights of {source} (step 0, fresh optimizer{grown})."
