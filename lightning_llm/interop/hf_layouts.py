"""How a ``GPT`` maps onto a transformers architecture, field by field and tensor by tensor.

A ``Layout`` states the whole contract of one architecture: which built components it can express
(``problems``: what does not map, and what would), the transformers config of a model (``hf_config``),
our config of a transformers config (``gpt_config``), and the weight names and transforms both ways
(``rules``). Components are recognised by their built class, never by their registered name, so a plugin
that overrides ``rope`` is not mistaken for ours. Nothing here imports transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lightning_llm.components.mlp import GeluMLP, SwiGLU
from lightning_llm.components.norm import LayerNorm, RMSNorm
from lightning_llm.components.positional import LearnedPositional, RoPE
from lightning_llm.config import GPTConfig
from lightning_llm.model import GPT


class HFMappingError(ValueError):
    """A model, config or weight file with no exact counterpart on the other side."""


GELU_TO_HF = {"tanh": "gelu_new", "none": "gelu"}
"""Our ``gelu`` ``approximate`` option -> GPT-2's ``activation_function`` (gelu_new is GPT-2's tanh form)."""
GELU_FROM_HF = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}


@dataclass(frozen=True)
class Rule:
    """One of our tensors <-> one or more transformers tensors."""

    ours: str
    theirs: tuple[str, ...]
    to_hf: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    from_hf: Callable[..., torch.Tensor]


def _same(ours: str, theirs: str) -> Rule:
    return Rule(ours, (theirs,), lambda t: (t,), lambda t: t)


def _transposed(ours: str, theirs: str) -> Rule:
    """GPT-2's Conv1D keeps its weight as (in, out), ``nn.Linear`` as (out, in)."""
    return Rule(ours, (theirs,), lambda t: (t.t().contiguous(),), lambda t: t.t().contiguous())


def split_qkv(w: torch.Tensor, n_head: int, n_kv_head: int) -> tuple[torch.Tensor, ...]:
    """Our fused qkv rows, grouped per KV head as [q_0 .. q_{G-1}, k, v], -> (q, k, v) rows, head-major."""
    g = n_head // n_kv_head
    grouped = w.reshape(n_kv_head, g + 2, -1, *w.shape[1:])  # (H_kv, G + 2, D, ...)
    q, k, v = grouped.split((g, 1, 1), dim=1)
    return tuple(t.reshape(-1, *w.shape[1:]).contiguous() for t in (q, k, v))  # (H*D, ...), (H_kv*D, ...) x 2


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_head: int, n_kv_head: int) -> torch.Tensor:
    """The inverse of ``split_qkv``."""
    g, rest = n_head // n_kv_head, q.shape[1:]
    parts = (
        q.reshape(n_kv_head, g, -1, *rest),
        k.reshape(n_kv_head, 1, -1, *rest),
        v.reshape(n_kv_head, 1, -1, *rest),
    )
    return torch.cat(parts, dim=1).reshape(-1, *rest).contiguous()


def _component(model: GPT, kind: str) -> str:
    return getattr(model.config, kind).name  # type: ignore[union-attr]


class Layout:
    """One transformers architecture. Subclasses fill in every method."""

    architecture: str
    """The transformers class, e.g. ``GPT2LMHeadModel``."""
    config_name: str
    """The transformers config class, e.g. ``GPT2Config``."""
    model_type: str
    """``model_type`` in ``config.json``."""

    def problems(self, model: GPT) -> list[str]:
        """What in ``model`` this architecture cannot express, each with what would map (empty: it maps)."""
        raise NotImplementedError

    def hf_config(self, model: GPT, eot_id: int) -> dict[str, Any]:
        """Keyword arguments of the transformers config class for ``model`` (which has no ``problems``)."""
        raise NotImplementedError

    def gpt_config(self, hf: dict[str, Any]) -> GPTConfig:
        """Our config for a ``config.json`` of this architecture, or ``HFMappingError`` naming what does not map."""
        raise NotImplementedError

    def rules(self, config: GPTConfig) -> list[Rule]:
        """Every tensor of the model; a tied head (``lm_head.weight``) has no rule of its own."""
        raise NotImplementedError

    def config_class(self) -> Any:
        """The transformers config class (imports transformers)."""
        import transformers

        return getattr(transformers, self.config_name)

    def _refuse(self, problems: list[str]) -> None:
        if problems:
            raise HFMappingError(
                f"This {self.architecture} config has no lightning-llm equivalent: "
                + "; ".join(problems)
                + "."
            )


class GPT2Layout(Layout):
    """Learned positions, LayerNorm with bias, GELU MLP, multi-head attention, biases everywhere."""

    architecture, config_name, model_type = "GPT2LMHeadModel", "GPT2Config", "gpt2"

    def problems(self, model: GPT) -> list[str]:
        c, block = model.config, model.blocks[0]
        found = []
        if type(model.pe) is not LearnedPositional:
            found.append(
                f"positional '{_component(model, 'positional')}' (GPT-2 has learned absolute positions: positional: learned)"
            )
        if type(block.norm_1) is not LayerNorm:
            found.append(f"norm '{_component(model, 'norm')}' (GPT-2 has LayerNorm: norm: layernorm)")
        if type(block.mlp) is not GeluMLP:
            found.append(f"mlp '{_component(model, 'mlp')}' (GPT-2 has a GELU MLP: mlp: gelu)")
        if c.n_kv_head != c.n_head:
            found.append(
                f"n_kv_head {c.n_kv_head} < n_head {c.n_head} (GPT-2 has no grouped-query attention: n_kv_head: {c.n_head})"
            )
        if not c.bias:
            found.append("bias: false (GPT-2's Conv1D and LayerNorm layers always carry a bias: bias: true)")
        return found

    def hf_config(self, model: GPT, eot_id: int) -> dict[str, Any]:
        c = model.config
        return {
            "architectures": [self.architecture],
            "vocab_size": c.vocab_size,
            "n_positions": c.block_size,
            "n_embd": c.n_embd,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_inner": c.intermediate_size,
            "activation_function": GELU_TO_HF[model.blocks[0].mlp.approximate],
            "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout,
            "attn_pdrop": c.attn_dropout,
            "layer_norm_epsilon": c.norm_eps,
            "initializer_range": c.init_std,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "tie_word_embeddings": c.tie_embeddings,
            "bos_token_id": eot_id,
            "eos_token_id": eot_id,
        }

    def gpt_config(self, hf: dict[str, Any]) -> GPTConfig:
        act = hf.get("activation_function", "gelu_new")
        found = []
        if act not in GELU_FROM_HF:
            found.append(
                f"activation_function {act!r} (lightning-llm's gelu MLP is one of {sorted(GELU_FROM_HF)})"
            )
        if not hf.get("scale_attn_weights", True):
            found.append("scale_attn_weights false (attention without 1/sqrt(head_dim))")
        if hf.get("scale_attn_by_inverse_layer_idx"):
            found.append("scale_attn_by_inverse_layer_idx true (attention scaled by 1/layer)")
        if hf.get("add_cross_attention"):
            found.append("add_cross_attention true (an encoder-decoder block)")
        self._refuse(found)
        n_embd = hf.get("n_embd", 768)
        mlp: dict[str, Any] = {"name": "gelu"}
        if GELU_FROM_HF[act] != "tanh":
            mlp["options"] = {"approximate": GELU_FROM_HF[act]}
        return GPTConfig(
            vocab_size=hf.get("vocab_size", 50257),
            block_size=hf.get("n_positions", 1024),
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            n_embd=n_embd,
            intermediate_size=hf.get("n_inner") or 4 * n_embd,
            dropout=hf.get("resid_pdrop", 0.1),
            attn_dropout=hf.get("attn_pdrop", 0.1),
            bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            init_std=hf.get("initializer_range", 0.02),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            positional="learned",
            norm="layernorm",
            mlp=mlp,
        )

    def rules(self, config: GPTConfig) -> list[Rule]:
        H = config.n_head
        rules = [
            _same("wte.weight", "transformer.wte.weight"),
            _same("pe.wpe.weight", "transformer.wpe.weight"),
        ]
        for i in range(config.n_layer):
            o, t = f"blocks.{i}.", f"transformer.h.{i}."
            rules += [
                _same(o + "norm_1.weight", t + "ln_1.weight"),
                _same(o + "norm_1.bias", t + "ln_1.bias"),
                # c_attn holds [q; k; v] (each n_embd wide) as the columns of an (in, out) Conv1D weight
                Rule(
                    o + "attn.qkv.weight",
                    (t + "attn.c_attn.weight",),
                    lambda w: (torch.cat(split_qkv(w, H, H)).t().contiguous(),),
                    lambda w: fuse_qkv(*w.t().chunk(3), H, H),
                ),
                Rule(
                    o + "attn.qkv.bias",
                    (t + "attn.c_attn.bias",),
                    lambda b: (torch.cat(split_qkv(b, H, H)),),
                    lambda b: fuse_qkv(*b.chunk(3), H, H),
                ),
                _transposed(o + "attn.proj.weight", t + "attn.c_proj.weight"),
                _same(o + "attn.proj.bias", t + "attn.c_proj.bias"),
                _same(o + "norm_2.weight", t + "ln_2.weight"),
                _same(o + "norm_2.bias", t + "ln_2.bias"),
                _transposed(o + "mlp.fc.weight", t + "mlp.c_fc.weight"),
                _same(o + "mlp.fc.bias", t + "mlp.c_fc.bias"),
                _transposed(o + "mlp.proj.weight", t + "mlp.c_proj.weight"),
                _same(o + "mlp.proj.bias", t + "mlp.c_proj.bias"),
            ]
        rules += [
            _same("norm_f.weight", "transformer.ln_f.weight"),
            _same("norm_f.bias", "transformer.ln_f.bias"),
        ]
        return rules + ([] if config.tie_embeddings else [_same("lm_head.weight", "lm_head.weight")])


class LlamaLayout(Layout):
    """RoPE (plain, linear or static NTK), RMSNorm, SwiGLU, grouped-query attention, no biases."""

    architecture, config_name, model_type = "LlamaForCausalLM", "LlamaConfig", "llama"

    def problems(self, model: GPT) -> list[str]:
        c, block = model.config, model.blocks[0]
        found = []
        if type(model.pe) is not RoPE:
            found.append(
                f"positional '{_component(model, 'positional')}' (Llama rotates queries and keys: positional: rope)"
            )
        if type(block.norm_1) is not RMSNorm:
            found.append(f"norm '{_component(model, 'norm')}' (Llama has RMSNorm: norm: rmsnorm)")
        if type(block.mlp) is not SwiGLU:
            found.append(f"mlp '{_component(model, 'mlp')}' (Llama has a SwiGLU MLP: mlp: swiglu)")
        if c.bias:
            found.append("bias: true (Llama's RMSNorm has no bias: bias: false)")
        return found

    def rope_parameters(self, pe: RoPE) -> dict[str, Any]:
        """transformers' ``rope_parameters``. Our ``ntk`` is a static stretch of the base, so it is written
        as the plain RoPE it equals: ``rope_theta = base * factor ** (d / (d - 2))``. transformers' ``dynamic``
        NTK is another function (the plain RoPE up to max_position_embeddings, then a length-dependent base)."""
        d = pe.head_dim
        if pe.scaling == "ntk":
            return {"rope_type": "default", "rope_theta": pe.base * pe.factor ** (d / (d - 2))}
        if pe.scaling == "linear":
            return {"rope_type": "linear", "rope_theta": pe.base, "factor": pe.factor}
        return {"rope_type": "default", "rope_theta": pe.base}

    def hf_config(self, model: GPT, eot_id: int) -> dict[str, Any]:
        c = model.config
        return {
            "architectures": [self.architecture],
            "vocab_size": c.vocab_size,
            "hidden_size": c.n_embd,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "num_key_value_heads": c.n_kv_head,
            "head_dim": c.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": c.block_size,
            "rms_norm_eps": c.norm_eps,
            "initializer_range": c.init_std,
            "tie_word_embeddings": c.tie_embeddings,
            "rope_parameters": self.rope_parameters(model.pe),  # type: ignore[arg-type]
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": c.attn_dropout,
            "bos_token_id": eot_id,
            "eos_token_id": eot_id,
        }

    def gpt_config(self, hf: dict[str, Any]) -> GPTConfig:
        n_embd, n_head = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
        # transformers 5 writes rope_parameters; 4.x wrote rope_theta and rope_scaling
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        kind = rope.get("rope_type", rope.get("type", "default"))
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        found = []
        if hf.get("hidden_act", "silu") != "silu":
            found.append(f"hidden_act {hf['hidden_act']!r} (lightning-llm's swiglu gates with silu)")
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            found.append("attention_bias/mlp_bias true (lightning-llm's rmsnorm models have no biases)")
        if hf.get("head_dim") not in (None, n_embd // n_head):
            found.append(
                f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads ({n_embd // n_head})"
            )
        if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
            found.append("partial_rotary_factor != 1 (lightning-llm rotates the whole head)")
        if kind not in ("default", "linear"):
            why = (
                " (transformers' dynamic NTK changes the base with the sequence length; lightning-llm's ntk "
                "is a fixed stretch and is exported as a plain rope_theta)"
                if kind == "dynamic"
                else ""
            )
            found.append(f"rope_type {kind!r}{why}; lightning-llm maps default and linear")
        self._refuse(found)
        options: dict[str, Any] = {"base": float(theta)}
        if kind == "linear":
            options.update(scaling="linear", factor=float(rope["factor"]))
        return GPTConfig(
            vocab_size=hf.get("vocab_size", 32000),
            block_size=hf.get("max_position_embeddings", 2048),
            n_layer=hf.get("num_hidden_layers", 32),
            n_head=n_head,
            n_kv_head=hf.get("num_key_value_heads") or n_head,
            n_embd=n_embd,
            intermediate_size=hf.get("intermediate_size", 11008),
            dropout=0.0,
            attn_dropout=hf.get("attention_dropout", 0.0),
            bias=False,
            tie_embeddings=hf.get("tie_word_embeddings", False),
            init_std=hf.get("initializer_range", 0.02),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            positional={"name": "rope", "options": options},
            norm="rmsnorm",
            mlp="swiglu",
        )

    def rules(self, config: GPTConfig) -> list[Rule]:
        H, K = config.n_head, config.n_kv_head
        rules = [_same("wte.weight", "model.embed_tokens.weight")]
        for i in range(config.n_layer):
            o, t = f"blocks.{i}.", f"model.layers.{i}."
            rules += [
                _same(o + "norm_1.weight", t + "input_layernorm.weight"),
                Rule(
                    o + "attn.qkv.weight",
                    tuple(t + f"self_attn.{p}_proj.weight" for p in "qkv"),
                    lambda w: split_qkv(w, H, K),
                    lambda q, k, v: fuse_qkv(q, k, v, H, K),
                ),
                _same(o + "attn.proj.weight", t + "self_attn.o_proj.weight"),
                _same(o + "norm_2.weight", t + "post_attention_layernorm.weight"),
                _same(o + "mlp.gate.weight", t + "mlp.gate_proj.weight"),
                _same(o + "mlp.up.weight", t + "mlp.up_proj.weight"),
                _same(o + "mlp.proj.weight", t + "mlp.down_proj.weight"),
            ]
        rules.append(_same("norm_f.weight", "model.norm.weight"))
        return rules + ([] if config.tie_embeddings else [_same("lm_head.weight", "lm_head.weight")])


LAYOUTS: tuple[Layout, ...] = (GPT2Layout(), LlamaLayout())
BY_MODEL_TYPE = {layout.model_type: layout for layout in LAYOUTS}


def layout_for(model: GPT) -> Layout:
    """The architecture ``model`` maps onto exactly, or an error naming, per architecture, what does not."""
    from lightning_llm.config import RECIPE_OPTIONS

    used = [
        f"{n}={getattr(model.config, n)}"
        for n in RECIPE_OPTIONS
        if getattr(model.config, n) not in (None, False)
    ]
    if used:
        raise HFMappingError(
            f"This model uses {', '.join(used)}, which transformers' GPT-2 and Llama do not compute: an exported "
            "model would give other logits. Export works for models trained without these options."
        )
    found = {layout: layout.problems(model) for layout in LAYOUTS}
    for layout, problems in found.items():
        if not problems:
            return layout
    per = " ".join(f"As {layout.architecture}: {'; '.join(problems)}." for layout, problems in found.items())
    raise HFMappingError(
        f"This model has no transformers equivalent. {per} (The attention kernel and dropout do not matter: "
        "every kernel computes the same attention.)"
    )
