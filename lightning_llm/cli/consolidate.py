"""``lightning-llm consolidate --ckpt_path DIR --out FILE``: a distributed checkpoint directory as one file.

An FSDP2 / tensor-parallel run (``ModelParallelStrategy``) saves each checkpoint as a directory of per-rank
shards; this writes it as one ``.ckpt`` file, read in one process without a process group
(``lightning_llm.consolidate``). The file holds the optimizer state too, so ``fit --ckpt_path FILE``
resumes from it; ``--weights_only`` leaves that out (a third of the size with AdamW). generate and export
also read a directory directly, consolidating it in memory each time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lightning_llm.cli import UserError


def _say(line: str) -> None:
    print(f"consolidate: {line}", file=sys.stderr, flush=True)


def consolidate_main(argv: list[str]) -> None:
    """Entry point of ``lightning-llm consolidate``."""
    parser = argparse.ArgumentParser(
        prog="lightning-llm consolidate",
        description="Write a distributed (FSDP2 / tensor-parallel) checkpoint directory as one checkpoint "
        "file that generate, export, --model.init_weights and fit --ckpt_path read.",
    )
    parser.add_argument(
        "--ckpt_path",
        required=True,
        help="a checkpoint directory written by an FSDP2 / tensor-parallel run (e.g. .../checkpoints/last.ckpt)",
    )
    parser.add_argument("--out", required=True, help="the checkpoint file to write (e.g. consolidated.ckpt)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--weights_only",
        action="store_true",
        help="leave out optimizer, scheduler and callback states (cannot resume fit; enough to sample, "
        "export or start a new run with --model.init_weights)",
    )
    args = parser.parse_args(argv)
    src, out = Path(args.ckpt_path), Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give the path of the file to write (e.g. {out}.ckpt).")
    if out.exists() and not args.overwrite:
        raise UserError(f"--out {out} exists; choose another --out or pass --overwrite to replace it.")
    if src.resolve() in out.resolve().parents:
        raise UserError(f"--out {out} is inside the checkpoint directory {src}; write it somewhere else.")

    import torch

    from lightning_llm.consolidate import consolidate_checkpoint, describe

    _say(f"reading {src}")
    ckpt = consolidate_checkpoint(src, weights_only=args.weights_only)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        torch.save(ckpt, tmp)
        tmp.replace(out)  # atomic: --out is either the old file or the whole new one
    finally:
        tmp.unlink(missing_ok=True)
    resume = (
        ""
        if args.weights_only
        else f"; resume training: lightning-llm fit --config <the run's config> --ckpt_path {out}"
    )
    print(
        f"consolidate: wrote {out} ({describe(ckpt)}). Sample: lightning-llm generate --ckpt_path {out}; "
        f"export: lightning-llm export --ckpt_path {out} --to hf --out DIR; "
        f"start a new run from its weights: --model.init_weights {out}{resume}."
    )
