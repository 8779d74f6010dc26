"""The chat template: conversations as token ids, which tokens are trained on, and the way back.

A conversation is a list of messages ``{"role": "system" | "user" | "assistant", "content": str}``. It is
rendered straight to ids (never through a string that is parsed again), with one special token per role and
one that ends a turn::

    <|endoftext|> [<|system|> text <|end|>] <|user|> text <|end|> <|assistant|> text <|end|> <|user|> ...

``<|endoftext|>`` opens the conversation as it opens a pretraining document. Message text is encoded as
ordinary text, so a user who types ``<|assistant|>`` gets the characters, not the token: a turn cannot be
forged. The special tokens are added to the pretrained tokenizer (``Tokenizer.with_special_tokens``) after
all its ids; the model's new rows start at the mean embedding (``warm_start.grow_vocab``).

For training, ``render`` also returns the labels: the assistant's text and its ``<|end|>`` are predicted
(loss), everything else (the opening token, roles, system and user text) is ``IGNORE_INDEX``. For
generation, ``prompt_ids`` ends with ``<|assistant|>`` and the model writes until ``<|end|>``.

The template travels in every checkpoint (``TEMPLATE_NAME`` and the tokenizer's special tokens), so
``lightning-llm generate --chat`` needs nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_llm.data.tokenizer import Tokenizer

TEMPLATE_NAME = "lightning_llm.chat/1"
IGNORE_INDEX = -100
"""Label of a token the loss skips (the value ``linear_cross_entropy`` and ``F.cross_entropy`` ignore)."""

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_TOKEN = "<|end|>"
CHAT_TOKENS = (*ROLE_TOKENS.values(), END_TOKEN)


class ChatFormatError(ValueError):
    """A conversation the template cannot render (unknown role, turns out of order, empty reply, ...)."""


def chat_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` with the chat template's special tokens (unchanged if it has them all)."""
    return tokenizer.with_special_tokens(CHAT_TOKENS)


def has_chat_tokens(tokenizer: Tokenizer) -> bool:
    extra = getattr(tokenizer, "extra_special", None) or {}
    return all(t in extra for t in CHAT_TOKENS)


def check_messages(messages: Any) -> list[dict[str, str]]:
    """The messages as plain dicts, or ``ChatFormatError`` saying what is wrong.

    Rules: a list of ``{"role", "content"}`` objects with string content; at most one system message, and
    only first; then user and assistant alternate, starting with user; a training conversation ends with
    an assistant reply (``render`` checks that); no assistant reply is empty.
    """
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError('\'messages\' must be a non-empty list of {"role", "content"} objects')
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ChatFormatError(f"message {i} must be an object with 'role' and 'content', got {m!r:.80}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ChatFormatError(f"message {i} has role {role!r}; the roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ChatFormatError(f"message {i} ({role}) has {type(content).__name__} content, not a string")
        out.append({"role": role, "content": content})
    expected = "user"
    for i, m in enumerate(out):
        if m["role"] == "system":
            if i != 0:
                raise ChatFormatError(f"message {i} is a system message; only the first message may be one")
            continue
        if m["role"] != expected:
            raise ChatFormatError(
                f"message {i} is from the {m['role']} where the {expected} was expected: after an optional "
                "system message, user and assistant take turns, starting with the user"
            )
        if m["role"] == "assistant" and not m["content"].strip():
            raise ChatFormatError(
                f"message {i} is an empty assistant reply: there is nothing to learn from it"
            )
        expected = "assistant" if expected == "user" else "user"
    return out


@dataclass(frozen=True)
class Rendered:
    """A conversation as ids, with the labels of causal language modelling already shifted.

    ``labels[t]`` is the id the model should predict after reading ``ids[: t + 1]``, or ``IGNORE_INDEX``.
    """

    ids: list[int]
    labels: list[int]


def render(tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]]) -> Rendered:
    """Ids and labels of a training conversation (it must end with an assistant reply)."""
    msgs = check_messages(list(messages))
    if msgs[-1]["role"] != "assistant":
        raise ChatFormatError("a training conversation must end with an assistant reply")
    special = _special_ids(tokenizer)
    ids = [tokenizer.eot_id]
    trained = [False]  # whether ids[i] is a token the model should learn to predict
    for m in msgs:
        body = [special[ROLE_TOKENS[m["role"]]], *tokenizer.encode(m["content"]), special[END_TOKEN]]
        is_reply = m["role"] == "assistant"
        ids += body
        trained += [False] + [is_reply] * (len(body) - 1)  # the role token is given, the rest predicted
    labels = [ids[t + 1] if trained[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
    return Rendered(ids=ids[:-1], labels=labels)


def prompt_ids(tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Ids of a conversation that ends with a user turn, followed by ``<|assistant|>``: what the model
    continues when it replies."""
    msgs = check_messages(list(messages))
    if msgs[-1]["role"] != "user":
        raise ChatFormatError("a prompt must end with a user message (the model writes the reply)")
    special = _special_ids(tokenizer)
    ids = [tokenizer.eot_id]
    for m in msgs:
        ids += [special[ROLE_TOKENS[m["role"]]], *tokenizer.encode(m["content"]), special[END_TOKEN]]
    return [*ids, special[ROLE_TOKENS["assistant"]]]


def parse(tokenizer: Tokenizer, ids: Iterable[int]) -> list[dict[str, str]]:
    """The messages of rendered ids (the inverse of ``render`` / ``prompt_ids``); an unfinished last turn
    is returned as far as it goes."""
    special = _special_ids(tokenizer)
    role_of = {special[tok]: role for role, tok in ROLE_TOKENS.items()}
    messages: list[dict[str, str]] = []
    role: str | None = None
    body: list[int] = []
    for i in ids:
        if i in role_of:
            role, body = role_of[i], []
        elif i == special[END_TOKEN] and role is not None:
            messages.append({"role": role, "content": tokenizer.decode(body)})
            role = None
        elif i != tokenizer.eot_id and role is not None:
            body.append(i)
    if role is not None:
        messages.append({"role": role, "content": tokenizer.decode(body)})
    return messages


def stop_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids that end a reply when generating: ``<|end|>`` and ``<|endoftext|>``."""
    return [_special_ids(tokenizer)[END_TOKEN], tokenizer.eot_id]


def _special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    if not has_chat_tokens(tokenizer):
        raise ChatFormatError(
            f"The tokenizer {tokenizer.name!r} has no chat tokens ({', '.join(CHAT_TOKENS)}): this checkpoint "
            "was not trained on conversations. Fine-tune it first (lightning-llm sft), or generate without --chat."
        )
    return tokenizer.extra_special
