"""Lazy package exports: ``import headatlas.detect`` costs nothing until a name is used (the CLI starts fast)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def exports(by_module: Mapping[str, str]) -> dict[str, str]:
    """``{".capture": "Head HeadScores"}`` -> ``{"Head": ".capture", "HeadScores": ".capture"}``."""
    return {name: module for module, names in by_module.items() for name in names.split()}


def lazy_exports(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``name`` from ``table[name]`` (a module relative to ``package``)."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(import_module(table[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
