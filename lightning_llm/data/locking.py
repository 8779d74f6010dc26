"""One writer per output directory, and files that are replaced whole or not at all.

``exclusive(directory)`` holds an OS file lock (``flock``) on ``directory/.prepare.lock`` for as long as
a prepare run writes there. The OS drops it when the process ends, however it ends, so a crashed or
killed run never leaves a stale lock behind. A second run on the same directory does not wait: it fails
at once and says which process holds the lock. The lock file itself is never deleted (deleting it
would let two runs hold locks on two different files).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning_llm.data.errors import PrepareError
from lightning_llm.data.layout import LOCK_FILE


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # pragma: no cover - prepare's litdata workers need fork anyway
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _holder(path: Path) -> str:
    """Who holds the lock, from what the holder wrote into the lock file."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is just starting"


@contextmanager
def exclusive(directory: str | Path) -> Iterator[None]:
    """Hold the prepare lock of ``directory`` (created if needed); raises ``PrepareError`` if it is held."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise PrepareError(
                f"{directory} is being prepared by another `lightning-llm prepare` ({_holder(path)}). "
                f"Two runs writing one directory would corrupt it, so this run stopped without touching it. "
                f"Wait for that run to finish (a run with the same settings then reuses its output), "
                f"or choose another --output_dir."
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename: readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
