"""``lightning-llm prepare``: every ``PrepareConfig`` field is an option, its docstring is the help text.

lightning-llm prepare --config configs/data/classics.yaml
lightning-llm prepare --source ~/texts --tokenizer bpe --vocab_size 8192 --output_dir data/mine
lightning-llm prepare --config configs/data/classics.yaml --clean.min_chars 200 --print_config
"""

from __future__ import annotations

import sys
from dataclasses import fields

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from lightning_llm.data.errors import DataError, PrepareError
from lightning_llm.data.prepare import PrepareConfig, prepare
from lightning_llm.data.tokenizer import TokenizerError


def build_parser() -> ArgumentParser:
    """The argument parser of ``lightning-llm prepare``."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docstrings become --help text
    parser = ArgumentParser(
        prog="lightning-llm prepare",
        description="Read a corpus, clean and deduplicate it, train or load a tokenizer and write "
        "litdata token shards (train/, val/), tokenizer/ and report.json into --output_dir.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file of the options below.")
    parser.add_class_arguments(PrepareConfig, nested_key=None, fail_untyped=True)
    return parser


def parse_config(argv: list[str] | None = None) -> PrepareConfig:
    """``PrepareConfig`` from command-line arguments (and ``--config`` files), validated.

    The parser only checks types; building the dataclass runs its validation (``ConfigError``).
    """
    parser = build_parser()
    ns = parser.instantiate(parser.parse_args(argv))  # builds the nested CleanConfig
    return PrepareConfig(**{f.name: ns[f.name] for f in fields(PrepareConfig)})


def prepare_main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-llm prepare``; errors are printed without a traceback."""
    try:
        cfg = parse_config(argv)
        prepare(cfg)
    except (PrepareError, DataError, TokenizerError, FileNotFoundError) as err:
        sys.exit(f"lightning-llm prepare: error: {err}")


if __name__ == "__main__":
    prepare_main()
