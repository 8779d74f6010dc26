"""A blocklist filter: drop documents with more than ``max_hits`` occurrences of blocked terms.

Terms are words, phrases or domain names, matched case-insensitively at word boundaries by default
(``class`` does not match ``classic``). They come inline (``terms``) and/or from a UTF-8 file with one term
per line (``file``; blank lines and lines starting with ``#`` are skipped).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from lightning_llm.data.filtering import DocumentFilter, FilterContext, FilterError

__all__ = ["BlocklistFilter"]


class BlocklistFilter(DocumentFilter):
    """Drop documents that contain more than max_hits blocked terms (words, phrases, domains)."""

    def __init__(
        self,
        *,
        terms: list[str] | None = None,
        file: str | None = None,
        max_hits: int = 0,
        case_sensitive: bool = False,
        whole_words: bool = True,
    ) -> None:
        """
        Args:
            terms: blocked terms, matched literally.
            file: a UTF-8 file with one blocked term per line (``#`` comments and blank lines skipped).
            max_hits: documents with more occurrences than this are dropped (0: any occurrence drops).
            case_sensitive: match case exactly (default: ignore case).
            whole_words: match only at word boundaries (default), so ``ass`` does not match ``class``.
        """
        if not terms and not file:
            raise ValueError("give terms: [...] and/or file: PATH (an empty blocklist keeps everything)")
        if max_hits < 0:
            raise ValueError(f"max_hits must be at least 0; got {max_hits}")
        self.terms = [t for t in (terms or []) if t.strip()]
        self.file = file
        self.max = float(max_hits)
        self.case_sensitive = case_sensitive
        self.whole_words = whole_words
        self._pattern: re.Pattern[str] | None = None

    def _file_terms(self) -> list[str]:
        if self.file is None:
            return []
        path = Path(self.file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise FilterError(f"blocklist file {path} cannot be read: {err}") from None
        return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]

    def setup(self, context: FilterContext | None = None) -> None:
        """Read the file and compile one alternation of every term (longest first)."""
        terms = sorted({*self.terms, *self._file_terms()}, key=len, reverse=True)
        if not terms:
            raise FilterError(f"the blocklist is empty (terms={self.terms}, file={self.file})")
        body = "|".join(map(re.escape, terms))
        if self.whole_words:
            body = rf"(?<!\w)(?:{body})(?!\w)"
        self._pattern = re.compile(body, 0 if self.case_sensitive else re.IGNORECASE)

    def _matches(self, text: str) -> list[str]:
        if self._pattern is None:
            self.setup()
        assert self._pattern is not None
        return self._pattern.findall(text)

    def score(self, text: str) -> float:
        """Occurrences of blocked terms in the text."""
        return float(len(self._matches(text)))

    def explain(self, text: str, limit: int = 200) -> str:
        hits = sorted(set(self._matches(text)))
        shown = "hits: " + ", ".join(hits)
        return shown[:limit] + ("…" if len(shown) > limit else "")

    def fingerprint(self) -> dict[str, Any]:
        """The blocklist file's sha256: an edited list is a different filter."""
        if self.file is None:
            return {}
        try:
            return {"file_sha256": hashlib.sha256(Path(self.file).expanduser().read_bytes()).hexdigest()}
        except OSError as err:
            raise FilterError(f"blocklist file {self.file} cannot be read: {err}") from None
