"""Building blocks of prepare's reliability: the directory lock, atomic writes and size parsing."""

from __future__ import annotations

import os

import pytest

from lightning_llm.data.errors import PrepareError
from lightning_llm.data.layout import LOCK_FILE
from lightning_llm.data.locking import atomic_write_text, exclusive
from lightning_llm.data.validate import parse_bytes


def test_the_lock_admits_one_holder_and_is_released_on_exit(tmp_path):
    out = tmp_path / "ds"
    with exclusive(out):
        assert (out / LOCK_FILE).is_file()
        with pytest.raises(PrepareError, match=rf"being prepared by another .*pid {os.getpid()}"):
            with exclusive(out):
                pass
    with exclusive(out):  # released: a later run gets it
        pass
    with pytest.raises(RuntimeError, match="boom"), exclusive(out):
        raise RuntimeError("boom")
    with exclusive(out):  # released after an error too
        pass


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "prepared.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["prepared.json"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("32MB", 32_000_000), ("500kb", 500_000), ("1.5 GB", 1_500_000_000), ("64", 64), (4096, 4096)],
)
def test_sizes_parse_like_litdata(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["32XB", "", "MB", "-5MB", "1e6", None, True])
def test_unreadable_sizes_are_none(text):
    assert parse_bytes(text) is None
