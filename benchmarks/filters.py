"""Data filters benchmark: precision and recall of each filter on a mixed corpus, and prepare throughput.

    python -m benchmarks.filters --out benchmarks/results/filters.json
    lightning-llm bench filters

1. The mixed corpus of :mod:`lightning_llm.data.mixed_corpus` (classics passages, the clean class, plus
   generated spam, keyword stuffing, boilerplate, garbled text, short non-English passages and offensive
   lines). Each filter alone, then the whole default chain, decides on every document: precision = junk
   among the removed, recall = removed among the junk, recall per junk kind, and the share of classics
   passages removed. The quality classifier is trained on half of the classics works (positive) against
   junk generated with another seed (negative) and judged only on passages of the other half.
2. ``lightning-llm prepare`` of the classics (12 MB) in a fresh process with ``num_workers`` workers: without
   the model filters, and with language + offensive + quality (as ``configs/data/classics-filtered.yaml``);
   MB/s as the report gives it (bytes read / the whole prepare, model loads included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lightning_llm.data.clean import CleanConfig, build_pipeline
from lightning_llm.data.documents import Document
from lightning_llm.data.filtering import FilterContext
from lightning_llm.data.mixed_corpus import KINDS, build_mixed_corpus, classics_texts, write_jsonl
from lightning_llm.data.quality_model import train_quality_classifier

MODEL_FILTERS = ("language", "offensive", "quality")


def split_classics(root: Path) -> tuple[Path, list[str]]:
    """Every other classics work into ``root`` (the classifier's positives); the others' texts are returned."""
    root.mkdir(parents=True, exist_ok=True)
    held_out = []
    for work, texts in classics_texts().items():
        for i, text in enumerate(texts):
            if i % 2 == 0:
                (root / f"{work}-{i:03d}.txt").write_text(text, encoding="utf-8")
            else:
                held_out.append(text)
    return root, held_out


def filter_specs(classifier: Path) -> dict[str, dict[str, Any]]:
    """The model filters as the README and ``configs/data/classics-filtered.yaml`` set them."""
    return {
        "language": {"name": "language", "options": {"languages": ["en"], "min_score": 0.5}},
        "offensive": {"name": "offensive", "options": {"threshold": 0.8, "max_fraction": 0.2}},
        "quality": {"name": "quality", "options": {"classifier": str(classifier), "min_score": 0.5}},
    }


def _no_heuristics() -> dict[str, Any]:
    off = ("min_chars", "min_alpha_ratio", "max_symbol_ratio", "max_repetition_ratio", "max_ngram_repetition_ratio",
           "min_stopword_ratio", "min_chars_per_token", "max_chars_per_token")  # fmt: skip
    return {**dict.fromkeys(off), "exact_dedup": False, "near_dedup": False}


def removed_by(clean: CleanConfig, docs: list[Document], context: FilterContext) -> list[bool]:
    """Whether ``clean``'s pipeline (dedup off) drops each document."""
    pipe = build_pipeline(clean, workers=1, context=context)
    kept = {d.source for d in pipe(docs)}
    return [d.source not in kept for d in docs]


def scores(removed: list[bool], kinds: list[str], junk: list[bool]) -> dict[str, Any]:
    n_removed = sum(removed)
    hits = sum(r and j for r, j in zip(removed, junk, strict=True))
    per_kind = {}
    for kind in KINDS:
        idx = [i for i, k in enumerate(kinds) if k == kind]
        per_kind[kind] = sum(removed[i] for i in idx) / max(1, len(idx))
    return {
        "removed": n_removed,
        "precision": hits / n_removed if n_removed else None,
        "recall": hits / max(1, sum(junk)),
        "removed_share_by_kind": per_kind,
    }


def bench_precision_recall(work: Path, seed: int, per_kind: int, unseen: bool = True) -> dict[str, Any]:
    positives, held_out = split_classics(work / "trusted")
    negatives = work / "junk.jsonl"
    write_jsonl([d for d in build_mixed_corpus(seed=seed + 1, per_kind=per_kind) if d.junk], negatives)
    classifier = work / "quality"
    train_quality_classifier(str(positives), str(negatives), str(classifier), seed=seed)
    corpus = [
        d for d in build_mixed_corpus(seed=seed, per_kind=per_kind)
        if d.junk or any(d.text in text for text in held_out)  # classics passages of unseen works only
    ]  # fmt: skip
    docs = [Document(d.text, str(i)) for i, d in enumerate(corpus)]
    kinds, junk = [d.kind for d in corpus], [d.junk for d in corpus]
    context = FilterContext(work)
    specs = filter_specs(classifier)
    rows: dict[str, Any] = {}
    t = time.perf_counter()
    rows["heuristics (defaults)"] = scores(removed_by(CleanConfig(near_dedup=False, exact_dedup=False), docs,
                                                      context), kinds, junk)  # fmt: skip
    for name in MODEL_FILTERS:
        clean = CleanConfig(**_no_heuristics(), filters=[specs[name]])
        rows[name] = scores(removed_by(clean, docs, context), kinds, junk)
    everything = CleanConfig(near_dedup=False, exact_dedup=False, filters=list(specs.values()))
    rows["all (heuristics + 3 model filters)"] = scores(removed_by(everything, docs, context), kinds, junk)
    counts = {k: kinds.count(k) for k in KINDS}
    return {"documents": len(docs), "per_kind": counts, "filters": rows, "seconds": time.perf_counter() - t,
            "quality_unseen_kind": quality_unseen_kind(work, positives, docs, kinds, seed, per_kind) if unseen
            else {}}  # fmt: skip


def quality_unseen_kind(
    work: Path, positives: Path, docs: list[Document], kinds: list[str], seed: int, per_kind: int
) -> dict[str, float]:
    """Share of each junk kind the quality filter removes when that kind was left out of its negatives.

    The negatives of the main table come from the same generators as the test junk (another seed), which
    flatters the classifier; this is the honest number for junk it has not seen the like of.
    """
    junk = [d for d in build_mixed_corpus(seed=seed + 1, per_kind=per_kind) if d.junk]
    out = {}
    for kind in KINDS[1:]:
        negatives = work / f"junk-without-{kind}.jsonl"
        write_jsonl([d for d in junk if d.kind != kind], negatives)
        classifier = work / f"quality-without-{kind}"
        train_quality_classifier(str(positives), str(negatives), str(classifier), seed=seed)
        spec = filter_specs(classifier)["quality"]
        removed = removed_by(CleanConfig(**_no_heuristics(), filters=[spec]), docs, FilterContext(work))
        idx = [i for i, k in enumerate(kinds) if k == kind]
        out[kind] = sum(removed[i] for i in idx) / len(idx)
    return out


def bench_prepare(work: Path, num_workers: int) -> dict[str, Any]:
    """``lightning-llm prepare`` of the classics in a fresh process (imports and model loads included)."""
    out: dict[str, Any] = {}
    classifier = work / "classics-quality"
    train_quality_classifier("classics", "synthetic-junk", str(classifier), seed=0)
    filters = json.dumps(list(filter_specs(classifier).values()))
    for label, extra in (
        ("heuristics only", []),
        ("+ language, offensive, quality", ["--clean.filters", filters]),
    ):
        target = work / label.replace(" ", "_").replace(",", "")
        cmd = [sys.executable, "-m", "lightning_llm", "prepare", "--config", "configs/data/classics.yaml",
               "--output_dir", str(target), "--num_workers", str(num_workers), *extra]  # fmt: skip
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])
        seconds = time.perf_counter() - t
        report = json.loads((target / "report.json").read_text())
        out[label] = {"seconds": seconds, "mb_per_s": report["mb_per_s"], "timings": report["timings"],
                      "documents_kept": report["documents_kept"]}  # fmt: skip
    return out


def markdown(pr: dict[str, Any], prep: dict[str, Any]) -> str:
    kinds = [k for k in KINDS if k != "classics"]
    head = "| filter | precision | recall | classics removed | " + " | ".join(kinds) + " |"
    lines = [head, "|" + "---|" * (4 + len(kinds))]
    for name, r in pr["filters"].items():
        p = "–" if r["precision"] is None else f"{r['precision']:.3f}"
        by = r["removed_share_by_kind"]
        lines.append(f"| {name} | {p} | {r['recall']:.3f} | {by['classics']:.3f} | "
                     + " | ".join(f"{by[k]:.2f}" for k in kinds) + " |")  # fmt: skip
    unseen = pr["quality_unseen_kind"]
    lines += [] if not unseen else ["", "| quality, trained without the kind | " + " | ".join(unseen) + " |",
              "|---|" + "---:|" * len(unseen), "| removed | " + " | ".join(f"{v:.2f}" for v in unseen.values()) + " |"]  # fmt: skip
    lines += ["", "| prepare classics (fresh process) | report total_s | report MB/s | command wall s | documents kept |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for label, r in prep.items():
        lines.append(f"| {label} | {r['timings']['total_s']:.2f} | {r['mb_per_s']:.2f} | {r['seconds']:.1f} | "
                     f"{r['documents_kept']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per_kind", type=int, default=40, help="documents per junk kind (classics: 3x)")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--skip_prepare", action="store_true", help="only the precision/recall table")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        pr = bench_precision_recall(Path(tmp), args.seed, args.per_kind)
        prep = {} if args.skip_prepare else bench_prepare(Path(tmp), args.num_workers)
    print(f"mixed corpus: {pr['documents']} documents {pr['per_kind']}")
    print(markdown(pr, prep))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"date": datetime.now(UTC).isoformat(timespec="minutes"), "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine()}  # fmt: skip
        args.out.write_text(
            json.dumps({"conditions": meta, "precision_recall": pr, "prepare": prep}, indent=2)
        )


if __name__ == "__main__":
    main()
