"""KV-cache generation: our static cache (``GPT.generate``) vs a cache that grows with ``torch.cat``.

Both run the same model and weights, greedy, batch ``--batch``; the baseline swaps every layer's
``KVCache`` for ``CatKVCache``, which reallocates keys and values (``torch.cat``) at every token, the
straightforward implementation. The generated tokens must be identical (checked before timing).
Tokens/s counts new tokens over the whole call (prefill included). The variants are timed interleaved
(one run of each per round, median over ``--repeats`` rounds) so that machine load hits all alike.
With ``--dtypes fp32,bf16`` each dtype is compared like for like (both caches in that dtype); the
``bf16 static vs fp32 cat`` ratio is reported apart, as it is not a like-for-like comparison.

    python -m benchmarks.generate --block-size 1024 --new-tokens 1000 --out benchmarks/out/generate.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch import nn

from benchmarks.common import add_model_args, bench_parser, env_info, markdown_table, model_config, write_json
from lightning_llm.model import GPT

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class CatKVCache(nn.Module):
    """Baseline cache: keeps the whole past and grows it by concatenation (a new tensor every token)."""

    def __init__(self) -> None:
        super().__init__()
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None or self.v is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)  # (B, H_kv, S + T, D): reallocated
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v


@torch.no_grad()
def generate_cat(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding with ``CatKVCache`` in every layer; returns (B, T + max_new_tokens)."""
    model.eval()
    for block in model.blocks:
        block.attn.kv_cache = CatKVCache()  # type: ignore[assignment]
    try:
        logits = model(idx)[:, -1]  # prefill: (B, V)
        pos, new = idx.shape[1], []
        for i in range(max_new_tokens):
            nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            new.append(nxt)
            if i == max_new_tokens - 1:
                break
            logits = model(nxt, start=pos)[:, -1]
            pos += 1
    finally:
        model.clear_kv_cache()
    return torch.cat([idx, *new], dim=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser("generate", __doc__)
    add_model_args(p, block_size=1024, batch=1)
    p.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    p.add_argument("--new-tokens", type=int, default=1000)
    p.add_argument("--attention", default="sdpa", help="attention kernel of the model")
    p.add_argument("--dtypes", default="fp32", help="comma-separated: fp32, bf16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/out/generate.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Time both caches, check they agree, write JSON and print a markdown table."""
    args = parse_args(argv)
    if args.prompt + args.new_tokens > args.block_size:
        raise SystemExit(f"--prompt + --new-tokens must fit in --block-size {args.block_size}")
    config = model_config(args, attention=args.attention)
    torch.manual_seed(0)
    idx = torch.randint(0, config.vocab_size, (args.batch, args.prompt))
    results: list[dict[str, Any]] = []
    for dname in args.dtypes.split(","):
        model = GPT(config, dtype=DTYPES[dname], check_training=False).to(DTYPES[dname]).eval()
        ours = model.generate(idx, args.new_tokens, temperature=0.0)
        cat = generate_cat(model, idx, args.new_tokens)
        same = bool(torch.equal(ours, cat))
        if not same:
            first = int((ours != cat).any(0).nonzero()[0])
            raise AssertionError(
                f"static and cat caches generate different tokens ({dname}) from position {first}"
            )
        runs = {
            "static (ours)": lambda m=model: m.generate(idx, args.new_tokens, temperature=0.0),
            "torch.cat": lambda m=model: generate_cat(m, idx, args.new_tokens),
        }
        row: dict[str, Any] = {"dtype": dname, "tokens_identical": same}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved rounds
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            med = statistics.median(ts)
            row[name] = {"times_s": ts, "median_s": med, "tokens_per_s": args.batch * args.new_tokens / med}
        cat_tps = row["torch.cat"]["tokens_per_s"]
        row["speedup"] = row["static (ours)"]["tokens_per_s"] / cat_tps
        results.append(row)
        print(
            f"  {dname}: static {row['static (ours)']['tokens_per_s']:.0f} tok/s, "
            f"cat {cat_tps:.0f} tok/s, x{row['speedup']:.2f}",
            flush=True,
        )
    by_dtype = {r["dtype"]: r for r in results}
    cross = None
    if "fp32" in by_dtype and "bf16" in by_dtype:  # not like for like: labelled apart
        cross = (
            by_dtype["bf16"]["static (ours)"]["tokens_per_s"] / by_dtype["fp32"]["torch.cat"]["tokens_per_s"]
        )
        print(f"  bf16 static vs fp32 cat (not like for like): x{cross:.2f}", flush=True)
    payload = {
        "env": env_info("cpu"),
        "args": vars(args),
        "config": config.to_dict(),
        "results": results,
        "bf16_static_vs_fp32_cat": cross,
    }
    out = write_json(args.out, payload)
    print(
        markdown_table(
            [
                "dtype",
                "static cache tok/s",
                "torch.cat cache tok/s",
                "speed-up",
                "same tokens",
            ],
            [
                [
                    r["dtype"],
                    f"{r['static (ours)']['tokens_per_s']:.0f}",
                    f"{r['torch.cat']['tokens_per_s']:.0f}",
                    f"{r['speedup']:.2f}x",
                    r["tokens_identical"],
                ]
                for r in results
            ],
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
