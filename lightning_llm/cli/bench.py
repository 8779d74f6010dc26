"""``lightning-llm bench attention|train|data|generate|filters``: the benchmarks of a source checkout.

``benchmarks/`` is a top-level folder of the repository, not part of the installed package: the benchmarks
time our model against the nanoGPT reference, spawn ``python -m benchmarks.train`` workers with the checkout
on ``PYTHONPATH``, and write the tables of ``benchmarks/RESULTS.md``. So ``bench`` runs only where
``lightning_llm`` itself is imported from a checkout (an editable install, ``pip install -e .``); from an
installed wheel it says so and exits.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path
from types import ModuleType

BENCHES = ("attention", "train", "data", "generate", "filters")
DISTRIBUTION = "lightning-llm"


def checkout_root() -> Path | None:
    """The source checkout this ``lightning_llm`` is imported from, or None (e.g. an installed wheel).

    A checkout is the folder above the package that holds both this project's ``pyproject.toml`` and
    ``benchmarks/``; site-packages holds neither (and a ``benchmarks`` package of another distribution
    there is not ours).
    """
    root = Path(__file__).resolve().parents[2]  # lightning_llm/cli/bench.py -> the folder above lightning_llm
    try:
        name = tomllib.loads((root / "pyproject.toml").read_text())["project"]["name"]
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return None
    if name != DISTRIBUTION or not (root / "benchmarks" / "__init__.py").is_file():
        return None
    return root


def _import_bench(root: Path, name: str) -> ModuleType:
    """``benchmarks.<name>`` from ``root``, refusing a ``benchmarks`` package found anywhere else."""
    sys.path.insert(0, str(root))
    module = importlib.import_module(f"benchmarks.{name}")
    where = Path(module.__file__ or "").resolve()
    if not where.is_relative_to(root / "benchmarks"):
        sys.exit(
            f"lightning-llm bench: benchmarks.{name} was imported from {where}, not from the checkout {root}; "
            f"run python -m benchmarks.{name} from {root} instead."
        )
    return module


def bench_main(argv: list[str]) -> None:
    """Entry point of ``lightning-llm bench <name> [options]``; the options are the benchmark's own."""
    if not argv or argv[0] not in BENCHES:
        sys.exit(f"usage: lightning-llm bench {{{'|'.join(BENCHES)}}} [options]")
    root = checkout_root()
    if root is None:
        package = Path(__file__).resolve().parents[1]
        sys.exit(
            "lightning-llm bench needs a source checkout: benchmarks/ is not installed with the package. "
            f"This lightning_llm is imported from {package}, which is not inside one. Clone the repository, "
            "install it with pip install -e . and run lightning-llm bench (or python -m benchmarks.<name>) "
            "from its root."
        )
    _import_bench(root, argv[0]).main(argv[1:])
