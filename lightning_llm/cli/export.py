"""``lightning-llm export --ckpt_path CKPT --to hf --out DIR``: a checkpoint as a transformers model directory.

The directory loads offline with ``AutoModelForCausalLM.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)`` (same logits, same token ids). A model with no transformers
equivalent is refused before anything is written, with what does not map and what would
(``lightning_llm.interop.hf_layouts``).
"""

from __future__ import annotations

import argparse
import sys

from lightning_llm.cli import UserError

DTYPES = ("float32", "bfloat16", "float16")


def _say(line: str) -> None:
    print(f"export: {line}", file=sys.stderr, flush=True)


def export_main(argv: list[str]) -> None:
    """Entry point of ``lightning-llm export``."""
    parser = argparse.ArgumentParser(
        prog="lightning-llm export",
        description="Write a lightning-llm checkpoint as a Hugging Face transformers model directory "
        "(GPT-2 or Llama layout: config.json, model.safetensors, tokenizer.json).",
    )
    parser.add_argument(
        "--ckpt_path",
        required=True,
        help="a checkpoint written by lightning-llm fit: a .ckpt file, or the checkpoint directory of an "
        "FSDP2 / tensor-parallel run (consolidated in memory)",
    )
    parser.add_argument("--to", choices=["hf"], default="hf", help="target format (hf: transformers)")
    parser.add_argument("--out", required=True, help="output directory (created; must be empty or absent)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    parser.add_argument(
        "--verify",
        choices=("true", "false"),
        default="true",
        help="load the result with transformers and compare logits (false: for a model too large to hold "
        "twice in memory)",
    )
    args = parser.parse_args(argv)

    import torch

    from lightning_llm.cli.generate import load_checkpoint
    from lightning_llm.interop.hf import export_hf
    from lightning_llm.interop.hf_layouts import HFMappingError
    from lightning_llm.interop.hf_tokenizer import HFTokenizerError

    _say(f"reading {args.ckpt_path}")
    model, tokenizer = load_checkpoint(args.ckpt_path, "cpu", torch.float32)
    try:
        result = export_hf(
            model,
            tokenizer,
            args.out,
            dtype=getattr(torch, args.dtype),
            overwrite=args.overwrite,
            verify=args.verify == "true",
            progress=_say,
        )
    except (HFMappingError, HFTokenizerError, FileExistsError) as err:
        raise UserError(f"{args.ckpt_path} cannot be exported: {err}") from None
    print(
        f"export: wrote {result.directory} ({result.architecture}: {', '.join(result.files)}). "
        f'Load it with transformers: AutoModelForCausalLM.from_pretrained("{result.directory}")'
    )
