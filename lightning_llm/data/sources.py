"""Where documents come from: files, directories, globs, fsspec URLs and registered sources.

``resolve_source(spec)`` turns what the user typed into a :class:`Source`, a re-iterable stream of
:class:`Document` objects. Text files (``.txt``, ``.md``) are one document each; JSON Lines (``.jsonl``,
``.json``) and Parquet are one document per record, ``text_field`` naming the field or column; any of
these may be gzipped (``.gz``). A source counts what it read in ``Source.stats`` (files, bytes, bytes
that were not valid UTF-8, JSON lines that did not parse, ...), which the prepare report shows.

:class:`Document`, :class:`Source` and ``decode`` live in :mod:`lightning_llm.data.documents` (re-exported
here). Named sources live in ``lightning_llm.registry.SOURCES``, whose built-in module is this one: the
built-in ``classics`` (:mod:`lightning_llm.data.classics`) registers when this module imports it, which
makes no cycle because classics imports only ``documents`` and the registry. Third-party sources register
through the ``lightning_llm.sources`` entry-point group::

    [project.entry-points."lightning_llm.sources"]
    wiki = "my_package.sources:wiki"     # a factory (**options) -> Source
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from tqdm.auto import tqdm

from lightning_llm.data import classics as _classics  # noqa: F401  registers the built-in "classics"
from lightning_llm.data import junk_source as _junk  # noqa: F401  registers "synthetic-junk"
from lightning_llm.data.documents import Document, Source, decode
from lightning_llm.registry import SOURCES, accepted_options

# Document, Source and decode are re-exported from documents, where they live.
__all__ = ["Document", "FileSource", "READERS", "Source", "decode", "resolve_source"]

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


# -- readers: (open the file, its name, stats, text_field) -> documents ----------------------------------
Opener = Callable[[], IO[bytes]]


def _read_text(open_: Opener, name: str, stats: dict[str, int], text_field: str) -> Iterator[Document]:
    with open_() as f:
        data = f.read()
    stats["bytes_read"] += len(data)
    text, bad = decode(data)
    stats["undecodable_chars"] += bad
    yield Document(text, name)


def _json_records(f: IO[bytes], stats: dict[str, int]) -> Iterator[Any]:
    """Records of a JSON Lines file; a file that holds one JSON array is read as that array."""
    first = True
    for raw in f:
        stats["bytes_read"] += len(raw)
        if first and raw.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            rest = f.read()
            stats["bytes_read"] += len(rest)
            text, bad = decode(raw + rest)
            stats["undecodable_chars"] += bad
            try:
                yield from json.loads(text)
            except json.JSONDecodeError:
                stats["bad_lines"] += 1
            return
        line, bad = decode(raw)
        stats["undecodable_chars"] += bad
        if not line.strip():
            continue
        first = False
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            stats["bad_lines"] += 1


def _read_jsonl(open_: Opener, name: str, stats: dict[str, int], text_field: str) -> Iterator[Document]:
    records = missing = 0
    fields: set[str] = set()
    with open_() as f:
        for record in _json_records(f, stats):
            records += 1
            value = record.get(text_field) if isinstance(record, dict) else None
            if isinstance(value, str):
                yield Document(value, f"{name}:{records}")
                continue
            missing += 1
            if isinstance(record, dict) and len(fields) < 100:
                fields.update(record)
    stats["missing_field"] += missing
    if records and missing == records:
        raise ValueError(
            f"{name}: none of its {records} records has a string field {text_field!r} "
            f"(fields seen: {', '.join(sorted(fields)) or 'none'}). Choose the field with text_field=..."
        )


def _read_parquet(open_: Opener, name: str, stats: dict[str, int], text_field: str) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_() as f:
        stats["bytes_read"] += f.seek(0, os.SEEK_END)
        f.seek(0)
        table = pq.ParquetFile(f)
        columns = table.schema_arrow.names
        if text_field not in columns:
            raise ValueError(
                f"{name}: no column {text_field!r}; its columns are {', '.join(columns)}. "
                f"Choose the column with text_field=..."
            )
        kind = table.schema_arrow.field(text_field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ValueError(f"{name}: column {text_field!r} holds {kind}, not strings.")
        row = 0
        for batch in table.iter_batches(columns=[text_field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                row += 1
                yield Document(value or "", f"{name}:{row}")


READERS: dict[str, Callable[..., Iterator[Document]]] = {
    ".txt": _read_text,
    ".md": _read_text,
    ".jsonl": _read_jsonl,
    ".json": _read_jsonl,
    ".parquet": _read_parquet,
}


def _suffix(name: str) -> str:
    """The suffix that picks the reader: ``data.jsonl.gz`` → ``.jsonl``."""
    path = PurePosixPath(name[:-3] if name.endswith(".gz") else name)
    return path.suffix.lower()


class FileSource(Source):
    """Documents read from a list of files, local or (with ``fs``, an fsspec filesystem) remote."""

    def __init__(self, paths: list[str], *, name: str, text_field: str = "text", fs: Any = None) -> None:
        super().__init__()
        self.paths = paths
        self.name = name
        self.text_field = text_field
        self.fs = fs

    def _opener(self, path: str) -> Opener:
        if self.fs is not None:
            return lambda: self.fs.open(path, "rb", compression="infer")
        if path.endswith(".gz"):
            return lambda: gzip.open(path, "rb")  # type: ignore[return-value]
        return lambda: open(path, "rb")

    def _read(self) -> Iterator[Document]:
        for path in tqdm(self.paths, desc=f"reading {self.name}", unit="file", leave=False, disable=None):
            self.stats["files"] += 1
            reader = READERS.get(_suffix(path), _read_text)  # a file named explicitly is read as text
            yield from reader(self._opener(path), path, self.stats, self.text_field)

    def documents(self) -> Iterator[Document]:
        return self._counted(self._read())

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"text_field={self.text_field}\n".encode())
        for path in self.paths:
            if self.fs is None:
                st = os.stat(path)
                size, version = st.st_size, str(st.st_mtime_ns)
            else:
                info = self.fs.info(path)
                size = info.get("size")
                version = next(
                    (str(info[k]) for k in ("ETag", "etag", "mtime", "LastModified") if k in info), ""
                )
            digest.update(f"{path}\0{size}\0{version}\n".encode())
        return f"files:{len(self.paths)}:{digest.hexdigest()[:16]}"


def _remote_source(url: str, text_field: str) -> FileSource:
    try:
        import fsspec
    except ImportError as err:
        raise ImportError(f"Reading {url} needs fsspec: pip install fsspec (and s3fs for s3://).") from err
    try:
        fs, path = fsspec.core.url_to_fs(url)
        if any(c in path for c in "*?["):
            paths = sorted(fs.glob(path))
        elif fs.isdir(path):
            paths = sorted(p for p in fs.find(path) if _suffix(p) in READERS)
        else:
            paths = [path]
    except ImportError:
        raise
    except Exception as err:
        raise OSError(
            f"Could not list {url}: {err!r}. Check that the network is reachable and credentials are set, "
            f"or download the files and pass a local path."
        ) from err
    if not paths:
        raise FileNotFoundError(f"{url} matches no files.")
    return FileSource(paths, name=url, text_field=text_field, fs=fs)


def _local_files(spec: str) -> list[str] | None:
    """Files named by ``spec`` (a file, a directory searched recursively, or a glob); None if none match."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        found = (
            p
            for p in path.rglob("*")
            if p.is_file() and _suffix(p.name) in READERS and not any(s.startswith(".") for s in p.parts)
        )
        return sorted(map(str, found)) or None
    if any(c in spec for c in "*?["):
        return (
            sorted(p for p in glob.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p))
            or None
        )
    return None


def resolve_source(spec: str, *, text_field: str = "text", cache_dir: str | None = None) -> Source:
    """The source that ``spec`` names: a path, a directory, a glob, a URL, or a registered source name.

    A bare name that is both registered and a path in the working directory is an error (was: the path
    won, silently); ``./name`` or an absolute path means the path. Raises ``FileNotFoundError`` saying
    what was looked for and which registered sources exist when nothing matches.
    """
    spec = os.fspath(spec)
    if spec in SOURCES and Path(spec).exists():
        raise ValueError(
            f"--source {spec!r} is both a registered source and a path in {Path.cwd()}. Write ./{spec} for the "
            f"path, or run prepare from another directory for the registered source."
        )
    if _URL.match(spec) and not spec.startswith("file://"):
        return _remote_source(spec, text_field)
    local = spec[len("file://") :] if spec.startswith("file://") else spec
    files = _local_files(local)
    if files is not None:
        return FileSource(files, name=Path(local).name or local, text_field=text_field)
    if spec in SOURCES:
        factory = SOURCES.get(spec)
        options: dict[str, Any] = {"text_field": text_field, "cache_dir": cache_dir}
        accepted = accepted_options(factory)
        if accepted is not None:
            options = {k: v for k, v in options.items() if k in accepted}
        return factory(**options)
    kind = "directory holds no readable files" if Path(local).expanduser().is_dir() else "no such file"
    raise FileNotFoundError(
        f"No data for {spec!r} ({kind}). Give a file, a directory (searched recursively for "
        f"{', '.join(READERS)}, optionally .gz), a glob, a URL (s3://, https://, ...), or a registered "
        f"source: {', '.join(SOURCES.names())}."
    )
