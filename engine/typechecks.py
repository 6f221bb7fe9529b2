"""Feast's run-time type checks, prepared on a method's first call instead of when Feast is imported.

Feast decorates 22 of its classes with typeguard's `@typechecked`, which instruments every annotated method as the
class is defined: for each one it reads, parses and compiles the method's whole module again. Importing Feast took
about 3 s of CPU that way, in every process that imports it (each feature command, training, the feature server,
a notebook). Deferred, a method is instrumented the first time it is called, and only methods that are called
are; the checks they make on each call are the same.

`defer_feast_type_checks` arms this before Feast is first imported: typeguard is loaded and changed only then, so
a process that never imports Feast pays nothing.
"""

from __future__ import annotations

import functools
import importlib.abc
import sys
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import FunctionType, ModuleType
from typing import Any

DEFERRING_PACKAGE = "feast"


def defer_feast_type_checks() -> None:
    """Defer typeguard's instrumentation from the moment Feast is first imported (at once if it already is)."""
    if DEFERRING_PACKAGE in sys.modules:
        return
    if not any(isinstance(finder, _BeforeFeast) for finder in sys.meta_path):
        sys.meta_path.insert(0, _BeforeFeast())


class _BeforeFeast(importlib.abc.MetaPathFinder):
    """Changes typeguard as Feast starts importing, then steps aside; finds nothing itself."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname == DEFERRING_PACKAGE:
            sys.meta_path.remove(self)
            _defer_instrumentation()
        return None


def _defer_instrumentation() -> None:
    import typeguard._decorators as decorators

    instrument = decorators.instrument
    if getattr(instrument, "deferred", False):
        return

    def deferred_instrument(function: Any) -> Any:
        # A function defined inside another one is instrumented at once: typeguard reads the names its
        # annotations use from the frames of the definition, gone by the time of the first call.
        if not isinstance(function, FunctionType) or "<locals>" in function.__qualname__:
            return instrument(function)
        return _instrumented_on_first_call(function, instrument)

    deferred_instrument.deferred = True  # type: ignore[attr-defined]
    decorators.instrument = deferred_instrument


def _instrumented_on_first_call(function: FunctionType, instrument: Callable[[Any], Any]) -> FunctionType:
    checked: Callable[..., Any] | None = None

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal checked
        if checked is None:
            result = instrument(function)
            checked = result if isinstance(result, FunctionType) else function
        return checked(*args, **kwargs)

    return call  # type: ignore[return-value]
