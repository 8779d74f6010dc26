"""The cleaning :class:`Pipeline`: documents through a list of steps, counted, optionally in worker processes.

A step is a ``Document -> Document | None`` callable (``None`` drops the document). Three kinds:

* transforms rewrite the text (:class:`lightning_llm.data.clean.Transform`);
* filters (:class:`lightning_llm.data.filtering.DocumentFilter`) score the text and keep or drop it; the
  pipeline records their scores (a histogram over ``score_range``) and a few removed examples;
* stateful steps (``stateful = True``: exact and near dedup) remember what they have seen, so they run in
  the parent process, in reading order; a stateful step may offer ``precompute(text)``, the expensive
  stateless part of its decision (a MinHash signature), which workers compute for it.

With ``workers > 1`` the steps before the first stateful one, and the ``precompute`` of the stateful ones,
run in a pool of forked processes (models loaded by ``setup`` in the parent are shared copy-on-write);
documents are sent in reading order, the parent reads ahead while the workers are busy (at most
``IN_FLIGHT_CHARS`` of text in flight, so memory stays bounded), and results come back in reading order,
so the output (and every count) is the same as with ``workers=1``.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lightning_llm.data.documents import Document
from lightning_llm.data.filtering import DocumentFilter

Step = Callable[[Document], Document | None]
EXAMPLES = 3  # removed examples kept per filter for the report
BINS = 20  # histogram bins over a filter's score_range
IN_FLIGHT_CHARS = 64_000_000  # text sent to workers and not yet handed back, at most (bounds the memory)


def step_name(step: Step) -> str:
    """A step's ``name`` attribute, else its function or class name."""
    return getattr(step, "name", None) or getattr(step, "__name__", None) or type(step).__name__


@dataclass
class StepStats:
    """Documents and UTF-8 bytes into and out of one step; for filters, scores and removed examples."""

    name: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    histogram: list[int] | None = None
    score_range: tuple[float, float] | None = None
    bounds: tuple[float | None, float | None] = (None, None)
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def docs_removed(self) -> int:
        return self.docs_in - self.docs_out

    def add_score(self, score: float) -> None:
        if self.histogram is None or self.score_range is None:
            return
        lo, hi = self.score_range
        i = int((score - lo) / (hi - lo) * BINS) if hi > lo else 0
        self.histogram[min(max(i, 0), BINS - 1)] += 1

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "docs_removed": self.docs_removed}


@dataclass
class _Trace:
    """What happened to one document in a run of steps (computed in a worker, replayed in the parent)."""

    sizes: list[int]  # sizes[0]: bytes in; sizes[k + 1]: bytes after the k-th step passed
    scores: list[tuple[int, float]]  # (step index, score) for filter steps
    removed: dict[str, Any] | None = None  # the removed example, if a step dropped the document
    precomputed: list[Any] = field(default_factory=list)  # for the stateful steps, in order


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _run_stateless(
    steps: Sequence[Step], stop: int, doc: Document, precompute: Sequence[Step]
) -> tuple[Document | None, _Trace]:
    """Run ``doc`` through ``steps[:stop]``; if it survives, precompute for the stateful steps."""
    trace = _Trace([_size(doc.text)], [])
    for i in range(stop):
        step = steps[i]
        if isinstance(step, DocumentFilter):
            score = step.score(doc.text)
            trace.scores.append((i, score))
            out = doc if step.keeps(score) else None
        else:
            out = step(doc)
        if out is None:
            excerpt = step.explain(doc.text) if isinstance(step, DocumentFilter) else doc.text[:200]
            trace.removed = {"source": doc.source, "excerpt": excerpt}
            if trace.scores and trace.scores[-1][0] == i:
                trace.removed["score"] = round(trace.scores[-1][1], 6)
            return None, trace
        trace.sizes.append(trace.sizes[-1] if out is doc else _size(out.text))
        doc = out
    trace.precomputed = [s.precompute(doc.text) for s in precompute]  # type: ignore[attr-defined]
    return doc, trace


_WORKER_STEPS: tuple[Sequence[Step], int, Sequence[Step]] | None = None  # set in the parent before forking


def _worker(doc: Document) -> tuple[Document | None, _Trace]:
    assert _WORKER_STEPS is not None
    steps, stop, precompute = _WORKER_STEPS
    return _run_stateless(steps, stop, doc, precompute)


class Pipeline:
    """Runs documents through ``steps`` in order, lazily, counting what each step keeps.

    Counts accumulate over calls, and so does the state of dedup steps: documents of a second call are
    deduplicated against those of the first (use a new pipeline for an unrelated corpus).
    """

    def __init__(
        self, steps: list[Step], workers: int = 1, on_forked: Callable[[], None] | None = None
    ) -> None:
        self.steps = list(steps)
        self.workers = workers
        self.on_forked = (
            on_forked  # called once the worker processes exist (the parent may start threads then)
        )
        self.stats = [StepStats(step_name(s)) for s in self.steps]
        for step, stats in zip(self.steps, self.stats, strict=True):
            if isinstance(step, DocumentFilter) and step.score_range is not None:
                stats.score_range, stats.histogram = step.score_range, [0] * BINS
                stats.bounds = (step.min, step.max)
        # the stateless head, then the stateful tail (a stateless step after a stateful one stays in the tail)
        self._split = next((i for i, s in enumerate(self.steps) if getattr(s, "stateful", False)), len(steps))
        tail = self.steps[self._split :]
        n_pre = next((i for i, s in enumerate(tail) if not hasattr(s, "precompute")), len(tail))
        self._precompute = tail[:n_pre]

    def _record(self, trace: _Trace) -> None:
        for i, score in trace.scores:
            self.stats[i].add_score(score)
        passed = len(trace.sizes) - 1
        for k in range(passed):
            s = self.stats[k]
            s.docs_in, s.docs_out = s.docs_in + 1, s.docs_out + 1
            s.bytes_in, s.bytes_out = s.bytes_in + trace.sizes[k], s.bytes_out + trace.sizes[k + 1]
        if trace.removed is not None:
            s = self.stats[passed]
            s.docs_in, s.bytes_in = s.docs_in + 1, s.bytes_in + trace.sizes[-1]
            if len(s.examples) < EXAMPLES:
                s.examples.append(trace.removed)

    def _tail(self, doc: Document, size: int, precomputed: list[Any]) -> Document | None:
        """The stateful steps, here in the parent, in reading order (with what workers precomputed)."""
        for j, step in enumerate(self.steps[self._split :]):
            stats = self.stats[self._split + j]
            stats.docs_in, stats.bytes_in = stats.docs_in + 1, stats.bytes_in + size
            out = step(doc, precomputed[j]) if j < len(precomputed) else step(doc)  # type: ignore[call-arg]
            if out is None:
                return None
            if out is not doc:
                doc, size = out, _size(out.text)
            stats.docs_out, stats.bytes_out = stats.docs_out + 1, stats.bytes_out + size
        return doc

    def _heads(self, docs: Iterable[Document]) -> Iterator[tuple[Document | None, _Trace]]:
        """``_run_stateless`` over ``docs``, in order: here, or in ``workers`` forked processes."""
        if self.workers <= 1 or self._split == 0 and not self._precompute:
            for doc in docs:
                yield _run_stateless(self.steps, self._split, doc, self._precompute)
            return
        global _WORKER_STEPS
        _WORKER_STEPS = (self.steps, self._split, self._precompute)
        ctx = multiprocessing.get_context("fork")
        try:
            with ctx.Pool(self.workers) as pool:
                if self.on_forked is not None:
                    self.on_forked()
                pending: deque[tuple[Any, int]] = deque()
                in_flight = 0
                for doc in docs:
                    size = len(doc.text)
                    pending.append((pool.apply_async(_worker, (doc,)), size))
                    in_flight += size
                    # read ahead while the workers are busy, up to IN_FLIGHT_CHARS; hand back what is done
                    while pending and (in_flight > IN_FLIGHT_CHARS or pending[0][0].ready()):
                        result, size = pending.popleft()
                        in_flight -= size
                        yield result.get()
                while pending:
                    yield pending.popleft()[0].get()
        finally:
            _WORKER_STEPS = None

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        for head, trace in self._heads(docs):
            self._record(trace)
            if head is not None:
                out = self._tail(head, trace.sizes[-1], trace.precomputed)
                if out is not None:
                    yield out

    def report(self) -> list[dict[str, Any]]:
        """One dict per step, in order: name, docs_in, docs_out, docs_removed, bytes_in, bytes_out; filters
        add ``examples`` (a few removed documents: source, excerpt, score) and ``histogram`` (counts in
        equal bins over ``score_range``)."""
        keys = ("name", "docs_in", "docs_out", "docs_removed", "bytes_in", "bytes_out")
        out = []
        for s in self.stats:
            d = s.as_dict()
            row = {k: d[k] for k in keys}
            if s.examples:
                row["examples"] = s.examples
            if s.histogram is not None and s.score_range is not None:
                lo, hi = s.bounds
                row["histogram"] = {
                    "range": list(s.score_range),
                    "counts": list(s.histogram),
                    "min": lo,
                    "max": hi,
                }
            out.append(row)
        return out
