"""The shared vocabulary of the data steps: a :class:`Document`, a :class:`Source` of them, and the text
helpers that more than one step needs (``decode`` for readers, ``strip_gutenberg`` for the classics
source and for the cleaning pipeline).

This module imports nothing from the rest of the package: sources, cleaning, filters and dedup all
import it, and it imports none of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

STAT_KEYS = (
    "files",
    "bytes_read",
    "documents",
    "empty_documents",
    "undecodable_chars",
    "bad_lines",
    "missing_field",
)
_UTF8_REPLACEMENT = "\ufffd".encode()


@dataclass(frozen=True)
class Document:
    """One unit of text: a file, a JSON Lines record, a book. Documents are separated by end-of-text."""

    text: str
    source: str  # file path or "<name>:<member>": shown in reports and error messages


class Source:
    """A named stream of documents that can be iterated again and again.

    ``stats`` describes the latest pass through :meth:`documents`: ``files``, ``bytes_read``,
    ``documents`` (yielded), ``empty_documents`` (skipped), ``undecodable_chars`` (bytes that were not
    valid UTF-8, replaced by U+FFFD), ``bad_lines`` (JSON that did not parse, skipped),
    ``missing_field`` (records without a string ``text_field``, skipped). A subclass calls
    ``super().__init__()`` and implements :meth:`documents` and :meth:`fingerprint`; wrapping its
    documents in :meth:`_counted` resets and fills the counts.
    """

    name: str = "source"

    def __init__(self) -> None:
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)

    def documents(self) -> Iterator[Document]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A string that changes whenever the data behind this source changes."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Document]:
        return self.documents()

    def _counted(self, docs: Iterable[Document]) -> Iterator[Document]:
        """Reset ``stats``, then pass ``docs`` through, counting the non-empty ones and skipping the rest."""
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        for doc in docs:
            if doc.text.strip():
                self.stats["documents"] += 1
                yield doc
            else:
                self.stats["empty_documents"] += 1


def decode(data: bytes, fallback: str | None = None) -> tuple[str, int]:
    """Decode ``data`` as UTF-8 (dropping a byte-order mark); return the text and the number of bad bytes.

    Bytes that are not valid UTF-8 become U+FFFD and are counted, unless ``fallback`` names an encoding
    to decode the whole input with instead (``"latin-1"`` where the encoding is known).
    """
    try:
        return data.decode("utf-8-sig"), 0
    except UnicodeDecodeError:
        if fallback is not None:
            return data.decode(fallback), 0
    text = data.decode("utf-8-sig", errors="replace")
    return text, text.count("\ufffd") - data.count(_UTF8_REPLACEMENT)


_GUTENBERG_START = re.compile(
    r"^\s*\*{3}\s*START OF (?:THIS |THE )?PROJECT GUTENBERG.*$|^\s*\*END\*THE SMALL PRINT!.*$", re.I | re.M
)
_GUTENBERG_END = re.compile(
    r"^\s*\*{3}\s*END OF (?:THIS |THE )?PROJECT GUTENBERG|^\s*End of (?:the |this )?Project Gutenberg",
    re.I | re.M,
)
_PRODUCED_BY = re.compile(r"\A\s*(?:Produced|Prepared|Transcribed) by\b.*?(?:\n\s*\n|\Z)", re.I | re.S)


def strip_gutenberg(text: str) -> str:
    """Cut a Project Gutenberg header and licence off ``text``; text without the markers is unchanged.

    Keeps what lies between the ``*** START OF ... PROJECT GUTENBERG ...`` line (or the older
    ``*END*THE SMALL PRINT!`` line) and the ``*** END OF ...`` / ``End of Project Gutenberg`` line,
    minus a leading "Produced by ..." paragraph.
    """
    starts = [m for m in _GUTENBERG_START.finditer(text, 0, len(text) // 2 + 1)]
    begin = starts[-1].end() if starts else 0
    end = _GUTENBERG_END.search(text, begin)
    if not starts and end is None:
        return text
    body = text[begin : end.start() if end else len(text)]
    return (_PRODUCED_BY.sub("", body, count=1) if starts else body).strip("\n")
