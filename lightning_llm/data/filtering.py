"""Document filters as plugins: the :class:`DocumentFilter` contract and the ``filter`` registry's built-ins.

A filter scores one document's text with a number and keeps the document when the score lies within
its bounds. The heuristic (Gopher-style) metrics of :mod:`lightning_llm.data.filters`, the language
identifier, the offensive-language filter and the trainable quality classifier all follow this one
contract, so ``prepare`` counts what each removes, keeps a few removed examples and a histogram of the
scores for ``report.json``, and runs them in worker processes. Third parties add filters through the
entry-point group ``lightning_llm.filters``::

    [project.entry-points."lightning_llm.filters"]
    my_filter = "my_package:MyFilter"

A filter class takes its options as keyword-only ``__init__`` parameters (they come from YAML or the
command line, ``--clean.filters``; unknown ones are refused, listing the valid ones), implements
:meth:`DocumentFilter.score` and sets ``min`` / ``max``. One that needs a model loads it in
:meth:`DocumentFilter.setup`, which runs once in the parent process before any document is read (so a
missing library fails at once, and forked workers share the loaded model), and names what decides its
scores beyond its options in :meth:`DocumentFilter.fingerprint` (a model file's hash, a library
version), so a changed model is never silently reused with an old dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_llm.data.documents import Document
from lightning_llm.data.errors import ConfigError, PrepareError
from lightning_llm.registry import FILTERS, ComponentError

INSTALL_HINT = "pip install 'lightning-llm[filters]'"  # the extra that brings the model filters' libraries


class FilterError(PrepareError):
    """A filter that cannot run here (a missing library, an unreadable model file); the CLI prints it."""


@dataclass(frozen=True)
class FilterContext:
    """What ``prepare`` tells a filter in :meth:`DocumentFilter.setup`."""

    output_dir: Path
    """The dataset directory being prepared (a filter's own files live in ``output_dir / "filters"``)."""


class DocumentFilter:
    """Keep a document when ``min <= score(text) <= max`` (a bound of None is open).

    Subclasses set ``name`` (the registry sets it to the registered name when the filter is built from a
    config), ``min`` / ``max`` from their options and implement :meth:`score`. ``score_range`` (the
    scores' possible range, e.g. ``(0.0, 1.0)``) turns on the score histogram in the report.
    """

    name: str = "filter"
    min: float | None = None
    max: float | None = None
    score_range: tuple[float, float] | None = None
    stateful: bool = False  # stateless filters run in worker processes
    requires: tuple[str, ...] = ()  # modules the filter imports in setup; `lightning-llm plugins` checks them
    install_hint: str = INSTALL_HINT

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the filter cannot run here (a module in ``requires`` is not installed), or None."""
        import importlib.util

        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        return f"needs {', '.join(missing)}: {cls.install_hint}" if missing else None

    def setup(self, context: FilterContext) -> None:
        """Load models and check libraries; called once in the parent process before any document."""

    def score(self, text: str) -> float:
        raise NotImplementedError

    def keeps(self, score: float) -> bool:
        return (self.min is None or score >= self.min) and (self.max is None or score <= self.max)

    def explain(self, text: str, limit: int = 200) -> str:
        """A short excerpt of a removed document for the report: its head; a filter may show why instead."""
        return text[:limit] + ("…" if len(text) > limit else "")

    def fingerprint(self) -> dict[str, Any]:
        """What decides the scores beyond the options (model hashes, library versions); {} if nothing."""
        return {}

    def __call__(self, doc: Document) -> Document | None:
        return doc if self.keeps(self.score(doc.text)) else None


def evenly_spaced(items: Sequence[str], k: int) -> list[str]:
    """At most ``k`` of ``items``, evenly spaced from the first to the last (all of them if ``k`` suffices)."""
    n = len(items)
    if n <= k:
        return list(items)
    if k == 1:
        return [items[n // 2]]
    return [items[(i * (n - 1)) // (k - 1)] for i in range(k)]


@dataclass
class FilterSpec:
    """One filter of ``--clean.filters``: a registered filter name and its options."""

    name: str
    """Registered filter name (``lightning-llm plugins`` lists them), e.g. language, offensive, quality."""
    options: dict[str, Any] = field(default_factory=dict)
    """The filter's keyword options, e.g. ``{languages: [en], min_score: 0.5}``."""


def build_filter(spec: FilterSpec | dict[str, Any]) -> DocumentFilter:
    """The filter ``spec`` names, built with its options; a bad name or option raises ``ConfigError``."""
    if isinstance(spec, dict):
        spec = FilterSpec(**spec)
    try:
        flt = FILTERS.build(spec.name, **dict(spec.options or {}))
    except ComponentError as err:
        raise ConfigError(f"--clean.filters: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--clean.filters: filter '{spec.name}' {spec.options}: {err}") from None
    if not isinstance(flt, DocumentFilter):
        raise ConfigError(
            f"--clean.filters: '{spec.name}' ({FILTERS.entry(spec.name).source}) built a "
            f"{type(flt).__name__}, not a lightning_llm.data.filtering.DocumentFilter subclass."
        )
    flt.name = spec.name
    return flt
