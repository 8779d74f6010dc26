"""Generation: the KV cache path equals full recomputation; sampling filters; EOS."""

from __future__ import annotations

import pytest
import torch

from lightning_llm.generate import sample_next

# (attention, positional, n_kv_head, norm, mlp): GQA, RoPE and ALiBi (bias with T < S) on several kernels
COMBOS = [
    ("sdpa", "rope", 1, "rmsnorm", "swiglu"),
    ("naive", "alibi", 1, "layernorm", "gelu"),
    ("sdpa", "alibi", 2, "rmsnorm", "gelu"),
    ("flash", "rope", 2, "layernorm", "swiglu"),
    ("sdpa", "learned", 2, "layernorm", "gelu"),
    ("naive", "sinusoidal", 1, "rmsnorm", "gelu"),
    ("flash", "none", 1, "layernorm", "gelu"),
]


def greedy_by_recomputation(model, idx: torch.Tensor, n: int) -> torch.Tensor:
    """The obvious loop: run the whole sequence again for every new token, no cache."""
    for _ in range(n):
        nxt = model(idx)[:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


@pytest.mark.parametrize(("attention", "positional", "n_kv_head", "norm", "mlp"), COMBOS)
def test_greedy_with_kv_cache_equals_recomputation(tiny_model, attention, positional, n_kv_head, norm, mlp):
    # float64 so that near-ties between logits cannot flip an argmax between the two paths
    model = tiny_model(
        dtype=torch.float64,
        attention=attention,
        positional=positional,
        n_kv_head=n_kv_head,
        norm=norm,
        mlp=mlp,
        init_std=0.2,
    )
    prompt = torch.randint(0, 32, (2, 4), generator=torch.Generator().manual_seed(1))
    cached = model.generate(prompt, 10, temperature=0.0)
    assert cached.shape == (2, 14)
    torch.testing.assert_close(cached, greedy_by_recomputation(model, prompt, 10), rtol=0, atol=0)
    # the logits themselves, step by step: prefill, then one cached token at a time
    model.setup_kv_cache(2, 14)
    try:
        steps = [model(cached[:, :4], start=0)[:, -1]]
        steps += [model(cached[:, t : t + 1], start=t)[:, -1] for t in range(4, 13)]
    finally:
        model.clear_kv_cache()
    full = model(cached[:, :13])[:, 3:]
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-10, rtol=1e-10)


def test_top_k_only_picks_the_k_largest() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g)
    allowed = logits.topk(5, dim=-1).indices
    for _ in range(200):
        picked = sample_next(logits, temperature=1.5, top_k=5, generator=g)
        assert (picked == allowed).any(dim=-1).all()


@pytest.mark.parametrize(("top_p", "allowed"), [(0.45, {0}), (0.7, {0, 1}), (0.85, {0, 1, 2})])
def test_top_p_only_picks_the_nucleus(top_p: float, allowed: set[int]) -> None:
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])
    g = torch.Generator().manual_seed(0)
    seen = {int(sample_next(probs.log(), top_p=top_p, generator=g)) for _ in range(300)}
    assert seen == allowed  # every allowed token shows up, nothing else does


def test_top_k_one_is_greedy(tiny_model) -> None:
    model = tiny_model(positional="rope", init_std=0.2)
    prompt = torch.randint(0, 32, (1, 3), generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(0)
    sampled = model.generate(prompt, 8, temperature=1.0, top_k=1, generator=g)
    torch.testing.assert_close(sampled, model.generate(prompt, 8, temperature=0.0), rtol=0, atol=0)


def test_eos_stops_generation(tiny_model) -> None:
    model = tiny_model(positional="rope", init_std=0.2)
    prompt = torch.randint(0, 32, (2, 3), generator=torch.Generator().manual_seed(3))
    free = model.generate(prompt, 8, temperature=0.0)
    eos = int(free[0, 3])  # row 0's first new token
    out = model.generate(prompt, 8, temperature=0.0, eos_id=eos)
    if int(free[1, 3]) == eos:  # both rows stop at once
        assert out.shape == (2, 4)
        return
    stop_1 = [t for t in range(3, free.shape[1]) if int(free[1, t]) == eos]
    end = (stop_1[0] + 1) if stop_1 else free.shape[1]
    assert out.shape[1] == end  # stops as soon as every row has produced eos
    assert (out[0, 3:] == eos).all()  # a finished row keeps emitting eos
    torch.testing.assert_close(out[1], free[1, :end], rtol=0, atol=0)  # the other row is unaffected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temperature=-1.0), "temperature -1.0 is out of range: use 0 for greedy decoding"),
        (dict(temperature=float("nan")), "temperature nan is out of range"),
        (dict(temperature=float("inf")), "temperature inf is out of range"),
        (dict(top_k=0), "top_k 0 is out of range: it must be at least 1"),
        (dict(top_k=-3), "top_k -3 is out of range"),
        (dict(top_p=1.5), r"top_p 1.5 is outside \(0, 1\]"),
        (dict(top_p=0.0), r"top_p 0.0 is outside \(0, 1\]"),
        (dict(top_p=float("nan")), r"top_p nan is outside \(0, 1\]"),
    ],
)
def test_out_of_range_sampling_settings_are_refused(tiny_model, kwargs, message) -> None:
    """Settings that used to be reinterpreted silently (negative temperature: greedy; top_p 1.5: off)."""
    model = tiny_model(positional="rope")
    prompt = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        model.generate(prompt, 4, **kwargs)


def test_max_new_tokens_beyond_the_block_size_is_an_error_not_a_cap(tiny_model) -> None:
    model = tiny_model(positional="rope")  # block_size 16
    prompt = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds the model's block_size 16; lower max_new_tokens to 12"):
        model.generate(prompt, 13)
    assert model.generate(prompt, 12, temperature=0.0).shape == (1, 16)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0, got -1"):
        model.generate(prompt, -1)


def test_edge_values_stay_valid(tiny_model) -> None:
    """temperature 0 is greedy (seed-independent); top_p 1 keeps every token, like no top_p at all."""
    model = tiny_model(positional="rope", init_std=0.2)
    prompt = torch.randint(0, 32, (2, 3), generator=torch.Generator().manual_seed(4))
    greedy = [
        model.generate(prompt, 8, temperature=0.0, generator=torch.Generator().manual_seed(s)) for s in (0, 1)
    ]
    torch.testing.assert_close(greedy[0], greedy[1], rtol=0, atol=0)
    full = model.generate(prompt, 8, top_p=1.0, generator=torch.Generator().manual_seed(5))
    free = model.generate(prompt, 8, top_p=None, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(full, free, rtol=0, atol=0)
