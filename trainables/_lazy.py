"""Lazy re-exports for package ``__init__`` modules (PEP 562), so that validating a sweep
or printing ``--help`` does not import MLflow, Ray or matplotlib, and the driver reads
``trainables.config`` without importing the search engine or a trial's run."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` re-exporting each public name from
    its submodule (name -> relative module), imported on first access."""
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f".{exports[name]}", package)
        try:
            return getattr(module, name)
        except AttributeError:  # a submodule of that package re-exported by name (``gates``)
            return importlib.import_module(f".{exports[name]}.{name}", package)

    def __dir__() -> list[str]:
        return names

    return names, __getattr__, __dir__
