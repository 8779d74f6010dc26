"""The prepare report (``report.json``) as text: the per-step table and the closing summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def format_clean_report(steps: list[dict[str, Any]]) -> str:
    """The cleaning pipeline's per-step counts as a small text table."""
    lines = [f"  {'step':<24}{'docs in':>10}{'removed':>10}{'docs out':>10}{'MB out':>10}"]
    for s in steps:
        lines.append(
            f"  {s['name']:<24}{s['docs_in']:>10}{s['docs_removed']:>10}{s['docs_out']:>10}{s['bytes_out'] / 1e6:>10.2f}"
        )
    return "\n".join(lines)


def summary(report: dict[str, Any], out: Path) -> str:
    """A human-readable summary of a report."""
    sp = report["splits"]
    return (
        f"Prepared {out}: {report['documents_read']} documents / {report['bytes_read'] / 1e6:.1f} MB read, "
        f"{report['documents_kept']} kept ({report['duplicates_removed']} duplicates removed)\n"
        + format_clean_report(report["clean"])
        + f"\n  tokens: train {sp['train']['tokens']:,}, val {sp['val']['tokens']:,} "
        f"({report['tokens_per_byte']:.3f} tokens/byte, tokenizer {report['tokenizer']['name']})\n"
        f"  {report['timings']['total_s']:.1f} s, {report['mb_per_s']:.2f} MB/s"
    )
