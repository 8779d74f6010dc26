"""Validation of ``prepare``'s settings: every field is checked before anything is read or written.

``config_problems`` returns one sentence per bad field, each saying what is wrong and how to fix it;
``PrepareConfig`` raises them together as one ``ConfigError`` paragraph.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from lightning_llm.data.clean import CleanConfig

TOKENIZERS = ("bpe", "gpt2")
MIN_BPE_VOCAB = 258  # 256 bytes + 1 merge + <|endoftext|>
MAX_BPE_VOCAB = 2**20
_BYTES = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(tb|gb|mb|kb|t|g|m|k|b)?\s*$", re.IGNORECASE)
_UNITS = {"t": 1000**4, "g": 1000**3, "m": 1000**2, "k": 1000, "": 1}


def parse_bytes(value: str | int) -> int | None:
    """Bytes in ``value``: an int, or a size like ``"32MB"``, ``"500kb"``, ``"1.5GB"`` (powers of 1000); else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    m = _BYTES.match(value)
    if m is None:
        return None
    unit = (m.group(2) or "").lower().rstrip("b")
    return int(float(m.group(1)) * _UNITS[unit])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(cfg: Any, name: str, what: str) -> list[str]:
    v = getattr(cfg, name)
    if isinstance(v, str) and v.strip():
        return []
    return [f"--{name} is {v!r}; it must name {what}"]


def config_problems(cfg: Any) -> list[str]:
    """What is wrong with a ``PrepareConfig``, one sentence per field (empty if nothing is)."""
    p: list[str] = []
    p += _text(
        cfg, "source", "a registered source (classics), a text/JSONL/Parquet file, a directory or a glob"
    )
    p += _text(cfg, "text_field", "the field that holds the text in JSONL/Parquet records (e.g. text)")
    p += _text(cfg, "output_dir", "the directory that receives the dataset (e.g. data/mine)")
    if not p:
        p += _paths(cfg.source, cfg.output_dir)
    if cfg.tokenizer not in TOKENIZERS and not (
        isinstance(cfg.tokenizer, str) and Path(cfg.tokenizer).is_file()
    ):
        p.append(
            f"--tokenizer {cfg.tokenizer!r} is neither one of {', '.join(TOKENIZERS)} nor a checkpoint file: "
            f"use bpe to train a byte-level BPE on the corpus, gpt2 for GPT-2's 50257 ids, or the path of a "
            f"lightning-llm checkpoint (e.g. from lightning-llm import) to tokenize with its tokenizer"
        )
    v = cfg.vocab_size
    if not _is_int(v):
        p.append(f"--vocab_size must be a whole number of token ids; got {v!r}")
    elif cfg.tokenizer == "bpe" and v < MIN_BPE_VOCAB:
        p.append(
            f"--vocab_size {v} is too small for a byte-level BPE, which needs 256 byte tokens, at least one "
            f"merge and <|endoftext|>: use at least {MIN_BPE_VOCAB} (8192 suits a few MB of text)"
        )
    elif cfg.tokenizer == "bpe" and v > MAX_BPE_VOCAB:
        p.append(
            f"--vocab_size {v:,} is above prepare's limit of {MAX_BPE_VOCAB:,} ids: a corpus runs out of "
            f"pairs to merge long before, and the model's embedding table needs a row for every id; "
            f"use e.g. 8192 to 65536"
        )
    f = cfg.val_fraction
    if not isinstance(f, int | float) or isinstance(f, bool) or not (math.isfinite(f) and 0.0 < f < 1.0):
        p.append(
            f"--val_fraction {f!r} is not strictly between 0 and 1: it is the share of documents held out "
            f"for validation, so 0 leaves no validation split and 1 or more no training split; "
            f"use e.g. 0.05"
        )
    if not _is_int(cfg.seed):
        p.append(f"--seed must be a whole number; got {cfg.seed!r}")
    if not _is_int(cfg.num_workers) or cfg.num_workers < 1:
        p.append(f"--num_workers {cfg.num_workers!r} must be at least 1 (processes that tokenize), e.g. 2")
    n = parse_bytes(cfg.chunk_bytes)
    if n is None or n < 1:
        p.append(
            f"--chunk_bytes {cfg.chunk_bytes!r} is not a positive size: write it like 32MB, 500KB or 1GB"
        )
    if not _is_int(cfg.staging_shard_bytes) or cfg.staging_shard_bytes < 1:
        p.append(f"--staging_shard_bytes {cfg.staging_shard_bytes!r} must be a positive number of bytes")
    if not isinstance(cfg.clean, CleanConfig):
        p.append(f"--clean must be cleaning options (CleanConfig); got {type(cfg.clean).__name__}")
    if cfg.cache_dir is not None and not (isinstance(cfg.cache_dir, str) and cfg.cache_dir.strip()):
        p.append(f"--cache_dir {cfg.cache_dir!r} must be a directory path, or left out for the default")
    if not isinstance(cfg.overwrite, bool):
        p.append(f"--overwrite must be true or false; got {cfg.overwrite!r}")
    return p


def _paths(source: str, output_dir: str) -> list[str]:
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        return [f"--output_dir {output_dir} is a file, not a directory: choose another --output_dir"]
    src = Path(source[len("file://") :] if source.startswith("file://") else source).expanduser()
    if src.is_dir() and out.resolve().is_relative_to(src.resolve()):
        return [
            f"--output_dir {output_dir} lies inside the source directory {source}: prepare's own files "
            f"would be read as text by the next run; choose an --output_dir outside it"
        ]
    return []
