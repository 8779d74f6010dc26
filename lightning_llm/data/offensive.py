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

import hashlib
import importlib.util
import json
import os
import re
import sys
import warnings
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from lightning_llm.data.filtering import INSTALL_HINT, DocumentFilter, FilterContext, FilterError
from lightning_llm.registry import FILTERS

LIBRARY = "alt-profanity-check"
MODULE = "profanity_check"
MODEL_FILES = ("model.joblib", "vectorizer.joblib")
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


def _evenly(items: list[str], count: int) -> list[str]:
    """``count`` items spread evenly over ``items`` (all of them if there are no more than ``count``)."""
    if len(items) <= count:
        return items
    return [items[i * len(items) // count] for i in range(count)]


def cut_chunks(text: str, *, min_chars: int = 30, max_chars: int = 400, max_chunks: int = 128) -> list[str]:
    """The chunks a document is scored on: at most ``max_chunks``, each at most ``max_chars`` long.

    A text of at most ``max_chunks * min_chars`` characters is cut whole (every chunk but the last holds at
    least ``min_chars`` characters, so there are about ``max_chunks`` at most; should there be more, an
    evenly spread subset is kept). A longer text gives one chunk at each of ``max_chunks`` evenly spaced
    positions, starting at the next line start (or space) and never overlapping the previous chunk.
    """
    pattern = _chunk_pattern(min_chars, max_chars)
    if len(text) <= max_chunks * min_chars:
        return _evenly(pattern.findall(text), max_chunks)
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


def _predictor(library: Any) -> Any:
    """A function from a list of texts to a numpy array of their probabilities of being offensive.

    ``predict_proba`` spends about 10 ms per call in scikit-learn's input checks, so the same computation
    is done with numpy (:class:`_LinearScorer`), checked against ``predict_proba`` on a few probe texts;
    when the model is not of that form or the check fails, scikit-learn itself scores.
    """
    vectorizer, model = getattr(library, "vectorizer", None), getattr(library, "model", None)
    if vectorizer is None or model is None:
        return library.predict_prob

    def by_library(texts: list[str]) -> Any:
        return model.predict_proba(vectorizer.transform(texts))[:, 1]

    try:
        fast = _LinearScorer.from_sklearn(vectorizer, model)
        agrees = float(np.max(np.abs(fast(_PROBES) - by_library(_PROBES)))) <= 1e-9
    except (AttributeError, TypeError, ValueError, IndexError, KeyError, re.error):
        return by_library
    if not agrees:
        warnings.warn(
            f"{LIBRARY}: the fast scorer disagrees with scikit-learn; using scikit-learn", stacklevel=2
        )
        return by_library
    return fast


_PROBES = [
    "You are a stupid idiot and everyone knows it.",
    "The library opens at nine on weekdays and at ten on Saturdays.",
    "damn damn DAMN, hell and fools",
    "",
    "qqqq zzzz 123",
    "ÉCOLE naïve café: The AND of it, über-Straße – İstanbul ǅ 42nd",
]


_EXPECTED = {"analyzer": "word", "input": "content", "tokenizer": None, "preprocessor": None}
_EXPECTED |= {"strip_accents": None, "norm": "l2", "use_idf": True, "sublinear_tf": False, "binary": False}


class _LinearScorer:
    """P(offensive) from a fitted binary ``CalibratedClassifierCV(LinearSVC, method="sigmoid")`` over a
    ``TfidfVectorizer`` (l2 norm, idf, raw counts): the mean over the ensemble of
    ``1 / (1 + exp(a * (x . w + c) + b))``, x the l2-normalised tf-idf vector of the text.

    Its own analyzer (lowercase, then the vectorizer's ``token_pattern``; stop words are left out of the
    vocabulary) needs no scikit-learn, so the extracted parameters are cached (:meth:`save`, :meth:`load`).
    """

    ARRAYS = ("idf", "weights", "intercepts", "slopes", "offsets")

    def __init__(self, vocabulary: dict[str, int], lowercase: bool, token_pattern: str, **arrays: Any):
        self.vocabulary, self.lowercase, self.token_pattern = vocabulary, lowercase, token_pattern
        self.lookup, self.tokenize = vocabulary.get, re.compile(token_pattern).findall
        self.idf, self.weights, self.intercepts, self.slopes, self.offsets = (
            np.asarray(arrays[name], dtype=np.float64) for name in self.ARRAYS
        )
        shape = (len(self.idf), len(self.slopes))  # weights: (vocabulary, ensemble)
        columns = set(vocabulary.values()) | {0}
        if self.weights.shape != shape or {self.intercepts.shape, self.slopes.shape, self.offsets.shape} != {
            shape[1:]
        }:
            raise ValueError("the vectorizer's and the model's shapes differ")
        if min(columns) < 0 or max(columns) >= shape[0]:
            raise ValueError("a vocabulary column is out of range")

    @classmethod
    def from_sklearn(cls, vectorizer: Any, model: Any) -> _LinearScorer:
        """The parameters of a fitted vectorizer and model; ValueError for any form this class does not
        reproduce exactly (another analyzer, n-grams, accent stripping, sublinear or binary tf, ...)."""
        params = vectorizer.get_params()
        if (
            any(params[k] != v for k, v in _EXPECTED.items())
            or tuple(params["ngram_range"]) != (1, 1)
            or np.dtype(params["dtype"]) != np.float64
            or re.compile(params["token_pattern"]).groups > 1
            or [int(c) for c in model.classes_] != [0, 1]
        ):
            raise ValueError("not the model form this scorer computes")
        weights, intercepts, slopes, offsets = [], [], [], []
        for member in model.calibrated_classifiers_:
            svm, (sigmoid,) = member.estimator, member.calibrators
            if member.method != "sigmoid" or [int(c) for c in svm.classes_] != [0, 1]:
                raise ValueError("not a binary sigmoid-calibrated linear model")
            weights.append(np.asarray(svm.coef_, dtype=np.float64).reshape(-1))
            intercepts.append(float(np.asarray(svm.intercept_).reshape(-1)[0]))
            slopes.append(float(sigmoid.a_))
            offsets.append(float(sigmoid.b_))
        stop_words = vectorizer.get_stop_words() or frozenset()
        vocabulary = {str(w): int(i) for w, i in vectorizer.vocabulary_.items() if w not in stop_words}
        arrays = {"idf": vectorizer.idf_, "weights": np.stack(weights, axis=1), "intercepts": intercepts}
        arrays |= {"slopes": slopes, "offsets": offsets}
        return cls(vocabulary, bool(params["lowercase"]), str(params["token_pattern"]), **arrays)

    def save(self, path: Path, key: str) -> None:
        """Write the parameters to ``path`` (numpy arrays and a JSON header, no pickle), atomically."""
        meta = {"key": key, "lowercase": self.lowercase, "token_pattern": self.token_pattern}
        meta["vocabulary"] = self.vocabulary
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                header = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
                np.savez(f, meta=header, **{name: getattr(self, name) for name in self.ARRAYS})
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            warnings.warn(f"{LIBRARY}: could not cache the model in {path}: {err}", stacklevel=2)

    @classmethod
    def load(cls, path: Path, key: str) -> _LinearScorer | None:
        """The scorer cached at ``path`` for ``key``; None (and one line saying so) if it is missing,
        unreadable or for another model, so that it is rebuilt."""
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(data["meta"].tobytes().decode())
                arrays = {name: data[name] for name in cls.ARRAYS}
            if meta["key"] != key:
                raise ValueError(f"it is for {meta['key']}")
            return cls(meta["vocabulary"], bool(meta["lowercase"]), str(meta["token_pattern"]), **arrays)
        except Exception as err:  # a truncated or foreign file: any error means rebuild
            print(
                f"{LIBRARY}: rebuilding the cached model {path} ({type(err).__name__}: {err})",
                file=sys.stderr,
            )
            return None

    def __call__(self, texts: list[str]) -> np.ndarray:
        rows: list[int] = []
        cols: list[int] = []
        lookup, tokenize, lowercase = self.lookup, self.tokenize, self.lowercase
        for row, text in enumerate(texts):
            ids = [i for i in map(lookup, tokenize(text.lower() if lowercase else text)) if i is not None]
            cols.extend(ids)
            rows.extend([row] * len(ids))
        size = len(self.idf)
        keys, counts = np.unique(
            np.asarray(rows, np.int64) * size + np.asarray(cols, np.int64), return_counts=True
        )
        row_of, col_of = keys // size, keys % size
        values = counts * self.idf[col_of]
        norms = np.sqrt(np.bincount(row_of, values * values, minlength=len(texts)))
        values /= norms[row_of]
        decision = np.empty((len(texts), self.weights.shape[1]))
        for k in range(self.weights.shape[1]):
            decision[:, k] = np.bincount(row_of, values * self.weights[col_of, k], minlength=len(texts))
        decision += self.intercepts
        return np.mean(1.0 / (1.0 + np.exp(decision * self.slopes + self.offsets)), axis=1)


def _cache_path() -> tuple[Path | None, str]:
    """Where the extracted model of the installed library is cached, and its key (library version and
    hash of the model files), found without importing the library; (None, "") if the files are not found."""
    from lightning_llm.data.classics import default_cache_dir

    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError):
        return None, ""
    version = _version(LIBRARY)
    if spec is None or not spec.submodule_search_locations or version is None:
        return None, ""
    digest = hashlib.sha256()
    try:
        for name in MODEL_FILES:
            digest.update(name.encode() + b"\0")
            digest.update((Path(next(iter(spec.submodule_search_locations))) / "data" / name).read_bytes())
    except OSError:
        return None, ""
    key = f"offensive-{version}-{digest.hexdigest()[:16]}"
    return default_cache_dir() / "filters" / f"{key}.npz", key


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


FILTERS.register("offensive", OffensiveFilter)
