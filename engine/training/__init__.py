"""The MLflow training bridge: tracked training over Feast training sets, the model registry, scoring.

Nothing here is imported by `import engine`; MLflow, scikit-learn and Feast are imported only by the modules
that need them. The names below are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_exports

if TYPE_CHECKING:  # what type checkers see: the names below, from the modules that define them
    from engine.training.dataset import TableReader as TableReader
    from engine.training.job import TrainingJob as TrainingJob
    from engine.training.scoring import score_online as score_online
    from engine.training.scoring import score_table as score_table
    from engine.training.trainer import reproduce as reproduce
    from engine.training.trainer import train as train

__getattr__ = lazy_exports(__name__, {
    "TrainingJob": "engine.training.job",
    "TableReader": "engine.training.dataset",
    "train": "engine.training.trainer",
    "reproduce": "engine.training.trainer",
    "score_table": "engine.training.scoring",
    "score_online": "engine.training.scoring",
})
