"""The on-disk layout of a prepared dataset, and the reader of its completion marker.

What ``lightning-llm prepare`` writes into its output directory::

    train/  val/      litdata ``optimize`` outputs: documents as token arrays, each ending in <|endoftext|>;
                      each split holds an ``index.json`` listing its chunk files
    tokenizer/        the tokenizer (``Tokenizer.load``); for a trained BPE also the HF tokenizer
    report.json       what was read, removed and written, with timings
    filters/          a PNG histogram of the scores of each filter that has a score range
    prepared.json     completion marker: the settings that produced this directory, the tokenizer and
                      each split's documents, tokens and index sha256 (written last, atomically)
    .prepare.lock     locked (flock) by the run writing the directory; kept, harmless when unlocked
    .staging/         a running prepare's private work directory, moved into place when complete

The writer (``prepare``), the checks (``integrity``) and the reader (``datamodule``) all take these names
from here; this module imports only the data package's errors, so training reads a dataset without
importing the preparation pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_llm.data.errors import damaged

SPLITS = ("train", "val")
MARKER = "prepared.json"
REPORT = "report.json"
TOKENIZER_DIR = "tokenizer"
FILTERS_DIR = "filters"
INDEX = "index.json"  # litdata's index of a split's chunk files
STAGING = ".staging"
LOCK_FILE = ".prepare.lock"


def read_json(path: Path, dataset: Path) -> Any:
    """The JSON in ``path``; a file that is not UTF-8 JSON is a damaged dataset."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        reason = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else f"not valid JSON ({err})"
        raise damaged(dataset, f"{path.relative_to(dataset)} is {reason}") from None


def read_marker(directory: str | Path) -> dict[str, Any] | None:
    """The completion marker of a prepared directory, or None if it has none (not completely prepared).

    Raises ``DatasetDamaged`` for a marker that is not the JSON prepare writes.
    """
    directory = Path(directory)
    path = directory / MARKER
    if not path.is_file():
        return None
    marker = read_json(path, directory)
    ok = (
        isinstance(marker, dict)
        and isinstance(marker.get("fingerprint"), str)
        and isinstance(marker.get("settings"), dict)
        and isinstance(marker.get("tokenizer"), dict)
        and isinstance(marker["tokenizer"].get("fingerprint"), str)
        and isinstance(marker["tokenizer"].get("vocab_size"), int)
    )
    if not ok:
        raise damaged(
            directory, f"{MARKER} lacks the fields prepare writes (fingerprint, settings, tokenizer)"
        )
    return marker
