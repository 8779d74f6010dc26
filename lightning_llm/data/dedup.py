"""Deduplication steps: exact (hash of the normalised text) and near (MinHash + LSH from ``datasketch``).

Both are stateful pipeline steps: a document is dropped when it duplicates one that went through the
same step earlier, so the first copy in reading order is the one kept. The state grows with the number
of documents kept (16 bytes each for exact dedup; for near dedup, one signature of ``num_perm`` 32-bit
values plus the LSH tables, about 1-2 KB), which is fine up to millions of documents on one machine.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import TYPE_CHECKING

import numpy as np
from datasketch import MinHash, MinHashLSH

if TYPE_CHECKING:
    from lightning_llm.data.documents import Document

_GOLDEN, _FNV_PRIME, _MIX = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0x100000001B3),
    np.uint64(0xFF51AFD7ED558CCD),
)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """murmur3's 32-bit finaliser (a bijection that spreads every input bit), on a uint32 array."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def normalized_key(text: str) -> bytes:
    """A 128-bit digest of ``text`` with whitespace collapsed and case folded."""
    return hashlib.blake2b(" ".join(text.split()).casefold().encode(), digest_size=16).digest()


class ExactDedup:
    """Drop a document whose normalised text (see :func:`normalized_key`) was seen before."""

    name = "exact_dedup"
    stateful = True

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def precompute(self, text: str) -> bytes:
        """The stateless part (run in a worker process by the pipeline): the document's key."""
        return normalized_key(text)

    def __call__(self, doc: Document, key: bytes | None = None) -> Document | None:
        key = normalized_key(doc.text) if key is None else key
        if key in self._seen:
            return None
        self._seen.add(key)
        return doc


class NearDedup:
    """Drop a document whose word-shingle Jaccard similarity to a kept one is at least ``threshold``.

    Each document becomes the set of its ``shingle_size``-word shingles (case folded); a MinHash of
    ``num_perm`` permutations estimates the Jaccard similarity of two such sets, and MinHash LSH finds
    the candidates without comparing all pairs. A candidate counts only if its estimated similarity
    reaches ``threshold``, which removes most of LSH's false positives.
    """

    name = "near_dedup"
    stateful = True
    _BATCH = 4096  # shingles hashed at a time: update_batch allocates (batch x num_perm) integers

    def __init__(
        self, threshold: float = 0.8, num_perm: int = 128, shingle_size: int = 5, seed: int = 1
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"minhash threshold must be in (0, 1], got {threshold}")
        if shingle_size < 1:
            raise ValueError(f"shingle_size must be at least 1, got {shingle_size}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        template = MinHash(num_perm=num_perm, seed=seed)
        self._scheme, self._permutations = template.scheme, template.permutations  # shared by all signatures
        self._kept: list[np.ndarray] = []

    def shingles(self, text: str) -> np.ndarray:
        """32-bit hashes of the document's distinct word shingles (case folded).

        A document shorter than one shingle is a single shingle. Each distinct word is hashed once
        (crc32, the same in every process) and the shingle hashes are combined from the word hashes with
        numpy, which is several times faster than hashing every shingle string.
        """
        words = text.casefold().split() or [""]
        index = {w: i for i, w in enumerate(dict.fromkeys(words))}
        ids = np.fromiter(map(index.__getitem__, words), dtype=np.int64, count=len(words))
        crcs = np.fromiter(map(zlib.crc32, map(str.encode, index)), dtype=np.uint64, count=len(index))
        word_hashes = (crcs * _GOLDEN)[ids]  # spread the 32-bit crc over 64 bits
        n = min(self.shingle_size, len(words))
        count = len(words) - n + 1
        h = np.zeros(count, dtype=np.uint64)
        for k in range(n):  # polynomial hash of the n word hashes, modulo 2**64
            h = h * _FNV_PRIME + word_hashes[k : k + count]
        h ^= h >> np.uint64(33)  # murmur3's finaliser, so every word reaches the top 32 bits
        h *= _MIX
        h ^= h >> np.uint64(33)
        hashes = np.sort((h >> np.uint64(32)).astype(np.uint32))
        return hashes[np.concatenate(([True], hashes[1:] != hashes[:-1]))]  # distinct (np.unique is slower)

    def signature(self, text: str) -> MinHash:
        """The MinHash of :meth:`shingles`, as ``MinHash.update_batch`` computes it, without its Python loop.

        datasketch's ``affine32`` scheme: each 32-bit value goes through murmur3's 32-bit finaliser, then
        the permutations ``a * h + b`` (mod 2**32); the signature is the minimum per permutation. Done
        here on the numpy array of shingle hashes (``update_batch`` converts each value in Python first);
        ``tests/data/test_dedup.py`` checks the result equals ``update_batch``'s.
        """
        a, b = self._permutations
        values = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        shingles = self.shingles(text)
        for i in range(0, len(shingles), self._BATCH):
            h = _fmix32(shingles[i : i + self._BATCH]).reshape(-1, 1)
            values = np.minimum(values, (h * a + b).min(axis=0))
        return MinHash(
            self.num_perm, self.seed, permutations=self._permutations, scheme=self._scheme, hashvalues=values
        )

    def precompute(self, text: str) -> MinHash:
        """The stateless part (run in a worker process by the pipeline): the document's signature."""
        return self.signature(text)

    def __call__(self, doc: Document, minhash: MinHash | None = None) -> Document | None:
        minhash = self.signature(doc.text) if minhash is None else minhash
        for key in self._lsh.query(minhash):
            if float(np.mean(self._kept[key] == minhash.hashvalues)) >= self.threshold:
                return None
        self._lsh.insert(len(self._kept), minhash, check_duplication=False)
        self._kept.append(minhash.hashvalues)
        return doc
