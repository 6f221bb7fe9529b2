"""Scoring with a registered model: in batch as the body of a pipeline table (committed by the runner like
any other table), and online from Feast's online store. Both build the model input with `model_frame`, so
a customer with the same feature values gets the same score."""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray.data

from engine.context import table_context
from engine.errors import TrainingError
from engine.layout import Layout
from engine.training.dataset import feature_service, with_request_values
from engine.training.fit import predict
from engine.training.job import ENTITY_TIME, TrainingJob
from engine.training.registry import CHAMPION, LoadedModel, load_model, require_columns
from engine.training.tracking import configured_uri, existing_tracking_uri, use_tracking

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringOptions:
    """Which model a scores table scores with, and where it and the features are found.

    Attributes:
        model_version: a version number or alias of the job's registered model.
        tracking_uri: overrides `training.tracking_uri` and `$MLFLOW_TRACKING_URI`.
        repo: the feature repository; None: `$MEDALLION_FEATURE_REPO`, else the `features.repo` setting.
        overlay: a Feast configuration overlay; None: `$MEDALLION_FEAST_CONFIG`, else `features.feast_config`.
    """

    model_version: str = CHAMPION
    tracking_uri: str | None = None
    repo: str | None = None
    overlay: str | None = None


_options: contextvars.ContextVar[ScoringOptions | None] = contextvars.ContextVar("medallion_scoring_options",
                                                                                  default=None)


@contextmanager
def scoring_with(options: ScoringOptions) -> Iterator[None]:
    """Build the scores tables of the block with `options` instead of the defaults."""
    token = _options.set(options)
    try:
        yield
    finally:
        _options.reset(token)


def score_table(job: TrainingJob, entities: ray.data.Dataset) -> ray.data.Dataset:
    """The rows of a scores table: each row of `entities` (entity key, `event_timestamp`) scored by the job's
    registered model on the feature service's features as of its time, read at the run's input versions.

    Call it from a table function whose inputs are the tables the feature service reads. Columns: entity key,
    `event_timestamp` (the features' time), `score`, `model_name`, `model_version`, `scored_at` (the run's).
    The features are joined, and scored, in Ray tasks (scoring reserving `job.resources`): no row comes to this
    process.

    Raises:
        TrainingError: no model is registered under the version or alias, or the feature service no longer
            returns its input columns.
    """
    from engine.features.repo import store_of
    from engine.features.snapshot import at_versions

    context = table_context()
    options = _options.get() or ScoringOptions()
    root = Layout.at(context.settings.storage.root).root
    uri = existing_tracking_uri(root, options.tracking_uri or configured_uri(context.settings))
    if uri is None:
        raise TrainingError(f"no model `{job.model_name}` to build `{context.table}` with: no tracking URI is "
                            f"configured and nothing was tracked under {Layout.at(root).mlflow()}; train one with "
                            "`medallion train`", model=job.model_name, table=context.table)
    use_tracking(uri, verbose=context.settings.ray.verbose)
    model = load_model(job.model_name, options.model_version)
    store = store_of(context.settings, options.repo, options.overlay)
    rows = with_request_values(entities.select_columns([job.entity_key, ENTITY_TIME]), job)
    pins = {table: version for table, version in context.input_versions.items() if version is not None}
    with at_versions(pins):
        features = store.get_historical_features(
            entity_df=rows, features=feature_service(store, job.feature_service)).to_ray_dataset()
    require_columns(model, features.schema().names)
    log.info("table `%s`: scoring %d rows with model `%s` v%s", context.table, features.count(), model.name,
             model.version)
    return features.select_columns([job.entity_key, ENTITY_TIME, *model.numeric, *model.categorical]).map_batches(
        _scores, batch_format="pyarrow", **dict(job.resources),
        fn_kwargs={"model": model, "key": job.entity_key, "scored_at": dt.datetime.now(dt.UTC)})


def _scores(rows: pa.Table, model: LoadedModel, key: str, scored_at: dt.datetime) -> pa.Table:
    """The scores of a batch of feature rows."""
    return pa.table({
        key: rows.column(key),
        ENTITY_TIME: rows.column(ENTITY_TIME).cast(pa.timestamp("us", "UTC")),
        "score": pa.array(predict(model.model, rows, model.numeric, model.categorical), pa.float64()),
        "model_name": pa.array([model.name] * rows.num_rows, pa.string()),
        "model_version": pa.array([int(model.version)] * rows.num_rows, pa.int64()),
        "scored_at": pa.array([scored_at] * rows.num_rows, pa.timestamp("us", "UTC")),
    })


def score_online(store: FeatureStore, job: TrainingJob, model: LoadedModel, keys: Sequence[Any]) -> pa.Table:
    """Scores of the entities `keys` from their online features: `entity key, score` plus the features."""
    rows = [{job.entity_key: key, **job.request_values} for key in keys]
    online = store.get_online_features(features=feature_service(store, job.feature_service),
                                       entity_rows=rows).to_dict()
    table = pa.table({column: online[column] for column in [job.entity_key, *model.numeric, *model.categorical]})
    require_columns(model, table.column_names)
    return table.append_column("score", pa.array(predict(model.model, table, model.numeric, model.categorical),
                                                 pa.float64()))
