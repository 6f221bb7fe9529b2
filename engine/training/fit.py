"""Fitting a job's model in a Ray task with the job's declared resources, and the holdout metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from engine.runtime import task_result
from engine.training.dataset import SplitRefs, model_frame
from engine.training.job import TrainingJob

CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Fitted:
    """A fitted model with its holdout metrics."""

    model: Any
    metrics: dict[str, float]


def classification_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUC, log loss, Brier score and expected calibration error (equal-width bins) of `scores`."""
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    bins = np.clip(np.digitize(scores, edges[1:-1]), 0, CALIBRATION_BINS - 1)
    ece = sum(abs(labels[bins == b].mean() - scores[bins == b].mean()) * (bins == b).mean()
              for b in range(CALIBRATION_BINS) if (bins == b).any())
    return {"auc": float(roc_auc_score(labels, scores)), "log_loss": float(log_loss(labels, scores, labels=[0, 1])),
            "brier": float(brier_score_loss(labels, scores)), "ece": float(ece),
            "positive_rate": float(labels.mean())}


def predict(model: Any, rows: pa.Table, numeric: Sequence[str], categorical: Sequence[str]) -> np.ndarray:
    """The model's probability of the positive class for every row."""
    return np.asarray(model.predict_proba(model_frame(rows, numeric, categorical))[:, 1], dtype=np.float64)


def fit(job: TrainingJob, params: Mapping[str, Any], train: pa.Table, holdout: pa.Table,
        numeric: Sequence[str], categorical: Sequence[str]) -> Fitted:
    """Fit `job.model(params, ...)` on `train` and evaluate it on `holdout` (in the calling process)."""
    model = job.model(params, numeric, categorical)
    model.fit(model_frame(train, numeric, categorical), train.column(job.label).to_numpy().astype(np.int64))
    scores = predict(model, holdout, numeric, categorical)
    return Fitted(model, classification_metrics(holdout.column(job.label).to_numpy().astype(np.int64), scores))


def fit_remote(job: TrainingJob, params: Mapping[str, Any], split: SplitRefs, numeric: Sequence[str],
               categorical: Sequence[str]) -> Fitted:
    """`fit` on the split's sides, in a Ray task that reserves `job.resources` (CPUs, memory): the rows go from
    the object store to that task only."""
    task = ray.remote(fit).options(**dict(job.resources), name=f"train-{job.name}")
    return task_result(task.remote(job, dict(params), split.train, split.holdout, list(numeric), list(categorical)))


def holdout_auc(model: Any, holdout: ray.ObjectRef, label: str, numeric: Sequence[str],
                categorical: Sequence[str]) -> float:
    """The AUC of `model` on the holdout in the object store, scored in a Ray task."""
    return task_result(_auc.remote(model, holdout, label, list(numeric), list(categorical)))


@ray.remote
def _auc(model: Any, holdout: pa.Table, label: str, numeric: list[str], categorical: list[str]) -> float:
    from sklearn.metrics import roc_auc_score

    labels = holdout.column(label).to_numpy().astype(np.int64)
    return float(roc_auc_score(labels, predict(model, holdout, numeric, categorical)))
