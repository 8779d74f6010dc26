"""Hugging Face transformers export and import: a ``GPT`` + ``Tokenizer`` <-> a model directory.

Export writes what ``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)``
read offline: ``config.json`` (with our own config under ``lightning_llm_config``, so that an import gives
back the exact config), ``generation_config.json``, ``model.safetensors``, ``tokenizer.json`` and
``tokenizer_config.json``. Import reads such a directory (safetensors, one file or sharded) of a GPT-2 or
Llama model into a weights-only lightning-llm checkpoint dictionary that ``lightning-llm generate`` loads.

What maps, field by field and tensor by tensor, is in ``hf_layouts``; the tokenizer in ``hf_tokenizer``.
Import needs ``safetensors`` only; export and ``compare_logits`` also need ``transformers``
(``pip install 'lightning-llm[hf]'``).
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from lightning_llm.config import GPTConfig
from lightning_llm.data.tokenizer import Tokenizer
from lightning_llm.interop.hf_layouts import BY_MODEL_TYPE, HFMappingError, Layout, layout_for
from lightning_llm.interop.hf_tokenizer import (
    check_same_ids,
    from_hf_tokenizer_json,
    hf_tokenizer_config,
    to_hf_tokenizer_json,
)
from lightning_llm.model import GPT

OUR_CONFIG_KEY = "lightning_llm_config"
"""Key of ``config.json`` that holds our ``GPTConfig`` (transformers keeps unknown keys)."""
IGNORED = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")
"""Buffers older transformers saved with the weights (causal masks, RoPE tables): recomputed, not weights."""
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def need_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise HFMappingError(
            "This needs Hugging Face transformers: pip install 'lightning-llm[hf]' "
            "(transformers, safetensors, tokenizers at tested versions)."
        ) from None
    return transformers


# -- export ----------------------------------------------------------------------------------------
def to_hf_state_dict(model: GPT, layout: Layout, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """transformers' tensors of ``model``, by name (a tied head is written once, as the embedding)."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for rule in layout.rules(model.config):
        for name, tensor in zip(rule.theirs, rule.to_hf(state[rule.ours].detach()), strict=True):
            out[name] = tensor.to(dtype or tensor.dtype).contiguous()
    return out


@dataclass
class ExportResult:
    architecture: str
    """The transformers class the directory loads as, e.g. ``LlamaForCausalLM``."""
    directory: Path
    files: list[str]
    """File names written into ``directory``."""
    max_logit_diff: float | None
    """Largest |logit difference| of transformers vs our model on a probe text (None: not verified)."""


def export_hf(
    model: GPT,
    tokenizer: Tokenizer,
    out_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    verify: bool = True,
    progress: Progress = _quiet,
) -> ExportResult:
    """Write ``model`` and ``tokenizer`` as a transformers model directory ``out_dir``.

    Everything is written into a staging directory next to ``out_dir`` and moved in place at the end, so
    an interrupted export leaves no half-written model. ``verify`` loads the result with transformers and
    compares its logits with ``model``'s on a probe text (fp32; raises above 1e-3).
    """
    transformers = need_transformers()
    from safetensors.torch import save_file

    layout = layout_for(model)  # refuses a model with no equivalent before anything is written
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite.")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise HFMappingError(
            f"The tokenizer has {tokenizer.vocab_size} ids but the model only {model.config.vocab_size} rows."
        )
    progress(f"tokenizer: {tokenizer.name} ({tokenizer.vocab_size} ids) as a byte-level BPE tokenizer.json")
    tok_json = to_hf_tokenizer_json(tokenizer)
    check_same_ids(tokenizer, tok_json)
    cfg = layout.config_class()(**layout.hf_config(model, tokenizer.eot_id))
    if model.config.dropout and layout.architecture == "LlamaForCausalLM":
        progress(
            f"dropout: {model.config.dropout} is not exported (Llama has no embedding or residual dropout; "
            "it only matters in training)"
        )
    setattr(cfg, OUR_CONFIG_KEY, model.config.to_dict())
    cfg.dtype = dtype
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        state = to_hf_state_dict(model, layout, dtype)
        size = sum(t.numel() * t.element_size() for t in state.values())
        progress(f"weights: {len(state)} tensors, {size / 2**20:.1f} MiB as {layout.architecture} ({dtype})")
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        del state
        cfg.save_pretrained(staging)
        gen = transformers.GenerationConfig(bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id)
        gen.save_pretrained(staging)
        (staging / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
        tok_cfg = hf_tokenizer_config(tokenizer, model.config.block_size)
        (staging / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2), encoding="utf-8")
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        staging.replace(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    diff = None
    if verify:
        progress("verify: loading it with transformers and comparing logits")
        diff = compare_logits(model, out, tokenizer, reference_dtype=dtype)
        progress(f"verify: max |logit difference| {diff:.2e}")
        if diff > 1e-3:
            raise HFMappingError(f"{out}: transformers' logits differ from ours by up to {diff:.3g}")
    return ExportResult(layout.architecture, out, sorted(p.name for p in out.iterdir()), diff)


def compare_logits(
    model: GPT, hf_dir: str | Path, tokenizer: Tokenizer, reference_dtype: torch.dtype = torch.float32
) -> float:
    """Max |logit difference| between ``model`` and transformers' model in ``hf_dir``, in fp32 on the CPU,
    on a probe text. ``reference_dtype``: the dtype the file holds; a 16-bit one is compared with a copy of
    ``model`` whose weights are rounded the same way (``model`` itself is left as it is)."""
    transformers = need_transformers()
    from lightning_llm.interop.hf_tokenizer import PROBE

    ids = torch.tensor([tokenizer.encode(PROBE)[: model.config.block_size]])
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    ours = model
    if reference_dtype != torch.float32 or any(p.dtype != torch.float32 for p in model.parameters()):
        ours = copy.deepcopy(model).to(reference_dtype).float()
    was_training = ours.training
    try:
        with torch.no_grad():
            diff = (ours.eval()(ids) - hf(ids).logits).abs().max()
    finally:
        ours.train(was_training)
    return float(diff)


# -- import ----------------------------------------------------------------------------------------
def read_hf_config(directory: Path) -> tuple[dict[str, Any], Layout]:
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"No config.json in {directory}: not a transformers model directory.")
    hf = json.loads(path.read_text(encoding="utf-8"))
    layout = BY_MODEL_TYPE.get(hf.get("model_type", ""))
    if layout is None:
        known = ", ".join(f"{t} ({lay.architecture})" for t, lay in BY_MODEL_TYPE.items())
        raise HFMappingError(
            f"{directory} holds a {hf.get('model_type')!r} model ({', '.join(hf.get('architectures') or [])}); "
            f"lightning-llm imports {known}."
        )
    return hf, layout


def _our_config(hf: dict[str, Any], layout: Layout, eot_id: int) -> GPTConfig:
    """The config of ``hf``; the exact one we exported (``lightning_llm_config``) where it still maps to the
    same transformers config (it may have been edited since)."""
    config = layout.gpt_config(hf)
    stored = hf.get(OUR_CONFIG_KEY)
    if not isinstance(stored, dict):
        return config
    try:
        exact = GPTConfig.from_dict(stored)
        with torch.device("meta"):
            probe = GPT(exact, device_type="meta")
        if layout.problems(probe):
            return config
        mapped = layout.hf_config(probe, eot_id)
    except (TypeError, ValueError):  # written by another version, or its components are not installed
        return config
    skip = {"architectures", "bos_token_id", "eos_token_id"}
    same = all(_equal(hf.get(k), v) for k, v in mapped.items() if k not in skip)
    return exact if same else config


def _equal(a: Any, b: Any) -> bool:
    if isinstance(b, dict):
        return isinstance(a, dict) and all(_equal(a.get(k), v) for k, v in b.items())
    return a == b


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors`` or of the shards ``model.safetensors.index.json`` lists."""
    from safetensors.torch import load_file

    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(directory / shard)))
        return state
    others = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
    raise FileNotFoundError(
        f"No model.safetensors in {directory}"
        + (f" (found {', '.join(others)}: pickles, which lightning-llm does not load; " if others else ". ")
        + "save the model with save_pretrained(DIR, safe_serialization=True) first)."
    )


def from_hf_state_dict(
    hf_state: dict[str, torch.Tensor], config: GPTConfig, layout: Layout, dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """Our state dict (a tied head under both names, as ``GPT.state_dict`` has it) from transformers' tensors."""
    rules = layout.rules(config)
    prefix = (
        rules[0].theirs[0].split(".")[0] + "."
    )  # transformer. / model.: absent when a base model was saved
    if not any(k.startswith(prefix) for k in hf_state):
        hf_state = {(k if k == "lm_head.weight" else prefix + k): v for k, v in hf_state.items()}
    wanted = {name for rule in rules for name in rule.theirs}
    missing = sorted(wanted - set(hf_state))
    extra = sorted(k for k in set(hf_state) - wanted if not k.endswith(IGNORED))
    if config.tie_embeddings and "lm_head.weight" in extra:  # written although tied: it must be the embedding
        embedding = hf_state[rules[0].theirs[0]]
        if torch.equal(hf_state["lm_head.weight"], embedding):
            extra.remove("lm_head.weight")
        else:
            raise HFMappingError("tie_word_embeddings is true but lm_head.weight differs from the embedding")
    if missing or extra:
        raise HFMappingError(
            f"The weights do not match a {layout.architecture} of this config: "
            + (f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} " if missing else "")
            + (f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}" if extra else "")
        )
    state = {}
    for rule in rules:
        try:
            tensor = rule.from_hf(*(hf_state[name] for name in rule.theirs))
        except RuntimeError as err:  # a reshape that cannot work: the file is not of this config
            shapes = [tuple(hf_state[name].shape) for name in rule.theirs]
            raise HFMappingError(
                f"Weights of the wrong shape for the config: {rule.theirs} {shapes} ({err})"
            ) from None
        state[rule.ours] = tensor.to(dtype or tensor.dtype).contiguous()
    if config.tie_embeddings:
        state["lm_head.weight"] = state["wte.weight"]
    return state


def import_hf(
    directory: str | Path, *, dtype: torch.dtype | None = torch.float32, progress: Progress = _quiet
) -> dict[str, Any]:
    """A weights-only lightning-llm checkpoint dictionary (``state_dict`` with the ``model.`` prefix,
    ``model_config``, ``tokenizer``, ``hyper_parameters``; no optimizer state) of a transformers GPT-2 or
    Llama directory: ``generate`` samples from it, ``validate``/``test --ckpt_path`` score it.

    ``dtype``: the dtype of the weights in the checkpoint (None: as stored). The tokenizer must be a
    byte-level BPE (``tokenizer.json``) with exactly our ids (checked on a probe text).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory: pass a local transformers model directory.")
    hf, layout = read_hf_config(directory)
    tok_path = directory / "tokenizer.json"
    if not tok_path.is_file():
        raise FileNotFoundError(
            f"No tokenizer.json in {directory}: lightning-llm checkpoints carry their tokenizer, so import needs "
            "the model's fast (tokenizers) tokenizer file; save it with tokenizer.save_pretrained(DIR)."
        )
    progress(f"tokenizer: reading {tok_path.name}")
    tokenizer = _read_tokenizer(directory, tok_path)
    config = _our_config(hf, layout, tokenizer.eot_id)
    if tokenizer.vocab_size > config.vocab_size:
        raise HFMappingError(
            f"The tokenizer has {tokenizer.vocab_size} ids but the model only {config.vocab_size} embedding rows."
        )
    progress(f"weights: reading {layout.architecture} safetensors from {directory}")
    state = from_hf_state_dict(read_safetensors(directory), config, layout, dtype)
    with torch.device("meta"):  # names and shapes checked against the model, nothing allocated
        expected = GPT(config, device_type="meta").state_dict()
    wrong = [k for k, v in expected.items() if k not in state or tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise HFMappingError(f"Weights of the wrong shape for the config: {wrong[:5]}")
    return {
        "state_dict": {f"model.{k}": v for k, v in state.items()},
        "model_config": config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "hyper_parameters": {"config": config.to_dict()},
        "imported_from": {
            "format": "transformers",
            "architecture": layout.architecture,
            "path": str(directory),
        },
        # Lightning reads this before it restores anything: with it, `lightning-llm validate/test --ckpt_path`
        # score the imported model (there is no optimizer state, so `fit --ckpt_path` cannot resume from it)
        "pytorch-lightning_version": version("lightning"),
    }


def _read_tokenizer(directory: Path, path: Path) -> Tokenizer:
    """The tokenizer, named as we exported it when it is unchanged, else ``hf-bpe-<ids>``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    ours: dict[str, Any] = {}
    cfg_path = directory / "tokenizer_config.json"
    if cfg_path.is_file():
        ours = json.loads(cfg_path.read_text(encoding="utf-8")).get("lightning_llm_tokenizer") or {}
    vocab = len((data.get("model") or {}).get("vocab") or {})
    tok = from_hf_tokenizer_json(data, f"hf-bpe-{vocab}")
    if ours.get("name") and ours.get("fingerprint") == tok.fingerprint():
        return Tokenizer.from_dict({**tok.to_dict(), "name": ours["name"]})
    return tok
