"""Intermediate shards of prepare: cleaned documents as JSON lines, and the litdata ``optimize`` fn.

The staging shards are the unit of work of the tokenizing workers; ``tokenize_shard`` turns one into
token arrays (one per document, ``<|endoftext|>`` appended) for litdata's ``TokensLoader`` format.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lightning_llm.data.tokenizer import Tokenizer


class ShardWriter:
    """Writes one split's documents into numbered JSONL shards of about ``max_bytes`` each.

    Documents are scattered over ``buckets`` shards open at once (bucket chosen by a seeded hash of the
    text), so every shard, and so every litdata chunk, holds a random mix of the corpus rather than a
    run of it in source order (all of Shakespeare, then all of the Bible). litdata streams one chunk at
    a time; with source-ordered chunks the training loss jumps whenever the stream enters a new one.
    A shard that fills up is replaced, so on corpora larger than ``buckets * max_bytes`` the mix is over
    windows of that much source text (litdata then mixes chunks only through chunk order and workers).
    """

    def __init__(self, directory: Path, split: str, max_bytes: int, buckets: int = 8, seed: int = 0) -> None:
        self.directory, self.split, self.max_bytes = directory, split, max_bytes
        self.buckets, self.seed = max(1, buckets), seed
        directory.mkdir(parents=True, exist_ok=True)
        self.paths: list[str] = []
        self.documents = 0
        self.bytes = 0
        self._files: dict[int, Any] = {}
        self._shard_bytes: dict[int, int] = {}
        self._last: tuple[int, int, int, str] | None = None  # bucket, offset, size in bytes, text

    def write(self, text: str) -> None:
        b = int(split_key(text, self.seed + 1) * self.buckets) % self.buckets
        if b not in self._files or self._shard_bytes[b] >= self.max_bytes:
            self._open_next(b)
        f = self._files[b]
        n = len(text.encode("utf-8", "surrogatepass"))
        self._last = (b, f.tell(), n, text)
        f.write(json.dumps(text) + "\n")
        self._shard_bytes[b] += n
        self.documents += 1
        self.bytes += n

    def pop_last(self) -> str:
        """Remove the last document written (from its shard) and return its text."""
        assert self._last is not None
        b, offset, n, text = self._last
        f = self._files[b]
        f.seek(offset)
        f.truncate()
        self._last = None
        self.documents -= 1
        self.bytes -= n
        self._shard_bytes[b] -= n
        return text

    def _open_next(self, bucket: int) -> None:
        if bucket in self._files:
            self._files.pop(bucket).close()
        path = self.directory / f"{self.split}-{len(self.paths):05d}.jsonl"
        self.paths.append(str(path.resolve()))
        self._files[bucket] = open(path, "w", encoding="utf-8", errors="surrogatepass")  # noqa: SIM115
        self._shard_bytes[bucket] = 0

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self.paths = [p for p in self.paths if Path(p).stat().st_size > 0]


def read_shard(path: str | Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="surrogatepass") as f:
        for line in f:
            yield json.loads(line)


def split_key(text: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the document's text and the seed: order-independent split."""
    digest = hashlib.blake2b(
        text.encode("utf-8", "surrogatepass"), digest_size=8, salt=(seed % 2**64).to_bytes(8, "little")
    )
    return int.from_bytes(digest.digest(), "little") / 2**64


def split_text(text: str, tail_fraction: float) -> tuple[str, str]:
    """Cut ``text`` at the line break nearest to ``1 - tail_fraction`` of its length."""
    cut = int(len(text) * (1.0 - tail_fraction))
    nl = text.rfind("\n", 0, cut)
    cut = nl + 1 if nl > 0 else cut
    return text[:cut], text[cut:]


def tokens_in(split_dir: str | Path) -> int:
    """Tokens stored in a litdata token directory (sum of its chunks' ``dim``)."""
    index = json.loads((Path(split_dir) / "index.json").read_text())
    return sum(int(c["dim"] or 0) for c in index["chunks"])


def tokenize_shard(path: str, tokenizer_dir: str) -> Iterator[np.ndarray]:
    """litdata ``optimize`` fn: one token array per document, <|endoftext|> appended."""
    tok = _worker_tokenizer(tokenizer_dir)
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.int32
    texts = list(read_shard(path))
    for start in range(0, len(texts), 512):
        for ids in tok.encode_batch(texts[start : start + 512], num_threads=1):
            ids.append(tok.eot_id)
            yield np.asarray(ids, dtype=dtype)


_TOKENIZERS: dict[str, Tokenizer] = {}


def _worker_tokenizer(directory: str) -> Tokenizer:
    if directory not in _TOKENIZERS:
        _TOKENIZERS[directory] = Tokenizer.load(directory)
    return _TOKENIZERS[directory]
