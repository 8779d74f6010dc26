"""Fixtures of the interop tests: the two kinds of tokenizer we ship, offline Hugging Face."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lightning_llm.data.tokenizer import ENDOFTEXT, Tokenizer, gpt2_tokenizer, train_bpe_with_hf

VOCAB = 512


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers and huggingface_hub never reach the network (every test works on local directories)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def bpe(tiny_corpus: Path) -> tuple[Tokenizer, Any]:
    """A byte-level BPE of 512 ids trained on real text, and the HF tokenizer the trainer made (same ids)."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(tiny_corpus.glob("*.txt"))]
    return train_bpe_with_hf(texts, VOCAB)


@pytest.fixture(scope="session")
def bpe_as_hf(bpe: tuple[Tokenizer, Any]) -> dict[str, Any]:
    """The ``tokenizer.json`` of that BPE as the ``tokenizers`` trainer wrote it (its own merges, not ours),
    with ``<|endoftext|>`` added as a special token at our ``eot_id``."""
    data = json.loads(bpe[1].to_str())
    special = {"id": bpe[0].eot_id, "content": ENDOFTEXT, "single_word": False, "lstrip": False}
    data["added_tokens"] = [{**special, "rstrip": False, "normalized": False, "special": True}]
    return data


@pytest.fixture(scope="session")
def gpt2() -> Tokenizer:
    return gpt2_tokenizer()
