"""Tokenizers: GPT-2 offline, a trained BPE served by tiktoken with the trainer's exact ids, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_llm.data.tokenizer import (
    Tokenizer,
    TokenizerError,
    gpt2_tokenizer,
    train_bpe,
    train_bpe_with_hf,
)

TRICKY = (
    "  leading spaces, trailing   \n\n\n\t\ttabs\r\n"
    "numbers 1234567890 3.14159 1,000,000 2nd 42nd\n"
    "punctuation!!! ??? ... --- ''quoted'' \"double\" (parens) [brackets] {braces} <tags/>\n"
    "contractions: don't I'll we've they're she'd it's O'Neill DON'T\n"
    "unicode: naïve café Straße Ελληνικά русский 日本語テキスト 한국어 עברית العربية\n"
    "emoji 😀🎉👩‍👩‍👧 combining e\u0301 zero\u200bwidth nbsp\u00a0here\n"
    "<|endoftext|> is plain text here\n" + " " * 17 + "x" + "\n" * 5
)


@pytest.fixture(scope="module")
def corpus(tiny_corpus: Path) -> tuple[list[str], str]:
    """Training texts and a held-out text (documents the tokenizer never saw, plus the tricky cases)."""
    files = sorted(tiny_corpus.glob("*.txt"))
    texts = [f.read_text(encoding="utf-8") for f in files]
    return texts[:-5], "\n\n".join(texts[-5:]) + TRICKY


@pytest.fixture(scope="module")
def trained(corpus: tuple[list[str], str]):
    return train_bpe_with_hf(corpus[0], 1024)


def test_gpt2_is_gpt2_offline():
    tok = gpt2_tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eot_id == 50256 and tok.name == "gpt2"
    assert tok.decode(tok.encode(TRICKY)) == TRICKY


def test_bpe_tiktoken_ids_equal_trainer_ids_on_held_out_text(trained, corpus):
    tok, hf = trained
    held_out = corpus[1]
    ids = tok.encode(held_out)
    assert ids == hf.encode(held_out, add_special_tokens=False).ids
    assert len(ids) < len(held_out.encode())  # it did merge
    assert tok.decode(ids) == held_out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_bpe_parity_and_roundtrip_on_arbitrary_unicode(trained, text):
    tok, hf = trained
    ids = tok.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text


def test_bpe_vocab_and_eot(trained):
    tok, _ = trained
    assert tok.vocab_size == 1024 and tok.eot_id == 1023 and tok.name == "bpe-1024"
    assert max(tok.encode(TRICKY)) < tok.eot_id  # the separator never comes out of ordinary text


def test_encode_batch_equals_encode(trained):
    tok, _ = trained
    texts = [TRICKY, "", "a", TRICKY[::-1]]
    assert tok.encode_batch(texts, num_threads=2) == [tok.encode(t) for t in texts]


@pytest.mark.parametrize("which", ["bpe", "gpt2"])
def test_save_load_and_dict_roundtrip(trained, which, tmp_path):
    tok = trained[0] if which == "bpe" else gpt2_tokenizer()
    d = json.loads(json.dumps(tok.to_dict()))  # self-contained and JSON-serialisable (checkpoints)
    again = Tokenizer.from_dict(d)
    tok.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    for other in (again, loaded):
        assert other.fingerprint() == tok.fingerprint()
        assert (other.name, other.vocab_size, other.eot_id) == (tok.name, tok.vocab_size, tok.eot_id)
        assert other.encode(TRICKY) == tok.encode(TRICKY)


def test_fingerprints_differ_and_tampering_is_detected(trained):
    tok, _ = trained
    assert tok.fingerprint() != gpt2_tokenizer().fingerprint()
    d = tok.to_dict()
    d["ranks"][300], d["ranks"][301] = d["ranks"][301], d["ranks"][300]
    with pytest.raises(TokenizerError, match="fingerprint"):
        Tokenizer.from_dict(d)
    with pytest.raises(TokenizerError, match="format"):
        Tokenizer.from_dict({"name": "x"})


def test_load_missing_and_tiny_vocab_errors(tmp_path):
    with pytest.raises(TokenizerError, match="lightning-llm prepare"):
        Tokenizer.load(tmp_path)
    with pytest.raises(TokenizerError, match="at least 258"):
        train_bpe(["some text"], 100)
