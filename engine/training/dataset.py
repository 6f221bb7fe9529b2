"""Training sets: examples read at pinned table versions, features by a Feast point-in-time join, a
fingerprint of the rows, the time-based holdout split, and the model's input frame. The rows are read, joined,
ordered and split in Ray tasks; this process handles schemas, counts and object refs."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from engine.config import AccessSettings
from engine.errors import TrainingError
from engine.governance.access import authorize
from engine.layout import Layout
from engine.runtime import task_result
from engine.tables.delta import read_dataset
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

    def read(self, table: str, columns: Sequence[str]) -> ray.data.Dataset:
        """`columns` of `table` at its pinned (or first-read) version, read by Ray tasks.

        Raises:
            TrainingError: the table, the version or a column does not exist.
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
        names = [field.name for field in delta.schema().fields]
        missing = [c for c in columns if c not in names]
        if missing:
            raise TrainingError(f"table `{table}` (version {delta.version()}) has no column(s) {missing}; it has "
                                f"{names}", table=table)
        self.versions[table] = delta.version()
        return read_dataset(path, table, delta.version()).select_columns(list(columns))


@dataclass(frozen=True)
class TrainingSet:
    """Examples joined with their point-in-time features, held as one Arrow table in the cluster's object store.

    Attributes:
        rows: entity key, `event_timestamp`, label, request fields and features, ordered by time, key and then
            every other column (a `ray.ObjectRef` of a `pyarrow.Table`; `to_arrow` fetches it).
        num_rows: how many rows.
        columns: every column of the rows.
        numeric: numeric feature columns.
        categorical: string feature columns.
        versions: the Delta version of every table read (examples and features).
        fingerprint: SHA-256 of the rows; equal fingerprints mean identical training sets.
        start, end: the earliest and latest example time.
    """

    rows: ray.ObjectRef
    num_rows: int
    columns: list[str]
    numeric: list[str]
    categorical: list[str]
    versions: dict[str, int]
    fingerprint: str
    start: dt.datetime
    end: dt.datetime

    @property
    def features(self) -> list[str]:
        """Every feature column, numeric first."""
        return self.numeric + self.categorical

    def time_range(self) -> tuple[dt.datetime, dt.datetime]:
        """The earliest and latest example time."""
        return self.start, self.end

    def to_arrow(self) -> pa.Table:
        """The rows, fetched into this process (for a notebook or a test)."""
        return ray.get(self.rows)


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
    time, read at `reader.pins` where pinned. The examples, the point-in-time join and the final ordering run in
    Ray tasks (the last one reserving `job.resources`); this process handles schemas, counts and object refs."""
    from engine.features.snapshot import at_versions

    examples = job.examples(reader, params)
    if isinstance(examples, pa.Table):
        examples = ray.data.from_arrow(examples)
    if not isinstance(examples, ray.data.Dataset):
        raise TrainingError(f"training job `{job.name}`: `examples` returned a {type(examples).__name__}; it must "
                            "return a ray.data.Dataset (or a pyarrow.Table)", job=job.name)
    examples = with_request_values(examples, job).materialize()
    if examples.count() == 0:
        raise TrainingError(f"training job `{job.name}` produced no examples from tables {sorted(reader.versions)}",
                            job=job.name)
    service = feature_service(store, job.feature_service)
    with at_versions(reader.pins):
        retrieval = store.get_historical_features(entity_df=examples, features=service)
        joined = retrieval.to_ray_dataset()
    given = set(examples.schema().names)
    schema = joined.schema().base_schema
    features = [f.name for f in schema if f.name not in given]
    categorical = [f.name for f in schema if f.name in features
                   and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]
    summary, rows = _ordered.options(**dict(job.resources), name=f"training-set-{job.name}").remote(
        [ENTITY_TIME, job.entity_key], *joined.to_arrow_refs())
    count, digest, start, end = task_result(summary)
    versions = {**reader.versions, **getattr(retrieval, "table_versions", {})}
    return TrainingSet(rows, count, schema.names, [c for c in features if c not in categorical], categorical, versions, digest,
                       start, end)


def with_request_values(rows: ray.data.Dataset, job: TrainingJob) -> ray.data.Dataset:
    """`rows` with a column per request field of `job`, holding its value."""
    if not job.request_values:
        return rows
    return rows.map_batches(_with_values, batch_format="pyarrow", fn_kwargs={"values": dict(job.request_values)})


def _with_values(rows: pa.Table, values: Mapping[str, Any]) -> pa.Table:
    for name, value in values.items():
        rows = rows.append_column(name, pa.repeat(pa.scalar(value), rows.num_rows))
    return rows


@ray.remote(num_returns=2)
def _ordered(first: Sequence[str], *blocks: pa.Table) -> tuple[tuple[int, str, dt.datetime, dt.datetime], pa.Table]:
    """The blocks as one table in a deterministic order (by `first`, then every other sortable column), with
    its row count, fingerprint and time range."""
    rows = pa.concat_tables(blocks, promote_options="permissive").replace_schema_metadata(None)
    rest = [f.name for f in rows.schema if f.name not in first and _sortable(f.type)]
    rows = rows.sort_by([(name, "ascending") for name in [*first, *rest]]).combine_chunks()
    bounds = pc.min_max(rows.column(ENTITY_TIME))
    return (rows.num_rows, fingerprint(rows), bounds["min"].as_py(), bounds["max"].as_py()), rows


def _sortable(kind: pa.DataType) -> bool:
    return not (pa.types.is_nested(kind) or pa.types.is_dictionary(kind) or pa.types.is_null(kind))


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


@dataclass(frozen=True)
class SplitRefs:
    """A `time_split` made in a Ray task: its sides stay in the object store.

    Attributes:
        train, holdout: `ray.ObjectRef`s of the two sides' rows.
        holdout_start: when the holdout starts.
        rows_train, rows_holdout: the sides' row counts.
        example: the first rows of the holdout, an input example for the model's signature.
    """

    train: ray.ObjectRef
    holdout: ray.ObjectRef
    holdout_start: dt.datetime
    rows_train: int
    rows_holdout: int
    example: pa.Table


EXAMPLE_ROWS = 5


def split_in_task(rows: ray.ObjectRef, job: TrainingJob) -> SplitRefs:
    """`time_split` of the rows in the object store, run in a Ray task reserving `job.resources`.

    Raises:
        TrainingError: as `time_split`.
    """
    summary, train, holdout = _split.options(**dict(job.resources), name=f"split-{job.name}").remote(rows, job)
    start, rows_train, rows_holdout, example = task_result(summary)
    return SplitRefs(train, holdout, start, rows_train, rows_holdout, example)


@ray.remote(num_returns=3)
def _split(rows: pa.Table, job: TrainingJob) -> tuple[tuple[dt.datetime, int, int, pa.Table], pa.Table, pa.Table]:
    split = time_split(rows, job)
    return ((split.holdout_start, split.train.num_rows, split.holdout.num_rows,
             split.holdout.slice(0, EXAMPLE_ROWS)), split.train, split.holdout)


def model_frame(rows: pa.Table, numeric: Sequence[str], categorical: Sequence[str]) -> pd.DataFrame:
    """The model's input: numeric features as float64 (null: NaN), string features with null as ``""``."""
    frame = pl.from_arrow(rows.select(list(numeric) + list(categorical)))
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns([pl.col(c).cast(pl.Float64) for c in numeric]
                               + [pl.col(c).cast(pl.String).fill_null("") for c in categorical])
    return frame.to_pandas()
