"""``lightning-llm import --from DIR --out FILE.ckpt``: a transformers GPT-2 or Llama directory as a checkpoint.

The checkpoint holds weights, ``model_config`` and ``tokenizer`` only (no optimizer state): ``lightning-llm
generate`` samples from it. A config, weight file or tokenizer with no exact lightning-llm counterpart is
refused with what does not map. Needs safetensors; the logit check (``--verify``) also needs transformers.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from lightning_llm.cli import UserError

DTYPES = ("float32", "bfloat16", "float16", "keep")


def _say(line: str) -> None:
    print(f"import: {line}", file=sys.stderr, flush=True)


def import_main(argv: list[str]) -> None:
    """Entry point of ``lightning-llm import``."""
    parser = argparse.ArgumentParser(
        prog="lightning-llm import",
        description="Read a local Hugging Face transformers model directory (GPT-2 or Llama, safetensors, "
        "byte-level BPE tokenizer.json) into a lightning-llm checkpoint that generate can load.",
    )
    parser.add_argument("--from", dest="source", required=True, help="a local transformers model directory")
    parser.add_argument("--out", required=True, help="the checkpoint file to write (e.g. imported.ckpt)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype of the weights in the checkpoint (keep: as stored)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--verify",
        choices=("auto", "true", "false"),
        default="auto",
        help="compare our logits with transformers' on a probe text (auto: when transformers is installed)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; choose another --out or pass --overwrite.")
    has_transformers = importlib.util.find_spec("transformers") is not None
    if args.verify == "true" and not has_transformers:
        raise UserError(
            "--verify true needs transformers: pip install 'lightning-llm[hf]' (or --verify false)."
        )

    import torch

    from lightning_llm.interop.hf import compare_logits, import_hf
    from lightning_llm.interop.hf_layouts import HFMappingError
    from lightning_llm.interop.hf_tokenizer import HFTokenizerError

    dtype = None if args.dtype == "keep" else getattr(torch, args.dtype)
    try:
        ckpt = import_hf(args.source, dtype=dtype, progress=_say)
    except (HFMappingError, HFTokenizerError, FileNotFoundError) as err:
        raise UserError(f"{args.source} cannot be imported: {err}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    _say(f"writing {out}")
    try:
        torch.save(ckpt, tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    if args.verify == "true" or (args.verify == "auto" and has_transformers):
        from lightning_llm.cli.generate import load_checkpoint

        model, tokenizer = load_checkpoint(out, "cpu", torch.float32)
        stored = next(iter(ckpt["state_dict"].values())).dtype
        diff = compare_logits(model, args.source, tokenizer, reference_dtype=stored)
        _say(f"verify: max |logit difference| vs transformers {diff:.2e}")
        if diff > 1e-3:
            raise UserError(
                f"{out}: our logits differ from transformers' by up to {diff:.3g}; please report it."
            )
    elif args.verify == "auto":
        _say("verify: skipped (transformers is not installed)")
    print(
        f"import: wrote {out} ({ckpt['imported_from']['architecture']}, tokenizer {ckpt['tokenizer']['name']}). "
        f'Sample with: lightning-llm generate --ckpt_path {out} --prompt "..."'
    )
