"""The data pipeline: sources → cleaning, filters and dedup → tokenizer → litdata shards → datamodule.

Submodules are imported on demand (``from lightning_llm.data.sources import resolve_source``); importing
this package imports nothing heavy.
"""
