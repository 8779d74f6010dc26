"""``lightning-llm generate``: load a checkpoint (model config + weights + tokenizer) and stream a sample.

Everything a user can get wrong here (a missing, truncated, foreign or unsafe checkpoint file, a URL, a GPU
that is not there, a dtype the device or the model's attention kernel cannot do, out-of-range sampling
settings) ends as one ``UserError`` paragraph, which ``lightning_llm.cli.main`` prints without a traceback.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Literal

import torch

from lightning_llm.cli import UserError
from lightning_llm.config import GPTConfig
from lightning_llm.consolidate import torch_load_checked
from lightning_llm.model import GPT, IncompatibleComponentsError, check_compatible

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
DtypeName = Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]
DEFAULT_MAX_NEW_TOKENS = 200
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def choose_dtype(name: str, device_type: str, bf16_supported: bool) -> tuple[torch.dtype, str]:
    """The dtype to sample in on ``device_type`` for ``--dtype name``, and why (pure: no device query).

    ``auto``: bfloat16 on a GPU that has it (``bf16_supported``), else float16 on a GPU; float32 on the CPU.
    An explicit dtype is taken as asked, except bfloat16 on a GPU without it (an error). float16 on the CPU
    is allowed (PyTorch computes it, slowly on most CPUs) and the reason says so.
    """
    key = name.strip().lower()
    if key != "auto" and key not in DTYPES:
        raise UserError(
            f"--dtype {name}: unknown dtype. Choose auto, float32 (fp32), bfloat16 (bf16) or float16 (fp16)."
        )
    if device_type not in ("cpu", "cuda"):
        raise UserError(f"generate runs on cpu or cuda, not {device_type}.")
    if key == "auto":
        if device_type == "cpu":
            return torch.float32, "auto: float32 on the CPU"
        if bf16_supported:
            return torch.bfloat16, "auto: this GPU supports bfloat16"
        return torch.float16, "auto: this GPU has no bfloat16, float16 instead"
    dtype = DTYPES[key]
    if device_type == "cuda" and dtype == torch.bfloat16 and not bf16_supported:
        raise UserError(
            f"--dtype {name}: this GPU has no bfloat16 support. "
            "Use --dtype float16 (what --dtype auto picks on this GPU) or --dtype float32."
        )
    if device_type == "cpu" and dtype == torch.float16:
        return dtype, f"--dtype {name}; float16 is slow on most CPUs, float32 or bfloat16 are faster"
    return dtype, f"--dtype {name}"


def _cuda_bf16_supported(device: torch.device) -> bool:
    """Native bfloat16 on this GPU (not the emulation that ``is_bf16_supported()`` also counts)."""

    def query() -> bool:
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # an older torch without the keyword
            return bool(torch.cuda.is_bf16_supported())

    if device.index is None:  # the current GPU
        return query()
    with torch.cuda.device(device.index):
        return query()


def resolve_device(device: str) -> torch.device:
    """``--device`` as a torch device that exists here, or a UserError that says what to use instead."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {device!r} is not a device; use cpu or cuda (cuda:N for GPU N).") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise UserError(
            f"--device {device}: generate runs on cpu or cuda; use --device cpu or --device cuda."
        )
    if not torch.cuda.is_available():
        why = (
            "this PyTorch build has no CUDA support"
            if torch.version.cuda is None
            else "PyTorch finds no CUDA GPU (or no working driver) on this machine"
        )
        raise UserError(f"--device {device}: {why}. Sample on the CPU instead with --device cpu.")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise UserError(
            f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}."
        )
    return dev


def resolve_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """``choose_dtype`` with the capability of ``device`` queried from torch."""
    bf16 = device.type == "cuda" and _cuda_bf16_supported(device)
    return choose_dtype(name, device.type, bf16)


def _check_local_file(path: str | Path) -> Path:
    if _URL.match(str(path)):
        raise UserError(
            f"--ckpt_path {path} is a URL; generate only reads local checkpoint files and never downloads "
            "one (a checkpoint is a pickle: load only files you trust). Download it first (e.g. curl -LO, "
            "aws s3 cp, gsutil cp) and pass the local path."
        )
    path = Path(path)
    if path.is_dir():  # a distributed checkpoint (FSDP2 / tensor parallel) is read as it is
        from lightning_llm.consolidate import METADATA_FILE, is_distributed_checkpoint

        if not is_distributed_checkpoint(path):
            raise UserError(
                f"--ckpt_path {path} is a directory but not a distributed checkpoint (it has no {METADATA_FILE}, "
                "the index an FSDP2 / tensor-parallel run writes last when it saves). Point it at a .ckpt file, "
                "or at a checkpoint directory such as runs/<name>/checkpoints/last.ckpt of such a run."
            )
        return path
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}. Train one with `lightning-llm fit --config ...`.")
    return path


def _build(config: GPTConfig, path: Path, device: torch.device, dtype: torch.dtype) -> GPT:
    """The GPT, checked for the device and dtype it will run in; if it can't, which dtypes would."""
    try:
        return GPT(config, device_type=device.type, dtype=dtype, check_training=False)
    except IncompatibleComponentsError as err:
        with torch.device("meta"):  # the same kernel and positional encoding, no weights, no check
            probe = GPT(config, device_type="meta")
        candidates = [torch.bfloat16, torch.float16, torch.float32]
        if device.type == "cuda" and not _cuda_bf16_supported(device):
            candidates.remove(torch.bfloat16)
        others = []
        for alt in candidates:
            try:
                check_compatible(config, probe.kernel, probe.pe, device.type, alt, training=False)
            except IncompatibleComponentsError:
                continue
            others.append(f"--dtype {dtype_name(alt)}")
        hint = (
            f"On {device.type} this model can run with {' or '.join(others)}."
            if others
            else f"No dtype works for this model on {device.type}; try another --device."
        )
        what = str(err).split(" Kernels that can:")[0]  # the rest is advice for training configs
        raise UserError(
            f"{path} cannot be sampled in {dtype_name(dtype)} on {device.type}: {what} {hint}"
        ) from None


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[GPT, Any]:
    """The model (on ``device``, in ``dtype``, in eval mode) and tokenizer of a ``lightning-llm fit`` checkpoint.

    Loaded with ``torch.load(weights_only=True)``; URLs are refused (download first), and anything that is not
    a complete lightning-llm checkpoint file fails with a ``UserError`` naming the file. A distributed
    checkpoint directory (FSDP2 / tensor parallel) is consolidated in memory (``lightning_llm.consolidate``),
    weights only, and says so on stderr.
    """
    from lightning_llm.data.tokenizer import Tokenizer

    path = _check_local_file(path)
    device = torch.device(device)
    if path.is_dir():
        from lightning_llm.consolidate import consolidate_checkpoint

        ckpt = consolidate_checkpoint(path, weights_only=True)
        print(
            f"{path}: distributed checkpoint directory, consolidated in memory (weights only); "
            f"`lightning-llm consolidate --ckpt_path {path} --out FILE` writes it as one file.",
            file=sys.stderr,
            flush=True,
        )
    else:
        ckpt = torch_load_checked(path)
    not_ours = f"{path} is a PyTorch file but not a lightning-llm checkpoint"
    if not isinstance(ckpt, dict):
        raise UserError(f"{not_ours}: it holds a {type(ckpt).__name__}, not a checkpoint dictionary.")
    if "model_config" not in ckpt:
        raise UserError(f"{path} has no model_config: it was not written by lightning-llm fit.")
    if not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{not_ours}: it has a model_config but no state_dict of weights.")
    if "tokenizer" not in ckpt:
        raise UserError(f"{path} carries no tokenizer; it was trained without a lightning-llm dataset.")
    try:
        config = GPTConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise UserError(
            f"{path} has a model_config this version of lightning-llm cannot read: {err}"
        ) from None
    model = _build(config, path, device, dtype)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: its weights do not match its model_config ({first}).") from None
    model.to(device=device, dtype=dtype).eval()
    return model, Tokenizer.from_dict(ckpt["tokenizer"])


def sample(
    ckpt_path: str,
    prompt: str = "\n",
    max_new_tokens: int | None = None,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    seed: int = 1337,
    device: str = "cpu",
    dtype: DtypeName = "auto",
    stop_at_eot: bool = True,
    chat: bool = False,
    system: str | None = None,
) -> str:
    """Sample text from a checkpoint, streaming tokens to the terminal as they are produced.

    Args:
        ckpt_path: A local checkpoint written by ``lightning-llm fit`` (e.g.
            runs/quickstart/checkpoints/last.ckpt): a file, or the directory of an FSDP2 / tensor-parallel run
            (consolidated in memory). URLs are refused: download the file first.
        prompt: Text to continue.
        max_new_tokens: Tokens to generate; prompt + new tokens must fit in the model's block size, else it is
            an error (default: 200, or the room the prompt leaves in the block size if that is less).
        temperature: Softmax temperature, >= 0; 0 picks the most likely token (greedy).
        top_k: Sample only among the k most likely tokens, k >= 1 (null: all tokens).
        top_p: Sample from the smallest set of tokens whose probability reaches p, 0 < p <= 1 (nucleus;
            null or 1: off).
        seed: Random seed, for reproducible samples.
        device: cpu or cuda (cuda:N for GPU N).
        dtype: Precision to run in: auto, float32 (fp32), bfloat16 (bf16) or float16 (fp16). auto: bfloat16 on
            a GPU that has it, else float16 on a GPU; float32 on the CPU.
        stop_at_eot: Stop at the end-of-text token that separates documents.
        chat: The prompt is a user message: render it with the checkpoint's chat template (a model fine-tuned
            with lightning-llm sft / dpo), print the assistant's reply, stop at its end-of-turn token.
        system: With --chat, a system message before the user's.
    """
    from lightning_llm.generate import check_sampling, generate_tokens

    try:
        check_sampling(temperature, top_k, top_p)
    except ValueError as err:
        raise UserError(str(err)) from None
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UserError(f"--max_new_tokens {max_new_tokens}: generate at least 1 token.")
    _check_local_file(ckpt_path)
    dev = resolve_device(device)
    run_dtype, why = resolve_dtype(dtype, dev)
    model, tok = load_checkpoint(ckpt_path, dev, run_dtype)
    print(f"generate: {dtype_name(run_dtype)} on {dev} ({why})", file=sys.stderr, flush=True)
    if chat:
        ids = _chat_prompt(tok, prompt, system)
    elif system is not None:
        raise UserError("--system is a chat message: use it with --chat.")
    else:
        ids = tok.encode(prompt)
    if not ids:
        raise UserError("The prompt encodes to no tokens; give a non-empty --prompt.")
    block = model.config.block_size
    room = block - len(ids)
    if room <= 0:
        raise UserError(f"The prompt is {len(ids)} tokens; the model's block size is {block}.")
    if max_new_tokens is None:
        max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, room)
    elif max_new_tokens > room:
        raise UserError(
            f"--max_new_tokens {max_new_tokens} does not fit: the model's block size is {block} tokens and "
            f"the prompt takes {len(ids)}, so at most {room} new tokens can be generated. "
            f"Use --max_new_tokens {room} or less (or a shorter prompt)."
        )
    gen = torch.Generator(device=dev).manual_seed(seed)
    idx = torch.tensor([ids], device=dev)
    out: list[int] = []
    shown = ""
    sys.stdout.write("" if chat else prompt)
    eos = tok.eot_id if stop_at_eot else None
    stops = {eos} - {None}
    if chat:  # a reply ends at <|end|> (or <|endoftext|>), whatever stop_at_eot says
        from lightning_llm.chat import stop_ids

        eos, stops = stop_ids(tok)[0], set(stop_ids(tok))
    for nxt in generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, eos, gen):
        t = int(nxt[0, 0])
        if t in stops:
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
    return text if chat else prompt + text


def _chat_prompt(tok: Any, prompt: str, system: str | None) -> list[int]:
    from lightning_llm.chat import ChatFormatError, prompt_ids

    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}
    ]
    try:
        return prompt_ids(tok, messages)
    except ChatFormatError as err:
        raise UserError(f"--chat: {err}") from None


def generate_main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-llm generate``: ``sample``'s arguments as options."""
    from jsonargparse import CLI

    CLI(sample, args=_bare_flags(list(sys.argv[1:] if argv is None else argv)), as_positional=False)


def _bare_flags(argv: list[str]) -> list[str]:
    """``--chat`` alone means ``--chat true`` (jsonargparse's booleans take a value)."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--chat" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            out.append("true")
    return out
