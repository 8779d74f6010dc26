"""``lightning-llm``: one table of subcommands, each in its own module, imported only when it runs.

``lightning-llm --help`` and ``lightning-llm plugins`` import neither Lightning nor the model; a subcommand's
module (``lightning_llm.cli.<module>``) is imported when that subcommand is asked for. Errors that are the
user's to fix (``UserError``, and ``ValueError``/``FileNotFoundError``/``RuntimeError`` raised by our own
code) are printed as one paragraph without a traceback; ``LIGHTNING_LLM_DEBUG=1`` shows it.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass


class UserError(ValueError):
    """Bad input from the command line or a config: printed as one paragraph, without a traceback."""


@dataclass(frozen=True)
class Command:
    """One subcommand: ``lightning_llm.cli.<module>.<function>(argv)`` runs it."""

    name: str
    module: str
    """Submodule of ``lightning_llm.cli`` that holds the subcommand (imported only when it runs)."""
    function: str
    """Function of that module called with the arguments after the subcommand."""
    summary: str
    """One line for ``lightning-llm --help``."""
    example: str = ""
    """An example command line, shown after the summary."""
    gets_name: bool = False
    """Pass the subcommand itself as ``argv[0]`` (LightningCLI parses it)."""

    def load(self) -> Callable[[list[str]], None]:
        return getattr(importlib.import_module(f"{__name__}.{self.module}"), self.function)


COMMANDS: tuple[Command, ...] = (
    Command(
        "fit",
        "train",
        "train_main",
        "train a model",
        "lightning-llm fit --config configs/quickstart.yaml",
        gets_name=True,
    ),
    Command(
        "validate",
        "train",
        "train_main",
        "evaluate a checkpoint",
        "lightning-llm validate --config ... --ckpt_path ...",
        gets_name=True,
    ),
    Command(
        "test",
        "train",
        "train_main",
        "score a checkpoint on the validation split (prepare writes no test split)",
        gets_name=True,
    ),
    Command(
        "prepare",
        "prepare",
        "prepare_main",
        "build a tokenized dataset",
        "lightning-llm prepare --config configs/data/classics.yaml",
    ),
    Command(
        "train-quality",
        "train_quality",
        "train_quality_main",
        "train the quality classifier of prepare's quality filter (trusted text vs junk)",
        "lightning-llm train-quality --positive classics --negative RAW --output_dir DIR/quality",
    ),
    Command(
        "prepare-sft",
        "prepare_chat",
        "prepare_sft_main",
        "build an instruction-tuning dataset from JSONL conversations / Alpaca records",
        "lightning-llm prepare-sft --source data.jsonl --tokenizer CKPT --output_dir DIR",
    ),
    Command(
        "prepare-dpo",
        "prepare_chat",
        "prepare_dpo_main",
        "build a preference dataset from JSONL prompt/chosen/rejected records",
        "lightning-llm prepare-dpo --source prefs.jsonl --tokenizer CKPT --output_dir DIR",
    ),
    Command(
        "sft",
        "post_train",
        "sft_main",
        "supervised fine-tuning on a prepare-sft dataset (fit by default; also validate)",
        "lightning-llm sft --config configs/sft-quickstart.yaml",
    ),
    Command(
        "dpo",
        "post_train",
        "dpo_main",
        "preference alignment (DPO) against a frozen reference (fit by default; also validate)",
        "lightning-llm dpo --config configs/dpo-quickstart.yaml",
    ),
    Command(
        "generate",
        "generate",
        "generate_main",
        "sample text from a checkpoint",
        'lightning-llm generate --ckpt_path ... --prompt "..."',
    ),
    Command(
        "export",
        "export",
        "export_main",
        "write a checkpoint as a Hugging Face transformers directory (GPT-2/Llama)",
        "lightning-llm export --ckpt_path ... --to hf --out DIR",
    ),
    Command(
        "import",
        "hf_import",
        "import_main",
        "read a transformers GPT-2/Llama directory into a checkpoint",
        "lightning-llm import --from DIR --out imported.ckpt",
    ),
    Command(
        "eval",
        "evaluate",
        "evaluate_main",
        "score a checkpoint on lm-evaluation-harness tasks (pip install 'lightning-llm[eval]')",
        "lightning-llm eval --ckpt_path ... --tasks classics_continuation",
    ),
    Command(
        "consolidate",
        "consolidate",
        "consolidate_main",
        "write a distributed (FSDP2 / tensor-parallel) checkpoint directory as one file",
        "lightning-llm consolidate --ckpt_path DIR --out FILE",
    ),
    Command("plugins", "plugins", "plugins_main", "list registered components and whether they run here"),
    Command(
        "bench", "bench", "bench_main", "benchmarks: attention | train | data | generate (source checkout)"
    ),
)
BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}


def _usage() -> str:
    width = max(len(c.name) for c in COMMANDS) + 2
    lines = [f"  {c.name:<{width}} {c.summary}" + (f" ({c.example})" if c.example else "") for c in COMMANDS]
    return "\n".join(
        [
            "usage: lightning-llm <command> [options]",
            "",
            "commands:",
            *lines,
            "",
            "Run `lightning-llm <command> --help` for the options of a command.",
        ]
    )


USAGE = _usage()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lightning-llm`` console script and ``python -m lightning_llm``."""
    try:
        _main(argv)
    except KeyboardInterrupt:
        # fit says which checkpoint is intact itself (checkpointing.InterruptNotice); prepare writes into a
        # private staging directory, generate writes nothing
        print("lightning-llm: interrupted.", file=sys.stderr)
        sys.exit(130)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        frames = traceback.extract_tb(err.__traceback__)
        ours = bool(frames) and "lightning_llm" in frames[-1].filename
        if os.environ.get("LIGHTNING_LLM_DEBUG") or not (ours or isinstance(err, UserError)):
            raise
        sys.exit(f"error: {err}\n(set LIGHTNING_LLM_DEBUG=1 to see the traceback)")


def _main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command = BY_NAME.get(argv[0])
    if command is None:
        sys.exit(f"lightning-llm: unknown command {argv[0]!r}\n\n{USAGE}")
    command.load()(argv if command.gets_name else argv[1:])
