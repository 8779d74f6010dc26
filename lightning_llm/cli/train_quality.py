"""``lightning-llm train-quality``: train the quality classifier that the ``quality`` filter of prepare applies.

lightning-llm train-quality --positive classics --negative 'raw/*.jsonl' --output_dir data/mine/quality
lightning-llm train-quality --positive trusted/ --negative junk.jsonl --output_dir data/mine/quality --overwrite true

Put the classifier next to the dataset it filters (``<dataset>/quality``: prepare leaves files it does not own
alone), then prepare with ``--clean.filters '[{name: quality, options: {classifier: data/mine/quality}}]'``.
The work is done by :func:`lightning_llm.data.quality_model.train_quality_classifier`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from lightning_llm.cli import UserError

DESCRIPTION = (
    "Train a fast quality classifier (hashed word unigrams and bigrams, logistic regression) that tells "
    "passages of a corpus you trust (--positive) from junk or from a sample of the raw input (--negative), "
    "and save it (classifier.npz, classifier.json) in --output_dir for prepare's quality filter."
)


@dataclass
class TrainQualityConfig:
    """Settings of ``lightning-llm train-quality``."""

    positive: str
    """Text you trust (the positive class): a source as prepare's --source takes it (a .txt/.jsonl/.parquet
    file, a directory, a glob, or classics)."""
    negative: str
    """Text to filter out (the negative class): a user-given junk set, or a sample of the raw input that
    will be prepared; a source like --positive."""
    output_dir: str
    """Directory that receives classifier.npz and classifier.json; by convention the dataset directory plus
    /quality (e.g. data/classics-filtered/quality)."""
    max_passages: int = 10_000
    """Passages per class at most: a seeded uniform sample of each source's distinct passages."""
    passage_chars: int = 1500
    """Length of a passage in characters (cut at line breaks, else spaces); the filter scores the same."""
    val_fraction: float = 0.1
    """Share of each class's passages held out to report accuracy, precision and recall."""
    seed: int = 0
    """Seed of the passage sample and of the held-out split."""
    text_field: str = "text"
    """Field (JSON Lines) or column (Parquet) that holds the text."""
    cache_dir: str | None = None
    """Where the classics corpus is cached (default: ~/.cache/lightning_llm)."""
    overwrite: bool = False
    """Replace the classifier in an --output_dir that already holds files."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise UserError("invalid settings, so nothing was read or written: " + "; ".join(problems) + ".")

    def problems(self) -> list[str]:
        """What is wrong with the settings, one sentence per field."""
        p: list[str] = []
        for name in ("positive", "negative", "output_dir"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                p.append(f"--{name} must not be empty")
        if not _is_int(self.max_passages) or self.max_passages < 20:
            p.append(f"--max_passages {self.max_passages!r} must be a whole number, at least 20")
        if not _is_int(self.passage_chars) or self.passage_chars < 100:
            p.append(
                f"--passage_chars {self.passage_chars!r} must be a whole number, at least 100 (e.g. 1500)"
            )
        f = self.val_fraction
        if not isinstance(f, int | float) or isinstance(f, bool) or not 0.0 < f <= 0.5:
            p.append(f"--val_fraction {f!r} must lie in (0, 0.5] (e.g. 0.1)")
        if not _is_int(self.seed):
            p.append(f"--seed must be a whole number; got {self.seed!r}")
        return p


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def build_parser() -> ArgumentParser:
    """The argument parser of ``lightning-llm train-quality``."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docstrings become --help text
    parser = ArgumentParser(prog="lightning-llm train-quality", description=DESCRIPTION)
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file of the options below.")
    parser.add_class_arguments(TrainQualityConfig, nested_key=None, fail_untyped=True)
    return parser


def parse_config(argv: list[str] | None = None) -> TrainQualityConfig:
    """The config from command-line arguments (and ``--config`` files); building it validates it."""
    ns = build_parser().parse_args(argv)
    return TrainQualityConfig(**{f.name: ns[f.name] for f in fields(TrainQualityConfig)})


def train_quality_main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-llm train-quality``."""
    from lightning_llm.data.quality_model import train_quality_classifier

    cfg = parse_config(argv)
    model = train_quality_classifier(
        cfg.positive,
        cfg.negative,
        cfg.output_dir,
        max_passages=cfg.max_passages,
        passage_chars=cfg.passage_chars,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        text_field=cfg.text_field,
        cache_dir=cfg.cache_dir,
        overwrite=cfg.overwrite,
    )
    train, held = model.meta["training"], model.meta["held_out"]
    counts = train["passages"]
    print(
        f"Trained a quality classifier in {train['seconds']:.1f} s on {counts['positive']['train']:,} trusted and "
        f"{counts['negative']['train']:,} negative passages of {cfg.passage_chars} characters.\n"
        f"Held out {held['passages']:,} passages: accuracy {held['accuracy']:.3f}, precision {held['precision']:.3f}, "
        f"recall {held['recall']:.3f} (of the trusted class, at P(trusted) >= 0.5).\n"
        f"Saved {Path(cfg.output_dir) / 'classifier.npz'} and classifier.json. Filter with it:\n"
        f"  lightning-llm prepare ... --clean.filters "
        f"'[{{name: quality, options: {{classifier: {cfg.output_dir}, min_score: 0.5}}}}]'"
    )
