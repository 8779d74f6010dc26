"""prepare: what it writes is exactly the cleaned corpus, split by document; reuse, rebuild and refusal."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from lightning_llm.cli.prepare import build_parser, parse_config, prepare_main
from lightning_llm.data.clean import CleanConfig, build_pipeline
from lightning_llm.data.errors import PrepareError
from lightning_llm.data.layout import MARKER, REPORT
from lightning_llm.data.prepare import PrepareConfig, prepare
from lightning_llm.data.sources import resolve_source
from lightning_llm.data.tokenizer import Tokenizer, gpt2_tokenizer

FAST_CLEAN = CleanConfig(near_dedup=False)


def read_tokens(split_dir: Path) -> np.ndarray:
    """All tokens of a litdata TokensLoader directory, in chunk order (header: n, n + 1 offsets)."""
    index = json.loads((split_dir / "index.json").read_text())
    parts = []
    for c in index["chunks"]:
        offset = (1 + c["chunk_size"] + 1) * 4
        parts.append(np.fromfile(split_dir / c["filename"], dtype=np.uint16, offset=offset))
        assert len(parts[-1]) == c["dim"]
    return np.concatenate(parts)


def documents_of(tokens: np.ndarray, tok: Tokenizer) -> list[str]:
    cuts = np.flatnonzero(tokens == tok.eot_id)
    assert cuts[-1] == len(tokens) - 1  # every document ends with <|endoftext|>
    return [tok.decode(d.tolist()) for d in np.split(tokens, cuts + 1)[:-1] for d in [d[:-1]]]


@pytest.fixture
def corpus(tiny_corpus: Path, tmp_path: Path) -> Path:
    """24 real documents, plus one exact duplicate and one too short to keep."""
    d = tmp_path / "corpus"
    d.mkdir()
    files = sorted(tiny_corpus.glob("*.txt"))[:24]
    for f in files:
        shutil.copy(f, d / f.name)
    shutil.copy(files[0], d / "zz-duplicate.txt")
    (d / "zz-short.txt").write_text("Too short.")
    return d


def config(corpus: Path, out: Path, **kw) -> PrepareConfig:
    base = dict(source=str(corpus), output_dir=str(out), tokenizer="bpe", vocab_size=400, val_fraction=0.2)
    return PrepareConfig(**{**base, "num_workers": 2, "clean": FAST_CLEAN, **kw})


def test_output_is_the_cleaned_corpus_split_by_document(corpus, tmp_path):
    cfg = config(corpus, tmp_path / "ds")
    out = prepare(cfg)
    report = json.loads((out / REPORT).read_text())
    tok = Tokenizer.load(out / "tokenizer")
    assert tok.vocab_size == 400 and report["tokenizer"]["fingerprint"] == tok.fingerprint()

    expected = [d.text for d in build_pipeline(FAST_CLEAN)(resolve_source(str(corpus)).documents())]
    docs = {s: documents_of(read_tokens(out / s), tok) for s in ("train", "val")}
    assert sorted(docs["train"] + docs["val"]) == sorted(expected)
    assert docs["train"] and docs["val"] and not set(docs["train"]) & set(docs["val"])

    clean = report["clean"]
    assert report["documents_read"] == 26 == clean[0]["docs_in"]
    assert report["duplicates_removed"] == 1 and report["documents_kept"] == len(expected) == 24
    assert clean[-1]["docs_out"] == report["documents_kept"]
    assert all(s["docs_in"] - s["docs_removed"] == s["docs_out"] for s in clean)
    for split in ("train", "val"):
        assert report["splits"][split]["documents"] == len(docs[split])
        assert report["splits"][split]["tokens"] == len(read_tokens(out / split))
    total = sum(s["tokens"] for s in report["splits"].values())
    assert report["tokens_per_byte"] == pytest.approx(total / report["bytes_kept"])
    assert report["source"]["stats"]["files"] == 26 and "undecodable_chars" in report["source"]["stats"]
    assert not (out / ".staging").exists()


def test_split_is_seeded_and_order_independent(corpus, tmp_path):
    a = prepare(config(corpus, tmp_path / "a", tokenizer="gpt2"))
    b = prepare(config(corpus, tmp_path / "b", tokenizer="gpt2", seed=7))
    ra, rb = (json.loads((p / REPORT).read_text())["splits"] for p in (a, b))
    tok = gpt2_tokenizer()
    val_a, val_b = (set(documents_of(read_tokens(p / "val"), tok)) for p in (a, b))
    assert val_a != val_b and ra["val"]["documents"] >= 1 and rb["val"]["documents"] >= 1


def test_reuse_partial_rebuild_and_mismatch(corpus, tmp_path, capsys):
    out = tmp_path / "ds"
    cfg = config(corpus, out, tokenizer="gpt2")
    prepare(cfg)
    marker = (out / MARKER).read_text()

    t = time.perf_counter()
    prepare(cfg)  # same settings: reused, quickly
    assert time.perf_counter() - t < 5 and "Reusing" in capsys.readouterr().out
    assert (out / MARKER).read_text() == marker

    (out / MARKER).unlink()  # an interrupted run leaves no marker
    (out / "train" / "index.json").write_text("{garbage")
    (out / "notes.txt").write_text("mine")  # not prepare's: must survive the rebuild
    prepare(cfg)
    assert (out / MARKER).is_file() and json.loads((out / "train" / "index.json").read_text())["chunks"]
    assert (out / "notes.txt").read_text() == "mine"

    with pytest.raises(PrepareError) as err:  # written by another tokenizer than configured
        prepare(config(corpus, out, tokenizer="bpe"))
    msg = str(err.value)
    assert "tokenizer: existing 'gpt2', requested 'bpe'" in msg and "vocab_size" in msg
    assert "--overwrite true" in msg and "--output_dir" in msg
    with pytest.raises(PrepareError, match=r"clean\.min_chars: existing 100, requested 50"):
        prepare(config(corpus, out, tokenizer="gpt2", clean=CleanConfig(near_dedup=False, min_chars=50)))

    prepare(config(corpus, out, tokenizer="bpe", overwrite=True))
    assert Tokenizer.load(out / "tokenizer").name == "bpe-400"


def test_swapped_tokenizer_directory_is_detected(corpus, tmp_path):
    out = prepare(config(corpus, tmp_path / "ds", tokenizer="bpe"))
    gpt2_tokenizer().save(out / "tokenizer")  # shards were written with the bpe
    with pytest.raises(PrepareError, match="shards were written with bpe-400"):
        prepare(config(corpus, out, tokenizer="bpe"))


def test_empty_after_filtering_shows_the_report(corpus, tmp_path):
    out = tmp_path / "ds"
    cfg = config(corpus, out, clean=CleanConfig(near_dedup=False, min_chars=10**9))
    with pytest.raises(PrepareError) as err:
        prepare(cfg)
    msg = str(err.value)
    assert "No documents left" in msg and "length" in msg and "--clean" in msg
    report = json.loads((out / REPORT).read_text())
    assert report["documents_read"] == 26 and report["documents_kept"] == 0
    assert not (out / MARKER).exists()


def test_a_single_document_is_split_at_a_line_break(tiny_corpus, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("\n\n".join(f.read_text() for f in sorted(tiny_corpus.glob("*.txt"))[:3]))
    out = prepare(config(one, tmp_path / "ds", tokenizer="gpt2", val_fraction=0.1))
    splits = json.loads((out / REPORT).read_text())["splits"]
    assert splits["train"]["documents"] == splits["val"]["documents"] == 1
    assert 5 < splits["train"]["tokens"] / splits["val"]["tokens"] < 15


def test_config_validation():
    with pytest.raises(PrepareError, match="bpe, gpt2"):
        PrepareConfig(tokenizer="sentencepiece")
    with pytest.raises(PrepareError, match="val_fraction"):
        PrepareConfig(val_fraction=0.0)


def test_cli_options_config_file_and_help(tmp_path, capsys):
    cfg = parse_config(
        ["--config", "configs/data/classics.yaml", "--clean.min_chars", "200", "--vocab_size", "4096"]
    )
    assert (cfg.source, cfg.tokenizer, cfg.vocab_size, cfg.clean.min_chars) == ("classics", "bpe", 4096, 200)
    assert isinstance(cfg.clean, CleanConfig)
    help_text = build_parser().format_help()
    assert "Fraction of documents held out for validation" in help_text  # field docstrings are the help
    with pytest.raises(SystemExit):
        prepare_main(["--source", "x", "--print_config"])
    assert "source: x" in capsys.readouterr().out


def test_cli_error_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit) as err:
        prepare_main(["--source", str(tmp_path / "nothing-here"), "--output_dir", str(tmp_path / "o")])
    assert "lightning-llm prepare: error:" in str(err.value) and "nothing-here" in str(err.value)
