"""``lightning-llm generate``: load a checkpoint (model config + weights + tokenizer) and stream a sample."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[GPT, Any]:
    """The model and tokenizer stored in a Lightning checkpoint written by ``lightning-llm fit``."""
    from lightning_llm.data.tokenizer import Tokenizer

    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a distributed (FSDP2) checkpoint directory. Consolidate it into one file first: "
            f"python -m lightning.pytorch.utilities.consolidate_checkpoint {path}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}. Train one with `lightning-llm fit --config ...`.")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if "model_config" not in ckpt:
        raise ValueError(f"{path} has no model_config: it was not written by lightning-llm fit.")
    config = GPTConfig.from_dict(ckpt["model_config"])
    model = GPT(config, device_type=torch.device(device).type, check_training=False)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.to(device).eval()
    if "tokenizer" not in ckpt:
        raise ValueError(f"{path} carries no tokenizer; it was trained without a lightning-llm dataset.")
    return model, Tokenizer.from_dict(ckpt["tokenizer"])


def generate(
    ckpt_path: str,
    prompt: str = "\n",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    seed: int = 1337,
    device: str = "cpu",
    stop_at_eot: bool = True,
) -> str:
    """Sample text from a checkpoint, streaming tokens to the terminal as they are produced.

    Args:
        ckpt_path: A checkpoint written by ``lightning-llm fit`` (e.g. runs/quickstart/checkpoints/last.ckpt).
        prompt: Text to continue.
        max_new_tokens: Tokens to generate (prompt + new tokens must fit in the model's block size).
        temperature: Softmax temperature; 0 picks the most likely token (greedy).
        top_k: Sample only among the k most likely tokens (None: all).
        top_p: Sample from the smallest set of tokens whose probability reaches p (nucleus; None: off).
        seed: Random seed, for reproducible samples.
        device: cpu or cuda.
        stop_at_eot: Stop at the end-of-text token that separates documents.
    """
    from lightning_llm.generate import generate_tokens

    model, tok = load_checkpoint(ckpt_path, device)
    ids = tok.encode(prompt)
    if not ids:
        raise ValueError("The prompt encodes to no tokens; give a non-empty --prompt.")
    room = model.config.block_size - len(ids)
    if room <= 0:
        raise ValueError(
            f"The prompt is {len(ids)} tokens; the model's block size is {model.config.block_size}."
        )
    max_new_tokens = min(max_new_tokens, room)
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([ids], device=device)
    out: list[int] = []
    shown = ""
    sys.stdout.write(prompt)
    eos = tok.eot_id if stop_at_eot else None
    for nxt in generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, eos, gen):
        t = int(nxt[0, 0])
        if eos is not None and t == eos:
            break
        out.append(t)
        text = tok.decode(out)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(shown) :])
            sys.stdout.flush()
            shown = text
    text = tok.decode(out)
    sys.stdout.write(text[len(shown) :] + "\n")
    sys.stdout.flush()
    return prompt + text


def generate_main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI

    CLI(generate, args=argv, as_positional=False)
