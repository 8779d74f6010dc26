"""``lightning-llm``: LightningCLI subcommands (fit, validate, test) plus prepare, generate, plugins, bench."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

USAGE = """usage: lightning-llm <command> [options]

commands:
  fit        train a model            (lightning-llm fit --config configs/quickstart.yaml)
  validate   evaluate a checkpoint    (lightning-llm validate --config ... --ckpt_path ...)
  test       run the test loop
  prepare    build a tokenized dataset (lightning-llm prepare --config configs/data/classics.yaml)
  generate   sample text from a checkpoint (lightning-llm generate --ckpt_path ... --prompt "...")
  plugins    list registered components and whether they run here
  bench      benchmarks: attention | train | data | generate

Run `lightning-llm <command> --help` for the options of a command."""

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


class UserError(ValueError):
    """Bad input from the command line or a config: printed as one paragraph, without a traceback."""


def _on_cpu(accelerator: str) -> bool:
    import torch

    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def check_precision(precision: str, accelerator: str) -> None:
    """Refuse a precision the device cannot do (Lightning would silently switch 16-bit to bf16 on CPU)."""
    import torch

    on_cpu = _on_cpu(accelerator)
    if on_cpu and precision in ("16-mixed", "16-true", "16", "transformer-engine"):
        raise UserError(
            f"trainer.precision={precision} needs a GPU; this run is on the CPU. "
            "Use --trainer.precision bf16-mixed (or bf16-true, 32-true) on CPU."
        )
    if precision.startswith("bf16") and accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        if not torch.cuda.is_bf16_supported():
            raise UserError(
                f"trainer.precision={precision}: this GPU has no bfloat16; use 16-mixed or 32-true."
            )


REMOTE_CKPT_ENV = "LIGHTNING_LLM_ALLOW_UNSAFE_CHECKPOINTS"
"""Set to 1 to allow a URL --ckpt_path or --weights_only false (both can run code from the file)."""


def check_device(accelerator: str) -> None:
    """Refuse a GPU accelerator on a machine without one (Lightning raises deep inside its setup)."""
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"--trainer.accelerator {accelerator}: PyTorch finds no CUDA GPU (or no working driver) on this "
            "machine. Train on the CPU with --trainer.accelerator cpu (or auto)."
        )


def check_checkpoint_source(ckpt_path: object, weights_only: object) -> None:
    """Checkpoints are pickles: only local files, loaded with weights_only=True, unless the user opts in."""
    if os.environ.get(REMOTE_CKPT_ENV) == "1":
        return
    path = str(ckpt_path or "")
    if "://" in path:
        raise UserError(
            f"--ckpt_path {path} is a URL. Lightning loads remote checkpoints with weights_only=False, which "
            "runs any code pickled in the file. Download it first and pass the local path, or set "
            f"{REMOTE_CKPT_ENV}=1 if you trust its source."
        )
    if weights_only is False:
        raise UserError(
            "--weights_only false loads the checkpoint with full pickle, which runs any code stored in it; "
            "lightning-llm checkpoints hold tensors and plain data only and need no such thing. Drop the "
            f"option, or set {REMOTE_CKPT_ENV}=1 if you trust the file."
        )


def _place_outputs(cfg: Any, subcommand: str | None) -> None:
    """Every output of a run under one directory, ``trainer.default_root_dir``, unless a path is given:
    checkpoints in ``<root>/checkpoints``, metrics.csv, config.yaml and loss.png in ``<root>``. A new fit
    never writes into a directory that holds another run's checkpoints unless it resumes that run."""
    root = Path(cfg.trainer.default_root_dir or ".")
    logger = cfg.trainer.get("logger")
    init = logger.get("init_args") if hasattr(logger, "get") else None
    if (
        init is not None
        and str(logger.get("class_path", "")).endswith("CSVLogger")
        and not init.get("save_dir")
    ):
        init.save_dir = str(root)
    if not cfg.checkpoint.get("dirpath"):
        cfg.checkpoint.dirpath = str(root / "checkpoints")
    if subcommand != "fit" or cfg.get("ckpt_path"):
        return
    existing = sorted(Path(cfg.checkpoint.dirpath).glob("*.ckpt"))
    if existing:
        raise UserError(
            f"{cfg.checkpoint.dirpath} already holds a run's checkpoints ({', '.join(p.name for p in existing[:3])}). "
            "A new run does not write over another: resume that run with --ckpt_path last, start this one in "
            "its own directory with --trainer.default_root_dir runs/<name>, or delete the old run first."
        )


def _lightning_cli(argv: list[str]) -> None:
    from jsonargparse import set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # dataclass field docstrings → --help
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI

    from lightning_llm.callbacks import LossCurvePlot, ProgressBar, SpeedMonitor
    from lightning_llm.checkpointing import AtomicCheckpointIO, InterruptNotice
    from lightning_llm.data.datamodule import TokenDataModule
    from lightning_llm.module import LitGPT
    from lightning_llm.runlog import MetricsHistory

    def pad_vocab(n: int) -> int:
        return (n + 63) // 64 * 64  # a multiple of 64 keeps the head's matmul fast

    class LLMCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.link_arguments("model.config.block_size", "data.block_size")
            parser.link_arguments(
                "data.vocab_size", "model.config.vocab_size", compute_fn=pad_vocab, apply_on="instantiate"
            )
            parser.set_defaults(
                {
                    "trainer.logger": {
                        "class_path": "lightning_llm.runlog.RunCSVLogger",
                        # "": the run directory (trainer.default_root_dir), filled in by _place_outputs
                        "init_args": {"save_dir": "", "name": "", "version": ""},
                    }
                }
            )
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": 200})
            parser.add_lightning_class_args(SpeedMonitor, "speed")

        def _parse_ckpt_path(self) -> None:
            # LightningCLI replaces the model's arguments with the checkpoint's hyper-parameters when
            # --ckpt_path names a file (not for "last"), silently dropping every --model.* override. Here
            # the command line stays in charge for both forms: LitGPT.on_load_checkpoint refuses a
            # different architecture and applies (and reports) changed optimizer settings.
            return

        def _instantiate_trainer(self, config: dict, callbacks: list) -> Any:
            # crash-safe checkpoint writes unless the user brought a CheckpointIO; added here, not in
            # trainer_defaults, where jsonargparse warns that it cannot serialize the instance
            from lightning.fabric.plugins import CheckpointIO

            plugins = config.get("plugins") or []
            plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                config["plugins"] = [*plugins, AtomicCheckpointIO()]
            # our progress bar (GPU-aware refresh) unless the user turned the bar off or brought their own
            from lightning.pytorch.callbacks.progress import ProgressBar as AnyBar

            bars = [c for c in [*callbacks, *(config.get("callbacks") or [])] if isinstance(c, AnyBar)]
            if config.get("enable_progress_bar") is not False and not bars:
                callbacks = [*callbacks, ProgressBar()]
            return super()._instantiate_trainer(config, callbacks)

        def before_instantiate_classes(self) -> None:
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            check_precision(str(cfg.trainer.precision), str(cfg.trainer.accelerator))
            check_device(str(cfg.trainer.accelerator))
            check_checkpoint_source(cfg.get("ckpt_path"), cfg.get("weights_only"))
            _place_outputs(cfg, self.subcommand)
            if self.subcommand == "fit":
                from lightning_llm.checkpointing import check_writable

                root = cfg.trainer.default_root_dir or "."
                check_writable(root, "--trainer.default_root_dir")
                if cfg.checkpoint.dirpath:
                    check_writable(cfg.checkpoint.dirpath, "--checkpoint.dirpath")
            if _on_cpu(str(cfg.trainer.accelerator)):
                from lightning_llm.precision import cpu_precision

                cfg.trainer.precision, why = cpu_precision(str(cfg.trainer.precision))
                if why and os.environ.get("LOCAL_RANK", "0") == "0":
                    print(f"lightning-llm: {why}", file=sys.stderr)

    LLMCLI(
        LitGPT,
        TokenDataModule,
        args=None if argv == sys.argv[1:] else argv,  # LightningCLI warns when given both
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "callbacks": [
                LearningRateMonitor(logging_interval="step"),
                LossCurvePlot(),
                MetricsHistory(),
                InterruptNotice(),
            ],
        },
        parser_kwargs={"default_env": False},
        auto_configure_optimizers=False,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lightning-llm`` console script and ``python -m lightning_llm``."""
    import os
    import traceback

    try:
        _main(argv)
    except KeyboardInterrupt:
        sys.exit("Interrupted. The last checkpoint written is intact; resume with --ckpt_path last.")
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
    cmd, rest = argv[0], argv[1:]
    if cmd in LIGHTNING_COMMANDS:
        _configure_allocator()
        _lightning_cli(argv)
    elif cmd == "prepare":
        from lightning_llm.data.cli import prepare_main

        prepare_main(rest)
    elif cmd == "generate":
        from lightning_llm.sample_cli import generate_main

        generate_main(rest)
    elif cmd == "plugins":
        from lightning_llm.plugins_cli import plugins_main

        plugins_main(rest)
    elif cmd == "bench":
        _bench(rest)
    else:
        sys.exit(f"lightning-llm: unknown command {cmd!r}\n\n{USAGE}")


def _configure_allocator() -> None:
    """Keep freed host memory for reuse (see ``lightning_llm.allocator``); say so once, on rank 0."""
    import os

    from lightning_llm.allocator import ENV_VAR, configure_allocator

    mode = configure_allocator()
    if mode == "cache" and os.environ.get("LOCAL_RANK", "0") == "0" and not os.environ.get(ENV_VAR):
        print(
            f"lightning-llm: host allocator keeps freed memory for reuse ({ENV_VAR}=system to turn off)",
            file=sys.stderr,
        )


BENCHES = ("attention", "train", "data", "generate")


def _bench(argv: list[str]) -> None:
    if not argv or argv[0] not in BENCHES:
        sys.exit(f"usage: lightning-llm bench {{{'|'.join(BENCHES)}}} [options]")
    # benchmarks/ lives next to the package in a source checkout (editable install), not inside it
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks").is_dir():
        sys.exit(
            "lightning-llm bench needs a source checkout: benchmarks/ is not installed with the package."
        )
    sys.path.insert(0, str(root))
    import importlib

    importlib.import_module(f"benchmarks.{argv[0]}").main(argv[1:])
