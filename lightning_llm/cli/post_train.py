"""``lightning-llm sft`` and ``lightning-llm dpo``: post-training through the same LightningCLI as ``fit``.

Both take every option ``fit`` takes (trainer, checkpoint, model) plus their own model and data classes:

- ``sft``: ``LitGPT`` (the pretraining module: it takes ``{input_ids, labels}`` batches, the loss skips the
  prompt tokens) on a ``ChatDataModule`` (a dataset made by ``lightning-llm prepare-sft``);
- ``dpo``: ``LitDPO`` (the policy trained against a frozen reference) on a ``PreferenceDataModule``
  (``lightning-llm prepare-dpo``).

The first argument may be ``fit`` (the default), ``validate`` or ``test``::

    lightning-llm sft --config configs/sft-quickstart.yaml
    lightning-llm sft validate --config configs/sft-quickstart.yaml --ckpt_path runs/sft/checkpoints/last.ckpt
"""

from __future__ import annotations

from lightning_llm.cli import train
from lightning_llm.cli.train import _lightning_cli

SUBCOMMANDS = ("fit", "validate", "test")


def _with_subcommand(argv: list[str]) -> list[str]:
    """``argv`` with ``fit`` in front unless it starts with a LightningCLI subcommand."""
    return argv if argv and argv[0] in SUBCOMMANDS else ["fit", *argv]


def sft_main(argv: list[str]) -> None:
    """``lightning-llm sft [fit|validate|test] ...``"""
    from lightning_llm.data.chat_datamodule import ChatDataModule
    from lightning_llm.module import LitGPT

    train._configure_allocator()  # through the module: one switch (e.g. a test's) for every command
    _lightning_cli(_with_subcommand(argv), LitGPT, ChatDataModule)


def dpo_main(argv: list[str]) -> None:
    """``lightning-llm dpo [fit|validate|test] ...``"""
    from lightning_llm.data.chat_datamodule import PreferenceDataModule
    from lightning_llm.dpo import LitDPO

    train._configure_allocator()  # through the module: one switch (e.g. a test's) for every command
    _lightning_cli(_with_subcommand(argv), LitDPO, PreferenceDataModule)
