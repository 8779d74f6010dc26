"""The quality classifier's passages and features: how text becomes what the classifier reads.

``split_passages`` cuts a document at line breaks (else spaces) into passages of about ``passage_chars``;
``evenly_spaced`` picks the ones a long document is judged on; :class:`Featurizer` hashes their word
unigrams and bigrams (crc32) into signed, log-scaled, L2-normalised sparse vectors, with numpy only.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lightning_llm.data.filtering import evenly_spaced

__all__ = ["FEATURIZER", "TOKEN_PATTERN", "Featurizer", "evenly_spaced", "split_passages"]

FEATURIZER = "crc32-v1"
# words (any script) and single punctuation marks / symbols, so markup and garbled text have features too
TOKEN_PATTERN = r"(?u)\b\w+\b|[^\w\s]"


def split_passages(text: str, passage_chars: int) -> list[str]:
    """``text`` cut into passages of at most about ``passage_chars`` characters, stripped, none blank.

    A cut falls at the last line break of the second half of the window, else at its last space, else
    in the middle of a word; a short tail (under a quarter of ``passage_chars``) joins the passage
    before it. Linear in the length of the text, also for a text without any line break.
    """
    passages: list[str] = []
    start, n, half = 0, len(text), max(passage_chars // 2, 1)
    while start < n:
        end = start + passage_chars
        cut = next_start = n
        if end < n:
            cut = text.rfind("\n", start + half, end)
            if cut < 0:
                cut = text.rfind(" ", start + half, end)
            next_start = cut + 1  # the line break or space goes with neither passage
            if cut < 0:
                cut = next_start = end
        piece = text[start:cut].strip()
        start = next_start
        if not piece:
            continue
        if passages and len(piece) < passage_chars // 4 and start >= n:
            passages[-1] = passages[-1] + "\n" + piece
        else:
            passages.append(piece)
    return passages


@dataclass
class Featurizer:
    """How a passage becomes a feature vector (stored in ``classifier.json``).

    Tokens are found by ``token_pattern`` in the (lowercased) passage; an n-gram hashes to
    ``zlib.crc32`` of its tokens' UTF-8 bytes joined by single spaces (which no token holds), computed by
    chaining: crc32 of bigram "a b" is ``crc32(b" b", crc32(b"a"))``. The low bits of the hash pick the
    bucket, bit 31 the sign. Counts are summed per bucket (signed), then ``sign * log1p(|count|)``, and
    the passage's vector is L2-normalised. Plain Python and numpy: scoring imports neither scipy nor
    scikit-learn.
    """

    name: str = FEATURIZER  # the hashing scheme: a classifier trained with another one cannot be read
    n_features: int = 2**18  # hash buckets (columns of the feature matrix): a power of two
    ngram_range: tuple[int, int] = (1, 2)  # word n-gram lengths: unigrams and bigrams
    lowercase: bool = True  # lowercase before tokenizing
    token_pattern: str = TOKEN_PATTERN  # regular expression of a token
    alternate_sign: bool = True  # signed hashing: colliding n-grams tend to cancel rather than add up

    def __post_init__(self) -> None:
        self.ngram_range = (int(self.ngram_range[0]), int(self.ngram_range[1]))
        lo, hi = self.ngram_range
        if self.name != FEATURIZER or not 1 <= lo <= hi or self.n_features & (self.n_features - 1):
            raise ValueError(f"unsupported featurizer {vars(self)}")
        self._tokens = re.compile(self.token_pattern).findall

    def hashes(self, passage: str) -> np.ndarray:
        """crc32 (uint32) of each n-gram of ``passage``."""
        tokens = self._tokens(passage.lower() if self.lowercase else passage)
        try:
            encoded = list(map(str.encode, tokens))
        except UnicodeEncodeError:  # a lone surrogate
            encoded = [t.encode("utf-8", "surrogatepass") for t in tokens]
        lo, hi = self.ngram_range
        grams = list(map(zlib.crc32, encoded))
        out = grams if lo == 1 else []
        if hi > 1:
            spaced = list(map(b" ".__add__, encoded))
            for n in range(2, hi + 1):
                grams = list(map(zlib.crc32, spaced[n - 1 :], grams))
                if n >= lo:
                    out = out + grams
        return np.fromiter(out, dtype=np.uint32, count=len(out))

    def transform(self, passages: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, bucket, value) of each nonzero feature of ``passages``: row-major, values L2-normalised."""
        per_passage = [self.hashes(p) for p in passages]
        lengths = np.fromiter(map(len, per_passage), dtype=np.int64, count=len(per_passage))
        h = np.concatenate(per_passage) if per_passage else np.zeros(0, dtype=np.uint32)
        keys = np.repeat(np.arange(len(passages), dtype=np.int64), lengths) * self.n_features
        keys += (h & np.uint32(self.n_features - 1)).astype(np.int64)
        signs = 1.0 - 2.0 * (h >> np.uint32(31)) if self.alternate_sign else np.ones(len(h))
        unique, inverse = np.unique(keys, return_inverse=True)
        counts = np.bincount(inverse.ravel(), weights=signs, minlength=len(unique))
        values = np.sign(counts) * np.log1p(np.abs(counts))
        rows, buckets = np.divmod(unique, self.n_features)
        norms = np.sqrt(np.bincount(rows, weights=values * values, minlength=len(passages)))
        norms[norms == 0] = 1.0
        return rows, buckets, values / norms[rows]
