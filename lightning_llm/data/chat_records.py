"""Post-training records: JSON Lines in, checked conversations and preference pairs out, and their items.

Supervised fine-tuning (``prepare-sft``) reads one record per line, in either of two formats (``--format
auto`` picks per record, by its keys)::

    {"messages": [{"role": "system", "content": ...}, {"role": "user", ...}, {"role": "assistant", ...}]}
    {"instruction": "...", "input": "... (optional)", "output": "..."}          # Alpaca

An Alpaca record is the conversation ``user: instruction [+ "\\n\\n" + input]``, ``assistant: output``.

Preference tuning (``prepare-dpo``) reads ``{"prompt", "chosen", "rejected"}``: ``prompt`` is a string (one
user turn) or a message list ending with a user turn; ``chosen`` and ``rejected`` are the two replies, each
a string or a one-element list ``[{"role": "assistant", "content": ...}]``.

Blank lines are skipped. Every bad record raises :class:`ChatRecordError`, whose message starts with
``file:line`` and says what is wrong and how to fix it; the conversation rules are ``chat.check_messages``'.

The directory layout is described in :mod:`lightning_llm.data.chat_prepare`; ``verify_chat_dataset``
checks it (cheaply: marker, indexes, chunk sizes and headers) for prepare and for the datamodules.

What is stored per record (one litdata item, a dict of 1-D int32 numpy arrays, which litdata serialises
natively, ``no_header_numpy``)::

    sft:  {"input_ids": ids, "labels": labels}                  # chat.render: labels already shifted
    dpo:  {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}

``labels[t]`` is the id to predict after ``input_ids[: t + 1]``, or ``IGNORE_INDEX`` (-100): only the
assistant's reply and its ``<|end|>`` are trained. Both sequences of a pair start with the same prompt ids.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_llm.chat import IGNORE_INDEX, ChatFormatError, check_messages, render
from lightning_llm.data.errors import DataError, damaged
from lightning_llm.data.integrity import index_sha256, verify_items
from lightning_llm.data.layout import INDEX, SPLITS
from lightning_llm.data.tokenizer import Tokenizer

DATA_FORMAT = "lightning_llm.chat_data/1"
"""Version of the stored items (recorded in the marker; bump when they change)."""
RECORDS_DIR = "records"
"""Where a builtin set's generated records are written in the output directory (train.jsonl, val.jsonl)."""
KINDS = ("sft", "dpo")
A_KIND = {"sft": "an SFT dataset", "dpo": "a DPO dataset"}
"""How messages name a dataset of each kind."""
FORMATS = ("auto", "messages", "alpaca")
SFT_KEYS = ("input_ids", "labels")
DPO_KEYS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
ITEM_KEYS = {"sft": SFT_KEYS, "dpo": DPO_KEYS}
_MESSAGES_EXAMPLE = '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}'
_A_ROLE = {"system": "a system", "user": "a user", "assistant": "an assistant"}
_PAIR_EXAMPLE = '{"prompt": "...", "chosen": "...", "rejected": "..."}'


class ChatRecordError(DataError):
    """A record that cannot be used; the message names ``file:line``, the problem and the fix."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


@dataclass(frozen=True)
class Conversation:
    """A checked training conversation (ends with an assistant reply) and where it was read."""

    messages: list[dict[str, str]]
    where: str


@dataclass(frozen=True)
class PreferencePair:
    """A checked preference record: the prompt (ends with a user turn) and two different replies."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    where: str

    def conversations(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """The prompt followed by the chosen reply, and by the rejected one."""
        return (
            [*self.prompt, {"role": "assistant", "content": self.chosen}],
            [*self.prompt, {"role": "assistant", "content": self.rejected}],
        )


# -- reading ----------------------------------------------------------------------------------------------
def iter_jsonl(path: str | Path, name: str | None = None) -> Iterator[tuple[str, Any]]:
    """``(file:line, parsed JSON)`` for each non-blank line of a JSON Lines file (``.gz`` is decompressed).

    ``name`` replaces the path in ``file:line`` (e.g. for generated records). Raises ``ChatRecordError``
    for a line that is not UTF-8 JSON.
    """
    path = Path(path)
    label = name or str(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{label}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise ChatRecordError(
                    where,
                    f"the line is not UTF-8 text ({err.reason} at byte {err.start}); save the file as UTF-8",
                ) from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                hint = (
                    " The file looks like one JSON array: JSON Lines needs one object per line "
                    "(convert it with `jq -c '.[]' FILE > FILE.jsonl`)."
                    if number == 1 and line.lstrip().startswith("[")
                    else ""
                )
                raise ChatRecordError(
                    where,
                    f"invalid JSON ({err.msg} at column {err.colno}). Each line must hold one complete JSON "
                    f"object; fix or remove this line.{hint}",
                ) from None


def read_conversations(
    path: str | Path, fmt: str = "auto", name: str | None = None
) -> Iterator[Conversation]:
    """The conversations of an SFT JSON Lines file (``fmt``: auto, messages or alpaca)."""
    for where, obj in iter_jsonl(path, name):
        yield Conversation(sft_messages(obj, fmt, where), where)


def read_pairs(path: str | Path, name: str | None = None) -> Iterator[PreferencePair]:
    """The preference pairs of a DPO JSON Lines file."""
    for where, obj in iter_jsonl(path, name):
        yield preference_pair(obj, where)


# -- checking one record ----------------------------------------------------------------------------------
def _object(obj: Any, where: str, example: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ChatRecordError(
            where,
            f"the line holds a JSON {type(obj).__name__}, not an object; each line is one record like {example}",
        )
    return obj


def _string(obj: Mapping[str, Any], key: str, where: str, what: str) -> str:
    if key not in obj:
        raise ChatRecordError(
            where,
            f"missing field {key!r} ({what}); the record has {', '.join(map(repr, obj)) or 'no fields'}",
        )
    value = obj[key]
    if not isinstance(value, str):
        raise ChatRecordError(where, f"field {key!r} ({what}) must be a string, got {type(value).__name__}")
    return value


def sft_messages(obj: Any, fmt: str, where: str) -> list[dict[str, str]]:
    """The checked messages of one SFT record; ``ChatRecordError`` says what is wrong with it."""
    record = _object(obj, where, _MESSAGES_EXAMPLE)
    kind = fmt
    if fmt == "auto":
        if "messages" in record:
            kind = "messages"
        elif "instruction" in record or "output" in record:
            kind = "alpaca"
        else:
            raise ChatRecordError(
                where,
                f"the record has neither 'messages' nor Alpaca's 'instruction'/'output' (it has "
                f"{', '.join(map(repr, record)) or 'no fields'}); write it as {_MESSAGES_EXAMPLE} or "
                '{"instruction": ..., "input": ..., "output": ...}',
            )
    if kind == "alpaca":
        return alpaca_messages(record, where)
    if kind != "messages":
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if "messages" not in record:
        raise ChatRecordError(
            where,
            f"missing field 'messages' (--format messages); the record has {', '.join(map(repr, record))}. "
            "Use --format auto to read Alpaca records too",
        )
    messages = _checked(record["messages"], where, "'messages'")
    if messages[-1]["role"] != "assistant":
        raise ChatRecordError(
            where,
            f"the conversation ends with {_A_ROLE[messages[-1]['role']]} message; a training conversation ends with "
            "the assistant's reply (what the model learns to write): add the reply or drop the last message",
        )
    return messages


def alpaca_messages(record: Mapping[str, Any], where: str) -> list[dict[str, str]]:
    """An Alpaca record as a conversation: the instruction (and input) from the user, the output as reply."""
    instruction = _string(record, "instruction", where, "the task, said by the user")
    output = _string(record, "output", where, "the reply the model learns")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise ChatRecordError(
            where, f"field 'input' must be a string (or absent), got {type(extra).__name__}"
        )
    if not instruction.strip():
        raise ChatRecordError(where, "the 'instruction' is empty: say what the assistant should do")
    if not output.strip():
        raise ChatRecordError(
            where, "the 'output' is empty: there is no reply to learn; fill it in or drop the record"
        )
    user = instruction + ("\n\n" + extra if extra and extra.strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _checked(messages: Any, where: str, what: str) -> list[dict[str, str]]:
    try:
        return check_messages(messages)
    except ChatFormatError as err:
        raise ChatRecordError(where, f"{what}: {err}") from None


def _reply(record: Mapping[str, Any], key: str, where: str) -> str:
    if key not in record:
        raise ChatRecordError(
            where,
            f"missing field {key!r}; a preference record is {_PAIR_EXAMPLE} (it has {', '.join(map(repr, record))})",
        )
    value = record[key]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], Mapping):
        msg = value[0]
        if msg.get("role") != "assistant" or not isinstance(msg.get("content"), str):
            raise ChatRecordError(
                where,
                f'{key!r} must be a string or [{{"role": "assistant", "content": "..."}}], got {value!r:.100}',
            )
        value = msg["content"]
    elif isinstance(value, list):
        raise ChatRecordError(
            where,
            f"{key!r} is a list of {len(value)} items; give only the reply, as a string or one assistant message, "
            "and put the conversation before it in 'prompt'",
        )
    if not isinstance(value, str):
        raise ChatRecordError(where, f"{key!r} must be a string (the reply), got {type(value).__name__}")
    if not value.strip():
        raise ChatRecordError(
            where, f"the {key} reply is empty: a pair needs two real replies; fill it in or drop the record"
        )
    return value


def preference_pair(obj: Any, where: str) -> PreferencePair:
    """One checked preference record; ``ChatRecordError`` says what is wrong with it."""
    record = _object(obj, where, _PAIR_EXAMPLE)
    if "prompt" not in record:
        raise ChatRecordError(
            where,
            f"missing field 'prompt'; a preference record is {_PAIR_EXAMPLE} (it has {', '.join(map(repr, record))})",
        )
    prompt = record["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ChatRecordError(
                where, "the 'prompt' is empty: give the user's request the two replies answer"
            )
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        messages = _checked(prompt, where, "'prompt'")
        if messages[-1]["role"] != "user":
            raise ChatRecordError(
                where,
                f"'prompt' ends with {_A_ROLE[messages[-1]['role']]} message; it must end with the user turn that "
                "'chosen' and 'rejected' reply to",
            )
    else:
        raise ChatRecordError(
            where, f"'prompt' must be a string or a list of messages, got {type(prompt).__name__}"
        )
    chosen, rejected = _reply(record, "chosen", where), _reply(record, "rejected", where)
    if chosen.strip() == rejected.strip():
        raise ChatRecordError(
            where,
            "'chosen' and 'rejected' are the same text, so the pair prefers nothing; fix one of them or drop the record",
        )
    return PreferencePair(messages, chosen, rejected, where)


# -- items ------------------------------------------------------------------------------------------------
def _rendered(
    tokenizer: Tokenizer, messages: list[dict[str, str]], block_size: int, where: str, what: str
) -> tuple[np.ndarray, np.ndarray]:
    r = render(tokenizer, messages)
    if len(r.ids) > block_size:
        prompt = next(t for t, label in enumerate(r.labels) if label != IGNORE_INDEX) + 1
        detail = f" (the prompt alone is {prompt})" if prompt >= block_size else ""
        raise ChatRecordError(
            where,
            f"{what} renders to {len(r.ids)} tokens{detail}, more than --block_size {block_size}: shorten the "
            f"record (or drop it), or raise --block_size (the model's block size must be at least as large)",
        )
    return np.asarray(r.ids, dtype=np.int32), np.asarray(r.labels, dtype=np.int32)


def sft_item(tokenizer: Tokenizer, conversation: Conversation, block_size: int) -> dict[str, np.ndarray]:
    """The stored item of a conversation; ``ChatRecordError`` if it is longer than ``block_size``."""
    ids, labels = _rendered(
        tokenizer, conversation.messages, block_size, conversation.where, "the conversation"
    )
    return {"input_ids": ids, "labels": labels}


def dpo_item(tokenizer: Tokenizer, pair: PreferencePair, block_size: int) -> dict[str, np.ndarray]:
    """The stored item of a preference pair; ``ChatRecordError`` if either sequence exceeds ``block_size``."""
    chosen, rejected = pair.conversations()
    c_ids, c_labels = _rendered(tokenizer, chosen, block_size, pair.where, "the prompt with the chosen reply")
    r_ids, r_labels = _rendered(
        tokenizer, rejected, block_size, pair.where, "the prompt with the rejected reply"
    )
    return {
        "chosen_input_ids": c_ids,
        "chosen_labels": c_labels,
        "rejected_input_ids": r_ids,
        "rejected_labels": r_labels,
    }


def item_counts(item: Mapping[str, np.ndarray]) -> tuple[int, int, int]:
    """Sequence tokens, trained tokens (labels that are not ``IGNORE_INDEX``) and the longest sequence."""
    tokens = trained = longest = 0
    for key, value in item.items():
        if key.endswith("labels"):
            trained += int(np.count_nonzero(value != IGNORE_INDEX))
        else:
            tokens += len(value)
            longest = max(longest, len(value))
    return tokens, trained, longest


def record_json(record: Conversation | PreferencePair) -> dict[str, Any]:
    """A record as the JSON a user would write (what ``records/*.jsonl`` holds for the builtin sources)."""
    if isinstance(record, Conversation):
        return {"messages": record.messages}
    prompt: Any = record.prompt[0]["content"] if len(record.prompt) == 1 else record.prompt
    return {"prompt": prompt, "chosen": record.chosen, "rejected": record.rejected}


# -- the prepared directory -------------------------------------------------------------------------------
def verify_chat_dataset(dataset: str | Path, marker: dict[str, Any], tokenizer_fingerprint: str) -> None:
    """Check a post-training directory against its marker (tokenizer, splits); raises ``DatasetDamaged``."""
    dataset = Path(dataset)
    if tokenizer_fingerprint != marker["tokenizer"]["fingerprint"]:
        raise damaged(dataset, "tokenizer/ is not the tokenizer the records were written with")
    for split in SPLITS:
        want = (marker.get("splits") or {}).get(split)
        if not isinstance(want, dict):
            raise damaged(dataset, f"prepared.json records no {split} split")
        found = verify_items(dataset, split)
        if found != want.get("records"):
            raise damaged(
                dataset, f"{split}/ holds {found:,} records, the marker records {want.get('records')!r}"
            )
        if want.get("index_sha256") != index_sha256(dataset / split):
            raise damaged(dataset, f"{split}/{INDEX} is not the index prepare wrote (its sha256 differs)")
