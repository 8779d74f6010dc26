"""``lightning-llm prepare-sft`` and ``prepare-dpo``: their settings, and every field an option whose docstring
is the help (the work is done by :func:`lightning_llm.data.chat_prepare.prepare_chat`).

lightning-llm prepare-sft --tokenizer data/classics                      # the builtin classics-instructions
lightning-llm prepare-sft --source chats.jsonl --tokenizer model.ckpt --output_dir data/my-sft
lightning-llm prepare-dpo --source prefs.jsonl --tokenizer sft.ckpt --output_dir data/my-dpo --block_size 512
lightning-llm prepare-sft --config my-sft-data.yaml --print_config
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from lightning_llm.data.chat_prepare import prepare_chat
from lightning_llm.data.chat_records import FORMATS
from lightning_llm.data.classics_tasks import BUILTIN_SOURCES
from lightning_llm.data.errors import ConfigError
from lightning_llm.data.layout import REPORT

_A_SET = {"sft": "an instruction (SFT) set", "dpo": "a preference (DPO) set"}
_DESCRIPTIONS = {
    "sft": 'Read instruction-tuning records (JSON Lines: {"messages": [...]} or Alpaca\'s {"instruction", '
    '"input", "output"}) or the builtin classics-instructions, render them with the chat template and write '
    "litdata shards (train/, val/), tokenizer/ and report.json into --output_dir, for lightning-llm sft.",
    "dpo": 'Read preference records (JSON Lines: {"prompt", "chosen", "rejected"}) or the builtin '
    "classics-preferences, render both replies with the chat template and write litdata shards (train/, val/), "
    "tokenizer/ and report.json into --output_dir, for lightning-llm dpo.",
}


@dataclass
class ChatPrepareConfig:
    """Settings shared by ``lightning-llm prepare-sft`` and ``prepare-dpo``."""

    kind: ClassVar[str] = "sft"
    source: str = "classics-instructions"
    """JSON Lines file of records (``.gz`` allowed), or a builtin set: classics-instructions (prepare-sft),
    classics-preferences (prepare-dpo)."""
    output_dir: str = "data/classics-sft"
    """Directory that receives train/, val/, tokenizer/, report.json and prepared.json."""
    tokenizer: str = "data/classics"
    """Base tokenizer, to which the chat tokens are added: the path of the lightning-llm checkpoint to fine-tune
    (its tokenizer), a directory prepared by ``lightning-llm prepare`` (its tokenizer/; the quick start's is
    data/classics), or gpt2."""
    block_size: int = 256
    """Longest sequence (prompt and reply, in tokens) allowed; a longer record is an error. At most the
    model's block size."""
    val_source: str | None = None
    """JSON Lines file of validation records; if not given, --val_fraction of --source is held out."""
    val_fraction: float = 0.1
    """Share of --source records held out for validation (by a seeded hash of each record), without
    --val_source."""
    seed: int = 42
    """Seed of the validation split (and of the builtin sets' generation)."""
    num_workers: int = 1
    """Processes that write the litdata chunks."""
    cache_dir: str | None = None
    """Where the classics corpus of the builtin sets is cached (default: ~/.cache/lightning_llm)."""
    overwrite: bool = False
    """Rebuild an existing dataset prepared with other settings."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def builtin(self) -> bool:
        """Whether ``source`` names a builtin classics set."""
        return self.source in BUILTIN_SOURCES

    def validate(self) -> None:
        """Raise ``ConfigError`` (one paragraph, every bad field) unless all settings are usable."""
        problems = self.problems()
        if problems:
            raise ConfigError(
                "invalid settings, so nothing was read or written: " + "; ".join(problems) + "."
            )

    def problems(self) -> list[str]:
        """What is wrong with the settings, one sentence per field."""
        p: list[str] = []
        if not isinstance(self.source, str) or not self.source.strip():
            p.append(
                f"--source {self.source!r} must name a JSON Lines file or a builtin set ({', '.join(BUILTIN_SOURCES)})"
            )
        elif self.builtin and BUILTIN_SOURCES[self.source] != self.kind:
            p.append(
                f"--source {self.source} is {_A_SET[BUILTIN_SOURCES[self.source]]}: prepare it with "
                f"lightning-llm prepare-{BUILTIN_SOURCES[self.source]}"
            )
        elif not self.builtin and not Path(self.source).expanduser().is_file():
            names = ", ".join(k for k, v in BUILTIN_SOURCES.items() if v == self.kind)
            p.append(
                f"--source {self.source}: no such file; give a JSON Lines file of records, or the builtin {names}"
            )
        if not isinstance(self.output_dir, str) or not self.output_dir.strip():
            p.append("--output_dir must name the directory that receives the dataset")
        elif Path(self.output_dir).expanduser().is_file():
            p.append(f"--output_dir {self.output_dir} is a file, not a directory")
        if not isinstance(self.tokenizer, str) or not (
            self.tokenizer == "gpt2" or Path(self.tokenizer).expanduser().exists()
        ):
            p.append(
                f"--tokenizer {self.tokenizer!r} is neither gpt2 nor an existing path: give the checkpoint you will "
                f"fine-tune, or the directory of a dataset prepared by lightning-llm prepare (e.g. data/classics)"
            )
        if not _is_int(self.block_size) or self.block_size < 8:
            p.append(
                f"--block_size {self.block_size!r} must be a whole number of tokens, at least 8 (e.g. 256)"
            )
        if self.val_source is not None:
            if self.builtin:
                p.append(
                    "--val_source cannot be combined with a builtin --source, which brings its own held-out records"
                )
            elif not Path(self.val_source).expanduser().is_file():
                p.append(f"--val_source {self.val_source}: no such file")
        f = self.val_fraction
        if not isinstance(f, int | float) or isinstance(f, bool) or not 0.0 < f < 1.0:
            p.append(f"--val_fraction {f!r} must lie strictly between 0 and 1 (e.g. 0.1)")
        if not _is_int(self.seed):
            p.append(f"--seed must be a whole number; got {self.seed!r}")
        if not _is_int(self.num_workers) or self.num_workers < 1:
            p.append(f"--num_workers {self.num_workers!r} must be at least 1")
        if not isinstance(self.overwrite, bool):
            p.append(f"--overwrite must be true or false; got {self.overwrite!r}")
        return p


@dataclass
class SFTPrepareConfig(ChatPrepareConfig):
    """Settings of ``lightning-llm prepare-sft``."""

    kind: ClassVar[str] = "sft"
    format: Literal["auto", "messages", "alpaca"] = "auto"
    """Record format: messages ({"messages": [...]}), alpaca ({"instruction", "input", "output"}), or auto
    (each record by its keys)."""

    def problems(self) -> list[str]:
        extra = (
            []
            if self.format in FORMATS
            else [f"--format {self.format!r} must be one of {', '.join(FORMATS)}"]
        )
        if self.builtin and self.format == "alpaca":
            extra.append(
                f"--format alpaca does not apply to {self.source}, whose records are messages: leave it at auto"
            )
        return super().problems() + extra


@dataclass
class DPOPrepareConfig(ChatPrepareConfig):
    """Settings of ``lightning-llm prepare-dpo``."""

    kind: ClassVar[str] = "dpo"
    source: str = "classics-preferences"
    """JSON Lines file of {"prompt", "chosen", "rejected"} records (``.gz`` allowed), or the builtin set
    classics-preferences."""
    output_dir: str = "data/classics-dpo"
    """Directory that receives train/, val/, tokenizer/, report.json and prepared.json."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def build_parser(config_class: type[ChatPrepareConfig]) -> ArgumentParser:
    """The argument parser of ``lightning-llm prepare-sft`` (``SFTPrepareConfig``) or ``prepare-dpo``."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docstrings become --help text
    parser = ArgumentParser(
        prog=f"lightning-llm prepare-{config_class.kind}", description=_DESCRIPTIONS[config_class.kind]
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file of the options below.")
    parser.add_class_arguments(config_class, nested_key=None, fail_untyped=True)
    return parser


def parse_config(config_class: type[ChatPrepareConfig], argv: list[str] | None = None) -> ChatPrepareConfig:
    """The config from command-line arguments (and ``--config`` files); building it validates it."""
    parser = build_parser(config_class)
    ns = parser.parse_args(argv)
    return config_class(**{f.name: ns[f.name] for f in fields(config_class)})


def summary(out: str | Path) -> str:
    """A short human-readable summary of a prepared directory's report."""
    out = Path(out)
    r = json.loads((out / REPORT).read_text())
    sp = r["splits"]
    unit = "conversations" if r["kind"] == "sft" else "preference pairs"
    return (
        f"Prepared {out} ({r['kind']}): {r['records']:,} {unit} (train {sp['train']['records']:,}, val "
        f"{sp['val']['records']:,}), {r['tokens']:,} tokens of which {r['trained_tokens']:,} trained, longest "
        f"{r['longest']} of block_size {r['block_size']}; tokenizer {r['tokenizer']['name']} with chat tokens "
        f"({r['tokenizer']['vocab_size']:,} ids)."
    )


def _run(config_class: type[ChatPrepareConfig], argv: list[str] | None) -> None:
    cfg = parse_config(config_class, argv)
    out = prepare_chat(cfg)
    print(summary(out))


def prepare_sft_main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-llm prepare-sft``; user errors reach ``lightning_llm.cli.main`` as one paragraph."""
    _run(SFTPrepareConfig, argv)


def prepare_dpo_main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-llm prepare-dpo``."""
    _run(DPOPrepareConfig, argv)
