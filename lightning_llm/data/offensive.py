"""Offensive-language filter: drop documents in which many passages read as profane or insulting.

``--clean.filters '[{name: offensive}]'`` scores every document with the linear model (TF-IDF words and a
calibrated linear SVM, trained on about 200k human-labelled tweets and Wikipedia comments) that the
``alt-profanity-check`` wheel ships inside its package, so it loads offline; the ``filters`` extra installs it (``pip install
'lightning-llm[filters]'``). The library pins the scikit-learn version its model was pickled with
(alt-profanity-check 1.9.1 pins ``scikit-learn==1.9.1`` and ``joblib==1.6.0``); under another scikit-learn
the model still loads, with a warning that its scores may differ.

A whole-document probability means little for a book (a play that names the bastard of Faulconbridge is
not abuse), so a document is cut into chunks (lines, very short lines merged up to ``min_chunk_chars``,
long lines cut at a sentence end or a space below ``max_chunk_chars``), each chunk gets the model's
probability of being offensive, and the document's score is the share of chunks at or above
``threshold``. A document is kept when that share is at most ``max_fraction``. A long document is judged
on ``max_chunks`` chunks starting at evenly spaced lines over its whole span (deterministic), so the cost
per document is bounded.

Measured on the bundled classics (122 documents, 12 MB: Shakespeare, Milton, the King James Bible): with
the defaults 0.9% of the chunks reach the threshold (fools, asses, whores, "damned", the Bastard of King
John); the highest document score is 0.055 (Proverbs; King John 0.039), the median 0.008, and every
document is kept; scoring the corpus takes 0.3-0.45 s of CPU. Short insulting or profane lines score
0.82-1.0, ordinary prose below 0.25.

The first setup imports scikit-learn and the model (about 2 s), extracts the parameters of the numpy
scorer, checks it against ``predict_proba`` and caches them in ``<default_cache_dir>/filters/
offensive-<version>-<hash of the model files>.npz``; later setups read that file (about 0.07 s) and never
import scikit-learn or joblib. A corrupt cache is rebuilt.
"""

from __future__ import annotations

import re
import warnings
from functools import lru_cache
from importlib import metadata
from typing import Any

from lightning_llm.data.filtering import (
    INSTALL_HINT,
    DocumentFilter,
    FilterContext,
    FilterError,
    evenly_spaced,
)
from lightning_llm.data.offensive_model import (
    LIBRARY,
    MODEL_FILES,
    MODULE,
    _cache_path,
    _LinearScorer,
    _predictor,
    _version,
)
from lightning_llm.registry import FILTERS

_SPACE = re.compile(r"\s+")


@lru_cache(maxsize=16)
def _chunk_pattern(min_chars: int, max_chars: int) -> re.Pattern[str]:
    """A chunk: it starts at a non-space character and ends, in order of preference, at the first line end
    once it holds ``min_chars`` characters, at the last sentence end or space within ``max_chars``, at the
    end of the text, or (a run of ``max_chars`` characters without a space) after ``max_chars``."""
    lo, hi = min_chars - 1, max_chars - 1
    return re.compile(
        rf"\S(?:.{{{lo},{hi}}}?(?=\n)|.{{{lo},{hi - 1}}}[.!?](?=\s)|.{{0,{hi}}}(?=\s|\Z)|.{{0,{hi}}})", re.S
    )


def cut_chunks(text: str, *, min_chars: int = 30, max_chars: int = 400, max_chunks: int = 128) -> list[str]:
    """The chunks a document is scored on: at most ``max_chunks``, each at most ``max_chars`` long.

    A text of at most ``max_chunks * min_chars`` characters is cut whole (every chunk but the last holds at
    least ``min_chars`` characters, so there are about ``max_chunks`` at most; should there be more, an
    evenly spread subset is kept). A longer text gives one chunk at each of ``max_chunks`` evenly spaced
    positions, starting at the next line start (or space) and never overlapping the previous chunk.
    """
    pattern = _chunk_pattern(min_chars, max_chars)
    if len(text) <= max_chunks * min_chars:
        return evenly_spaced(pattern.findall(text), max_chunks)
    chunks: list[str] = []
    end = 0
    for i in range(max_chunks):
        pos = len(text) * i // max_chunks
        if pos <= end:  # go on right after the previous chunk
            pos = end
        elif text[pos - 1] != "\n":  # start at the next line start (or space)
            newline = text.find("\n", pos, pos + max_chars)
            if newline >= 0:
                pos = newline + 1
            else:
                space = _SPACE.search(text, pos, pos + max_chars)
                pos = space.end() if space else pos
        match = pattern.search(text, pos)
        if match is None:
            break
        chunks.append(match.group())
        end = match.end()
    return chunks


class OffensiveFilter(DocumentFilter):
    """Drop documents whose share of offensive chunks is above ``max_fraction`` (alt-profanity-check).

    The score, between 0 and 1, is the share of a document's chunks whose probability of being offensive
    is at least ``threshold``; a blank document scores 0. The model, once loaded, is only read: workers
    forked after :meth:`setup` use the parent's copy and score exactly as the parent does. A pickled filter
    carries its options only and loads the model again on its first :meth:`score`.
    """

    score_range = (0.0, 1.0)
    requires = (MODULE,)

    def __init__(
        self,
        *,
        threshold: float = 0.8,
        max_fraction: float = 0.2,
        max_chunks: int = 128,
        min_chunk_chars: int = 30,
        max_chunk_chars: int = 400,
    ) -> None:
        """Check the options; nothing is loaded until :meth:`setup` (or the first :meth:`score`).

        Args:
            threshold: a chunk counts as offensive when the model's (calibrated) probability that it is
                offensive is at least this (0 to 1). 0.8 rather than the model's own 0.5: on the classics
                0.9% of the chunks reach 0.8 against 4.3% reaching 0.5 (the highest document share 0.055
                against 0.125: the Bible's fools and asses score 0.5-0.8), while the insulting or profane
                lines of the tests all score 0.82 or more and ordinary sentences 0.25 or less.
            max_fraction: keep a document when at most this share of its chunks is offensive (0 to 1).
                0.2 keeps every classic (highest share 0.055) and a page with a stray swear word in
                every fifth chunk, and drops a text made of one offensive line (share 1) or a rant.
            max_chunks: the most chunks scored per document (at least 1); a longer document is judged on
                this many chunks starting at evenly spaced lines, deterministically. 128 chunks (about
                90 characters each on the classics) bound the work to about 10 kB of text, 3 ms, per
                document; the share they estimate is within a few hundredths of the whole document's.
            min_chunk_chars: a line shorter than this is merged with the next ones into one chunk of at
                least this many characters (at least 1; 1 scores every line alone), so a play's speaker
                names and stage directions are judged with the speech. 30 leaves most sentences alone:
                an insult merged into a longer clean line is diluted below the threshold.
            max_chunk_chars: a longer line is cut at its last sentence end (else space) within this many
                characters; more than ``min_chunk_chars`` and at least 20.
        """
        for option, value in (("threshold", threshold), ("max_fraction", max_fraction)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{option} is a probability between 0 and 1; got {value!r}")
        for option, value in (("max_chunks", max_chunks), ("min_chunk_chars", min_chunk_chars)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be a whole number of at least 1; got {value!r}")
        if isinstance(max_chunk_chars, bool) or not isinstance(max_chunk_chars, int):
            raise ValueError(f"max_chunk_chars must be a whole number; got {max_chunk_chars!r}")
        if max_chunk_chars <= min_chunk_chars or max_chunk_chars < 20:
            raise ValueError(
                f"max_chunk_chars must be more than min_chunk_chars ({min_chunk_chars}) and at least 20; "
                f"got {max_chunk_chars}"
            )
        self.threshold = float(threshold)
        self.max_fraction = float(max_fraction)
        self.max_chunks = max_chunks
        self.min_chunk_chars = min_chunk_chars
        self.max_chunk_chars = max_chunk_chars
        self.max = self.max_fraction
        self._predict: Any = None

    # -- the model ---------------------------------------------------------------------------------------
    def setup(self, context: FilterContext | None = None) -> None:
        """Load the model (once, in the parent process: forked workers share it)."""
        self._load()

    def _load(self) -> Any:
        """A function from a list of texts to a numpy array of their probabilities of being offensive."""
        if self._predict is None:
            path, key = _cache_path()
            self._predict = _LinearScorer.load(path, key) if path is not None else None
        if self._predict is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    from profanity_check import profanity_check as library
                except ImportError as err:
                    raise FilterError(
                        f"filter '{self.name}' needs the {LIBRARY} library and the scikit-learn version it "
                        f"pins, which could not be imported ({err}). HINT: {INSTALL_HINT}"
                    ) from None
                except Exception as err:  # an unpicklable model: a scikit-learn far from the pinned one
                    raise FilterError(
                        f"filter '{self.name}': {LIBRARY} could not load its model ({type(err).__name__}: "
                        f"{err}); it needs the scikit-learn version it pins. HINT: {INSTALL_HINT}"
                    ) from err
            self._forward(caught)
            self._predict = _predictor(library)
            if path is not None and isinstance(self._predict, _LinearScorer):
                self._predict.save(path, key)
        return self._predict

    def _forward(self, caught: list[warnings.WarningMessage]) -> None:
        """Re-emit the warnings of the import, scikit-learn's many version warnings as a single one."""
        mismatch = [w for w in caught if type(w.message).__name__ == "InconsistentVersionWarning"]
        for w in caught:
            if w not in mismatch:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if mismatch:
            warnings.warn(
                f"filter '{self.name}': {LIBRARY}'s model was pickled with another scikit-learn than this "
                f"one ({_version('scikit-learn')}): its scores may differ. {mismatch[0].message}",
                RuntimeWarning,
                stacklevel=3,
            )

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the options only; an unpickled filter loads the model again on its first score."""
        return {**self.__dict__, "_predict": None}

    # -- scoring -----------------------------------------------------------------------------------------
    def chunks(self, text: str) -> list[str]:
        """The chunks ``text`` is scored on (see :func:`cut_chunks`)."""
        return cut_chunks(
            text, min_chars=self.min_chunk_chars, max_chars=self.max_chunk_chars, max_chunks=self.max_chunks
        )

    def probabilities(self, chunks: list[str]) -> list[float]:
        """Each chunk's probability (0 to 1) of being offensive."""
        return [float(p) for p in self._load()(chunks)] if chunks else []

    def score(self, text: str) -> float:
        """The share of the document's chunks whose probability of being offensive is at least ``threshold``."""
        probs = self.probabilities(self.chunks(text))
        return sum(p >= self.threshold for p in probs) / len(probs) if probs else 0.0

    def explain(self, text: str, limit: int = 200) -> str:
        """The document's most offensive chunks, most offensive first, each with its probability and the
        count of offensive chunks, whitespace collapsed, cut to ``limit`` characters."""
        chunks = self.chunks(text)
        if not chunks:
            return super().explain(text, limit)
        probs = self.probabilities(chunks)
        ranked = sorted(range(len(chunks)), key=lambda i: -probs[i])
        hits = sum(p >= self.threshold for p in probs)
        shown = [i for i in ranked[:3] if probs[i] >= self.threshold] or ranked[:1]
        parts = [f"[{probs[i]:.2f}] {_SPACE.sub(' ', chunks[i]).strip()}" for i in shown]
        out = f"{hits}/{len(chunks)} offensive: " + " | ".join(parts)
        return out[:limit] + ("…" if len(out) > limit else "")

    def fingerprint(self) -> dict[str, Any]:
        """The versions of the library, scikit-learn and joblib, and the hashes of the bundled model files."""
        out: dict[str, Any] = {"library": LIBRARY}
        for dist in (LIBRARY, "scikit-learn", "joblib"):
            out[dist] = _version(dist)
        try:
            files = metadata.files(LIBRARY) or []
        except metadata.PackageNotFoundError:
            files = []
        for path in files:
            if path.name in MODEL_FILES and path.hash is not None:
                out[f"{path.name}_hash"] = f"{path.hash.mode}:{path.hash.value}"
        return out

    def __repr__(self) -> str:
        return (
            f"OffensiveFilter(threshold={self.threshold}, max_fraction={self.max_fraction}, "
            f"max_chunks={self.max_chunks}, min_chunk_chars={self.min_chunk_chars}, "
            f"max_chunk_chars={self.max_chunk_chars})"
        )


FILTERS.register("offensive", OffensiveFilter)
