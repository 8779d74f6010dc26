"""Hugging Face interop of models: every mappable combination gives transformers' logits (1e-5, fp32) and
greedy tokens in both directions, export -> import is lossless, what does not map is refused with what
would, and the two commands run end to end (tokenizers: ``test_hf_tokenizer.py``). Skipped where transformers is not installed (``pip install 'lightning-llm[hf]'``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lightning_llm.components.norm import LayerNorm  # noqa: E402
from lightning_llm.config import GPTConfig  # noqa: E402
from lightning_llm.data.tokenizer import Tokenizer  # noqa: E402
from lightning_llm.interop.hf import export_hf, import_hf  # noqa: E402
from lightning_llm.interop.hf_layouts import HFMappingError  # noqa: E402
from lightning_llm.model import GPT  # noqa: E402
from lightning_llm.registry import NORM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 512  # the ``bpe`` fixture's
TOL = 1e-5
GEN_TOKENS = 20
BASE: dict[str, Any] = dict(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_embd=64, init_std=0.1)
GPT2 = dict(positional="learned", norm="layernorm", mlp="gelu", bias=True)
LLAMA = dict(positional="rope", norm="rmsnorm", mlp="swiglu", bias=False, intermediate_size=176)
COMBOS: dict[str, dict[str, Any]] = {
    "gpt2-tied": dict(GPT2, tie_embeddings=True),
    "gpt2-untied": dict(GPT2, tie_embeddings=False),
    "gpt2-gelu-erf": dict(GPT2, mlp={"name": "gelu", "options": {"approximate": "none"}}),
    "llama-gqa-tied": dict(LLAMA, n_kv_head=2, tie_embeddings=True),
    "llama-gqa-untied": dict(LLAMA, n_kv_head=2, tie_embeddings=False),
    "llama-mha-tied": dict(LLAMA, tie_embeddings=True),
    "llama-mha-untied": dict(LLAMA, tie_embeddings=False),
    "llama-rope-linear": dict(
        LLAMA, n_kv_head=2, positional={"name": "rope", "options": {"scaling": "linear", "factor": 3.0}}
    ),
    "llama-rope-ntk": dict(
        LLAMA,
        n_kv_head=1,
        positional={"name": "rope", "options": {"base": 500.0, "scaling": "ntk", "factor": 4.0}},
    ),
}
TEXT = "Hello world! It's 3.14 -- naïve 日本 😀\n  ROMEO: But, soft!"


def _randomise(params: Any) -> None:
    """Norm weights around 1 and biases around 0, so a swapped or transposed one shows in the logits."""
    with torch.no_grad():
        for name, p in params:
            if p.ndim == 1:
                p.normal_(1.0 if ("norm" in name or "ln_" in name) else 0.0, 0.2)


def our_model(combo: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**BASE, **COMBOS[combo]), device_type="cpu")
    _randomise(model.named_parameters())
    return model.eval()


def _ids(seed: int = 1, batch: int = 2, length: int = 48) -> torch.Tensor:
    return torch.randint(0, VOCAB - 1, (batch, length), generator=torch.Generator().manual_seed(seed))


def _greedy_hf(hf: Any, prompt: torch.Tensor) -> torch.Tensor:
    gen = transformers.GenerationConfig(
        max_new_tokens=GEN_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return hf.generate(prompt, generation_config=gen, attention_mask=torch.ones_like(prompt))


def _parity(ours: GPT, hf: Any) -> float:
    """Max |logit difference| (asserted < TOL) and token-identical greedy generation."""
    ids = _ids()
    with torch.no_grad():
        a, b = ours(ids), hf(ids).logits
        assert a.abs().max() > 1.0, "weights too small for the comparison to mean much"
        diff = float((a - b).abs().max())
        assert diff < TOL, diff
        prompt = ids[:1, :8]
        assert torch.equal(ours.generate(prompt, GEN_TOKENS, temperature=0.0), _greedy_hf(hf, prompt))
    return diff


# -- ours -> transformers --------------------------------------------------------------------------------
@pytest.mark.parametrize("combo", COMBOS)
def test_export_matches_transformers_and_imports_back_identically(combo, bpe, tmp_path, record_property):
    model, tok = our_model(combo), bpe[0]
    result = export_hf(model, tok, tmp_path / "hf", verify=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf).__name__ == result.architecture
    record_property("max_abs_logit_diff", _parity(model, hf))
    if not model.config.tie_embeddings:
        assert hf.lm_head.weight.data_ptr() != hf.get_input_embeddings().weight.data_ptr()
    ckpt = import_hf(tmp_path / "hf")
    assert ckpt["model_config"] == model.config.to_dict()  # the exact config, rope options included
    assert Tokenizer.from_dict(ckpt["tokenizer"]).fingerprint() == tok.fingerprint()
    state = model.state_dict()
    assert set(ckpt["state_dict"]) == {f"model.{k}" for k in state}
    for k, v in state.items():
        assert torch.equal(ckpt["state_dict"][f"model.{k}"], v), k


# -- transformers -> ours --------------------------------------------------------------------------------
def _hf_configs() -> dict[str, Any]:
    common = dict(vocab_size=VOCAB, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, initializer_range=0.1)
    gpt2 = dict(common, n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0)
    llama = dict(
        common,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
    )
    return {
        "gpt2-tied": transformers.GPT2Config(**gpt2),
        "gpt2-untied": transformers.GPT2Config(**gpt2, tie_word_embeddings=False),
        "gpt2-gelu-erf": transformers.GPT2Config(**gpt2, activation_function="gelu"),
        "gpt2-gelu-pytorch-tanh": transformers.GPT2Config(**gpt2, activation_function="gelu_pytorch_tanh"),
        "llama-gqa-tied": transformers.LlamaConfig(**llama, num_key_value_heads=2, tie_word_embeddings=True),
        "llama-gqa-untied": transformers.LlamaConfig(**llama, num_key_value_heads=2),
        "llama-mha-untied": transformers.LlamaConfig(**llama),
        "llama-rope-linear": transformers.LlamaConfig(
            **llama, rope_parameters={"rope_type": "linear", "factor": 3.0, "rope_theta": 1000.0}
        ),
    }


HF_CONFIGS = _hf_configs()


def _hf_dir(config: Any, tokenizer_json: dict[str, Any], path: Path, seed: int = 0) -> Any:
    """A random transformers model saved with its tokenizer, as a hub directory is."""
    torch.manual_seed(seed)
    hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    _randomise(hf.named_parameters())
    hf.save_pretrained(path)
    (path / "tokenizer.json").write_text(json.dumps(tokenizer_json), encoding="utf-8")
    return hf


@pytest.mark.parametrize("name", HF_CONFIGS)
def test_import_of_a_transformers_model_matches_it(name, bpe, bpe_as_hf, tmp_path, record_property):
    hf = _hf_dir(HF_CONFIGS[name], bpe_as_hf, tmp_path)
    ckpt = import_hf(tmp_path)
    assert Tokenizer.from_dict(ckpt["tokenizer"]).fingerprint() == bpe[0].fingerprint()
    model = GPT(GPTConfig.from_dict(ckpt["model_config"]), device_type="cpu")
    model.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()})
    record_property("max_abs_logit_diff", _parity(model.eval(), hf))


# -- what does not map -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            dict(GPT2, positional="sinusoidal"),
            ["positional 'sinusoidal'", "positional: learned", "positional: rope"],
        ),
        (dict(GPT2, positional="none"), ["positional 'none'", "positional: learned"]),
        (dict(GPT2, positional="alibi", attention="naive"), ["positional 'alibi'", "positional: rope"]),
        (dict(GPT2, bias=False), ["bias: false", "always carry a bias: bias: true", "norm: rmsnorm"]),
        (dict(GPT2, n_kv_head=2), ["n_kv_head 2 < n_head 4", "n_kv_head: 4"]),
        (dict(LLAMA, norm="layernorm"), ["norm 'layernorm'", "norm: rmsnorm", "positional 'rope'"]),
        (dict(LLAMA, mlp="gelu"), ["mlp 'gelu'", "mlp: swiglu"]),
        (dict(GPT2, norm="rmsnorm", bias=False), ["norm 'rmsnorm'", "norm: layernorm", "bias: false"]),
    ],
    ids=[
        "sinusoidal",
        "nope",
        "alibi",
        "gpt2-no-bias",
        "gpt2-gqa",
        "rope-layernorm",
        "swiglu-gelu",
        "rmsnorm",
    ],
)
def test_unmappable_models_are_refused_with_what_would_map(overrides, expected, bpe, tmp_path):
    if "alibi" in str(overrides.get("positional")):
        pytest.importorskip("lightning_llm_alibi")
    model = GPT(GPTConfig(**{**BASE, **overrides}), device_type="cpu")
    with pytest.raises(HFMappingError, match="no transformers equivalent") as err:
        export_hf(model, bpe[0], tmp_path / "hf", verify=False)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))
    assert not (tmp_path / "hf").exists()  # nothing written


def test_a_plugin_component_is_not_mistaken_for_the_builtin(bpe, tmp_path, monkeypatch):
    """A norm registered by a plugin under its own name, even one that subclasses ours, does not map."""

    class ScaledLayerNorm(LayerNorm):
        def forward(self, x):
            return 2 * super().forward(x)

    NORM.names()  # built-ins and entry points loaded into the table before it is copied
    monkeypatch.setattr(NORM, "_entries", dict(NORM._entries))
    NORM.register("scaled_layernorm", ScaledLayerNorm, source="test")
    model = GPT(GPTConfig(**BASE, **dict(GPT2, norm="scaled_layernorm")), device_type="cpu")
    with pytest.raises(
        HFMappingError, match="norm 'scaled_layernorm' \\(GPT-2 has LayerNorm: norm: layernorm\\)"
    ):
        export_hf(model, bpe[0], tmp_path / "hf", verify=False)


@pytest.mark.parametrize(
    "change, match",
    [
        (
            {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
            "rope_type 'dynamic'",
        ),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}}, "rope_type 'yarn'"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"attention_bias": True}, "attention_bias"),
        ({"head_dim": 32}, "head_dim 32"),
        ({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}, "'gpt_neox' model"),
    ],
    ids=["dynamic-ntk", "yarn", "gelu-llama", "attention-bias", "head-dim", "neox"],
)
def test_unmappable_transformers_configs_are_refused(change, match, bpe_as_hf, tmp_path):
    _hf_dir(HF_CONFIGS["llama-gqa-untied"], bpe_as_hf, tmp_path)
    _edit_config(tmp_path, change)
    with pytest.raises(HFMappingError, match=match):
        import_hf(tmp_path)


def _edit_config(directory: Path, change: dict[str, Any]) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"activation_function": "relu"}, "activation_function 'relu'"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"n_embd": 32}, "wrong shape"),
    ],
    ids=["relu", "inverse-layer-scale", "shapes"],
)
def test_unmappable_gpt2_configs_are_refused(change, match, bpe_as_hf, tmp_path):
    _hf_dir(HF_CONFIGS["gpt2-tied"], bpe_as_hf, tmp_path)
    _edit_config(tmp_path, change)
    with pytest.raises(HFMappingError, match=match):
        import_hf(tmp_path)


# -- the command line: in this process (``in_process``), but for the load by transformers in a fresh one -----
@pytest.fixture
def cli(in_process, monkeypatch: pytest.MonkeyPatch):
    """``lightning-llm COMMAND ARGS`` in this process, offline: (its error message or None, stdout, stderr)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return in_process


def _save_ckpt(model: GPT, tok: Tokenizer, path: Path) -> Path:
    """A checkpoint with the keys ``lightning-llm fit`` writes and ``generate`` reads."""
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "model_config": model.config.to_dict(),
            "tokenizer": tok.to_dict(),
            "hyper_parameters": {"config": model.config.to_dict()},
        },
        path,
    )
    return path


LOAD_OFFLINE = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
ids = tok(sys.argv[2], add_special_tokens=False, return_tensors="pt")["input_ids"]
with torch.no_grad():
    torch.save({"ids": ids, "logits": model(ids).logits}, sys.argv[3])
"""


def test_cli_export_then_import_end_to_end(bpe, tmp_path, cli):
    tok, text = bpe[0], TEXT
    model = our_model("llama-gqa-untied")
    ckpt = _save_ckpt(model, tok, tmp_path / "ours.ckpt")
    out = tmp_path / "hf"
    code, stdout, stderr = cli("export", "--ckpt_path", str(ckpt), "--to", "hf", "--out", str(out))
    assert code is None, stderr
    assert "export: verify: max |logit difference|" in stderr and "LlamaForCausalLM" in stdout
    # a fresh process with nothing but transformers loads it offline
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = [sys.executable, "-c", LOAD_OFFLINE, str(out), text, str(tmp_path / "hf.pt")]
    subprocess.run(run, env=env, check=True, capture_output=True, timeout=300)
    got = torch.load(tmp_path / "hf.pt")
    assert got["ids"][0].tolist() == tok.encode(text)
    with torch.no_grad():
        assert float((model(got["ids"]) - got["logits"]).abs().max()) < TOL

    # cli() fails on a traceback in stderr; an error message (exit status 1) is its first item
    again, _, _ = cli("export", "--ckpt_path", str(ckpt), "--out", str(out))
    assert again is not None and "exists and is not empty" in again

    back = tmp_path / "back.ckpt"
    code, _, stderr = cli("import", "--from", str(out), "--out", str(back))
    assert code is None, stderr
    assert "import: verify: max |logit difference|" in stderr
    sample = ["--prompt", "ROMEO:", "--max_new_tokens", "12", "--temperature", "0", "--seed", "0"]
    a = cli("generate", "--ckpt_path", str(ckpt), *sample)
    b = cli("generate", "--ckpt_path", str(back), *sample)
    assert a[0] is None and b[0] is None, (a[2], b[2])
    assert a[1] == b[1] and a[1].startswith("ROMEO:")


def test_cli_errors_are_one_paragraph(bpe, tmp_path, cli):
    model = GPT(GPTConfig(**BASE, **dict(GPT2, positional="sinusoidal")), device_type="cpu")
    ckpt = _save_ckpt(model, bpe[0], tmp_path / "sin.ckpt")
    error, _, _ = cli("export", "--ckpt_path", str(ckpt), "--to", "hf", "--out", str(tmp_path / "hf"))
    assert error is not None  # exit status 1 with this message; cli() fails on a traceback
    assert "cannot be exported: This model has no transformers equivalent" in error
    assert "positional 'sinusoidal'" in error
    error, _, _ = cli("import", "--from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.ckpt"))
    assert error is not None and "is not a directory" in error


@pytest.mark.parametrize(
    "overrides",
    [
        dict(qk_norm=True),
        dict(logit_softcap=15.0),
        dict(sliding_window=4),
        dict(document_mask=True, eot_id=0),
    ],
    ids=["qk_norm", "softcap", "window", "document_mask"],
)
def test_recipe_options_are_refused_by_export(overrides, bpe, tmp_path):
    """A model trained with a recipe option transformers' GPT-2/Llama lack is refused, naming the option."""
    model = GPT(GPTConfig(**{**BASE, **LLAMA, **overrides}), device_type="cpu")
    with pytest.raises(HFMappingError, match="do not compute") as err:
        export_hf(model, bpe[0], tmp_path / "hf", verify=False)
    assert next(iter(overrides)) in str(err.value)
    assert not (tmp_path / "hf").exists()
