"""Lazy package exports: ``import tunery`` (and the API process) must not pay for, or load, torch.

A package lists what it re-exports and from which module; each name is imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``names`` maps an exported name to its module."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = importlib.import_module(module)
        return value if module == f"{package}.{name}" else getattr(value, name)

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
