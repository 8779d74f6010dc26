"""Demo post-training sets made from the bundled classics corpus: ``classics-instructions`` and
``classics-preferences`` (the builtin ``--source`` names of ``prepare-sft`` and ``prepare-dpo``).

Why these tasks: the quick start's model has ~10M parameters and is fine-tuned for minutes on a CPU, so the
demo must show a measurable change in that budget. Every instruction therefore has a SHORT exact answer
(one to four tokens) and a small label set, so exact-match accuracy of the greedy reply is a meaningful
number, with a known chance level, before and after fine-tuning:

* ``work`` -- "Which work is this passage from: The Bible, Shakespeare or Milton?" + 1-3 lines of text →
  ``The Bible`` | ``Shakespeare`` | ``Milton`` (balanced, chance 1/3). The styles differ (verses, dialogue,
  epic blank verse), so a small model can learn it from the text it was pretrained on.
* ``speaker`` -- "Who says "<line>" in this exchange?" + two consecutive speeches of a Shakespeare play,
  with their speaker labels as printed → the speaker label without its period (``HAMLET``, ``Ham``,
  ``LADY MACBETH``). The answer is in the prompt: the model learns to look a line up and copy a name
  (chance 1/2 for a model that answers with one of the two names).
* ``testament`` -- "Is this verse from the Old Testament or the New Testament?" + one verse →
  ``Old Testament`` | ``New Testament`` (balanced, chance 1/2).

``classics-instructions``: 3,000 train records (work 1,200, speaker 1,000, testament 800) and 300 held-out
(120, 100, 80). ``classics-preferences``: 3,000 train pairs (continue 1,800, work 600, testament 600) and 300
held-out (180, 60, 60), where ``continue`` is "Continue the passage:" + two lines, chosen = the true next
line, rejected = a line of similar length from another work; ``work`` and ``testament`` prefer the correct
label to a wrong one. Each record carries its ``task`` (extra keys are ignored by the readers), so accuracy
can be reported per task. The prompt wording of each task is fixed (``PROMPTS``).

Held out means unseen: documents are cut into groups of consecutive paragraphs (Bible: chapters), a seeded
hash sends about one group in eight to the held-out side, records draw their text from one side only, and a
held-out record is dropped if any of its lines also occurs in a train record (repeated lines such as
refrains). Generation is seeded and takes well under a second once the corpus is read.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
import re
import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_llm.data.documents import Document

INSTRUCTIONS = "classics-instructions"
PREFERENCES = "classics-preferences"
BUILTIN_SOURCES = {INSTRUCTIONS: "sft", PREFERENCES: "dpo"}
"""Builtin source name → the dataset kind it makes (``sft`` for prepare-sft, ``dpo`` for prepare-dpo)."""
VERSION = 1  # bump when the generated records change
WORKS = ("The Bible", "Shakespeare", "Milton")
TESTAMENTS = ("Old Testament", "New Testament")
PROMPTS = {
    "work": "Which work is this passage from: The Bible, Shakespeare or Milton?\n\n{passage}",
    "speaker": 'Who says "{line}" in this exchange?\n\n{exchange}',
    "testament": "Is this verse from the Old Testament or the New Testament?\n\n{passage}",
    "continue": "Continue the passage:\n\n{passage}",
}
INSTRUCTION_MIX = {"work": 1200, "speaker": 1000, "testament": 800}
PREFERENCE_MIX = {"continue": 1800, "work": 600, "testament": 600}
HELD_OUT_FRACTION = 0.125
_GROUP = 6  # consecutive units per held-out group (outside the Bible, whose groups are chapters)
_NEW_TESTAMENT = frozenset(
    book.replace("_", " ")
    for book in "Matthew Mark Luke John Acts Romans 1_Corinthians 2_Corinthians Galatians Ephesians Philippians "
    "Colossians 1_Thessalonians 2_Thessalonians 1_Timothy 2_Timothy Titus Philemon Hebrews James 1_Peter 2_Peter "
    "1_John 2_John 3_John Jude Revelation".split()
)
_SPEAKER = re.compile(r"^([A-Z][A-Za-z'-]*(?: [A-Za-z'-]+){0,2})\.$")
_ASCII_LETTERS = string.ascii_letters.encode()
_HEADING = re.compile(r"^(ACT|SCENE|Scene|BOOK|Book|CHAPTER|Chapter|Enter|Exit|Exeunt|THE END)\b")


@dataclass
class _Unit:
    """Consecutive lines of one work (a speech, a chunk of a paragraph, a chapter's verses)."""

    work: str
    lines: list[str]
    group: str
    speaker: str | None = None  # the label as printed, for play speeches
    testament: str | None = None


@dataclass
class _Pool:
    """The units of one side (train or held-out), indexed for sampling."""

    units: list[_Unit] = field(default_factory=list)
    by_work: dict[str, list[_Unit]] = field(default_factory=dict)
    exchanges: list[tuple[_Unit, _Unit]] = field(default_factory=list)
    lines_by_len: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def index(self) -> None:
        for u in self.units:
            if not u.lines:
                continue
            self.by_work.setdefault(u.work, []).append(u)
            if u.testament:
                self.by_work.setdefault(u.testament, []).append(u)

    def lines_of(self, work: str) -> list[tuple[int, str]]:
        """``(length, line)`` of every line of ``work``, sorted (built on first use: preferences only)."""
        if work not in self.lines_by_len:
            self.lines_by_len[work] = sorted(
                {(len(s), s) for u in self.by_work.get(work, []) for s in u.lines}
            )
        return self.lines_by_len[work]


def _is_text(line: str) -> bool:
    """A line of verse or prose: not a heading, a stage direction, a number or a short fragment."""
    return (
        len(line) >= 12
        and not line.startswith("[")
        and line.upper() != line
        and not _HEADING.match(line)
        and _letter_share(line) >= 0.6
    )


def _letter_share(line: str) -> float:
    """Share of the line's UTF-8 bytes that are ASCII letters (bytes.translate: fast on 12 MB of text)."""
    data = line.encode("utf-8", "surrogatepass")
    return (len(data) - len(data.translate(None, _ASCII_LETTERS))) / max(1, len(data))


def _held_out(group: str, seed: int) -> bool:
    digest = hashlib.blake2b(f"{seed}:{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < HELD_OUT_FRACTION


def _units(docs: Iterable[Document]) -> list[_Unit]:
    """The classics documents as units; duplicated documents (Milton's corpus has copies) count once."""
    seen: set[str] = set()
    units: list[_Unit] = []
    for doc in docs:
        digest = hashlib.sha256(doc.text.encode("utf-8", "surrogatepass")).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        kind, _, name = doc.source.removeprefix("classics:").partition("/")
        if kind == "bible":
            testament = TESTAMENTS[1] if name in _NEW_TESTAMENT else TESTAMENTS[0]
            for i, chapter in enumerate(re.split(r"\n\s*Chapter \d+\s*\n", doc.text)[1:]):
                verses = [v.strip() for v in chapter.splitlines() if _is_text(v.strip())]
                if verses:
                    units.append(_Unit("The Bible", verses, f"{name}/{i}", testament=testament))
            continue
        work = "Shakespeare" if kind == "shakespeare" else "Milton"
        chunks: list[tuple[str | None, list[str]]] = []
        for para in re.split(r"\n\s*\n", doc.text):
            lines = [s.strip() for s in para.strip().splitlines()]
            speaker = None
            if (
                work == "Shakespeare"
                and len(lines) > 1
                and _SPEAKER.match(lines[0])
                and not _HEADING.match(lines[0])
            ):
                speaker, lines = lines[0], lines[1:]
            text = [s for s in lines if _is_text(s)]
            if speaker and not text:  # an empty speech keeps its place: exchanges are of adjacent speeches
                chunks.append((speaker, []))
            for start in range(0, len(text), 12):
                chunks.append((speaker, text[start : start + 12]))
        for i, (speaker, text) in enumerate(chunks):
            units.append(_Unit(work, text, f"{doc.source}/{i // _GROUP}", speaker=speaker))
    return units


def _pools(docs: Iterable[Document], seed: int) -> tuple[_Pool, _Pool]:
    train, held = _Pool(), _Pool()
    units = _units(docs)
    for u in units:
        if u.lines:
            (held if _held_out(u.group, seed) else train).units.append(u)
    for a, b in zip(units, units[1:], strict=False):  # adjacent speeches of one group, two speakers
        if a.speaker and b.speaker and a.lines and b.lines and a.speaker != b.speaker and a.group == b.group:
            (held if _held_out(a.group, seed) else train).exchanges.append((a, b))
    for pool in (train, held):
        pool.index()
    return train, held


def _passage(rng: random.Random, unit: _Unit, max_lines: int = 3, max_chars: int = 240) -> list[str] | None:
    """1-``max_lines`` consecutive lines of ``unit`` (at least 60 characters in all), or None."""
    start = rng.randrange(len(unit.lines))
    out: list[str] = []
    for line in unit.lines[start : start + rng.randint(1, max_lines)]:
        if sum(map(len, out)) + len(line) > max_chars:
            break
        out.append(line)
    return out if sum(map(len, out)) >= 60 else None


def _pick(rng: random.Random, units: list[_Unit]) -> _Unit:
    return units[rng.randrange(len(units))]


class _Maker:
    """Draws records of each task from one pool; ``used`` collects the text lines the records show."""

    def __init__(self, pool: _Pool, rng: random.Random, avoid: set[str]) -> None:
        self.pool, self.rng, self.avoid, self.used = pool, rng, avoid, set[str]()

    def _ok(self, lines: list[str]) -> bool:
        return not any(s in self.avoid for s in lines)

    def _labelled(self, labels: tuple[str, ...], max_lines: int) -> tuple[str, list[str]] | None:
        """A label drawn uniformly, and a passage of it (labels stay balanced however short their lines)."""
        label = labels[self.rng.randrange(len(labels))]
        for _ in range(100):
            lines = _passage(self.rng, _pick(self.rng, self.pool.by_work[label]), max_lines=max_lines)
            if lines and self._ok(lines):
                return label, lines
        return None

    def work(self) -> tuple[str, str, list[str]] | None:
        got = self._labelled(WORKS, max_lines=3)
        return (PROMPTS["work"].format(passage="\n".join(got[1])), *got) if got else None

    def testament(self) -> tuple[str, str, list[str]] | None:
        got = self._labelled(TESTAMENTS, max_lines=1)
        return (PROMPTS["testament"].format(passage=got[1][0]), *got) if got else None

    def speaker(self) -> tuple[str, str, list[str]] | None:
        a, b = self.pool.exchanges[self.rng.randrange(len(self.pool.exchanges))]
        speeches = [(u.speaker or "", u.lines[:2]) for u in (a, b)]
        if any(sum(map(len, lines)) > 160 for _, lines in speeches):
            speeches = [(s, lines[:1]) for s, lines in speeches]
        who = self.rng.randrange(2)
        line = self.rng.choice(speeches[who][1])
        if line in speeches[1 - who][1] or len(line) > 120:
            return None
        exchange = "\n\n".join(f"{s}\n" + "\n".join(lines) for s, lines in speeches)
        shown = [*speeches[0][1], *speeches[1][1]]
        return PROMPTS["speaker"].format(line=line, exchange=exchange), speeches[who][0].rstrip("."), shown

    def continuation(self) -> tuple[str, str, str, list[str]] | None:
        unit = _pick(self.rng, self.pool.by_work[WORKS[self.rng.randrange(len(WORKS))]])
        if len(unit.lines) < 3:
            return None
        start = self.rng.randrange(len(unit.lines) - 2)
        lines = unit.lines[start : start + 3]
        if any(len(s) > 160 for s in lines):
            return None
        others = [w for w in WORKS if w != unit.work]
        pool = self.pool.lines_of(others[self.rng.randrange(2)])
        i = bisect.bisect_left(pool, (len(lines[2]), ""))
        i = min(len(pool) - 1, max(0, i + self.rng.randint(-10, 10)))
        rejected = pool[i][1]
        if rejected == lines[2] or not self._ok([rejected]):
            return None
        self.used.add(rejected)
        return PROMPTS["continue"].format(passage="\n".join(lines[:2])), lines[2], rejected, lines

    def make(self, task: str, kind: str) -> dict[str, Any] | None:
        if kind == "dpo" and task == "continue":
            made = self.continuation()
            if made is None or not self._ok(made[3]):
                return None
            self.used.update(made[3])
            return {"prompt": made[0], "chosen": made[1], "rejected": made[2], "task": task}
        qa = {"work": self.work, "speaker": self.speaker, "testament": self.testament}[task]()
        if qa is None or not self._ok(qa[2]):
            return None
        prompt, answer, lines = qa
        self.used.update(lines)
        if kind == "sft":
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            return {"messages": messages, "task": task}
        labels = WORKS if task == "work" else TESTAMENTS
        wrong = [x for x in labels if x != answer]
        return {
            "prompt": prompt,
            "chosen": answer,
            "rejected": wrong[self.rng.randrange(len(wrong))],
            "task": task,
        }


def _generate(
    docs: Iterable[Document], kind: str, mix: dict[str, int], seed: int, held_out_share: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(f"classics-tasks:{kind}:{seed}")
    train_pool, held_pool = _pools(docs, seed)
    out = []
    avoid: set[str] = set()
    for pool, scale in ((train_pool, 1.0), (held_pool, held_out_share)):
        maker = _Maker(pool, rng, avoid)
        records: list[dict[str, Any]] = []
        for task, n in mix.items():
            want, tries = round(n * scale), 0
            got: list[dict[str, Any]] = []
            while len(got) < want:
                tries += 1
                if tries > 50 * want + 1000:
                    raise RuntimeError(
                        f"classics tasks: could not draw {want} {task!r} records (got {len(got)})"
                    )
                record = maker.make(task, kind)
                if record is not None:
                    got.append(record)
            records += got
        rng.shuffle(records)
        out.append(records)
        avoid = maker.used  # the held-out side may show no line that a train record shows
    return out[0], out[1]


def generate_instructions(
    docs: Iterable[Document], seed: int = 42, mix: dict[str, int] | None = None, held_out_share: float = 0.1
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, held_out)`` instruction records (``{"messages", "task"}``) from the classics documents."""
    return _generate(docs, "sft", mix or INSTRUCTION_MIX, seed, held_out_share)


def generate_preferences(
    docs: Iterable[Document], seed: int = 42, mix: dict[str, int] | None = None, held_out_share: float = 0.1
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, held_out)`` preference records (``{"prompt", "chosen", "rejected", "task"}``)."""
    return _generate(docs, "dpo", mix or PREFERENCE_MIX, seed, held_out_share)


def builtin_fingerprint(name: str, seed: int, corpus_fingerprint: str) -> str:
    """What a builtin set's records depend on: its name and version, the seed, the corpus."""
    return f"{name}:v{VERSION}:seed={seed}:{corpus_fingerprint}"


def builtin_records(
    name: str, seed: int = 42, cache_dir: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """``(train, held_out, fingerprint)`` of builtin set ``name``, reading the classics corpus (cached)."""
    from lightning_llm.data.classics import ClassicsSource

    if name not in BUILTIN_SOURCES:
        raise ValueError(
            f"{name!r} is not a builtin post-training set; they are {', '.join(BUILTIN_SOURCES)}"
        )
    source = ClassicsSource(cache_dir=cache_dir)
    docs = list(source.documents())
    make = generate_instructions if BUILTIN_SOURCES[name] == "sft" else generate_preferences
    train, held = make(docs, seed)
    return train, held, builtin_fingerprint(name, seed, source.fingerprint())


def write_builtin_records(
    name: str, directory: Path, seed: int = 42, cache_dir: str | None = None
) -> tuple[list[tuple[Path, str, str]], dict[str, dict[str, int]]]:
    """Write set ``name``'s records as ``directory/train.jsonl`` and ``val.jsonl`` (held out).

    Returns ``(file, split, name in messages)`` for each, and the records per task of each split.
    """
    train, held, _ = builtin_records(name, seed, cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    files, tasks = [], {}
    for split, rows in (("train", train), ("val", held)):
        path = directory / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        files.append((path, split, f"{name}/{split}.jsonl"))
        tasks[split] = dict(Counter(r["task"] for r in rows))
    return files, tasks
