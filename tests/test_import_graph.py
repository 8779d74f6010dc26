"""The package's import graph: no cycles, and training does not import the data preparation pipeline.

The graph is read from the source with ``ast``, not by importing anything: an edge ``a -> b`` is an
``import`` statement in module ``a`` that names module ``b`` of ``lightning_llm``, at module level or
inside a function or class (a lazy import is still a dependency), except under ``if TYPE_CHECKING:``.
``from pkg import name`` is an edge to ``pkg.name`` where that is a module, else to ``pkg``; relative
imports are resolved against the importing module. ``importlib.import_module("...")`` calls (the
registries loading their built-in components by name) are not edges: that is the plugin mechanism,
which runs the other way on purpose.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "lightning_llm"

# What training must not pull in: the preparation pipeline and its heavy dependencies.
PREPARATION = tuple(
    f"lightning_llm.data.{m}" for m in ("prepare", "clean", "dedup", "filters", "sources", "classics")
)
TRAINING_DATA = "lightning_llm.data.datamodule"


# -- reading the graph ------------------------------------------------------------------------------
def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``package_dir`` (``__init__`` = the package)."""
    root = package_dir.parent
    names: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (or any ``x.TYPE_CHECKING``)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``, at any depth, except in the body of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:  # the ``else:`` of TYPE_CHECKING runs
                if isinstance(other, ast.Import | ast.ImportFrom):
                    yield other
                yield from _imports(other)
        else:
            yield from _imports(child)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` if it is one of ``modules``, else its longest prefix that is (None: not ours)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _targets(stmt: ast.Import | ast.ImportFrom, importer: str, modules: dict[str, Path]) -> Iterator[str]:
    """The modules of ``modules`` that ``stmt`` (in module ``importer``) imports."""
    if isinstance(stmt, ast.Import):
        for alias in stmt.names:
            if (target := _known(alias.name, modules)) is not None:
                yield target
        return
    if stmt.level:  # relative: against the importer's package (the importer itself for an __init__)
        is_package = modules[importer].name == "__init__.py"
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        base_parts = package[: len(package) - (stmt.level - 1)]
        base = ".".join(base_parts + ([stmt.module] if stmt.module else []))
    else:
        base = stmt.module or ""
    for alias in stmt.names:
        full = f"{base}.{alias.name}"
        target = full if full in modules else _known(base, modules)
        if target is not None:
            yield target


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, dict[str, str]]:
    """module -> {imported module -> where ("file:line")}, for every module of the package."""
    modules = module_names(package_dir)
    graph: dict[str, dict[str, str]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for stmt in _imports(tree):
            for target in _targets(stmt, name, modules):
                if target != name:
                    edges.setdefault(target, f"{path.relative_to(package_dir.parent)}:{stmt.lineno}")
    return graph


# -- analysing it -----------------------------------------------------------------------------------
def _strongly_connected(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; only those that hold a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _shortest_cycle(graph: dict[str, dict[str, str]], start: str, within: set[str]) -> list[str]:
    """The shortest path ``start -> ... -> start`` using only modules of ``within`` (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in within:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def import_cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component, each as ``[a, b, ..., a]``."""
    return [_shortest_cycle(graph, scc[0], set(scc)) for scc in _strongly_connected(graph)]


def cycle_report(graph: dict[str, dict[str, str]], only: str = "") -> str:
    """Each cycle through a module named ``only...``: ``a -> b -> a``, where each import is, and all the
    modules tangled with it (its strongly connected component) when there are more than the cycle's."""
    parts = []
    for scc in _strongly_connected(graph):
        if not any(m.startswith(only) for m in scc):
            continue
        cycle = _shortest_cycle(graph, scc[0], set(scc))
        lines = [" -> ".join(cycle)]
        lines += [f"    {a} -> {b}  ({graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
        if len(scc) > len(cycle) - 1:
            lines.append(f"    (one of several cycles among: {', '.join(scc)})")
        parts.append("\n".join(lines))
    return "\n".join(parts)


def reachable(graph: dict[str, dict[str, str]], start: str) -> dict[str, list[str]]:
    """Modules that importing ``start`` may import (lazy imports included) -> one import chain to each.

    Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``, so parent packages are followed too.
    """
    chains = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop()
        parents = [node.rsplit(".", k)[0] for k in range(1, node.count(".") + 1)]
        for child in [*sorted(graph.get(node, {})), *parents]:
            if child in graph and child not in chains:
                chains[child] = [*chains[node], child]
                frontier.append(child)
    return chains


# -- the package ------------------------------------------------------------------------------------
def test_the_package_has_no_import_cycles() -> None:
    report = cycle_report(import_graph())
    assert not report, f"import cycles in lightning_llm:\n{report}"


def test_the_data_package_has_no_import_cycles() -> None:
    """The data package on its own (a cycle elsewhere in the package fails the test above)."""
    report = cycle_report(import_graph(), only="lightning_llm.data")
    assert not report, f"import cycles through lightning_llm.data:\n{report}"


def test_training_data_does_not_import_the_preparation_pipeline() -> None:
    """The datamodule reads a prepared dataset through ``layout``; it needs none of the steps that wrote it."""
    graph = import_graph()
    assert TRAINING_DATA in graph
    chains = reachable(graph, TRAINING_DATA)
    bad = {m: chains[m] for m in PREPARATION if m in chains}
    assert not bad, "\n".join(f"{m}: via {' -> '.join(chain)}" for m, chain in bad.items())


def test_importing_the_datamodule_loads_no_preparation_module() -> None:
    """The same, checked for real in a fresh interpreter, third-party modules (datasketch) included."""
    forbidden = [*PREPARATION, "datasketch"]
    code = (
        f"import sys; import {TRAINING_DATA}; print(' '.join(m for m in {forbidden!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {TRAINING_DATA} loaded: {out.stdout.strip()}"


# -- the checker itself, on a small made-up package ------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


def test_the_checker_reads_every_kind_of_import(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": """\
                from typing import TYPE_CHECKING
                import os
                from . import b
                if TYPE_CHECKING:
                    from pkg import typed_only
                else:
                    import pkg.runtime
                def f():
                    from pkg.sub import c
                """,
            "pkg/b.py": "from .sub.c import something\nimport pkg.sub\n",
            "pkg/typed_only.py": "",
            "pkg/runtime.py": "",
            "pkg/sub/__init__.py": "from .. import a\n",
            "pkg/sub/c.py": "from ..b import name\n",
        },
    )
    graph = import_graph(pkg)
    assert set(graph["pkg.a"]) == {"pkg.b", "pkg.runtime", "pkg.sub.c"}
    assert set(graph["pkg.b"]) == {"pkg.sub.c", "pkg.sub"}
    assert set(graph["pkg.sub"]) == {"pkg.a"}
    assert set(graph["pkg.sub.c"]) == {"pkg.b"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub", "pkg.a"]]  # one per component, shortest
    report = cycle_report(graph)
    assert report.startswith("pkg.a -> pkg.b -> pkg.sub -> pkg.a\n    pkg.a -> pkg.b  (pkg/a.py:3)\n")
    assert report.endswith("(one of several cycles among: pkg.a, pkg.b, pkg.sub, pkg.sub.c)")
    assert cycle_report(graph, only="pkg.runtime") == ""
    assert reachable(graph, "pkg.runtime")["pkg"] == ["pkg.runtime", "pkg"]
