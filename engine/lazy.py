"""Names of a package loaded on first use, so that importing the package does not import heavy libraries."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `exports[name]` (a module path) when `name` is first used."""

    def load(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module `{package}` has no attribute `{name}`")
        return getattr(import_module(exports[name]), name)

    return load
