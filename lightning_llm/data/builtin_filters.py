"""The built-in filters of the ``filter`` registry (imported on its first lookup).

The heuristics of :mod:`lightning_llm.data.filters` under their metric names, and the model-based
filters, whose modules import their libraries only when a filter is set up.
"""

from __future__ import annotations

from lightning_llm.data import language, offensive, quality  # noqa: F401  (each registers its filter on import)
from lightning_llm.data.filters import HEURISTICS
from lightning_llm.registry import FILTERS

for _name, _cls in HEURISTICS.items():
    FILTERS.register(_name, _cls)
