"""The MLflow training bridge: tracked training over Feast training sets, the model registry, scoring.

Nothing here is imported by `import engine`; MLflow, scikit-learn and Feast are imported only by the modules
that need them. The names below are loaded on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TrainingJob": "engine.training.job",
    "TableReader": "engine.training.dataset",
    "train": "engine.training.train",
    "reproduce": "engine.training.train",
    "score_batch": "engine.training.scoring",
    "score_online": "engine.training.scoring",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module `engine.training` has no attribute `{name}`")
    return getattr(import_module(_EXPORTS[name]), name)
