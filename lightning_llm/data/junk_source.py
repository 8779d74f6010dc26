"""The ``synthetic-junk`` source: generated junk documents, a negative set for ``train-quality`` offline.

``lightning-llm train-quality --positive classics --negative synthetic-junk`` trains the quality classifier
with no download: the junk kinds of :mod:`lightning_llm.data.mixed_corpus` (spam, keyword stuffing,
boilerplate, garbled text, short non-English passages, offensive lines), 100 of each, from a fixed seed
other than the one the tests and ``benchmarks/filters.py`` evaluate on. For real data, a sample of your
raw input is the better negative set (the classifier then learns what sets your trusted text apart).
"""

from __future__ import annotations

from collections.abc import Iterator

from lightning_llm.data.documents import Document, Source
from lightning_llm.registry import SOURCES

SEED, PER_KIND = 1, 100


class SyntheticJunk(Source):
    """Generated junk documents (600, deterministic); see :mod:`lightning_llm.data.mixed_corpus`."""

    name = "synthetic-junk"

    def documents(self) -> Iterator[Document]:
        from lightning_llm.data.mixed_corpus import build_mixed_corpus  # reads the classics only if asked

        junk = (d for d in build_mixed_corpus(seed=SEED, per_kind=PER_KIND) if d.junk)
        return self._counted(Document(d.text, f"synthetic-junk:{d.kind}/{i}") for i, d in enumerate(junk))

    def fingerprint(self) -> str:
        return f"synthetic-junk:v1:seed={SEED}:per_kind={PER_KIND}"


@SOURCES.register("synthetic-junk")
def synthetic_junk() -> SyntheticJunk:
    """Generated junk (spam, keyword stuffing, boilerplate, garbled, non-English, offensive): train-quality's offline negatives."""
    return SyntheticJunk()
