"""`TrainingJob`: what a data product declares to train, register and score one model."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from engine.entrypoints import load_training_jobs
from engine.errors import PipelineDefinitionError, TrainingError

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

ENTITY_TIME = "event_timestamp"


class TableSource(Protocol):
    """What a job's `examples` reads tables with (`engine.training.dataset.TableReader`: each table at one
    version, recorded for the training set)."""

    def read(self, table: str, columns: Sequence[str]) -> ray.data.Dataset:
        """`columns` of `table`, read by Ray tasks."""
        ...


@dataclass(frozen=True)
class TrainingJob:
    """A supervised binary classifier trained on a Feast feature service.

    Attributes:
        name: the job's name within its pipeline, e.g. `churn`.
        model_name: the registered model's name, e.g. `retail_churn`.
        feature_service: the Feast feature service whose features the model reads.
        entity_key: the entity's join key, e.g. `customer_id`.
        label: the label column the examples carry.
        examples: `(reader, params) -> rows` of `entity_key`, `event_timestamp` and the label, as a Ray
            Dataset (computed in the cluster; a `pyarrow.Table` is accepted for small sets); reads its tables
            through `reader`, which pins and records their versions. Must give the same rows (in any order)
            for fixed table versions.
        model: `(params, numeric, categorical) -> estimator` with `fit` and `predict_proba`.
        params: default parameters of `examples` and `model` (logged to MLflow).
        search_space: per parameter, the values a hyper-parameter search may try.
        request_values: request-time fields sent with every scoring lookup (and added to the examples).
        holdout_fraction: the latest share of the examples' time range held out for evaluation.
        gap: training examples must be this much older than the holdout start (the label horizon), so no
            training label looks into the holdout period.
        resources: Ray options of the training task (`num_cpus`, `memory` in bytes).
        scores_table: the pipeline table that scores with the model (its function calls
            `engine.training.scoring.score_table`), e.g. `gold.churn_scores`; `medallion score` runs it.
        trusted_types: types the model's skops serialization may load besides the default safe ones (MLflow
            refuses to log a model holding others).
    """

    name: str
    model_name: str
    feature_service: str
    entity_key: str
    label: str
    examples: Callable[[TableSource, Mapping[str, Any]], ray.data.Dataset | pa.Table]
    model: Callable[[Mapping[str, Any], Sequence[str], Sequence[str]], Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    search_space: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    request_values: Mapping[str, Any] = field(default_factory=dict)
    holdout_fraction: float = 0.2
    gap: dt.timedelta = dt.timedelta(0)
    resources: Mapping[str, Any] = field(default_factory=lambda: {"num_cpus": 1, "memory": 512 * 2**20})
    scores_table: str | None = None
    trusted_types: Sequence[str] = ()


def load_job(reference: str) -> tuple[str, TrainingJob]:
    """The job named by `pipeline/job` (or `pipeline` when it has one job), with its full name.

    Raises:
        TrainingError: the pipeline registers no training module, or not that job.
    """
    pipeline, _, name = reference.partition("/")
    try:
        jobs = load_training_jobs(pipeline)
    except PipelineDefinitionError as err:
        raise TrainingError(f"no training jobs for `{reference}`: {err}", job=reference) from None
    if not name:
        if len(jobs) != 1:
            raise TrainingError(f"pipeline `{pipeline}` has training jobs {sorted(jobs)}; name one as "
                                f"`{pipeline}/JOB`", job=reference)
        [name] = jobs
    if name not in jobs:
        raise TrainingError(f"pipeline `{pipeline}` has no training job `{name}`; it has {sorted(jobs)}",
                            job=reference)
    return f"{pipeline}/{name}", jobs[name]
