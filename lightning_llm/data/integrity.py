"""Cheap checks that a prepared dataset is whole: run when prepare reuses a directory and at data setup.

They read only small files and file sizes: the completion marker, each split's litdata ``index.json``
and the few-byte header of each chunk file, never the tokens themselves. What they find:

* a marker or index that is not JSON, or not the JSON prepare writes (a random or truncated file);
* a chunk file that is missing, truncated, extended or swapped (its size and header disagree with the
  index), and an index that is not the one prepare wrote (its sha256 is in the marker);
* a tokenizer directory that is not the one the shards were written with.

Token ids that lie outside the vocabulary (a chunk overwritten in place, same size) are caught when a
batch is read, by ``TokenDataModule``'s collate function: a vectorised max over the batch on the CPU.

The file names and the marker reader are in :mod:`lightning_llm.data.layout`; ``DatasetDamaged`` and
``damaged`` in :mod:`lightning_llm.data.errors`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lightning_llm.data.errors import DatasetDamaged, PrepareError, damaged
from lightning_llm.data.layout import INDEX, SPLITS, read_json

_HEADER_ITEM = 4  # litdata TokensLoader chunk: uint32 item count, then count + 1 uint32 byte offsets


def index_sha256(split_dir: str | Path) -> str:
    """sha256 of a split's ``index.json`` (recorded in the marker: a replaced index is found)."""
    return hashlib.sha256((Path(split_dir) / INDEX).read_bytes()).hexdigest()


def index_chunks(dataset: Path, split: str) -> list[Any]:
    """The chunk entries of ``dataset/split/index.json``; a missing or empty index is a damaged dataset."""
    split_dir = dataset / split
    if not (split_dir / INDEX).is_file():
        raise damaged(dataset, f"{split}/{INDEX} is missing")
    index = read_json(split_dir / INDEX, dataset)
    chunks = index.get("chunks") if isinstance(index, dict) else None
    if not isinstance(chunks, list) or not chunks:
        raise damaged(dataset, f"{split}/{INDEX} lists no chunks")
    return chunks


def check_chunk(dataset: Path, split: str, name: str, size: int, items: int) -> None:
    """A chunk file the index lists must exist with the recorded size, and its header (a uint32 item count,
    then count + 1 uint32 byte offsets) must hold the recorded number of items and end at the file's end."""
    where = f"{split}/{name}"
    path = dataset / split / name
    if Path(name).name != name or not path.is_file():
        raise damaged(dataset, f"chunk {where} is missing")
    actual = path.stat().st_size
    if actual != size:
        raise damaged(dataset, f"chunk {where} is {actual:,} bytes, its index records {size:,}")
    with open(path, "rb") as f:
        count = int.from_bytes(f.read(_HEADER_ITEM), "little")
        f.seek((items + 1) * _HEADER_ITEM)
        end = int.from_bytes(f.read(_HEADER_ITEM), "little")
    if count != items or end != size:
        raise damaged(dataset, f"chunk {where} has been overwritten (its header does not match its index)")


def verify_split(dataset: Path, split: str, vocab_size: int) -> dict[str, int]:
    """Check ``dataset/split`` against its index (without reading tokens); returns tokens and documents.

    Every chunk listed must pass ``check_chunk``, and its tokens must be 2 bytes (vocabularies up to 65536)
    or 4.
    """
    itemsize = 2 if vocab_size <= 2**16 else 4
    tokens = documents = 0
    for c in index_chunks(dataset, split):
        try:
            name, size, n_docs, dim = (
                c["filename"],
                int(c["chunk_bytes"]),
                int(c["chunk_size"]),
                int(c["dim"]),
            )
        except (KeyError, TypeError, ValueError):
            raise damaged(dataset, f"{split}/{INDEX} has a malformed chunk entry {c!r}") from None
        if size != (n_docs + 2) * _HEADER_ITEM + dim * itemsize:
            raise damaged(
                dataset, f"{split}/{INDEX} records {dim:,} tokens in {split}/{name}, which does not fit"
            )
        check_chunk(dataset, split, name, size, n_docs)
        tokens += dim
        documents += n_docs
    return {"tokens": tokens, "documents": documents}


def verify_items(dataset: Path, split: str) -> int:
    """``verify_split`` for chunks of items that are not token arrays (post-training records): returns the
    item count."""
    items = 0
    for c in index_chunks(dataset, split):
        try:
            name, size, count = c["filename"], int(c["chunk_bytes"]), int(c["chunk_size"])
        except (KeyError, TypeError, ValueError):
            raise damaged(dataset, f"{split}/{INDEX} has a malformed chunk entry {c!r:.200}") from None
        check_chunk(dataset, split, name, size, count)
        items += count
    return items


def verify_dataset(dataset: str | Path, marker: dict[str, Any], tokenizer_fingerprint: str) -> None:
    """Check a prepared directory's splits and tokenizer against its marker; raises ``DatasetDamaged``."""
    dataset = Path(dataset)
    if tokenizer_fingerprint != marker["tokenizer"]["fingerprint"]:
        raise damaged(
            dataset,
            f"tokenizer/ is not the tokenizer the shards were written with "
            f"({tokenizer_fingerprint[:12]}, the marker records {marker['tokenizer']['fingerprint'][:12]})",
        )
    recorded = marker.get("splits") or {}  # markers written before the splits were recorded lack it
    for split in SPLITS:
        found = verify_split(dataset, split, int(marker["tokenizer"]["vocab_size"]))
        want = recorded.get(split)
        if not isinstance(want, dict):
            continue
        if want.get("index_sha256") not in (None, index_sha256(dataset / split)):
            raise damaged(dataset, f"{split}/{INDEX} is not the index prepare wrote (its sha256 differs)")
        for key in ("tokens", "documents"):
            if want.get(key) not in (None, found[key]):
                raise damaged(
                    dataset, f"{split}/ holds {found[key]:,} {key}, the marker records {want[key]:,}"
                )


def check_written(staging: Path, split: str, documents: int, vocab_size: int) -> None:
    """For prepare: refuse a freshly written split unless it is whole and holds all ``documents``."""
    try:
        found = verify_split(staging, split, vocab_size)
    except DatasetDamaged as err:
        raise PrepareError(
            f"litdata wrote a damaged {split} split: {err.problem}. Nothing was replaced."
        ) from None
    if found["documents"] != documents:
        raise PrepareError(
            f"litdata wrote {found['documents']:,} documents into the {split} split instead of {documents:,}; "
            f"the dataset was not marked complete and nothing was replaced. Run prepare again; if it "
            f"happens again, report it with the output above."
        )
