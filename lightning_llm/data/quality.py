"""The ``quality`` filter: keep documents that a trained quality classifier finds like the trusted corpus.

Train a classifier with ``lightning-llm train-quality`` (:mod:`lightning_llm.data.quality_model`), then
filter with it in ``prepare``::

    lightning-llm train-quality --positive classics --negative 'raw/*.jsonl' --output_dir data/mine/quality
    lightning-llm prepare --source 'raw/*.jsonl' --output_dir data/mine \\
        --clean.filters '[{name: quality, options: {classifier: data/mine/quality, min_score: 0.5}}]'

A document's score is the mean P(trusted) of at most ``max_passages`` evenly spaced passages of it, so a
long book costs no more than a few pages. The sha256 of the classifier's files is the filter's
fingerprint, which enters the dataset's settings: a retrained classifier is not silently reused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_llm.data.filtering import DocumentFilter, FilterContext, FilterError
from lightning_llm.data.quality_model import QualityModel, classifier_sha256, load_classifier
from lightning_llm.registry import FILTERS


class QualityFilter(DocumentFilter):
    """Keep documents whose mean P(trusted) under a classifier from ``lightning-llm train-quality`` is at least min_score."""

    score_range = (0.0, 1.0)
    requires = ("numpy",)  # scoring needs numpy alone; scikit-learn only trains (train-quality)

    def __init__(self, *, classifier: str, min_score: float = 0.5, max_passages: int = 16) -> None:
        """
        Args:
            classifier: Directory written by ``lightning-llm train-quality`` (classifier.npz and classifier.json),
                e.g. data/my-dataset/quality.
            min_score: Keep documents whose mean P(trusted) over their scored passages is at least this
                (between 0 and 1; the classes were weighted equally in training, so 0.5 is the neutral point).
            max_passages: Passages scored per document at most, evenly spaced from its start to its end
                (deterministic), so long books stay cheap.
        """
        if not isinstance(classifier, str) or not classifier.strip():
            raise ValueError("classifier must name the directory written by lightning-llm train-quality")
        if (
            isinstance(min_score, bool)
            or not isinstance(min_score, int | float)
            or not 0.0 <= min_score <= 1.0
        ):
            raise ValueError(f"min_score is a probability between 0 and 1; got {min_score!r}")
        if isinstance(max_passages, bool) or not isinstance(max_passages, int) or max_passages < 1:
            raise ValueError(f"max_passages must be a whole number, at least 1; got {max_passages!r}")
        self.name = "quality"
        self.classifier = classifier
        self.min_score = float(min_score)
        self.min = self.min_score
        self.max_passages = max_passages
        self._model: QualityModel | None = None
        self._last: tuple[str, list[str], np.ndarray] | None = None  # the latest document, for explain()

    def _load(self) -> QualityModel:
        if self._model is None:
            try:
                self._model = load_classifier(self.classifier)
            except ValueError as err:
                raise FilterError(f"filter 'quality': {err}") from None
        return self._model

    def setup(self, context: FilterContext) -> None:
        """Load the classifier once, before any document; forked workers share it."""
        self._load()

    def passage_scores(self, text: str) -> tuple[list[str], np.ndarray]:
        """The scored passages of ``text`` and their P(trusted)."""
        last = self._last
        if last is not None and last[0] is text:
            return last[1], last[2]
        model = self._load()
        passages = model.document_passages(text, self.max_passages)
        probs = model.probabilities(passages)
        self._last = (text, passages, probs)
        return passages, probs

    def score(self, text: str) -> float:
        """Mean P(trusted) of the document's scored passages; 0 for a blank document."""
        _, probs = self.passage_scores(text)
        return float(probs.mean()) if len(probs) else 0.0

    def explain(self, text: str, limit: int = 200) -> str:
        """The score and the head of the passage the classifier found least like the trusted corpus."""
        passages, probs = self.passage_scores(text)
        if not len(probs):
            return "blank document"
        worst = int(np.argmin(probs))
        excerpt = passages[worst][:limit] + ("…" if len(passages[worst]) > limit else "")
        if len(probs) == 1:
            return f"P(trusted) {float(probs[0]):.3f}: {excerpt}"
        return (
            f"P(trusted) {float(probs.mean()):.3f} over {len(probs)} passages; least trusted "
            f"({float(probs[worst]):.3f}): {excerpt}"
        )

    def fingerprint(self) -> dict[str, Any]:
        """The sha256 of classifier.npz and classifier.json: a retrained classifier changes it."""
        try:
            return {"classifier_sha256": classifier_sha256(self.classifier)}
        except ValueError as err:
            raise FilterError(f"filter 'quality': {err}") from None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_last"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"QualityFilter(classifier={self.classifier!r}, min_score={self.min_score}, "
            f"max_passages={self.max_passages})"
        )


FILTERS.register("quality", QualityFilter)
