"""The offensive filter's model: alt-profanity-check's scikit-learn pipeline evaluated with numpy, and its cache.

``_predictor`` checks the numpy scorer (:class:`_LinearScorer`) against ``predict_proba`` on probe texts
and falls back to scikit-learn when the model is not of the form it computes; the extracted arrays are
cached without pickle (``_cache_path``: keyed by the library's version and its model files' hash, found
without importing the library), so later runs import neither scikit-learn nor joblib.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

LIBRARY = "alt-profanity-check"
MODULE = "profanity_check"
MODEL_FILES = ("model.joblib", "vectorizer.joblib")


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
