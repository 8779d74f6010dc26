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
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lightning_llm.data.filtering import INSTALL_HINT, FilterError

FORMAT = 2  # 1: scikit-learn's HashingVectorizer (MurmurHash3) features
FEATURIZER = "crc32-v1"
COEF_FILE = "classifier.npz"
META_FILE = "classifier.json"
TRAIN_COMMAND = "lightning-llm train-quality --positive TRUSTED --negative JUNK --output_dir DIR"
MIN_PASSAGES = 10  # per class: fewer cannot be split into training and held-out passages
# words (any script) and single punctuation marks / symbols, so markup and garbled text have features too
TOKEN_PATTERN = r"(?u)\b\w+\b|[^\w\s]"


def _sklearn() -> Any:
    """The ``sklearn`` package, or a ``FilterError`` saying how to install it."""
    try:
        import sklearn
        import sklearn.linear_model  # noqa: F401
    except ImportError as err:
        raise FilterError(f"The quality classifier needs scikit-learn ({err}): {INSTALL_HINT}") from None
    return sklearn


# -- passages -------------------------------------------------------------------------------------------
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


def evenly_spaced(items: Sequence[str], k: int) -> list[str]:
    """At most ``k`` of ``items``, evenly spaced from the first to the last (all of them if ``k`` suffices)."""
    n = len(items)
    if n <= k:
        return list(items)
    if k == 1:
        return [items[n // 2]]
    return [items[(i * (n - 1)) // (k - 1)] for i in range(k)]


# -- the model ------------------------------------------------------------------------------------------
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
