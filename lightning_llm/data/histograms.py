"""Score histograms of the cleaning filters as PNG files, for ``prepare``'s ``filters/`` directory.

The pipeline counts every filter's scores in equal bins over its ``score_range`` (they are in
``report.json``); this draws each as a bar chart with the filter's keep bounds marked, so a threshold can
be judged at a glance. matplotlib is a dependency of the package; should it fail to import, no PNG is
written and one line says so (the counts are in the report either way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_histograms(steps: list[dict[str, Any]], directory: Path, names: list[str]) -> dict[str, str]:
    """Draw one PNG per report row named in ``names`` that has a ``histogram``.

    Returns {step name: the PNG's path relative to the dataset directory}.
    """
    rows = [r for r in steps if r["name"] in names and "histogram" in r and r["docs_in"] > 0]
    if not rows:
        return {}
    try:
        from matplotlib.figure import (
            Figure,
        )  # no pyplot: no global state, no display, safe off the main thread
    except ImportError:
        print("Score histograms: matplotlib is not installed, so no PNG is written (the counts are in "
              "report.json); pip install matplotlib for the plots.")  # fmt: skip
        return {}
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for row in rows:
        lo, hi = row["histogram"]["range"]
        counts = row["histogram"]["counts"]
        width = (hi - lo) / len(counts)
        fig = Figure(figsize=(6, 3.2), dpi=100)
        ax = fig.subplots()
        ax.bar(
            [lo + (i + 0.5) * width for i in range(len(counts))], counts, width=width * 0.9, color="#4c72b0"
        )
        for bound, label in ((row["histogram"]["min"], "min"), (row["histogram"]["max"], "max")):
            if bound is not None:
                ax.axvline(bound, color="#c44e52", linestyle="--", label=f"{label} {bound:g}")
        ax.set_xlabel("score")
        ax.set_ylabel("documents")
        ax.set_title(
            f"{row['name']}: {row['docs_removed']} of {row['docs_in']} documents removed", fontsize=10
        )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{row['name']}_scores.png"
        fig.savefig(directory / name)
        written[row["name"]] = f"{directory.name}/{name}"
    return written
