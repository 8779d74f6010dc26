"""The data pipeline: sources → cleaning, filters and dedup → tokenizer → litdata shards → datamodule.

``documents`` (Document, Source, text helpers) and ``layout`` (a prepared directory's file names and its
marker reader) are the shared vocabulary: the steps import them, they import no step. The datamodule
that training uses reads through ``layout`` and ``integrity`` and imports none of the preparation steps.

Submodules are imported on demand (``from lightning_llm.data.sources import resolve_source``); importing
this package imports nothing heavy.
"""
