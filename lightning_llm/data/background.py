"""Work prepare's parent process does while it would otherwise wait (on its cleaning workers, on the BPE).

Only start a thread here once the worker processes are forked: forking while another thread imports can
leave a child's import locks held.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any


def in_background(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """Start ``fn(*args)`` in a thread; the returned function waits for it and returns (or raises) its result."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append((True, fn(*args)))
        except BaseException as err:  # handed to the caller's thread
            result.append((False, err))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def wait() -> Any:
        thread.join()
        ok, value = result[0]
        if not ok:
            raise value
        return value

    return wait


def import_for_later_steps(plots: bool) -> None:
    """Import what prepare needs after cleaning: litdata (and torch) and, with plots to draw, matplotlib."""
    importlib.import_module("litdata")
    if plots:
        importlib.import_module("matplotlib.figure")  # write_histograms draws with it
