"""Score texts with a filter in forked worker processes, as prepare's pipeline does (tests' helper)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

_STATE: tuple[Any, Callable[[Any], bool]] | None = None  # set in the parent before forking


def _score(text: str) -> tuple[bool, float]:
    assert _STATE is not None
    flt, loaded = _STATE
    return loaded(flt), flt.score(text)


def score_in_forked_workers(
    flt: Any, texts: list[str], loaded: Callable[[Any], bool]
) -> list[tuple[bool, float]]:
    """(whether ``loaded(flt)`` held in the worker before scoring, the score) per text, from 2 forked workers."""
    global _STATE
    _STATE = (flt, loaded)
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            return pool.map(_score, texts, chunksize=8)
    finally:
        _STATE = None
