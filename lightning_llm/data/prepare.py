"""Prepare a corpus for training: read → clean/filter/dedup → split → tokenizer → litdata token shards.

The output directory's layout (train/, val/, tokenizer/, report.json, the prepared.json marker, the
lock file) is described and named in :mod:`lightning_llm.data.layout`.

A complete directory prepared with the same settings is reused (after a cheap check that its files are
whole, see ``integrity``; a damaged one is rebuilt); one without a marker (an interrupted run) is rebuilt;
a complete one with other settings is refused unless ``overwrite`` is set.

Every setting is validated before anything is read. One run at a time writes a directory: a second run
on it fails at once (``locking.exclusive``). A run builds everything in its private ``.staging/`` and
moves it into place only when all of it is written and checked, marker last; a failed run removes its
staging and leaves the directory as it found it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lightning_llm.data.background import import_for_later_steps, in_background
from lightning_llm.data.clean import CleanConfig, build_pipeline
from lightning_llm.data.documents import Document
from lightning_llm.data.errors import ConfigError, DatasetDamaged, PrepareError
from lightning_llm.data.filtering import FilterContext, build_filter
from lightning_llm.data.histograms import write_histograms
from lightning_llm.data.integrity import check_written, index_sha256, verify_dataset
from lightning_llm.data.layout import FILTERS_DIR, MARKER, REPORT, SPLITS, STAGING, TOKENIZER_DIR, read_marker
from lightning_llm.data.locking import atomic_write_text, exclusive
from lightning_llm.data.report import format_clean_report, summary
from lightning_llm.data.shards import (
    ShardWriter,
    read_shard,
    split_key,
    split_text,
    tokenize_shard,
    tokens_in,
)
from lightning_llm.data.sources import resolve_source
from lightning_llm.data.tokenizer import (
    HF_TOKENIZER_FILE,
    Tokenizer,
    TokenizerError,
    checkpoint_tokenizer,
    gpt2_tokenizer,
    tokenizer_id,
    train_bpe_with_hf,
)
from lightning_llm.data.validate import TOKENIZERS, config_problems, parse_bytes

_OWNED = (
    MARKER,
    REPORT,
    *SPLITS,
    TOKENIZER_DIR,
    FILTERS_DIR,
    STAGING,
)  # the only paths prepare deletes; marker first


@dataclass
class PrepareConfig:
    """Settings of ``lightning-llm prepare``."""

    source: str = "classics"
    """Registered source name (``classics``), a text/JSONL/Parquet file, a directory or a glob."""
    text_field: str = "text"
    """Field holding the text in JSONL/Parquet records."""
    output_dir: str = "data/classics"
    """Directory that receives train/, val/, tokenizer/ and report.json."""
    tokenizer: str = "bpe"
    """``bpe``: train a byte-level BPE on the cleaned training split; ``gpt2``: GPT-2's BPE (50257 ids); or the
    path of a lightning-llm checkpoint (e.g. made by ``lightning-llm import``): its tokenizer, so the data
    fits that model for ``fit --model.init_weights``."""
    vocab_size: int = 8192
    """Vocabulary size of the trained BPE, <|endoftext|> included (ignored for gpt2)."""
    val_fraction: float = 0.05
    """Fraction of documents held out for validation (split by document, seeded)."""
    seed: int = 42
    """Seed of the train/val split."""
    num_workers: int = 2
    """Processes for cleaning and filtering (the stateless steps), tokenization and litdata optimize."""
    chunk_bytes: str = "32MB"
    """Size of each litdata chunk file; a block never spans two chunks."""
    staging_shard_bytes: int = 4_000_000
    """Cleaned text per intermediate shard; shards are the unit of work of the tokenizing workers."""
    clean: CleanConfig = field(default_factory=CleanConfig)
    """Cleaning, quality filters and deduplication."""
    cache_dir: str | None = None
    """Where registered sources are cached (default: the source's own default)."""
    overwrite: bool = False
    """Rebuild an existing dataset prepared with other settings."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` (one paragraph, every bad field) unless all settings are usable."""
        problems = config_problems(self)
        if problems:
            raise ConfigError(
                "invalid settings, so nothing was read or written: " + "; ".join(problems) + "."
            )


def settings_of(cfg: PrepareConfig, source_fingerprint: str) -> dict[str, Any]:
    """The settings that determine a prepared directory's content (what the marker records).

    Plugin filters add their options and their ``fingerprint()`` (model file hashes, library versions),
    so a retrained classifier or an upgraded model is not silently reused; without plugin filters the
    settings are what they were before filters were plugins (datasets prepared then stay valid).
    """
    clean = asdict(cfg.clean)
    if clean["filters"]:
        clean["filters"] = [
            {**spec, "fingerprint": build_filter(spec).fingerprint()} for spec in clean["filters"]
        ]
    else:
        del clean["filters"]
    return {
        "source_fingerprint": source_fingerprint,
        "text_field": cfg.text_field,
        "tokenizer": cfg.tokenizer if cfg.tokenizer in TOKENIZERS else tokenizer_id(cfg.tokenizer),
        "vocab_size": cfg.vocab_size if cfg.tokenizer == "bpe" else None,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "chunk_bytes": cfg.chunk_bytes,
        "clean": clean,
    }


def fingerprint_of(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_existing(out: Path, cfg: PrepareConfig, wanted: dict[str, Any]) -> bool:
    """True if ``out`` already holds this dataset, whole; raises if it holds another one."""
    try:
        marker = read_marker(out)
    except DatasetDamaged as err:
        print(f"{out}: {err.problem}; rebuilding it.")
        return False
    if marker is None:
        return False
    if marker["fingerprint"] == fingerprint_of(wanted):
        try:
            tok = Tokenizer.load(out / TOKENIZER_DIR)
        except TokenizerError as err:
            print(f"{out}: {err}; rebuilding it.")
            return False
        if tok.fingerprint() != marker["tokenizer"]["fingerprint"]:
            if cfg.overwrite:
                return False
            raise PrepareError(
                f"{out}/{TOKENIZER_DIR} holds tokenizer {tok.name} ({tok.fingerprint()[:12]}) but the shards "
                f"were written with {marker['tokenizer']['name']} ({marker['tokenizer']['fingerprint'][:12]}). "
                f"Rebuild with --overwrite true."
            )
        try:
            verify_dataset(out, marker, tok.fingerprint())
        except DatasetDamaged as err:
            print(f"{out} was prepared with these settings but is damaged: {err.problem}; rebuilding it.")
            return False
        return True
    if cfg.overwrite:
        return False
    have, want = _flatten(marker["settings"]), _flatten(wanted)
    keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    diffs = [f"  {k}: existing {have.get(k)!r}, requested {want.get(k)!r}" for k in keys]
    raise PrepareError(
        f"{out} was prepared with different settings:\n"
        + "\n".join(diffs)
        + "\nPass --overwrite true to rebuild it, or choose another --output_dir."
    )


def _clear(out: Path, keep: str | None = None) -> None:
    """Remove what an earlier (partial or replaced) run of prepare wrote, marker first; nothing else."""
    for name in _OWNED:
        if name == keep:
            continue
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _read_and_split(
    cfg: PrepareConfig, source: Any, out: Path, staging: Path
) -> tuple[dict[str, Any], Any, dict]:
    """Stream documents through the cleaning pipeline into train/val staging shards."""
    # litdata (and torch, ~3 s to import) and matplotlib are needed only after cleaning: import them while the
    # workers clean, once they are forked (forking while another thread imports could leave a child's import
    # locks held)
    importer = threading.Thread(target=import_for_later_steps, args=(bool(cfg.clean.filters),), daemon=True)
    pipeline = build_pipeline(cfg.clean, cfg.num_workers, FilterContext(out), on_forked=importer.start)
    writers = {s: ShardWriter(staging, s, cfg.staging_shard_bytes, seed=cfg.seed) for s in SPLITS}
    read = {"documents": 0, "bytes": 0}
    bar = tqdm(desc="read + clean", unit="B", unit_scale=True, unit_divisor=1024)

    def counted() -> Iterator[Document]:
        for doc in source.documents():
            read["documents"] += 1
            n = len(doc.text.encode("utf-8", "surrogatepass"))
            read["bytes"] += n
            bar.update(n)
            yield doc

    for doc in pipeline(counted()):
        split = "val" if split_key(doc.text, cfg.seed) < cfg.val_fraction else "train"
        writers[split].write(doc.text)
    bar.close()
    _ensure_both_splits(writers, cfg.val_fraction)
    for w in writers.values():
        w.close()
    return read, pipeline, writers


def _ensure_both_splits(writers: dict[str, ShardWriter], val_fraction: float) -> None:
    """Give an empty split one document of the other (or half of a lone document's lines)."""
    train, val = writers["train"], writers["val"]
    if train.documents + val.documents == 0:
        return
    for empty, full in ((val, train), (train, val)):
        if empty.documents == 0:
            last = full.pop_last()
            if full.documents > 0:
                empty.write(last)
            else:  # a single-document corpus: hold out its tail, cut at a line break
                head, tail = split_text(last, val_fraction)
                (full if full is train else empty).write(head)
                (empty if full is train else full).write(tail)


def _build_tokenizer(cfg: PrepareConfig, writers: dict[str, ShardWriter], tok_dir: Path) -> Tokenizer:
    if cfg.tokenizer == "gpt2":
        tok = gpt2_tokenizer()
    elif cfg.tokenizer not in TOKENIZERS:
        tok = checkpoint_tokenizer(cfg.tokenizer)
        print(f"Tokenizing with {tok.name} ({tok.vocab_size:,} ids) from {cfg.tokenizer}")
    else:
        texts = (t for p in writers["train"].paths for t in read_shard(p))
        print(f"Training a byte-level BPE with {cfg.vocab_size} ids on {writers['train'].bytes / 1e6:.1f} MB")
        tok, hf = train_bpe_with_hf(texts, cfg.vocab_size, show_progress=True)
        if tok.vocab_size < cfg.vocab_size:
            print(
                f"The BPE has {tok.vocab_size:,} ids, not the {cfg.vocab_size:,} asked for (--vocab_size): "
                f"the training text has no more pairs seen at least twice to merge. Using {tok.vocab_size:,} "
                f"ids ({tok.name}); the tokenizer, report.json and prepared.json record that size."
            )
        tok_dir.mkdir(parents=True, exist_ok=True)
        hf.save(str(tok_dir / HF_TOKENIZER_FILE))
    tok.save(tok_dir)
    return tok


def _optimize(cfg: PrepareConfig, paths: list[str], out: Path, tok_dir: Path) -> None:
    import litdata
    from litdata.streaming.item_loader import TokensLoader

    litdata.optimize(
        fn=partial(tokenize_shard, tokenizer_dir=str(tok_dir.resolve())),
        inputs=paths,
        output_dir=str(out.resolve()),
        chunk_bytes=parse_bytes(cfg.chunk_bytes),
        item_loader=TokensLoader(),
        num_workers=max(1, min(cfg.num_workers, len(paths))),
        reorder_files=False,
        start_method="fork",
    )


def prepare(cfg: PrepareConfig) -> Path:
    """Prepare ``cfg.source`` into ``cfg.output_dir`` (or reuse it) and return that directory.

    Raises ``ConfigError`` before any work for an invalid setting, and ``PrepareError`` if another run
    is preparing the same directory.
    """
    cfg.validate()  # again: fields may have been changed since the config was made
    out = Path(cfg.output_dir).expanduser()
    source = resolve_source(cfg.source, text_field=cfg.text_field, cache_dir=cfg.cache_dir)
    with exclusive(out):
        staging = out / STAGING
        try:
            return _prepare_locked(cfg, source, out, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _prepare_locked(cfg: PrepareConfig, source: Any, out: Path, staging: Path) -> Path:
    t_start = time.perf_counter()
    wanted = settings_of(cfg, source.fingerprint())
    if _check_existing(out, cfg, wanted):
        print(f"Reusing {out}: already prepared with these settings (pass --overwrite true to rebuild).")
        return out
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left behind
    tok_dir = staging / TOKENIZER_DIR
    timings: dict[str, float] = {}

    t = time.perf_counter()
    read, pipeline, writers = _read_and_split(cfg, source, out, staging / "text")
    timings["read_clean_split_s"] = time.perf_counter() - t
    report: dict[str, Any] = {
        "source": {
            "spec": cfg.source,
            "fingerprint": wanted["source_fingerprint"],
            "stats": dict(source.stats),
        },
        "documents_read": read["documents"],
        "bytes_read": read["bytes"],
        "clean": pipeline.report(),
    }
    # the score plots are drawn while the tokenizer trains (matplotlib's Figure API: no pyplot state)
    plots = in_background(
        write_histograms, report["clean"], staging / FILTERS_DIR, [f.name for f in cfg.clean.filters]
    )
    report["duplicates_removed"] = sum(s["docs_removed"] for s in report["clean"] if "dedup" in s["name"])
    report["documents_kept"] = writers["train"].documents + writers["val"].documents
    report["bytes_kept"] = writers["train"].bytes + writers["val"].bytes
    if report["documents_kept"] == 0:
        plots()
        _clear(out)
        atomic_write_text(out / REPORT, json.dumps(report, indent=2))
        raise PrepareError(
            f"No documents left after cleaning {cfg.source!r} ({read['documents']} read):\n"
            + format_clean_report(report["clean"])
            + f"\nReport written to {out / REPORT}. Relax the --clean.* options or check --source/--text_field."
        )

    t = time.perf_counter()
    tok = _build_tokenizer(cfg, writers, tok_dir)
    timings["tokenizer_s"] = time.perf_counter() - t
    splits: dict[str, Any] = {}
    for split in SPLITS:
        t = time.perf_counter()
        _optimize(cfg, writers[split].paths, staging / split, tok_dir)
        timings[f"tokenize_optimize_{split}_s"] = time.perf_counter() - t
        w = writers[split]
        splits[split] = {"documents": w.documents, "bytes": w.bytes, "tokens": tokens_in(staging / split)}
        check_written(staging, split, w.documents, tok.vocab_size)
    n_tokens = sum(s["tokens"] for s in splits.values())
    report["score_plots"] = plots()
    timings["total_s"] = time.perf_counter() - t_start
    tok_info = {
        "name": tok.name,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "fingerprint": tok.fingerprint(),
    }
    report |= {
        "splits": splits,
        "tokens_per_byte": n_tokens / max(1, report["bytes_kept"]),
        "tokenizer": tok_info | {"vocab_size_requested": wanted["vocab_size"]},
        "timings": timings,
        "mb_per_s": read["bytes"] / 1e6 / timings["total_s"],
    }
    marker = {
        "fingerprint": fingerprint_of(wanted),
        "settings": wanted,
        "tokenizer": tok_info,
        "splits": {
            s: {"documents": v["documents"], "tokens": v["tokens"], "index_sha256": index_sha256(staging / s)}
            for s, v in splits.items()
        },
        "source": cfg.source,
    }
    _clear(out, keep=STAGING)  # the marker goes first: from here until the end, out is incomplete
    for name in (*SPLITS, TOKENIZER_DIR, FILTERS_DIR):
        if (staging / name).exists():
            (staging / name).replace(out / name)
    atomic_write_text(out / REPORT, json.dumps(report, indent=2))
    atomic_write_text(out / MARKER, json.dumps(marker, indent=2))
    print(summary(report, out))
    return out
