"""Prepare post-training data: JSON Lines records (or a builtin classics set) → a litdata dataset directory.

``prepare-sft`` makes a ``kind: "sft"`` directory of rendered conversations, ``prepare-dpo`` a ``kind: "dpo"``
directory of preference pairs (record formats and the stored items: :mod:`lightning_llm.data.chat_records`).
The directory mirrors a pretraining one (:mod:`lightning_llm.data.layout`)::

    train/  val/      litdata ``optimize`` outputs, one item per record
    tokenizer/        the chat tokenizer: the base tokenizer (--tokenizer) plus the chat template's tokens
    records/          builtin sources only: the generated records (train.jsonl, val.jsonl), to show the format
    report.json       counts (records, tokens, trained tokens, longest sequence) and timings
    prepared.json     completion marker: kind, settings, tokenizer, per-split counts and index sha256 (last)
    .prepare.lock     held while a run writes; .staging/ is that run's private work directory

As with ``prepare``: one run at a time (``locking.exclusive``); everything is built in ``.staging/`` and moved
into place only when whole, marker last; a failed run (a bad record, say) leaves the directory as it found
it, and does not leave one behind where there was none; a complete directory with the same settings is
reused, one with other settings refused unless ``overwrite``.

The settings (``SFTPrepareConfig``, ``DPOPrepareConfig``) live with the command line that fills them, in
:mod:`lightning_llm.cli.prepare_chat`. The validation split is ``val_source`` when given; else each record goes to val when a seeded hash of its
content falls below ``val_fraction`` (so it does not depend on the record's position, and duplicates stay on
one side). The builtin sets bring their own held-out split.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from lightning_llm.chat import TEMPLATE_NAME, chat_tokenizer
from lightning_llm.data.chat_records import (
    A_KIND,
    DATA_FORMAT,
    ITEM_KEYS,
    RECORDS_DIR,
    Conversation,
    PreferencePair,
    dpo_item,
    item_counts,
    read_conversations,
    read_pairs,
    record_json,
    sft_item,
    verify_chat_dataset,
)
from lightning_llm.data.classics_tasks import builtin_fingerprint, write_builtin_records
from lightning_llm.data.errors import ConfigError, DatasetDamaged, PrepareError
from lightning_llm.data.integrity import index_sha256
from lightning_llm.data.layout import LOCK_FILE, MARKER, REPORT, SPLITS, STAGING, TOKENIZER_DIR, read_marker
from lightning_llm.data.locking import atomic_write_text, exclusive
from lightning_llm.data.prepare import fingerprint_of
from lightning_llm.data.shards import split_key
from lightning_llm.data.tokenizer import (
    TOKENIZER_FILE,
    Tokenizer,
    TokenizerError,
    checkpoint_tokenizer,
    gpt2_tokenizer,
)

if TYPE_CHECKING:  # the settings are defined with the command line that fills them
    from lightning_llm.cli.prepare_chat import ChatPrepareConfig

_OWNED = (MARKER, REPORT, *SPLITS, TOKENIZER_DIR, RECORDS_DIR, STAGING)  # the only paths this deletes
_SHARD_ITEMS = 20_000  # items per staging shard (the unit of work of litdata's workers)


def base_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer ``--tokenizer`` names: gpt2, a checkpoint file, or a prepared dataset's (or a tokenizer)
    directory."""
    if spec == "gpt2":
        return gpt2_tokenizer()
    path = Path(spec).expanduser()
    if path.is_file():
        return checkpoint_tokenizer(path)
    for directory in (path / TOKENIZER_DIR, path):
        if (directory / TOKENIZER_FILE).is_file():
            return Tokenizer.load(directory)
    raise ConfigError(
        f"--tokenizer {spec} holds no tokenizer ({TOKENIZER_DIR}/{TOKENIZER_FILE}): give the checkpoint you will "
        f"fine-tune, a directory prepared by lightning-llm prepare, or gpt2."
    )


def _file_fingerprint(path: str | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_of(cfg: ChatPrepareConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    """The settings that determine a prepared directory's content (what the marker records)."""
    if cfg.builtin:
        from lightning_llm.data.classics import ClassicsSource

        source = builtin_fingerprint(
            cfg.source, cfg.seed, ClassicsSource(cache_dir=cfg.cache_dir).fingerprint()
        )
    else:
        source = _file_fingerprint(cfg.source)
    return {
        "kind": cfg.kind,
        "data_format": DATA_FORMAT,
        "source_fingerprint": source,
        "val_source_fingerprint": _file_fingerprint(cfg.val_source),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "block_size": cfg.block_size,
        "format": getattr(cfg, "format", None),
        "val_fraction": None if cfg.builtin or cfg.val_source else cfg.val_fraction,
        "seed": cfg.seed,
    }


class _ItemWriter:
    """One split's items, in ``.npz`` staging shards of ``_SHARD_ITEMS`` (the last item stays in memory)."""

    def __init__(self, directory: Path, split: str, keys: tuple[str, ...]) -> None:
        self.directory, self.split, self.keys = directory, split, keys
        self.paths: list[str] = []
        self.pending: list[dict[str, np.ndarray]] = []
        self.counts = {"records": 0, "tokens": 0, "trained_tokens": 0, "longest": 0}

    def add(self, item: dict[str, np.ndarray]) -> None:
        self.pending.append(item)
        tokens, trained, longest = item_counts(item)
        self.counts["records"] += 1
        self.counts["tokens"] += tokens
        self.counts["trained_tokens"] += trained
        self.counts["longest"] = max(self.counts["longest"], longest)
        if len(self.pending) > _SHARD_ITEMS:
            self._flush(self.pending[:-1])
            self.pending = self.pending[-1:]

    def move_last_to(self, other: _ItemWriter) -> None:
        """Give the last item to ``other`` (a split must not be empty); ``longest`` stays an upper bound."""
        other.add(self.pending.pop())
        tokens, trained, _ = item_counts(other.pending[-1])
        self.counts["records"] -= 1
        self.counts["tokens"] -= tokens
        self.counts["trained_tokens"] -= trained

    def _flush(self, items: list[dict[str, np.ndarray]]) -> None:
        if not items:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.split}-{len(self.paths):05d}.npz"
        arrays: dict[str, np.ndarray] = {}
        for key in self.keys:
            arrays[key] = np.concatenate([it[key] for it in items])
            arrays[key + ".len"] = np.asarray([len(it[key]) for it in items], dtype=np.int64)
        np.savez(path, **arrays)
        self.paths.append(str(path.resolve()))

    def close(self) -> None:
        self._flush(self.pending)
        self.pending = []


def read_item_shard(path: str) -> Iterator[dict[str, np.ndarray]]:
    """litdata ``optimize`` fn: the items of one staging shard, in order."""
    with np.load(path) as z:
        keys = [k for k in z.files if not k.endswith(".len")]
        columns = {k: np.split(z[k], np.cumsum(z[k + ".len"])[:-1]) for k in keys}
    for i in range(len(columns[keys[0]])):
        yield {k: columns[k][i].astype(np.int32) for k in keys}


def _existing(out: Path, cfg: ChatPrepareConfig, wanted: dict[str, Any], tok: Tokenizer) -> bool:
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
            verify_chat_dataset(out, marker, Tokenizer.load(out / TOKENIZER_DIR).fingerprint())
            return True
        except (DatasetDamaged, TokenizerError) as err:
            print(f"{out} was prepared with these settings but is damaged: {err}; rebuilding it.")
            return False
    if cfg.overwrite:
        return False
    have = marker["settings"]
    what = (
        A_KIND.get(have.get("kind"), "an unknown kind of dataset")
        if "kind" in have
        else "a pretraining dataset (lightning-llm prepare)"
    )
    keys = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
    diffs = "\n".join(f"  {k}: existing {have.get(k)!r}, requested {wanted.get(k)!r}" for k in keys)
    raise PrepareError(
        f"{out} holds {what} prepared with other settings:\n{diffs}\n"
        f"Pass --overwrite true to rebuild it, or choose another --output_dir."
    )


def _clear(out: Path, keep: str | None = None) -> None:
    for name in _OWNED:
        path = out / name
        if name == keep:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare_chat(cfg: ChatPrepareConfig) -> Path:
    """Prepare ``cfg.source`` into ``cfg.output_dir`` (or reuse it) and return that directory.

    Raises ``ConfigError`` for a bad setting and ``ChatRecordError`` for a bad record (naming ``file:line``),
    in both cases leaving ``output_dir`` as it was; ``PrepareError`` if another run holds the directory or
    it holds a dataset prepared with other settings.
    """
    cfg.validate()
    tok = chat_tokenizer(base_tokenizer(cfg.tokenizer))
    wanted = settings_of(cfg, tok)
    out = Path(cfg.output_dir).expanduser()
    existed = out.exists()
    try:
        with exclusive(out):
            staging = out / STAGING
            try:
                return _prepare_locked(cfg, tok, wanted, out, staging)
            except BaseException:
                if not existed:  # leave nothing behind: unlink the lock file while still holding it
                    (out / LOCK_FILE).unlink(missing_ok=True)
                raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _inputs(cfg: ChatPrepareConfig, staging: Path) -> tuple[list[tuple[Path, str | None, str | None]], dict]:
    """(file, its split or None to split by hash, name in messages) to read, and a builtin set's task counts."""
    if cfg.builtin:
        return write_builtin_records(cfg.source, staging / RECORDS_DIR, cfg.seed, cfg.cache_dir)
    if cfg.val_source is None:
        return [(Path(cfg.source).expanduser(), None, None)], {}
    return [
        (Path(cfg.source).expanduser(), "train", None),
        (Path(cfg.val_source).expanduser(), "val", None),
    ], {}


def _prepare_locked(
    cfg: ChatPrepareConfig, tok: Tokenizer, wanted: dict[str, Any], out: Path, staging: Path
) -> Path:
    t_start = time.perf_counter()
    if _existing(out, cfg, wanted, tok):
        print(f"Reusing {out}: already prepared with these settings (pass --overwrite true to rebuild).")
        return out
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left behind
    staging.mkdir(parents=True)
    inputs, tasks = _inputs(cfg, staging)
    keys = ITEM_KEYS[cfg.kind]
    writers = {s: _ItemWriter(staging / "items", s, keys) for s in SPLITS}
    bar = tqdm(desc=f"prepare-{cfg.kind}", unit=" records")
    for path, split, name in inputs:
        records: Iterator[Conversation | PreferencePair] = (
            read_conversations(path, getattr(cfg, "format", "auto"), name)
            if cfg.kind == "sft"
            else read_pairs(path, name)
        )
        for record in records:
            if isinstance(record, Conversation):
                item = sft_item(tok, record, cfg.block_size)
            else:
                item = dpo_item(tok, record, cfg.block_size)
            if split is None:  # keyed by the record's content, not its tokens or position
                key = json.dumps(record_json(record), sort_keys=True, ensure_ascii=False)
                writers["val" if split_key(key, cfg.seed) < cfg.val_fraction else "train"].add(item)
            else:
                writers[split].add(item)
            bar.update()
    bar.close()
    _both_splits(writers, cfg)
    t_read = time.perf_counter() - t_start
    tok.save(staging / TOKENIZER_DIR)
    splits: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        writers[split].close()
        _optimize(writers[split].paths, staging / split, cfg.num_workers)
        splits[split] = dict(writers[split].counts, index_sha256=index_sha256(staging / split))
    tok_info = {
        "name": tok.name,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "fingerprint": tok.fingerprint(),
    }
    totals = {k: sum(s[k] for s in splits.values()) for k in ("records", "tokens", "trained_tokens")}
    totals["longest"] = max(s["longest"] for s in splits.values())
    marker = {
        "kind": cfg.kind,
        "data_format": DATA_FORMAT,
        "template": TEMPLATE_NAME,
        "fingerprint": fingerprint_of(wanted),
        "settings": wanted,
        "tokenizer": tok_info,
        "block_size": cfg.block_size,
        "counts": totals,
        "splits": splits,
        "source": cfg.source,
    }
    try:
        verify_chat_dataset(staging, marker, tok.fingerprint())
    except DatasetDamaged as err:
        raise PrepareError(f"litdata wrote a damaged dataset: {err.problem}. Nothing was replaced.") from None
    report = {
        "kind": cfg.kind,
        "source": {
            "spec": cfg.source,
            "fingerprint": wanted["source_fingerprint"],
            "val_source": cfg.val_source,
        },
        "tokenizer": tok_info | {"base": cfg.tokenizer},
        "block_size": cfg.block_size,
        **totals,
        "splits": {s: {k: v for k, v in c.items() if k != "index_sha256"} for s, c in splits.items()},
        **({"tasks": tasks} if tasks else {}),
        "timings": {"read_tokenize_s": t_read, "total_s": time.perf_counter() - t_start},
    }
    _clear(out, keep=STAGING)  # from here until the marker is written, out is incomplete
    for name in (*SPLITS, TOKENIZER_DIR, RECORDS_DIR):
        if (staging / name).exists():
            (staging / name).replace(out / name)
    atomic_write_text(out / REPORT, json.dumps(report, indent=2))
    atomic_write_text(out / MARKER, json.dumps(marker, indent=2))
    return out


def _both_splits(writers: dict[str, _ItemWriter], cfg: ChatPrepareConfig) -> None:
    """Refuse empty input; give an empty validation split one training record."""
    train, val = writers["train"], writers["val"]
    what = f"--source {cfg.source}" + (f" and --val_source {cfg.val_source}" if cfg.val_source else "")
    if train.counts["records"] == 0:
        raise PrepareError(
            f"{what} hold{'' if cfg.val_source else 's'} no training records (only blank lines?)."
        )
    if val.counts["records"] == 0:
        if cfg.val_source is not None:
            raise PrepareError(f"--val_source {cfg.val_source} holds no records (only blank lines?).")
        if train.counts["records"] < 2:
            raise PrepareError(
                f"--source {cfg.source} holds 1 record; prepare needs at least 2 (one to train on, one to validate)."
            )
        train.move_last_to(val)


def _optimize(paths: list[str], out: Path, num_workers: int) -> None:
    import litdata

    litdata.optimize(
        fn=read_item_shard,
        inputs=paths,
        output_dir=str(out.resolve()),
        chunk_bytes="16MB",
        num_workers=max(1, min(num_workers, len(paths))),
        reorder_files=False,
        start_method="fork",
    )
