"""pandera's data synthesis left out of the engine's own processes: its Ray workers and its command line.

pandera imports hypothesis, when it is installed, to offer data synthesis (`schema.example()`): from 0.3 to 0.8 s
of CPU in every process that imports pandera, which on a cluster is every Ray worker that validates rows, a new
process for each job. The engine only validates with pandera. In its Ray workers and its command line, pandera's
strategies module is loaded as if hypothesis were not installed; in any other process (a notebook, a user's tests)
pandera is loaded as it is, with data synthesis where hypothesis is installed.

`engine/__init__.py` arms this in a Ray worker, `engine/cli/main.py` in the command line; it acts only if pandera's
strategies are first loaded afterwards, and never changes hypothesis for any other importer.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

STRATEGIES = "pandera.strategies.base_strategies"
"""The pandera module that imports hypothesis, if it can, for every process that imports pandera."""
SYNTHESIS = "hypothesis"


def leave_out_data_synthesis() -> None:
    """Load pandera's strategies, when this process first does, as if hypothesis were not installed."""
    if STRATEGIES in sys.modules or SYNTHESIS in sys.modules:
        return
    if not any(isinstance(finder, _StrategiesWithoutSynthesis) for finder in sys.meta_path):
        sys.meta_path.insert(0, _StrategiesWithoutSynthesis())


def leave_out_data_synthesis_in_a_ray_worker() -> None:
    """`leave_out_data_synthesis` when this process is a Ray worker."""
    ray = sys.modules.get("ray")
    worker = getattr(getattr(getattr(ray, "_private", None), "worker", None), "global_worker", None)
    if worker is not None and worker.mode == ray._private.worker.WORKER_MODE:  # type: ignore[union-attr]
        leave_out_data_synthesis()


class _StrategiesWithoutSynthesis(importlib.abc.MetaPathFinder):
    """Finds pandera's strategies module as the path finder does, with a loader that hides hypothesis while the
    module runs; then steps aside."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != STRATEGIES:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _HidingSynthesis(spec.loader)
        return spec


class _HidingSynthesis(importlib.abc.Loader):
    """Runs a module with `import hypothesis` failing as it does where hypothesis is not installed."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        hidden = SYNTHESIS not in sys.modules
        if hidden:
            sys.modules[SYNTHESIS] = None  # type: ignore[assignment]  # an import of it raises ModuleNotFoundError
        try:
            self.loader.exec_module(module)
        finally:
            if hidden and SYNTHESIS in sys.modules and sys.modules[SYNTHESIS] is None:
                del sys.modules[SYNTHESIS]

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the file loader
        return getattr(self.loader, name)
