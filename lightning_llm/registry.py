"""Registries of model components, one per kind, each backed by an entry-point group.

Built-in components register themselves when their module in ``lightning_llm.components`` is imported;
that import happens lazily on the first lookup, so this module (like ``config.py``) imports no torch.
Installed distributions are discovered through ``importlib.metadata`` entry points on the first miss::

    [project.entry-points."lightning_llm.positional"]
    alibi = "lightning_llm_alibi:ALiBi"

The entry-point name is the component name; the object it points to is registered under that name
with the distribution as its source.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")

BUILTIN = "built-in"


class ComponentError(ValueError):
    """A component name or option that does not exist."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    source: str  # "built-in" or "<distribution> <version>"


class Registry(Generic[T]):
    """A name → component table for one kind (attention, positional, norm, mlp, source, filter)."""

    def __init__(self, kind: str, group: str, builtin_module: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self._builtin_module = builtin_module
        self._entries: dict[str, Entry[T]] = {}
        self._builtins_loaded = builtin_module is None
        self._entry_points_loaded = False
        self._entry_point_errors: dict[str, str] = {}

    # -- registration -------------------------------------------------------------------------------
    def register(
        self, name: str, obj: T | None = None, *, override: bool = False, source: str = BUILTIN
    ) -> Any:
        """Register ``obj`` under ``name``; without ``obj`` this is a class/function decorator."""
        if obj is None:

            def decorator(o: T) -> T:
                self.register(name, o, override=override, source=source)
                return o

            return decorator
        if name in self._entries and not override:
            prev = self._entries[name]
            if prev.obj is obj:  # re-import of the same module: harmless
                return obj
            raise ComponentError(
                f"{self.kind} '{name}' is already registered (from {prev.source}). "
                f"HINT: pass override=True to replace it."
            )
        self._entries[name] = Entry(name, obj, source)
        return obj

    # -- lookup -------------------------------------------------------------------------------------
    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            importlib.import_module(self._builtin_module)  # type: ignore[arg-type]

    def load_entry_points(self) -> None:
        """Import every installed distribution's components for this kind (once)."""
        self._load_builtins()
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._entries:
                continue
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ep.value
            try:
                obj = ep.load()
            except Exception as err:  # a broken plugin must not break the others
                self._entry_point_errors[ep.name] = f"{dist}: failed to import {ep.value}: {err!r}"
                continue
            if ep.name not in self._entries:
                self.register(ep.name, obj, source=dist)
            else:  # the module registered itself on import: record where it came from
                self._entries[ep.name] = Entry(ep.name, self._entries[ep.name].obj, dist)

    def get(self, name: str) -> T:
        """The component registered as ``name``; an unknown name raises listing the available ones."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        self._load_builtins()
        if name not in self._entries:
            self.load_entry_points()
        if name not in self._entries:
            if name in self._entry_point_errors:
                raise ComponentError(
                    f"{self.kind} '{name}' is installed but {self._entry_point_errors[name]}"
                )
            raise ComponentError(
                f"Unknown {self.kind} '{name}'. Available: {', '.join(self.names())}. "
                f"Third-party components are found through the entry-point group '{self.group}'."
            )
        return self._entries[name]

    def names(self) -> list[str]:
        self.load_entry_points()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        for name in self.names():
            yield self._entries[name]

    def entry_point_errors(self) -> dict[str, str]:
        """Installed entry points of this group that failed to import: name -> error (after discovery)."""
        self.load_entry_points()
        return dict(self._entry_point_errors)

    def __contains__(self, name: str) -> bool:
        self.load_entry_points()
        return name in self._entries

    def build(self, name: str, *args: Any, **options: Any) -> Any:
        """Instantiate component ``name`` with shape arguments ``args`` and user ``options``.

        Options the component does not accept raise a ``ComponentError`` that lists the valid ones.
        """
        factory = self.get(name)
        check_options(self.kind, name, factory, options)  # type: ignore[arg-type]
        return factory(*args, **options)  # type: ignore[operator]


def accepted_options(factory: Callable[..., Any]) -> dict[str, Any] | None:
    """Keyword-only parameters of ``factory`` and their defaults; ``None`` if it takes ``**kwargs``."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_options(kind: str, name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    valid = accepted_options(factory)
    if valid is None:
        return
    unknown = sorted(set(options) - set(valid))
    if unknown:
        shown = ", ".join(f"{k}={v!r}" if v is not inspect.Parameter.empty else k for k, v in valid.items())
        raise ComponentError(
            f"{kind} '{name}' has no option {', '.join(repr(u) for u in unknown)}. "
            f"Valid options: {shown or '(none)'}."
        )


ATTENTION: Registry[Any] = Registry(
    "attention", "lightning_llm.attention", "lightning_llm.components.attention"
)
POSITIONAL: Registry[Any] = Registry(
    "positional", "lightning_llm.positional", "lightning_llm.components.positional"
)
NORM: Registry[Any] = Registry("norm", "lightning_llm.norm", "lightning_llm.components.norm")
MLP: Registry[Any] = Registry("mlp", "lightning_llm.mlp", "lightning_llm.components.mlp")
SOURCES: Registry[Any] = Registry("source", "lightning_llm.sources", "lightning_llm.data.sources")
FILTERS: Registry[Any] = Registry("filter", "lightning_llm.filters", "lightning_llm.data.builtin_filters")

REGISTRIES: dict[str, Registry[Any]] = {
    "attention": ATTENTION,
    "positional": POSITIONAL,
    "norm": NORM,
    "mlp": MLP,
    "source": SOURCES,
    "filter": FILTERS,
}
