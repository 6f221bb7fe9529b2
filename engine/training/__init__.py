"""The MLflow training bridge: tracked training over Feast training sets, the model registry, scoring.

Nothing here is imported by `import engine`; MLflow, scikit-learn and Feast are imported only by the modules
that need them. The names below are loaded on first use.
"""

from __future__ import annotations

from engine.lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "TrainingJob": "engine.training.job",
    "TableReader": "engine.training.dataset",
    "train": "engine.training.train",
    "reproduce": "engine.training.train",
    "score_table": "engine.training.scoring",
    "score_online": "engine.training.scoring",
})
