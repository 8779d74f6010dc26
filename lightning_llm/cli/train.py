"""``lightning-llm fit|validate|test``: the LightningCLI and the checks it runs before it builds.

Each check turns a mistake Lightning would report deep inside its setup (or not at all) into one ``UserError``
paragraph: a precision or accelerator the machine cannot do, an unsafe checkpoint source, a new run that
would write over another's checkpoints.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lightning_llm.cli import UserError


def _on_cpu(accelerator: str) -> bool:
    import torch

    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def check_precision(precision: str, accelerator: str) -> None:
    """Refuse a precision the chosen device cannot do (see ``lightning_llm.precision``)."""
    import torch

    from lightning_llm.precision import check_device_precision

    on_cpu = _on_cpu(accelerator)
    gpu_bf16 = on_cpu or not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
    try:
        check_device_precision(precision, on_cpu, gpu_has_bf16=gpu_bf16)
    except ValueError as err:
        raise UserError(str(err)) from None


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


LIGHTNING_CKPT_ALIASES = ("last", "best", "hpc", "registry")


def check_checkpoint_file(ckpt_path: object) -> None:
    """A ``--ckpt_path`` file must exist and be a whole PyTorch archive (a zip whose central directory, at
    the end of the file, is intact), checked before anything is built: Lightning would raise torch's
    "failed finding central directory" from deep inside fit. A directory must be a distributed checkpoint."""
    import zipfile

    path = str(ckpt_path or "")
    if not path or path in LIGHTNING_CKPT_ALIASES or path.startswith("registry:") or "://" in path:
        return
    if Path(path).is_dir():  # a distributed checkpoint (FSDP2 / ModelParallelStrategy): one file per rank
        if not (Path(path) / ".metadata").is_file():
            raise UserError(
                f"--ckpt_path {path} is a directory but not a distributed checkpoint (it has no .metadata): "
                "point it at a .ckpt file, or at a checkpoint directory written by an FSDP2 run."
            )
        return
    if not Path(path).is_file():
        raise UserError(
            f"--ckpt_path {path}: no such file. Use --ckpt_path last to resume the newest checkpoint of the "
            "run in --trainer.default_root_dir, or give the path of a .ckpt file."
        )
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"--ckpt_path {path} is not a readable PyTorch checkpoint: it is truncated (an interrupted copy or "
            "download), corrupt, or not a checkpoint at all. Resume from another .ckpt of the run (checkpoints/ "
            "keeps last.ckpt and the periodic ones), or start a new run without --ckpt_path."
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


def train_main(argv: list[str]) -> None:
    """``lightning-llm fit|validate|test ...``: ``argv`` starts with the subcommand."""
    _configure_allocator()
    _lightning_cli(argv)


def _lightning_cli(argv: list[str], model_class: Any = None, datamodule_class: Any = None) -> None:
    """The LightningCLI of a ``model_class`` (default ``LitGPT``) and ``datamodule_class`` (default
    ``TokenDataModule``): ``lightning-llm sft`` and ``dpo`` run it with their own classes."""
    from jsonargparse import set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # dataclass field docstrings → --help
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.cli import LightningCLI

    from lightning_llm.callbacks import LossCurvePlot, ProgressBar, SpeedMonitor
    from lightning_llm.checkpointing import AtomicCheckpointIO, InterruptNotice, RunCheckpoint
    from lightning_llm.config import pad_vocab_size
    from lightning_llm.data.datamodule import TokenDataModule
    from lightning_llm.module import LitGPT
    from lightning_llm.runlog import MetricsHistory

    class LLMCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.link_arguments("model.config.block_size", "data.block_size")
            parser.link_arguments(
                "data.vocab_size",
                "model.config.vocab_size",
                compute_fn=pad_vocab_size,
                apply_on="instantiate",
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
            parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
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
            check_checkpoint_file(cfg.get("ckpt_path"))
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
        model_class or LitGPT,
        datamodule_class or TokenDataModule,
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


def _configure_allocator() -> None:
    """Keep freed host memory for reuse (see ``lightning_llm.allocator``); say so once, on rank 0."""
    from lightning_llm.allocator import ENV_VAR, configure_allocator

    mode = configure_allocator()
    if mode == "cache" and os.environ.get("LOCAL_RANK", "0") == "0" and not os.environ.get(ENV_VAR):
        print(
            f"lightning-llm: host allocator keeps freed memory for reuse ({ENV_VAR}=system to turn off)",
            file=sys.stderr,
        )
