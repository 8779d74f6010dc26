"""Session fixtures shared by every test package.

``tiny_dataset``: a prepared dataset directory (``lightning-llm prepare`` output: train/, val/,
tokenizer/, report.json) of real English text with a trained byte-level BPE of 512 ids; about 150k
training tokens, i.e. a couple of thousand blocks of 64 tokens. Built once per session (a few seconds).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

TINY_VOCAB = 512
TINY_PIECE_CHARS = 6000


def _pieces(text: str, size: int) -> Iterator[str]:
    """``text`` cut at blank lines into pieces of about ``size`` characters (the fixture's documents)."""
    piece: list[str] = []
    n = 0
    for para in text.split("\n\n"):
        piece.append(para)
        n += len(para) + 2
        if n >= size:
            yield "\n\n".join(piece)
            piece, n = [], 0
    if n > size // 4:
        yield "\n\n".join(piece)


def _real_text(max_chars: int) -> list[str]:
    """Shakespeare from the cached classics corpus; offline without a cache: the stdlib's docstrings."""
    try:
        from lightning_llm.data.classics import ClassicsSource

        texts, n = [], 0
        for doc in ClassicsSource(works=["shakespeare"], max_documents=4).documents():
            texts.append(doc.text)
            n += len(doc.text)
            if n >= max_chars:
                break
        return texts
    except Exception as err:  # no network and no cache: still real English, from this interpreter
        print(f"tiny_dataset: classics unavailable ({err!r}); using the standard library's docstrings")
        names = (
            "collections",
            "email",
            "json",
            "logging",
            "pathlib",
            "textwrap",
            "typing",
            "unittest",
            "inspect",
        )
        modules = [importlib.import_module(n) for n in names]
        docs = [inspect.getdoc(obj) or "" for m in modules for _, obj in inspect.getmembers(m)]
        return ["\n\n".join(d for d in docs if len(d) > 200)[:max_chars]]


def build_tiny_corpus(directory: Path, max_chars: int = 400_000) -> Path:
    """Write real text as ~6 kB ``.txt`` documents into ``directory``; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    i = 0
    for text in _real_text(max_chars):
        for piece in _pieces(text, TINY_PIECE_CHARS):
            (directory / f"doc-{i:04d}.txt").write_text(piece, encoding="utf-8")
            i += 1
    return directory


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of ~60 real-text ``.txt`` documents (about 400 kB)."""
    return build_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))


@pytest.fixture(scope="session")
def tiny_dataset(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a prepared dataset (bpe 512, train/val litdata token shards) built from ``tiny_corpus``."""
    from lightning_llm.data.clean import CleanConfig
    from lightning_llm.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(
        source=str(tiny_corpus),
        output_dir=str(tmp_path_factory.mktemp("tiny_dataset") / "ds"),
        tokenizer="bpe",
        vocab_size=TINY_VOCAB,
        val_fraction=0.1,
        num_workers=1,
        clean=CleanConfig(near_dedup=False),
    )
    return prepare(cfg)
