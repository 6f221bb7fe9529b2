"""Scoring with a registered model: in batch from the offline store into a Delta table (one commit), and
online from Feast's online store. Both build the model input with `model_frame`, so a customer with the same
feature values gets the same score."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray

from engine.config import Settings
from engine.errors import TrainingError
from engine.tables.layout import Layout
from engine.training.dataset import TableReader, feature_service
from engine.training.fit import predict
from engine.training.job import ENTITY_TIME, TrainingJob, load_job
from engine.training.registry import CHAMPION, LoadedModel, load_model, require_columns
from engine.training.tracking import configured_uri, resolve_tracking_uri, use_tracking

if TYPE_CHECKING:
    from feast import FeatureStore


@dataclass(frozen=True)
class BatchScores:
    """One batch scoring: the table written, its new Delta version, and what was scored."""

    table: str
    version: int
    rows: int
    model_version: str
    scored_at: dt.datetime


def score_batch(reference: str, settings: Settings, *, repo: str, overlay: str | None = None,
                tracking_uri: str | None = None, at: dt.datetime | None = None,
                model_version: str = CHAMPION) -> BatchScores:
    """Score every entity of the job's population with its features as of `at` (default now) and append
    `entity key, score, model_version, scored_at` to `job.scores_table` in one commit.

    Raises:
        TrainingError: the job declares no scores table or population, or the model cannot be loaded.
    """
    from deltalake import CommitProperties, DeltaTable, write_deltalake

    from engine.features.repo import open_store

    name, job = load_job(reference)
    if job.scores_table is None or job.population is None:
        raise TrainingError(f"training job `{name}` declares no `scores_table` and `population`; add them to "
                            "score in batch", job=name)
    root = Layout.at(settings.storage.root).root
    use_tracking(resolve_tracking_uri(root, tracking_uri or configured_uri(settings)))
    model = load_model(job.model_name, model_version)
    store = open_store(root, repo, overlay=overlay)
    scored_at = (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    keys = job.population(TableReader(root, access=settings.access)).select([job.entity_key]).sort_by(job.entity_key)
    entities = keys.append_column(ENTITY_TIME, pa.array([scored_at] * keys.num_rows, pa.timestamp("us", "UTC")))
    for field, value in job.request_values.items():
        entities = entities.append_column(field, pa.array([value] * keys.num_rows))
    rows = store.get_historical_features(entity_df=entities.to_pandas(),
                                         features=feature_service(store, job.feature_service)).to_arrow()
    require_columns(model, rows.column_names)
    task = ray.remote(predict).options(**dict(job.resources), name=f"score-{job.name}")
    scores = ray.get(task.remote(model.model, rows, model.numeric, model.categorical))
    result = pa.table({
        job.entity_key: rows.column(job.entity_key),
        "score": pa.array(scores, pa.float64()),
        "model_version": pa.array([int(model.version)] * rows.num_rows, pa.int64()),
        "scored_at": pa.array([scored_at] * rows.num_rows, pa.timestamp("us", "UTC")),
    })
    path = Layout.at(root).table(job.scores_table)
    write_deltalake(path, result, mode="append", commit_properties=CommitProperties(custom_metadata={
        "model": job.model_name, "model_version": model.version, "job": name, "scored_at": scored_at.isoformat()}))
    return BatchScores(job.scores_table, DeltaTable(path).version(), result.num_rows, model.version, scored_at)


def score_online(store: FeatureStore, job: TrainingJob, model: LoadedModel, keys: Sequence[Any]) -> pa.Table:
    """Scores of the entities `keys` from their online features: `entity key, score` plus the features."""
    rows = [{job.entity_key: key, **job.request_values} for key in keys]
    online = store.get_online_features(features=feature_service(store, job.feature_service),
                                       entity_rows=rows).to_dict()
    table = pa.table({column: online[column] for column in [job.entity_key, *model.numeric, *model.categorical]})
    require_columns(model, table.column_names)
    return table.append_column("score", pa.array(predict(model.model, table, model.numeric, model.categorical),
                                                 pa.float64()))
