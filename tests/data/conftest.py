"""Fixtures for the data tests: slices of the real classics corpus (``classics_docs`` is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from lightning_llm.data.documents import Document


@pytest.fixture(scope="session")
def classics_slice(classics_docs: list[Document]) -> list[Document]:
    """A small slice of real text: a few plays, Milton's poems and some books of the Bible."""
    wanted = ("hamlet", "sonnets", "phoenix", "paradise_regained", "Genesis", "Ruth", "Psalms", "Jude")
    return [d for d in classics_docs if any(w in d.source for w in wanted)]
