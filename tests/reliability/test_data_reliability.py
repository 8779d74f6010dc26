"""Issue #11, items 5-7 (the data side): nothing silent, nothing lost.

5. Two ``prepare`` runs on one directory: the second fails at once, clearly; the first writes a whole,
   consistent dataset. A failed run leaves no litter and never a directory marked complete.
6. Every ``prepare`` setting is validated before any work, with a one-paragraph error; a vocabulary
   smaller than asked is said in one line and recorded at its real size.
7. A damaged dataset (chunk missing, truncated or overwritten, random marker or index) is refused when
   the data module is created, and token ids outside the vocabulary when a batch is read, each with
   "re-run prepare" instead of a litdata timeout or an IndexError in the embedding.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lightning_llm.data.prepare as prep
from lightning_llm.cli import main as cli_main
from lightning_llm.data.clean import CleanConfig, build_pipeline
from lightning_llm.data.datamodule import TokenDataModule
from lightning_llm.data.errors import ConfigError, DataError, PrepareError
from lightning_llm.data.integrity import verify_split
from lightning_llm.data.prepare import MARKER, REPORT, PrepareConfig, prepare
from lightning_llm.data.sources import resolve_source
from lightning_llm.data.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
FAST_CLEAN = CleanConfig(near_dedup=False)


@pytest.fixture
def corpus(tiny_corpus: Path, tmp_path: Path) -> Path:
    """12 real-text documents (about 70 kB): a prepare of it takes a few seconds."""
    d = tmp_path / "corpus"
    d.mkdir()
    for f in sorted(tiny_corpus.glob("*.txt"))[:12]:
        shutil.copy(f, d / f.name)
    return d


def cli_args(corpus: Path, out: Path) -> list[str]:
    return [
        "--source", str(corpus), "--output_dir", str(out), "--tokenizer", "bpe", "--vocab_size", "300",
        "--val_fraction", "0.2", "--num_workers", "1", "--clean.near_dedup", "false",
    ]  # fmt: skip


def config(corpus: Path, out: Path, **kw) -> PrepareConfig:
    base = dict(source=str(corpus), output_dir=str(out), vocab_size=300, val_fraction=0.2, num_workers=1)
    return PrepareConfig(**{**base, "clean": FAST_CLEAN, **kw})


def assert_whole(out: Path, corpus: Path) -> None:
    """``out`` holds every cleaned document of ``corpus``, and report, marker and shards agree."""
    expected = len(list(build_pipeline(FAST_CLEAN)(resolve_source(str(corpus)).documents())))
    report = json.loads((out / REPORT).read_text())
    marker = json.loads((out / MARKER).read_text())
    assert report["documents_read"] == 12 and report["documents_kept"] == expected
    vocab = Tokenizer.load(out / "tokenizer").vocab_size
    assert vocab == report["tokenizer"]["vocab_size"] == marker["tokenizer"]["vocab_size"]
    documents = 0
    for split in ("train", "val"):
        found = verify_split(out, split, vocab)
        assert found["tokens"] == report["splits"][split]["tokens"] == marker["splits"][split]["tokens"]
        assert found["documents"] == report["splits"][split]["documents"]
        documents += found["documents"]
    assert documents == expected
    assert not (out / ".staging").exists()
    batch = next(iter(TokenDataModule(str(out), batch_size=2, block_size=32).train_dataloader()))
    assert batch.shape == (2, 33)


# -- 5. one writer per directory; a failed run leaves nothing half-written -------------------------------
PAUSED_PREPARE = """
import sys, time
from pathlib import Path
import lightning_llm.data.prepare as prep
from lightning_llm.cli.prepare import prepare_main

signals, real = Path(sys.argv[1]), prep._build_tokenizer

def paused(*args, **kwargs):  # hold the run in the middle of its work until the test says go
    (signals / "paused").touch()
    while not (signals / "go").exists():
        time.sleep(0.05)
    return real(*args, **kwargs)

prep._build_tokenizer = paused
prepare_main(sys.argv[2:])
"""


def test_a_second_prepare_on_one_directory_fails_clearly_and_the_first_is_whole(corpus, tmp_path):
    out, signals = tmp_path / "ds", tmp_path / "signals"
    signals.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSED_PREPARE, str(signals), *cli_args(corpus, out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (signals / "paused").exists():
            assert first.poll() is None, f"the first run ended early: {first.communicate()}"
            assert time.monotonic() < deadline, "the first run never reached its tokenizer"
            time.sleep(0.05)
        # the first run has read and cleaned the corpus and is about to train its tokenizer
        second = subprocess.run(
            [sys.executable, "-m", "lightning_llm", "prepare", *cli_args(corpus, out)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode != 0
        assert f"is being prepared by another `lightning-llm prepare` (pid {first.pid}" in second.stderr
        assert "choose another --output_dir" in second.stderr and "Traceback" not in second.stderr
        assert not (out / MARKER).exists() and (out / ".staging").is_dir()  # the first run's, untouched
    finally:
        (signals / "go").touch()
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert "Prepared" in stdout
    assert_whole(out, corpus)


def test_started_together_one_writes_and_the_other_fails_or_reuses(corpus, tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "lightning_llm", "prepare", *cli_args(corpus, out)]
    runs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    runs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(r.wait(timeout=120), *r.communicate()) for r in runs]
    built = [r for r in results if r[0] == 0 and "Prepared" in r[1]]
    assert len(built) == 1, results  # exactly one run wrote the dataset
    for rc, stdout, stderr in results:
        assert rc == 0 or "is being prepared by another" in stderr, stderr  # the other failed clearly...
        assert rc != 0 or "Prepared" in stdout or "Reusing" in stdout  # ...or came after and reused it
    assert_whole(out, corpus)


def test_a_failed_run_leaves_no_litter_and_the_previous_dataset_whole(corpus, tmp_path, monkeypatch):
    out = prepare(config(corpus, tmp_path / "ds"))
    marker = (out / MARKER).read_text()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prep, "_optimize", disk_full)
    with pytest.raises(OSError, match="No space left"):
        prepare(config(corpus, out, vocab_size=320, overwrite=True))
    assert (out / MARKER).read_text() == marker and not (out / ".staging").exists()
    assert_whole(out, corpus)  # the earlier dataset, untouched

    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="No space left"):
        prepare(config(corpus, fresh))
    assert not (fresh / MARKER).exists() and not (fresh / ".staging").exists()

    (out / ".staging" / "text").mkdir(parents=True)  # what a killed run leaves
    prepare(config(corpus, out))
    assert not (out / ".staging").exists()


def test_documents_lost_while_writing_are_never_marked_complete(corpus, tmp_path, monkeypatch):
    real = prep.tokenize_shard

    def loses_the_first_document(path: str, tokenizer_dir: str):
        items = real(path, tokenizer_dir)
        next(items)
        yield from items

    monkeypatch.setattr(prep, "tokenize_shard", loses_the_first_document)  # runs in the forked workers
    out = tmp_path / "ds"
    with pytest.raises(PrepareError, match=r"litdata wrote \d+ documents into the train split instead of"):
        prepare(config(corpus, out))
    assert not (out / MARKER).exists() and not (out / ".staging").exists()


# -- 6. settings are validated before any work --------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--val_fraction", "1.5", "--val_fraction 1.5 is not strictly between 0 and 1"),
        ("--val_fraction", "0", "--val_fraction 0.0 is not strictly between 0 and 1"),
        ("--vocab_size", "10", "--vocab_size 10 is too small for a byte-level BPE"),
        ("--vocab_size", "10000000", "--vocab_size 10,000,000 is above prepare's limit of 1,048,576 ids"),
        ("--num_workers", "0", "--num_workers 0 must be at least 1"),
        ("--chunk_bytes", "32XB", "--chunk_bytes '32XB' is not a positive size: write it like 32MB"),
        ("--clean.min_alpha_ratio", "2", "--clean.min_alpha_ratio is a fraction between 0 and 1; got 2.0"),
    ],
)
def test_bad_settings_fail_before_any_work(corpus, tmp_path, option, value, expected):
    out = tmp_path / "ds"
    with pytest.raises(SystemExit) as err:
        cli_main(["prepare", *cli_args(corpus, out), option, value])
    msg = str(err.value)
    assert msg.startswith("lightning-llm prepare: error: invalid") and expected in msg
    assert "\n" not in msg  # one paragraph
    assert not out.exists()  # nothing was read or written, no .staging


def test_config_errors_are_value_errors_listing_every_bad_field(corpus, tmp_path):
    with pytest.raises(ConfigError) as err:
        config(corpus, tmp_path / "ds", val_fraction=1.5, vocab_size=10, tokenizer="sentencepiece")
    assert isinstance(err.value, ValueError) and isinstance(err.value, PrepareError)
    msg = str(err.value)
    assert all(s in msg for s in ("--val_fraction 1.5", "--tokenizer 'sentencepiece'", "use e.g. 0.05"))

    cfg = config(corpus, tmp_path / "ds")
    cfg.val_fraction = 0.0  # changed after validation: prepare checks again before any work
    with pytest.raises(ConfigError, match="val_fraction 0.0"):
        prepare(cfg)
    assert not (tmp_path / "ds").exists()
    with pytest.raises(ConfigError, match="lies inside the source directory"):
        config(corpus, corpus / "prepared")


def test_a_smaller_vocabulary_than_asked_is_said_once_and_recorded(corpus, tmp_path, capsys):
    out = prepare(config(corpus, tmp_path / "ds", vocab_size=5000))
    lines = [line for line in capsys.readouterr().out.splitlines() if "asked for" in line]
    n = Tokenizer.load(out / "tokenizer").vocab_size
    assert n < 5000 and len(lines) == 1
    assert f"The BPE has {n:,} ids, not the 5,000 asked for (--vocab_size)" in lines[0]
    report = json.loads((out / REPORT).read_text())
    marker = json.loads((out / MARKER).read_text())
    assert report["tokenizer"]["vocab_size"] == marker["tokenizer"]["vocab_size"] == n
    assert report["tokenizer"]["name"] == f"bpe-{n}" and report["tokenizer"]["vocab_size_requested"] == 5000
    assert TokenDataModule(str(out), batch_size=2, block_size=32).vocab_size == n
    prepare(config(corpus, out, vocab_size=5000))
    assert "Reusing" in capsys.readouterr().out


# -- 7. damaged datasets are refused at setup, or on read ---------------------------------------------
def _chunk(ds: Path, split: str = "train") -> tuple[Path, dict]:
    entry = json.loads((ds / split / "index.json").read_text())["chunks"][0]
    return ds / split / entry["filename"], entry


def _truncate(ds: Path) -> None:
    path, _ = _chunk(ds)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _overwrite(ds: Path) -> None:
    path, _ = _chunk(ds)
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


DAMAGE = {
    "missing chunk": (lambda ds: _chunk(ds)[0].unlink(), "chunk train/chunk-0-0.bin is missing"),
    "truncated chunk": (_truncate, "bytes, its index records"),
    "overwritten chunk": (_overwrite, "has been overwritten"),
    "random marker": (lambda ds: (ds / MARKER).write_bytes(b"\xff\xfe" + os.urandom(500)), "not UTF-8"),
    "garbage index": (lambda ds: (ds / "val" / "index.json").write_text("{garbage"), "not valid JSON"),
    "missing index": (lambda ds: (ds / "val" / "index.json").unlink(), "val/index.json is missing"),
    "random tokenizer": (lambda ds: (ds / "tokenizer" / "tokenizer.json").write_text("[]"), "tokenizer"),
}


@pytest.fixture
def dataset(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A copy of the session's tiny prepared dataset, to damage."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "ds"))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_dataset_is_refused_at_setup(dataset, damage):
    make, expected = DAMAGE[damage]
    make(dataset)
    with pytest.raises(DataError) as err:
        TokenDataModule(str(dataset), batch_size=4, block_size=64)
    msg = str(err.value)
    assert f"The dataset {dataset} is damaged" in msg and expected in msg
    assert "Re-run prepare to rebuild it" in msg and f"--output_dir {dataset}" in msg


@pytest.mark.parametrize("num_workers", [0, 1])
def test_token_ids_outside_the_vocabulary_are_refused_on_read(dataset, num_workers):
    path, entry = _chunk(dataset)
    header = (entry["chunk_size"] + 2) * 4
    data = bytearray(path.read_bytes())
    data[header:] = np.full((len(data) - header) // 2, 60000, dtype=np.uint16).tobytes()
    path.write_bytes(bytes(data))  # same size, same header: only the tokens are wrong
    dm = TokenDataModule(str(dataset), batch_size=4, block_size=64, shuffle=False, num_workers=num_workers)
    with pytest.raises(DataError, match="holds token id 60000, outside its tokenizer's 512 ids") as err:
        next(iter(dm.train_dataloader()))
    msg = str(err.value)  # a worker's error comes back with the worker's message only, no traceback
    assert msg.startswith(f"The dataset {dataset} is damaged") and "Traceback" not in msg
    assert "Re-run prepare to rebuild it" in msg


def test_prepare_rebuilds_a_damaged_dataset_instead_of_reusing_it(corpus, tmp_path, capsys):
    out = prepare(config(corpus, tmp_path / "ds"))
    _chunk(out)[0].unlink()
    capsys.readouterr()
    prepare(config(corpus, out))
    printed = capsys.readouterr().out
    assert "is damaged: chunk train/chunk-0-0.bin is missing; rebuilding it." in printed
    assert "Reusing" not in printed
    assert_whole(out, corpus)

    (out / MARKER).write_bytes(b"\xff" + os.urandom(100))
    prepare(config(corpus, out))
    assert "prepared.json is not UTF-8 text; rebuilding it." in capsys.readouterr().out
    assert_whole(out, corpus)


def test_datasets_prepared_before_the_checks_existed_still_load(dataset):
    marker = json.loads((dataset / MARKER).read_text())
    del marker["splits"]  # older markers record no per-split counts or index digests
    (dataset / MARKER).write_text(json.dumps(marker))
    assert TokenDataModule(str(dataset), batch_size=4, block_size=64).num_blocks("train") > 0
    _truncate(dataset)  # the structural checks still apply
    with pytest.raises(DataError, match="bytes, its index records"):
        TokenDataModule(str(dataset), batch_size=4, block_size=64)
