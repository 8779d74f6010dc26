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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning_llm.data.documents import Document


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


def _non_space(text: str) -> int:
    return sum(map(len, text.split()))


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
    """Word ``n``-grams that repeat an earlier one / all word ``n``-grams (0 below ``n`` words)."""
    words = text.lower().split()
    count = len(words) - n + 1
    if count <= 0:
        return 0.0
    distinct = len(set(map(hash, zip(*(words[i:] for i in range(n)), strict=False))))
    return (count - distinct) / count


def stopword_ratio(text: str) -> float:
    """Whitespace tokens that are English stop words (case and edge punctuation ignored) / all tokens."""
    tokens = text.lower().split()
    if not tokens:
        return 0.0
    return sum(t.strip(_STRIP) in STOPWORDS for t in tokens) / len(tokens)


def chars_per_token(text: str) -> float:
    """Mean length of a whitespace-separated token; 0 for a blank text."""
    tokens = text.split()
    return sum(map(len, tokens)) / len(tokens) if tokens else 0.0


@dataclass(frozen=True)
class RangeFilter:
    """A pipeline step keeping documents whose ``metric(text)`` lies within ``[min, max]`` (None: open)."""

    name: str
    metric: Callable[[str], float]
    min: float | None = None
    max: float | None = None

    def keeps(self, text: str) -> bool:
        value = self.metric(text)
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def __call__(self, doc: Document) -> Document | None:
        return doc if self.keeps(doc.text) else None


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

    def ngrams(text: str) -> float:
        return ngram_repetition_ratio(text, repetition_ngram)

    candidates = [
        RangeFilter("length", num_chars, min_chars, max_chars),
        RangeFilter("alpha_ratio", alpha_ratio, min_alpha_ratio),
        RangeFilter("symbol_ratio", symbol_ratio, None, max_symbol_ratio),
        RangeFilter("chars_per_token", chars_per_token, min_chars_per_token, max_chars_per_token),
        RangeFilter("stopword_ratio", stopword_ratio, min_stopword_ratio),
        RangeFilter("line_repetition", line_repetition_ratio, None, max_line_repetition),
        RangeFilter(f"ngram_repetition_{repetition_ngram}", ngrams, None, max_ngram_repetition),
    ]
    return [f for f in candidates if f.min is not None or f.max is not None]
