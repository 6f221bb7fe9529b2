"""Fitting a job's model in a Ray task with the job's declared resources, and the holdout metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from engine.training.dataset import model_frame
from engine.training.job import TrainingJob

CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Fitted:
    """A fitted model with its holdout scores and metrics."""

    model: Any
    scores: np.ndarray
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
    return Fitted(model, scores, classification_metrics(holdout.column(job.label).to_numpy().astype(np.int64),
                                                         scores))


def fit_remote(job: TrainingJob, params: Mapping[str, Any], train: pa.Table, holdout: pa.Table,
               numeric: Sequence[str], categorical: Sequence[str]) -> Fitted:
    """`fit` in a Ray task that reserves `job.resources` (CPUs, memory)."""
    task = ray.remote(fit).options(**dict(job.resources), name=f"train-{job.name}")
    return ray.get(task.remote(job, dict(params), train, holdout, list(numeric), list(categorical)))
