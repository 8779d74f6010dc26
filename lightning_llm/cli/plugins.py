"""``lightning-llm plugins``: every registered component, where it comes from, and whether it runs here.

One row per component of each kind (attention, positional, norm, mlp, source, filter), then the model
options of the modern recipe (QK-norm, logit soft-capping, sliding window, document masking) and the
optimizers (``model.optimizer.name``). A component's row gives its source
(built-in, or the installed distribution and version that registered it through an entry point), its
description, and whether it can run on this machine. Attention kernels answer through
``unavailable_reason(device)`` for ``cpu`` and, when a GPU is visible, ``cuda``; a data filter through
``unavailable_reason()`` (the libraries its model needs). Entry points that fail to
import are listed with their error instead of hiding (or breaking) the others.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from lightning_llm.registry import REGISTRIES, Registry


@dataclass
class PluginRow:
    """One line of the listing."""

    kind: str
    name: str
    source: str
    description: str = ""
    runs: dict[str, bool] = field(default_factory=dict)
    """Device type -> whether the component can run there on this machine."""
    why_not: dict[str, str] = field(default_factory=dict)
    """Device type -> the reason it cannot (only for devices where ``runs`` is False)."""
    error: str | None = None
    """Set for a broken entry point or a kind whose built-ins failed to import."""


def _description(obj: Any) -> str:
    text = getattr(obj, "description", "") or (getattr(obj, "__doc__", "") or "")
    return text.strip().splitlines()[0] if text.strip() else ""


def _devices() -> list[str]:
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _availability(kind: str, name: str, registry: Registry[Any], devices: list[str]) -> tuple[dict, dict]:
    """(runs, why_not) per device; attention kernels declare where they can't run, filters what they need."""
    if kind == "filter":
        check = getattr(registry.get(name), "unavailable_reason", None)
        reason = check() if callable(check) else None
        return dict.fromkeys(devices, reason is None), (
            {} if reason is None else dict.fromkeys(devices, reason)
        )
    if kind != "attention":
        return dict.fromkeys(devices, True), {}
    runs: dict[str, bool] = {}
    why: dict[str, str] = {}
    try:
        kernel = registry.build(name)
    except Exception as err:  # a kernel that can't be built runs nowhere
        return dict.fromkeys(devices, False), dict.fromkeys(devices, f"cannot be built: {err!r}")
    for device in devices:
        try:
            reason = kernel.unavailable_reason(device)
        except Exception as err:
            reason = f"unavailable_reason raised {err!r}"
        runs[device] = reason is None
        if reason is not None:
            why[device] = reason
    return runs, why


def collect(devices: list[str] | None = None) -> list[PluginRow]:
    """Every registered (or broken) component of every kind, in kind then name order."""
    devices = devices or _devices()
    rows: list[PluginRow] = []
    for kind, registry in REGISTRIES.items():
        try:
            entries = list(registry.entries())
        except Exception as err:  # e.g. the built-in module of this kind does not import
            rows.append(PluginRow(kind, "-", "-", error=f"could not load {kind} components: {err!r}"))
            continue
        for entry in entries:
            runs, why = _availability(kind, entry.name, registry, devices)
            rows.append(PluginRow(kind, entry.name, entry.source, _description(entry.obj), runs, why))
        for name, error in sorted(registry.entry_point_errors().items()):
            rows.append(
                PluginRow(kind, name, error.split(":", 1)[0], runs=dict.fromkeys(devices, False), error=error)
            )
    return rows


def field_docs(cls: type) -> dict[str, str]:
    """A dataclass's attribute docstrings (the string right under each field), as ``--help`` shows them."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if (
                isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def option_rows(devices: list[str]) -> list[PluginRow]:
    """The model options of the modern recipe (``GPTConfig.RECIPE_OPTIONS``) and the optimizers, as rows."""
    from lightning_llm.config import RECIPE_OPTIONS, GPTConfig
    from lightning_llm.optim import OPTIMIZERS

    docs = field_docs(GPTConfig)
    rows = [
        PluginRow("option", f"model.config.{name}", "built-in", docs[name], dict.fromkeys(devices, True))
        for name in RECIPE_OPTIONS
    ]
    rows += [
        PluginRow("optimizer", name, "built-in", text, dict.fromkeys(devices, True))
        for name, text in OPTIMIZERS.items()
    ]
    return rows


def format_table(rows: list[PluginRow], devices: list[str]) -> str:
    """A plain aligned table; the last column holds the description, or why it can't run / its error."""
    header = ["KIND", "NAME", "SOURCE", *(d.upper() for d in devices), "DESCRIPTION / WHY NOT"]
    lines = [header]
    for r in rows:
        notes = [r.description] if r.description else []
        notes += [f"[{d}] {r.why_not[d]}" for d in devices if d in r.why_not]
        if r.error:
            notes.append(f"ERROR: {r.error}")
        cells = [r.kind, r.name, r.source, *("yes" if r.runs.get(d) else "no" for d in devices)]
        lines.append([*cells, " | ".join(notes)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)), line[-1]]).rstrip()
        for line in lines
    )


def plugins_main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-llm plugins [--json]``."""
    parser = argparse.ArgumentParser(
        prog="lightning-llm plugins",
        description="List every registered component by kind, where it comes from and whether it runs here.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    args = parser.parse_args(argv)
    devices = _devices()
    rows = collect(devices) + option_rows(devices)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(format_table(rows, devices))


if __name__ == "__main__":
    plugins_main()
