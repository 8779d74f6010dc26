"""Quality heuristics: one metric per function, one :class:`RangeFilter` step per metric.

The metrics follow the rules of Gopher's MassiveText filters (Rae et al., 2021, appendix A:
https://arxiv.org/abs/2112.11446), reduced to what works on whole books as well as web pages: document
length, the share of letters and of odd symbols, repeated lines and repeated word n-grams, the share of
English stop words, and the mean length of a whitespace-separated token. Every metric is linear in the
length of the text (a 5 MB document with no newline is fine) and returns a number, so a threshold means
the same thing in a test, in the config and in the report.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

import numpy as np

from lightning_llm.data.filtering import DocumentFilter

# A small English stop-word list, enough to tell running English from lists, code, tables and noise.
STOPWORDS = frozenset(
    """a about after all also am an and any are as at be because been but by can could did do does
    for from had has have he her him his how i if in into is it its me more my no not now of on one
    only or other our out she so some such than that the their them then there these they this those
    thou thee thy to up upon was we were what when which who will with would ye you your""".split()
)
_LETTERS = re.compile(r"[^\W\d_]+")  # runs of letters, any script
_PLAIN = re.compile(r"[\w\s.,;:!?'\"()\[\]\-\u2010-\u2014\u2018\u2019\u201c\u201d\u2026]+")
_STRIP = string.punctuation + "\u2018\u2019\u201c\u201d\u2014\u2026"
# ASCII fast paths (bytes.translate deletes a byte set in one C pass): the same sets as the regexes above
_ASCII_LETTERS = string.ascii_letters.encode()
_ASCII_PLAIN = (string.ascii_letters + string.digits + string.whitespace + "_.,;:!?'\"()[]-").encode()


def num_chars(text: str) -> float:
    """Length in characters."""
    return float(len(text))


# A document goes through several metrics in a row: each split is made once per text (a str caches its hash,
# so the lookup of the same object is cheap) and shared.
@lru_cache(maxsize=2)
def _words(text: str) -> list[str]:
    return text.split()


@lru_cache(maxsize=2)
def _lower_words(text: str) -> list[str]:
    return text.lower().split()


@lru_cache(maxsize=2)
def _non_space(text: str) -> int:
    return sum(map(len, _words(text)))


def alpha_ratio(text: str) -> float:
    """Letters (any script) / characters that are not whitespace; 0 for a blank text."""
    visible = _non_space(text)
    if not visible:
        return 0.0
    if text.isascii():
        data = text.encode("ascii")
        return (len(data) - len(data.translate(None, _ASCII_LETTERS))) / visible
    return (len(text) - len(_LETTERS.sub("", text))) / visible


def symbol_ratio(text: str) -> float:
    """Characters other than letters, digits, whitespace and ordinary punctuation / non-whitespace ones.

    U+FFFD (an undecodable byte), markup, box drawing and the like count as symbols.
    """
    visible = _non_space(text)
    if not visible:
        return 0.0
    if text.isascii():
        return len(text.encode("ascii").translate(None, _ASCII_PLAIN)) / visible
    return len(_PLAIN.sub("", text)) / visible


def line_repetition_ratio(text: str) -> float:
    """Characters in non-blank lines that repeat an earlier line / characters in all non-blank lines.

    Counting characters rather than lines lets plays keep their short speaker lines ("Ham.").
    """
    seen: set[str] = set()
    total = repeated = 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        total += len(line)
        if line in seen:
            repeated += len(line)
        else:
            seen.add(line)
    return repeated / total if total else 0.0


def ngram_repetition_ratio(text: str, n: int = 10) -> float:
    """Word ``n``-grams that repeat an earlier one / all word ``n``-grams (0 below ``n`` words).

    Words become exact integer ids; each n-gram is a 64-bit polynomial hash of its ids (numpy), so a book
    costs one pass of C loops rather than a Python tuple per n-gram; a false repeat needs a 64-bit collision.
    """
    words = _lower_words(text)
    count = len(words) - n + 1
    if count <= 0:
        return 0.0
    index = {w: i for i, w in enumerate(dict.fromkeys(words))}
    ids = np.fromiter(map(index.__getitem__, words), dtype=np.uint64, count=len(words))
    ids = (ids + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)  # spread small ids over 64 bits
    h = np.zeros(count, dtype=np.uint64)
    for k in range(n):
        h = h * np.uint64(0x100000001B3) + ids[k : k + count]
    h.sort()
    return int(np.count_nonzero(h[1:] == h[:-1])) / count  # each equal neighbour is one repeat


def stopword_ratio(text: str) -> float:
    """Whitespace tokens that are English stop words (case and edge punctuation ignored) / all tokens."""
    tokens = Counter(_lower_words(text))  # each distinct token is checked once
    total = sum(tokens.values())
    if not total:
        return 0.0
    return sum(c for t, c in tokens.items() if t.strip(_STRIP) in STOPWORDS) / total


def chars_per_token(text: str) -> float:
    """Mean length of a whitespace-separated token; 0 for a blank text."""
    tokens = _words(text)
    return sum(map(len, tokens)) / len(tokens) if tokens else 0.0


class RangeFilter(DocumentFilter):
    """A pipeline step keeping documents whose ``metric(text)`` lies within ``[min, max]`` (None: open)."""

    def __init__(
        self, name: str, metric: Callable[[str], float], min: float | None = None, max: float | None = None
    ) -> None:
        self.name, self.metric, self.min, self.max = name, metric, min, max

    def score(self, text: str) -> float:
        return self.metric(text)

    def __repr__(self) -> str:
        return f"RangeFilter({self.name!r}, min={self.min}, max={self.max})"


def _bounded(name: str, metric: Callable[[str], float], doc: str, fraction: bool) -> type[RangeFilter]:
    """A registrable filter class over one metric, with keyword-only ``min`` / ``max`` options."""

    def __init__(self: RangeFilter, *, min: float | None = None, max: float | None = None) -> None:
        if min is None and max is None:
            raise ValueError("set min, max or both (a filter without bounds keeps everything)")
        for bound in (min, max):
            if bound is not None and fraction and not 0.0 <= bound <= 1.0:
                raise ValueError(f"bounds are fractions between 0 and 1; got {bound}")
        RangeFilter.__init__(self, name, metric, min, max)

    cls = type(name, (RangeFilter,), {"__init__": __init__, "__doc__": doc})
    if fraction:
        cls.score_range = (0.0, 1.0)
    return cls


def _ngram_filter_class() -> type[RangeFilter]:
    def __init__(self: RangeFilter, *, max: float, n: int = 10) -> None:
        if not 0.0 <= max <= 1.0 or n < 1:
            raise ValueError(f"max is a fraction between 0 and 1 and n at least 1; got max={max}, n={n}")
        RangeFilter.__init__(self, f"ngram_repetition_{n}", partial(ngram_repetition_ratio, n=n), None, max)

    doc = "Drop documents whose share of repeated word n-grams is above max (Gopher)."
    return type(
        "ngram_repetition", (RangeFilter,), {"__init__": __init__, "__doc__": doc, "score_range": (0.0, 1.0)}
    )


HEURISTICS: dict[str, type[RangeFilter]] = {
    "length": _bounded("length", num_chars, "Keep documents whose length in characters is within [min, max].", False),
    "alpha_ratio": _bounded("alpha_ratio", alpha_ratio, "Keep documents whose share of letters is within [min, max].", True),
    "symbol_ratio": _bounded("symbol_ratio", symbol_ratio, "Keep documents whose share of odd symbols is within [min, max].", True),
    "chars_per_token": _bounded("chars_per_token", chars_per_token, "Keep documents whose mean word length is within [min, max].", False),
    "stopword_ratio": _bounded("stopword_ratio", stopword_ratio, "Keep documents whose share of English stop words is within [min, max].", True),
    "line_repetition": _bounded("line_repetition", line_repetition_ratio, "Keep documents whose share of characters in repeated lines is within [min, max].", True),
    "ngram_repetition": _ngram_filter_class(),
}  # fmt: skip
"""The Gopher-style heuristics as filter plugins (registered by :mod:`lightning_llm.data.builtin_filters`)."""


def quality_filters(
    *,
    min_chars: int | None = None,
    max_chars: int | None = None,
    min_alpha_ratio: float | None = None,
    max_symbol_ratio: float | None = None,
    max_line_repetition: float | None = None,
    max_ngram_repetition: float | None = None,
    repetition_ngram: int = 10,
    min_stopword_ratio: float | None = None,
    min_chars_per_token: float | None = None,
    max_chars_per_token: float | None = None,
) -> list[RangeFilter]:
    """The filter steps for the bounds that are set, cheapest first; a bound of None adds no step."""
    bounds: list[tuple[str, dict[str, Any]]] = [
        ("length", {"min": min_chars, "max": max_chars}),
        ("alpha_ratio", {"min": min_alpha_ratio}),
        ("symbol_ratio", {"max": max_symbol_ratio}),
        ("chars_per_token", {"min": min_chars_per_token, "max": max_chars_per_token}),
        ("stopword_ratio", {"min": min_stopword_ratio}),
        ("line_repetition", {"max": max_line_repetition}),
        ("ngram_repetition", {"max": max_ngram_repetition, "n": repetition_ngram}),
    ]
    out: list[RangeFilter] = []
    for name, options in bounds:
        if options.get("min") is not None or options.get("max") is not None:
            out.append(HEURISTICS[name](**{k: v for k, v in options.items() if v is not None}))
    return out
