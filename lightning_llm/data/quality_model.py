"""The trainable quality classifier: passages, hashed n-gram features, logistic regression, files on disk.

The idea of GPT-3's and FineWeb-Edu's quality filters, kept small and fast: documents are cut into passages
of about ``passage_chars`` characters (at line breaks, else at spaces), each passage becomes a vector of
hashed word unigrams and bigrams (scikit-learn's ``HashingVectorizer``: MurmurHash3, stable across
versions; log-scaled counts, L2-normalised), and a logistic regression separates passages of a corpus the
user trusts (positive) from passages of junk or of the raw input (negative). A document's score is the
mean P(trusted) of its passages.

A classifier is a directory of two files, written without pickle: ``classifier.npz`` (the coefficients
and the intercept) and ``classifier.json`` (the featurization, the passage length, and how it was trained:
sources, passage counts, held-out accuracy / precision / recall, date). ``lightning-llm train-quality``
writes one; the ``quality`` filter (:mod:`lightning_llm.data.quality`) applies it in ``prepare``.

scikit-learn (and scipy) are imported only to train a classifier (``pip install 'lightning-llm[filters]'``);
loading and scoring need numpy alone, so ``prepare`` starts fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lightning_llm.data.filtering import INSTALL_HINT, FilterError
from lightning_llm.data.quality_features import FEATURIZER, Featurizer, evenly_spaced, split_passages

__all__ = ["FEATURIZER", "Featurizer", "QualityModel", "evenly_spaced", "load_classifier", "split_passages",
           "train_quality_classifier"]  # fmt: skip

FORMAT = 2  # 1: scikit-learn's HashingVectorizer (MurmurHash3) features
COEF_FILE = "classifier.npz"
META_FILE = "classifier.json"
TRAIN_COMMAND = "lightning-llm train-quality --positive TRUSTED --negative JUNK --output_dir DIR"
MIN_PASSAGES = 10  # per class: fewer cannot be split into training and held-out passages


def _sklearn() -> Any:
    """The ``sklearn`` package, or a ``FilterError`` saying how to install it."""
    try:
        import sklearn
        import sklearn.linear_model  # noqa: F401
    except ImportError as err:
        raise FilterError(f"The quality classifier needs scikit-learn ({err}): {INSTALL_HINT}") from None
    return sklearn


# -- passages -------------------------------------------------------------------------------------------
@dataclass
class QualityModel:
    """A loaded (or just trained) classifier: P(trusted) of passages and documents."""

    featurizer: Featurizer
    coef: np.ndarray  # (n_features,)
    intercept: float
    passage_chars: int
    meta: dict[str, Any] = field(default_factory=dict)

    def features(self, passages: Sequence[str]) -> Any:
        """``scipy.sparse.csr_matrix`` (passages × n_features) of the features (for training)."""
        import scipy.sparse as sp

        rows, buckets, values = self.featurizer.transform(passages)
        shape = (len(passages), self.featurizer.n_features)
        return sp.csr_matrix((values, (rows, buckets)), shape=shape)

    def probabilities(self, passages: Sequence[str]) -> np.ndarray:
        """P(trusted) of each passage: sigmoid(w·x + b), the dot product gathered straight from ``coef``."""
        if not passages:
            return np.zeros(0)
        rows, buckets, values = self.featurizer.transform(passages)
        dots = np.bincount(rows, weights=values * self.coef[buckets], minlength=len(passages))
        return 1.0 / (1.0 + np.exp(-(dots + self.intercept)))

    def document_passages(self, text: str, max_passages: int) -> list[str]:
        """The passages of ``text`` that decide its score: at most ``max_passages``, evenly spaced."""
        return evenly_spaced(split_passages(text, self.passage_chars), max_passages)

    def save(self, directory: str | Path) -> Path:
        """Write ``classifier.npz`` and ``classifier.json`` into ``directory`` (each replaced atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            **self.meta,
            "format": FORMAT,
            "featurizer": {
                f.name: getattr(self.featurizer, f.name) for f in dataclasses.fields(self.featurizer)
            },
            "passage_chars": self.passage_chars,
        }
        tmp = directory / f".{COEF_FILE}.{os.getpid()}.tmp.npz"
        np.savez_compressed(tmp, coef=self.coef, intercept=np.array([self.intercept]))
        os.replace(tmp, directory / COEF_FILE)
        tmp_json = directory / f".{META_FILE}.{os.getpid()}.tmp"
        tmp_json.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp_json, directory / META_FILE)
        return directory


def _missing(directory: Path, problem: str) -> ValueError:
    return ValueError(
        f"quality classifier {directory}: {problem}. Train one with `{TRAIN_COMMAND}` (e.g. --output_dir "
        f"data/my-dataset/quality) and pass that directory as the filter's classifier option."
    )


def load_classifier(directory: str | Path) -> QualityModel:
    """The classifier saved in ``directory``; ``ValueError`` naming the training command if it is unusable."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise _missing(directory, "no such directory")
    for name in (COEF_FILE, META_FILE):
        if not (directory / name).is_file():
            raise _missing(directory, f"{name} is missing")
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        feat = meta["featurizer"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _missing(directory, f"the files are damaged ({type(err).__name__}: {err})") from None
    name = feat.get("name") if isinstance(feat, dict) else None
    if meta.get("format") != FORMAT or name != FEATURIZER:
        raise ValueError(
            f"quality classifier {directory} is of format {meta.get('format')!r} with featurizer {name!r}, "
            f"written by an older version of lightning-llm; this version reads format {FORMAT} "
            f"({FEATURIZER} features) only. Retrain it with `{TRAIN_COMMAND}` (the same sources and options)."
        )
    try:
        featurizer = Featurizer(**feat)
        with np.load(directory / COEF_FILE, allow_pickle=False) as arrays:
            coef = np.asarray(arrays["coef"], dtype=np.float64)
            intercept = float(arrays["intercept"][0])
        passage_chars = int(meta["passage_chars"])
    except (OSError, ValueError, KeyError, TypeError, IndexError, re.error) as err:
        raise _missing(directory, f"the files are damaged ({type(err).__name__}: {err})") from None
    if coef.shape != (featurizer.n_features,) or not np.all(np.isfinite(coef)) or passage_chars < 1:
        raise _missing(
            directory, f"coefficients of shape {coef.shape} do not fit {featurizer.n_features} features"
        )
    return QualityModel(featurizer, coef, intercept, passage_chars, meta)


def classifier_sha256(directory: str | Path) -> str:
    """sha256 over ``classifier.npz`` and ``classifier.json`` (what decides the scores)."""
    directory = Path(directory).expanduser()
    digest = hashlib.sha256()
    for name in (COEF_FILE, META_FILE):
        try:
            data = (directory / name).read_bytes()
        except OSError:
            raise _missing(directory, f"{name} is missing or unreadable") from None
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


# -- training -------------------------------------------------------------------------------------------
def sample_passages(
    spec: str,
    role: str,
    *,
    max_passages: int,
    passage_chars: int,
    seed: int,
    text_field: str,
    cache_dir: str | None,
) -> tuple[list[str], dict[str, Any]]:
    """A seeded uniform sample (reservoir) of at most ``max_passages`` distinct passages of source ``spec``."""
    from lightning_llm.data.sources import resolve_source

    source = resolve_source(spec, text_field=text_field, cache_dir=cache_dir)
    rng = random.Random(f"{seed}:{role}")
    sample: list[str] = []
    seen: set[bytes] = set()
    documents = total = 0
    bar = tqdm(source.documents(), desc=f"reading {role} ({spec})", unit="doc", disable=None)
    for doc in bar:
        documents += 1
        for passage in split_passages(doc.text, passage_chars):
            key = hashlib.blake2b(passage.encode("utf-8", "surrogatepass"), digest_size=8).digest()
            if key in seen:
                continue
            seen.add(key)
            total += 1
            if len(sample) < max_passages:
                sample.append(passage)
            elif (j := rng.randrange(total)) < max_passages:
                sample[j] = passage
        bar.set_postfix(passages=total, refresh=False)
    if total < MIN_PASSAGES:
        raise ValueError(
            f"the {role} source {spec!r} gave {documents} documents and {total} distinct passages of text; "
            f"training needs at least {MIN_PASSAGES}: give a source with more text"
            + (f" (or check --text_field, now {text_field!r})" if documents == 0 else "")
        )
    info = {"source": spec, "fingerprint": source.fingerprint(), "documents": documents, "passages": total}
    return sample, info


def _split(passages: list[str], val_fraction: float, rng: random.Random) -> tuple[list[str], list[str]]:
    shuffled = sorted(passages)  # the reservoir's order does not matter, only the seed does
    rng.shuffle(shuffled)
    n_val = min(max(1, round(len(shuffled) * val_fraction)), len(shuffled) - 1)
    return shuffled[n_val:], shuffled[:n_val]


def _featurize(model: QualityModel, passages: list[str], what: str, batch: int = 512) -> Any:
    import scipy.sparse as sp

    parts = []
    with tqdm(total=len(passages), desc=f"featurizing {what}", unit="passage", disable=None) as bar:
        for i in range(0, len(passages), batch):
            parts.append(model.features(passages[i : i + batch]))
            bar.update(len(passages[i : i + batch]))
    return sp.vstack(parts).tocsr()


def train_quality_classifier(
    positive: str,
    negative: str,
    output_dir: str | Path,
    *,
    max_passages: int = 10_000,
    passage_chars: int = 1500,
    val_fraction: float = 0.1,
    seed: int = 0,
    text_field: str = "text",
    cache_dir: str | None = None,
    overwrite: bool = False,
    regularization: float = 4.0,
) -> QualityModel:
    """Train a classifier of ``positive`` (trusted) against ``negative`` passages and save it in ``output_dir``.

    ``positive`` and ``negative`` are source specs as ``prepare --source`` takes them (a file, a directory,
    a glob, ``classics``). Each class is a seeded sample of at most ``max_passages`` distinct passages; the
    classes are weighted to count equally (so 0.5 is the natural threshold) and ``val_fraction`` of each is
    held out to report accuracy, precision and recall (of the trusted class) in ``classifier.json``.
    ``regularization`` is the inverse L2 strength (scikit-learn's ``C``). Returns the trained model.
    """
    output_dir = Path(output_dir).expanduser()
    if output_dir.is_file():
        raise ValueError(f"--output_dir {output_dir} is a file, not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        what = "a quality classifier" if (output_dir / META_FILE).exists() else "files"
        raise ValueError(
            f"--output_dir {output_dir} already holds {what}; pass --overwrite true to replace the classifier "
            f"there (only {COEF_FILE} and {META_FILE} are written), or choose another directory"
        )
    sklearn = _sklearn()
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    options = dict(
        max_passages=max_passages,
        passage_chars=passage_chars,
        seed=seed,
        text_field=text_field,
        cache_dir=cache_dir,
    )
    pos, pos_info = sample_passages(positive, "positive", **options)  # type: ignore[arg-type]
    neg, neg_info = sample_passages(negative, "negative", **options)  # type: ignore[arg-type]
    rng = random.Random(seed)
    pos_train, pos_val = _split(pos, val_fraction, rng)
    neg_train, neg_val = _split(neg, val_fraction, rng)
    model = QualityModel(Featurizer(), np.zeros(0), 0.0, passage_chars)
    x_train = _featurize(model, pos_train + neg_train, "training passages")
    y_train = np.array([1] * len(pos_train) + [0] * len(neg_train))
    # the dual problem has a variable per passage, not per hash bucket: fast, as passages << buckets
    clf = LogisticRegression(
        C=regularization,
        class_weight="balanced",
        solver="liblinear",
        dual=True,
        max_iter=1000,
        random_state=seed,
    )
    clf.fit(x_train, y_train)
    model.coef = np.asarray(clf.coef_[0], dtype=np.float64)
    model.intercept = float(clf.intercept_[0])
    predicted = model.probabilities(pos_val + neg_val) >= 0.5
    truth = np.array([True] * len(pos_val) + [False] * len(neg_val))
    tp = int(np.sum(predicted & truth))
    fp = int(np.sum(predicted & ~truth))
    model.meta = {
        "kind": "lightning-llm quality classifier",
        "model": dict(
            type="logistic_regression", solver="liblinear (dual)", C=regularization, class_weight="balanced"
        ),
        "training": {
            "positive": pos_info,
            "negative": neg_info,
            "passages": {
                "positive": {"train": len(pos_train), "held_out": len(pos_val)},
                "negative": {"train": len(neg_train), "held_out": len(neg_val)},
            },
            "max_passages": max_passages,
            "val_fraction": val_fraction,
            "seed": seed,
            "text_field": text_field,
            "seconds": round(time.perf_counter() - started, 2),
        },
        "held_out": {
            "accuracy": round(float(np.mean(predicted == truth)), 4),
            "precision": round(tp / max(int(predicted.sum()), 1), 4),
            "recall": round(tp / len(pos_val), 4),
            "false_positives": fp,
            "passages": len(truth),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "scikit_learn": sklearn.__version__,
    }
    model.save(output_dir)
    return model
