"""Training sets: examples read at pinned table versions, features by a Feast point-in-time join, a
fingerprint of the rows, the time-based holdout split, and the model's input frame."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from engine.config import AccessSettings
from engine.errors import TrainingError
from engine.governance.access import authorize
from engine.layout import Layout
from engine.tables.delta import rows_dataset
from engine.training.job import ENTITY_TIME, TrainingJob

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore


class TableReader:
    """Reads tables under a storage root through the Delta log, each at one version: the pinned one, else
    the latest at its first read. `versions` records what was read."""

    def __init__(self, root: str, pins: Mapping[str, int] | None = None, access: AccessSettings | None = None) -> None:
        self.root = root
        self.pins = dict(pins or {})
        self.access = access or AccessSettings()
        self.versions: dict[str, int] = {}

    def read(self, table: str, columns: Sequence[str]) -> pa.Table:
        """`columns` of `table` at its pinned (or first-read) version.

        Raises:
            TrainingError: the table or the version does not exist.
            AccessDenied: the actor may not read the table.
        """
        authorize(self.access, "read", [table], "building a training set")
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        path = Layout.at(self.root).table(table)
        version = self.versions.get(table, self.pins.get(table))
        try:
            delta = DeltaTable(path, version=version)
        except TableNotFoundError:
            raise TrainingError(f"table `{table}` does not exist under {self.root}; run its pipeline first",
                                table=table) from None
        except DeltaError as err:
            raise TrainingError(f"cannot read table `{table}` at version {version}: {err}; the version may have "
                                "been vacuumed (restore it or train on the latest versions)", table=table) from None
        self.versions[table] = delta.version()
        return rows_dataset(path, table, opened=delta).to_table(columns=list(columns))


@dataclass(frozen=True)
class TrainingSet:
    """Examples joined with their point-in-time features.

    Attributes:
        rows: entity key, `event_timestamp`, label, request fields and features, in a deterministic order.
        numeric: numeric feature columns.
        categorical: string feature columns.
        versions: the Delta version of every table read (examples and features).
        fingerprint: SHA-256 of the rows; equal fingerprints mean identical training sets.
    """

    rows: pa.Table
    numeric: list[str]
    categorical: list[str]
    versions: dict[str, int]
    fingerprint: str

    @property
    def features(self) -> list[str]:
        """Every feature column, numeric first."""
        return self.numeric + self.categorical

    def time_range(self) -> tuple[dt.datetime, dt.datetime]:
        """The earliest and latest example time."""
        bounds = pc.min_max(self.rows.column(ENTITY_TIME))
        return bounds["min"].as_py(), bounds["max"].as_py()


def feature_service(store: FeatureStore, name: str) -> Any:
    """The registered feature service `name`.

    Raises:
        TrainingError: the registry does not know it.
    """
    from feast.errors import FeastObjectNotFoundException

    try:
        return store.get_feature_service(name)
    except FeastObjectNotFoundException:
        raise TrainingError(f"feature service `{name}` is not in the registry of project `{store.project}`; run "
                            "`medallion features apply`") from None


def build_training_set(store: FeatureStore, job: TrainingJob, reader: TableReader,
                       params: Mapping[str, Any]) -> TrainingSet:
    """The job's examples (read through `reader`) with the feature service's features as of each example's
    time, read at `reader.pins` where pinned."""
    from engine.features.snapshot import at_versions

    examples = job.examples(reader, params)
    for name, value in job.request_values.items():
        examples = examples.append_column(name, pa.array([value] * examples.num_rows))
    examples = examples.sort_by([(ENTITY_TIME, "ascending"), (job.entity_key, "ascending")])
    if examples.num_rows == 0:
        raise TrainingError(f"training job `{job.name}` produced no examples from tables {sorted(reader.versions)}",
                            job=job.name)
    service = feature_service(store, job.feature_service)
    with at_versions(reader.pins):
        retrieval = store.get_historical_features(entity_df=examples.to_pandas(), features=service)
    rows = retrieval.to_arrow().replace_schema_metadata(None)
    rows = rows.select(examples.column_names + [c for c in rows.column_names if c not in examples.column_names])
    features = [c for c in rows.column_names if c not in examples.column_names]
    categorical = [c for c in features if pa.types.is_string(rows.schema.field(c).type)
                   or pa.types.is_large_string(rows.schema.field(c).type)]
    versions = {**reader.versions, **getattr(retrieval, "table_versions", {})}
    return TrainingSet(rows, [c for c in features if c not in categorical], categorical, versions,
                       fingerprint(rows))


def fingerprint(rows: pa.Table) -> str:
    """SHA-256 of the table's schema and values."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows.combine_chunks())
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


@dataclass(frozen=True)
class Split:
    """A time-based split: training rows end `gap` before the holdout starts."""

    train: pa.Table
    holdout: pa.Table
    holdout_start: dt.datetime


def time_split(rows: pa.Table, job: TrainingJob) -> Split:
    """Hold out the latest `job.holdout_fraction` of the time range; train on rows `job.gap` older than it.

    Raises:
        TrainingError: either side is empty or the holdout has a single class.
    """
    bounds = pc.min_max(rows.column(ENTITY_TIME))
    first, last = bounds["min"].as_py(), bounds["max"].as_py()
    start = last - (last - first) * job.holdout_fraction
    times = rows.column(ENTITY_TIME)
    holdout = rows.filter(pc.greater(times, pa.scalar(start, times.type)))
    train = rows.filter(pc.less_equal(times, pa.scalar(start - job.gap, times.type)))
    labels = pc.unique(holdout.column(job.label)).to_pylist() if holdout.num_rows else []
    if train.num_rows == 0 or len(labels) < 2:
        raise TrainingError(f"training job `{job.name}`: {train.num_rows} training rows and a holdout with labels "
                            f"{labels} from {first} to {last}; it needs a longer time range or a smaller "
                            "`holdout_fraction` / `gap`", job=job.name)
    return Split(train, holdout, start)


def model_frame(rows: pa.Table, numeric: Sequence[str], categorical: Sequence[str]) -> pd.DataFrame:
    """The model's input: numeric features as float64 (null: NaN), string features with null as ``""``."""
    frame = pl.from_arrow(rows.select(list(numeric) + list(categorical)))
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns([pl.col(c).cast(pl.Float64) for c in numeric]
                               + [pl.col(c).cast(pl.String).fill_null("") for c in categorical])
    return frame.to_pandas()
