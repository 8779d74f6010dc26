"""Our tiktoken BPE <-> a Hugging Face ``tokenizers`` byte-level BPE (``tokenizer.json``), same ids.

A ``Tokenizer`` is a pre-tokenizer regex, mergeable byte strings ranked by merge priority and
``<|endoftext|>``. The same thing in ``tokenizers`` terms:

* vocab: each byte string written with GPT-2's byte -> printable character table, id = its rank;
* merges: for every token, each split ``left + right`` whose halves are both tokens, ordered by the rank
  of the merged token. tiktoken merges whichever adjacent pair makes the lowest-ranked token, by any
  split, so every split must be a merge (transformers' ``TikTokenConverter`` does the same);
* ``ignore_merges``: a pre-token that is itself a token is taken whole, as tiktoken does;
* pre-tokenizer: GPT-2's pattern is ``ByteLevel(use_regex=True)``; any other pattern is a ``Split`` on it
  followed by ``ByteLevel(use_regex=False)``;
* ``<|endoftext|>``: an added special token with our ``eot_id``.

Importing reads that layout back and refuses anything else (a normalizer, byte fallback, a Metaspace
pre-tokenizer, other special tokens) with a ``HFTokenizerError`` that says what it found. Both directions
are checked on a probe text before they return: an export or import that changes one id fails.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from lightning_llm.data.tokenizer import ENDOFTEXT, GPT2_PATTERN, Tokenizer, byte_to_unicode


class HFTokenizerError(ValueError):
    """A tokenizer that has no exact counterpart on the other side."""


PROBE = (
    "Hello world! It's 3.14159 and 1,000,000 -- naïve café Straße Ελληνικά русский 日本語 한국어 😀👩‍👩‍👧\n"
    "  leading spaces, trailing   \n\n\t\ttabs\r\n don't I'll we've they're O'Neill DON'T (x) [y] {z} <a/>"
    + " " * 9
    + "end\n"
)
"""A short varied text that both directions must encode identically before they return."""


def _bytes_to_str(token: bytes, table: dict[int, str]) -> str:
    return "".join(table[b] for b in token)


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every split ``(left, right)`` of every token whose halves are tokens, in tiktoken's merge order.

    Ordered by the rank of the merged token; splits of one token by the ranks of their halves.
    """
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def to_hf_tokenizer_json(tok: Tokenizer) -> dict[str, Any]:
    """The ``tokenizer.json`` content (a dict) of a byte-level BPE with exactly ``tok``'s ids."""
    d = tok.to_dict()
    ranks = {base64.b64decode(token): rank for rank, token in enumerate(d["ranks"])}
    table = byte_to_unicode()
    if any(bytes([b]) not in ranks for b in range(256)):
        raise HFTokenizerError(
            f"Tokenizer '{tok.name}' lacks some of the 256 single bytes, so a byte-level BPE cannot encode "
            "every text the same way; only byte-complete BPEs (gpt2, lightning-llm prepare --tokenizer bpe) "
            "can be exported."
        )
    vocab = {_bytes_to_str(token, table): rank for token, rank in ranks.items()}
    merges = [[_bytes_to_str(a, table), _bytes_to_str(b, table)] for a, b in bpe_merges(ranks)]
    if d["pat_str"] == GPT2_PATTERN:
        pre_tokenizer: dict[str, Any] = {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        }
    else:
        pre_tokenizer = {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": d["pat_str"]},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        }
    special = {
        "id": tok.eot_id,
        "content": ENDOFTEXT,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special],
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }


def hf_tokenizer_config(tok: Tokenizer, model_max_length: int) -> dict[str, Any]:
    """``tokenizer_config.json``: a plain fast tokenizer over ``tokenizer.json``, GPT-2's special tokens."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "bos_token": ENDOFTEXT,
        "eos_token": ENDOFTEXT,
        "unk_token": ENDOFTEXT,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "lightning_llm_tokenizer": {"name": tok.name, "fingerprint": tok.fingerprint()},
    }


def check_same_ids(tok: Tokenizer, tokenizer_json: dict[str, Any], text: str = PROBE) -> None:
    """Raise unless ``tokenizers`` loading ``tokenizer_json`` encodes ``text`` to ``tok``'s ids."""
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_str(json.dumps(tokenizer_json))
    ours, theirs = tok.encode(text), hf.encode(text, add_special_tokens=False).ids
    if ours != theirs:
        at = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
        at = min(len(ours), len(theirs)) if at is None else at
        raise HFTokenizerError(
            f"The Hugging Face and lightning-llm tokenizers disagree on a probe text (first at token {at}: "
            f"{ours[at : at + 3]} vs {theirs[at : at + 3]}); this tokenizer cannot be converted exactly."
        )


# -- import ----------------------------------------------------------------------------------------
def _pattern(pre: dict[str, Any] | None) -> str:
    """Our pre-tokenizer regex for a ``tokenizer.json`` pre-tokenizer, or an error saying what it is."""
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        if pre.get("add_prefix_space"):
            raise HFTokenizerError("ByteLevel(add_prefix_space=true) adds a space tiktoken never adds")
        return GPT2_PATTERN
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else []
    if (
        len(steps) == 2
        and steps[0].get("type") == "Split"
        and "Regex" in (steps[0].get("pattern") or {})
        and str(steps[0].get("behavior", "")).lower() == "isolated"
        and not steps[0].get("invert")
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("use_regex", True)
        and not steps[1].get("add_prefix_space")
    ):
        return steps[0]["pattern"]["Regex"]
    kind = (pre or {}).get("type")
    raise HFTokenizerError(
        f"its pre-tokenizer is {json.dumps(pre)[:200] if pre else 'none'} ({kind}); lightning-llm reads a "
        "byte-level BPE whose pre-tokenizer is ByteLevel(use_regex=true) (GPT-2) or Split(regex) followed by "
        "ByteLevel(use_regex=false)"
    )


def from_hf_tokenizer_json(data: dict[str, Any], name: str) -> Tokenizer:
    """Our ``Tokenizer`` with the ids of a byte-level BPE ``tokenizer.json`` (``data``), or an error that
    names what has no tiktoken counterpart."""
    model = data.get("model") or {}
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"its model is {model.get('type')!r}, not a BPE")
    if model.get("byte_fallback"):
        problems.append("it uses byte_fallback (SentencePiece-style <0xNN> tokens)")
    if data.get("normalizer"):
        problems.append(f"it has a normalizer ({data['normalizer'].get('type')}) that changes the text")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        problems.append("it uses a subword prefix/suffix")
    try:
        pat_str = _pattern(data.get("pre_tokenizer"))
    except HFTokenizerError as err:
        problems.append(str(err))
    special = {t["content"]: t["id"] for t in data.get("added_tokens", []) if t.get("special", True)}
    others = sorted(set(special) - {ENDOFTEXT})
    if others:
        problems.append(
            f"it has special tokens besides {ENDOFTEXT} ({', '.join(others[:8])}"
            f"{', ...' if len(others) > 8 else ''}); lightning-llm tokenizers have {ENDOFTEXT} only"
        )
    if ENDOFTEXT not in special:
        problems.append(f"it has no {ENDOFTEXT} special token (the document separator)")
    if problems:
        raise HFTokenizerError(_refusal(problems))
    decode = {ch: b for b, ch in byte_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for token, idx in model["vocab"].items():
        if token in special:
            continue
        try:
            ranks[bytes(decode[ch] for ch in token)] = idx
        except KeyError as err:
            raise HFTokenizerError(
                _refusal([f"token {token!r} is not byte-level (character {err})"])
            ) from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise HFTokenizerError(_refusal(["its token ids (without special tokens) are not 0..n-1"]))
    last = -1
    for merge in model.get("merges", []):
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        rank = model["vocab"].get(left + right)
        if rank is None or rank < last:
            raise HFTokenizerError(
                _refusal(["its merges are not in the order of the merged tokens' ids (tiktoken's ranks)"])
            )
        last = rank
    tok = Tokenizer(name, ranks, pat_str=pat_str, eot_id=special[ENDOFTEXT])
    check_same_ids(tok, data)
    return tok


def _refusal(problems: list[str]) -> str:
    return (
        "The Hugging Face tokenizer cannot be read as a lightning-llm (tiktoken byte-level BPE) tokenizer: "
        + "; ".join(problems)
        + ". GPT-2-style byte-level BPEs (gpt2, and those lightning-llm exports) can."
    )
