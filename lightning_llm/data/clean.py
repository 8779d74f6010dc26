"""Cleaning: the settings (:class:`CleanConfig`) and the steps they choose, run by a :class:`Pipeline`.

A step returns the document (changed or not) or ``None`` to drop it. Stateless steps are plain
transforms or filters (the heuristics of :mod:`lightning_llm.data.filters` and any registered filter
plugin, :mod:`lightning_llm.data.filtering`); dedup steps (:mod:`lightning_llm.data.dedup`) remember what
they have seen. The pipeline (:mod:`lightning_llm.data.pipeline`) streams, counts documents and UTF-8
bytes in and out of every step for the prepare report, and can run the stateless steps in worker processes.

``build_pipeline(CleanConfig())`` gives: Unicode normalisation → whitespace clean-up → Project Gutenberg
boilerplate (``strip_gutenberg``, from :mod:`lightning_llm.data.documents`, which the classics source
uses too) → quality filters → the ``filters`` plugins → exact dedup → near dedup.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightning_llm.data.dedup import ExactDedup, NearDedup
from lightning_llm.data.documents import Document, strip_gutenberg
from lightning_llm.data.errors import ConfigError
from lightning_llm.data.filtering import FilterContext, FilterSpec, build_filter
from lightning_llm.data.filters import quality_filters
from lightning_llm.data.pipeline import Pipeline, Step, StepStats, step_name

__all__ = ["CleanConfig", "Pipeline", "Step", "StepStats", "Transform", "build_pipeline", "step_name"]
NORMAL_FORMS = ("NFC", "NFKC", "NFD", "NFKD")

# -- transforms ---------------------------------------------------------------------------------------
_LINE_BREAKS = str.maketrans({c: "\n" for c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})
_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b\ufeff]")  # controls but \t \n, ZWSP, BOM
_BLANK_RUN = re.compile(r"\n{4,}")


def clean_whitespace(text: str) -> str:
    """Normalise line endings, drop control characters, strip trailing spaces, keep ≤ 2 blank lines.

    Leading and trailing blank lines go too; indentation stays (it carries meaning in verse and code).
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_LINE_BREAKS)
    text = _INVISIBLE.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_RUN.sub("\n\n\n", text).strip("\n")


@dataclass(frozen=True)
class Transform:
    """A step that rewrites the text with ``fn``; a document left blank is dropped."""

    name: str
    fn: Callable[[str], str]

    def __call__(self, doc: Document) -> Document | None:
        text = self.fn(doc.text)
        if not text or text.isspace():
            return None
        return doc if text == doc.text else Document(text, doc.source)


def unicode_normalizer(form: str) -> Transform:
    """A step that puts text in Unicode normal form ``form`` (NFC, NFKC, NFD or NFKD)."""
    if form not in NORMAL_FORMS:
        raise ValueError(f"Unknown Unicode normal form {form!r}; choose one of {', '.join(NORMAL_FORMS)}.")
    return Transform(f"normalize_{form}", lambda text: unicodedata.normalize(form, text))


@dataclass
class CleanConfig:
    """How documents are cleaned, filtered and deduplicated. A bound set to None turns its filter off.

    The defaults keep ordinary English prose and verse (every Shakespeare play, Milton, each book of
    the Bible) and drop empty, binary, symbol-soup and copy-pasted documents.
    """

    normalize: str | None = "NFC"
    """Unicode normal form applied first (NFC, NFKC, NFD, NFKD), or None to leave text as read."""
    clean_whitespace: bool = True
    """Normalise line endings, drop control characters and trailing spaces, keep at most 2 blank lines."""
    strip_boilerplate: bool = True
    """Cut Project Gutenberg headers and licences (documents without the markers are unchanged)."""
    min_chars: int | None = 100
    """Drop documents shorter than this many characters (after the clean-up)."""
    max_chars: int | None = None
    """Drop documents longer than this many characters."""
    min_alpha_ratio: float | None = 0.6
    """Drop documents where letters are less than this share of the non-whitespace characters."""
    max_symbol_ratio: float | None = 0.1
    """Drop documents where symbols (not letters, digits or common punctuation; U+FFFD counts) are more
    than this share of the non-whitespace characters."""
    max_repetition_ratio: float | None = 0.3
    """Drop documents where lines that repeat an earlier line hold more than this share of the characters."""
    max_ngram_repetition_ratio: float | None = 0.2
    """Drop documents where more than this share of the word n-grams (n = repetition_ngram) are repeats."""
    repetition_ngram: int = 10
    """Word n-gram length for max_ngram_repetition_ratio."""
    min_stopword_ratio: float | None = 0.1
    """Drop documents where English stop words are less than this share of the whitespace tokens."""
    min_chars_per_token: float | None = 3.0
    """Drop documents whose whitespace-separated tokens are shorter than this on average."""
    max_chars_per_token: float | None = 10.0
    """Drop documents whose whitespace-separated tokens are longer than this on average."""
    exact_dedup: bool = True
    """Drop documents whose text (whitespace collapsed, case folded) was seen before."""
    near_dedup: bool = True
    """Drop documents that are near-copies of earlier ones (MinHash LSH over word shingles)."""
    minhash_threshold: float = 0.8
    """Estimated Jaccard similarity of word shingles at or above which a document is a near-copy."""
    minhash_num_perm: int = 128
    """Permutations in a MinHash signature: more is more precise and slower."""
    shingle_size: int = 5
    """Words per shingle for near-dedup."""
    filters: list[FilterSpec] = field(default_factory=list)
    """More filters, by registered name with their options, run after the bounds above and before dedup,
    in this order: e.g. ``[{name: language, options: {languages: [en]}}, {name: offensive}, {name: quality,
    options: {classifier: data/mine/quality}}]``. ``lightning-llm plugins`` lists the installed ones."""

    def __post_init__(self) -> None:
        problems = []
        if self.normalize is not None and self.normalize not in NORMAL_FORMS:
            problems.append(
                f"--clean.normalize must be one of {', '.join(NORMAL_FORMS)}, or null to keep text as "
                f"read; got {self.normalize!r}"
            )
        for name in ("min_alpha_ratio", "max_symbol_ratio", "max_repetition_ratio", "max_ngram_repetition_ratio",
                     "min_stopword_ratio", "minhash_threshold"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                problems.append(f"--clean.{name} is a fraction between 0 and 1; got {value}")
        if self.repetition_ngram < 1 or self.shingle_size < 1 or self.minhash_num_perm < 2:
            problems.append(
                f"--clean.repetition_ngram ({self.repetition_ngram}) and --clean.shingle_size "
                f"({self.shingle_size}) must be at least 1 and --clean.minhash_num_perm "
                f"({self.minhash_num_perm}) at least 2"
            )
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            problems.append(
                f"--clean.min_chars {self.min_chars} is more than --clean.max_chars {self.max_chars}, "
                f"which would drop every document; lower min_chars or raise max_chars"
            )
        self.filters = [FilterSpec(**f) if isinstance(f, dict) else f for f in self.filters]
        for spec in self.filters:
            try:
                build_filter(spec)  # an unknown name or option fails here, before anything is read
            except ConfigError as err:
                problems.append(str(err).rstrip("."))
        if problems:
            raise ConfigError("invalid cleaning settings: " + "; ".join(problems) + ".")


def config_filters(cfg: CleanConfig) -> list[Any]:
    """The quality filters (``RangeFilter``s) that ``cfg``'s bounds switch on, in pipeline order."""
    return quality_filters(
        min_chars=cfg.min_chars,
        max_chars=cfg.max_chars,
        min_alpha_ratio=cfg.min_alpha_ratio,
        max_symbol_ratio=cfg.max_symbol_ratio,
        max_line_repetition=cfg.max_repetition_ratio,
        max_ngram_repetition=cfg.max_ngram_repetition_ratio,
        repetition_ngram=cfg.repetition_ngram,
        min_stopword_ratio=cfg.min_stopword_ratio,
        min_chars_per_token=cfg.min_chars_per_token,
        max_chars_per_token=cfg.max_chars_per_token,
    )


def build_pipeline(
    cfg: CleanConfig,
    workers: int = 1,
    context: FilterContext | None = None,
    on_forked: Callable[[], None] | None = None,
) -> Pipeline:
    """The steps ``cfg`` asks for, in order: normalise, whitespace, boilerplate, filters, dedup.

    With a ``context`` the plugin filters are set up (models loaded) here, before any document is read.
    """
    steps: list[Step] = []
    if cfg.normalize is not None:
        steps.append(unicode_normalizer(cfg.normalize))
    if cfg.clean_whitespace:
        steps.append(Transform("whitespace", clean_whitespace))
    if cfg.strip_boilerplate:
        steps.append(Transform("gutenberg_boilerplate", strip_gutenberg))
    steps += config_filters(cfg)
    for spec in cfg.filters:
        flt = build_filter(spec)
        if context is not None:
            flt.setup(context)
        steps.append(flt)
    if cfg.exact_dedup:
        steps.append(ExactDedup())
    if cfg.near_dedup:
        steps.append(NearDedup(cfg.minhash_threshold, cfg.minhash_num_perm, cfg.shingle_size))
    return Pipeline(steps, workers=workers, on_forked=on_forked)
