"""Model configuration. Imports no torch, so a config can be read, validated and printed anywhere."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class ComponentSpec:
    """A component chosen by name, with its options (keyword arguments from YAML)."""

    name: str
    """Registered name of the component, e.g. ``rope`` (see ``lightning-llm plugins``)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options passed to the component, e.g. ``{base: 10000.0}``."""

    @classmethod
    def parse(cls, value: ComponentSpec | str | dict[str, Any], kind: str) -> ComponentSpec:
        if isinstance(value, ComponentSpec):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict) and set(value) <= {"name", "options"} and "name" in value:
            return cls(str(value["name"]), dict(value.get("options") or {}))
        raise ValueError(
            f"GPTConfig.{kind} must be a component name such as 'rope' or a mapping "
            f"{{name: rope, options: {{...}}}}; got {value!r}"
        )


Component = ComponentSpec | str

VOCAB_MULTIPLE = 64
"""Vocabulary sizes are padded up to a multiple of this: the head's matmul runs faster (nanoGPT: 50257 ->
50304), and the extra rows are never a target."""


RECIPE_OPTIONS = ("qk_norm", "logit_softcap", "sliding_window", "document_mask")
"""``GPTConfig`` options that are not components: ``lightning-llm plugins`` lists them with their docstrings,
and the README's table names each (``tests/test_readme.py``)."""


def pad_vocab_size(n: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """The model vocabulary for a tokenizer of ``n`` ids: ``n`` rounded up to ``multiple``."""
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class GPTConfig:
    """A decoder-only transformer. Field names follow GPT-2/nanoGPT where they exist."""

    vocab_size: int = 50304
    """Number of token ids (GPT-2's 50257 padded up to a multiple of 64 for faster matmuls)."""
    block_size: int = 1024
    """Longest sequence the model is trained on (and the size of the KV cache)."""
    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 12
    """Number of query heads; must divide ``n_embd``."""
    n_kv_head: int | None = None
    """Number of key/value heads (GQA; 1 = MQA). Default: ``n_head`` (plain multi-head attention)."""
    n_embd: int = 768
    """Width of the residual stream."""
    intermediate_size: int | None = None
    """Hidden width of the MLP. Default: ``4 * n_embd``."""
    dropout: float = 0.0
    """Dropout on embeddings, residual branches and MLP hidden units during training."""
    attn_dropout: float = 0.0
    """Dropout on attention probabilities during training (not every kernel supports it)."""
    bias: bool = True
    """Biases in linear layers and LayerNorm (GPT-2: true; Llama: false). A norm without one (rmsnorm) needs
    false: the build refuses rather than dropping it."""
    tie_embeddings: bool = True
    """Share the token embedding matrix with the output head (GPT-2 does)."""
    init_std: float = 0.02
    """Std of the normal init of weights; residual projections use ``init_std / sqrt(2 * n_layer)``."""
    norm_eps: float = 1e-5
    """Epsilon of the normalisation layers."""
    attention: Component = "sdpa"
    """Attention kernel: naive, sdpa, flash, or an installed plugin (name or {name, options})."""
    positional: Component = "learned"
    """Positional encoding: learned, sinusoidal, rope, none, or an installed plugin."""
    norm: Component = "layernorm"
    """Normalisation layer: layernorm or rmsnorm."""
    mlp: Component = "gelu"
    """Feed-forward block: gelu (GPT-2), swiglu (Llama) or relu2 (Primer, modded-nanogpt)."""
    qk_norm: bool = False
    """RMS-normalise each head's queries and keys before the positional rotation (OLMo 2, Gemma 3,
    modded-nanogpt): keeps attention logits bounded, so higher learning rates stay stable."""
    logit_softcap: float | None = None
    """Soft-cap the output logits to (-c, c) as ``c * tanh(z / c)`` (Gemma 2: 30, modded-nanogpt: 15),
    in training, evaluation and generation alike. None: no cap."""
    sliding_window: int | None = None
    """Each token attends to itself and the ``sliding_window - 1`` tokens before it (Mistral); the KV cache
    keeps only that many positions. Needs a kernel that declares window support. None: full causal."""
    document_mask: bool = False
    """Packed sequences: attention does not cross documents and positions restart at each ``eot_id``
    (``<|endoftext|>`` starts a new document, as a BOS token would). Needs a kernel that can mask."""
    eot_id: int | None = None
    """Id of ``<|endoftext|>``, the document separator ``document_mask`` uses; the CLI fills it in from the
    dataset's tokenizer."""

    def __post_init__(self) -> None:
        for kind in ("attention", "positional", "norm", "mlp"):
            object.__setattr__(self, kind, ComponentSpec.parse(getattr(self, kind), kind))
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.intermediate_size is None:
            object.__setattr__(self, "intermediate_size", 4 * self.n_embd)
        self._validate()

    def _validate(self) -> None:
        for name in (
            "vocab_size",
            "block_size",
            "n_layer",
            "n_head",
            "n_kv_head",
            "n_embd",
            "intermediate_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            divisors = [h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0 and h <= 64]
            raise ValueError(
                f"GPTConfig: n_head={self.n_head} does not divide n_embd={self.n_embd}. "
                f"Pick n_head from {divisors} or change n_embd."
            )
        if self.n_head % self.n_kv_head:  # type: ignore[operator]
            options = [h for h in range(1, self.n_head + 1) if self.n_head % h == 0]
            raise ValueError(
                f"GPTConfig: n_kv_head={self.n_kv_head} does not divide n_head={self.n_head}. "
                f"Valid n_kv_head values: {options}."
            )
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ValueError(
                f"GPTConfig.logit_softcap must be positive (e.g. 15.0) or null, got {self.logit_softcap}"
            )
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(
                f"GPTConfig.sliding_window must be a positive number of tokens or null, got {self.sliding_window}"
            )
        if self.eot_id is not None and not 0 <= self.eot_id < self.vocab_size:
            raise ValueError(
                f"GPTConfig.eot_id={self.eot_id} is outside the vocabulary (0..{self.vocab_size - 1})"
            )
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GPTConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    # -- derived ----------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def check_components(self) -> None:
        """Check every component name and its options against the registries (imports torch)."""
        from lightning_llm.registry import REGISTRIES, check_options

        for kind in ("attention", "positional", "norm", "mlp"):
            spec: ComponentSpec = getattr(self, kind)
            factory = REGISTRIES[kind].get(spec.name)
            check_options(kind, spec.name, factory, spec.options)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {f.name: d[f.name] for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"GPTConfig has no field(s) {unknown}. Valid fields: {sorted(known)}")
        return cls(**d)
