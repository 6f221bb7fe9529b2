"""One version of a Delta table, read through its log: exactly the files that version references.

Feast's file-based offline stores glob every Parquet file in a table's folder, so after an overwrite, a
merge or a delete they also read the files the log has removed. Here the file list always comes from the
Delta log at one version, and each file is read by a plain Ray task.
"""

from __future__ import annotations

import contextvars
import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray
import ray.data
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from engine.errors import FeatureStoreError
from engine.layout import Layout
from engine.tables.delta_files import add_actions

UNSUPPORTED_READER_FEATURES = ("deletionVectors", "columnMapping")
FILES_PER_TASK = 8

_pins: contextvars.ContextVar[Mapping[str, int] | None] = contextvars.ContextVar("medallion_feature_pins",
                                                                                default=None)


@contextmanager
def at_versions(versions: Mapping[str, int]) -> Iterator[None]:
    """Read the named tables at the given versions in the block, e.g. `{"gold.customer_features": 3}`.

    Historical retrievals created inside the block use these versions instead of the latest (or of the
    version pinned in the source definition).
    """
    token = _pins.set({**(_pins.get() or {}), **versions})
    try:
        yield
    finally:
        _pins.reset(token)


@dataclass(frozen=True)
class DataFile:
    """One data file of a snapshot and the values of its partition columns."""

    path: str
    partition: tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class Snapshot:
    """One version of a Delta table.

    Attributes:
        table: the table name, e.g. `gold.customer_features`.
        uri: where the table lives.
        version: the Delta version read.
        schema: the table's Arrow schema at that version.
        files: the data files the log references at that version.
    """

    table: str
    uri: str
    version: int
    schema: pa.Schema
    files: tuple[DataFile, ...]


def resolve_version(table: str, pinned: int | None) -> int | None:
    """The version to read: an `at_versions` pin, else the source's own pin, else None (the latest)."""
    return (_pins.get() or {}).get(table, pinned)


def open_snapshot(root: str, table: str, version: int | None = None) -> Snapshot:
    """The table `<layer>.<name>` under `root` at `version` (the latest when None), from its Delta log.

    Raises:
        FeatureStoreError: no Delta table there, no such version, or a table feature this reader cannot
            apply (deletion vectors, column mapping).
    """
    uri = Layout.at(root).table(table)
    try:
        delta = DeltaTable(uri, version=version)
    except TableNotFoundError:
        raise FeatureStoreError(f"feature source `{table}` has no Delta table at `{uri}`; run the pipeline "
                                "that builds it, or fix the storage root (--root)", table=table, path=uri) from None
    except DeltaError as err:
        raise FeatureStoreError(f"feature source `{table}` has no version {version} at `{uri}` ({err}); pin an "
                                "existing version or remove the pin", table=table, path=uri) from None
    unsupported = set(delta.protocol().reader_features or []) & set(UNSUPPORTED_READER_FEATURES)
    if unsupported:
        raise FeatureStoreError(f"feature source `{table}` uses the Delta reader feature(s) {sorted(unsupported)}, "
                                "which this reader does not apply; rewrite the table without them",
                                table=table, path=uri)
    schema = pa.schema(delta.schema().to_arrow())
    actions = add_actions(delta)
    partition_columns = [c for c in actions.column_names if c.startswith("partition.")]
    partitions = [actions.column(c).to_pylist() for c in partition_columns]
    files = tuple(
        DataFile(_absolute(uri, path),
                 tuple((c.removeprefix("partition."), values[i]) for c, values in zip(partition_columns, partitions)))
        for i, path in enumerate(actions.column("path").to_pylist())
    )
    return Snapshot(table, uri, delta.version(), schema, files)


def _absolute(uri: str, path: str) -> str:
    path = unquote(path)
    return path if "://" in path or path.startswith("/") else f"{uri}/{path}"


def read_snapshot(
    snapshot: Snapshot,
    columns: Sequence[str],
    *,
    rename: Mapping[str, str] | None = None,
    time_column: str | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> ray.data.Dataset:
    """The rows of `snapshot` as a Ray Dataset with `columns` (renamed by `rename`), read by Ray tasks.

    Rows whose `time_column` lies outside `[start, end]` are skipped while reading; timestamps come out as
    `timestamp[us, UTC]`.

    Raises:
        FeatureStoreError: a column is not in the table.
    """
    missing = [c for c in columns if c not in snapshot.schema.names]
    if missing:
        raise FeatureStoreError(f"feature source `{snapshot.table}` (version {snapshot.version}) has no column(s) "
                                f"{missing}; its columns are {snapshot.schema.names}. Fix the feature view's schema "
                                "or field mapping", table=snapshot.table, path=snapshot.uri)
    out_schema = _output_schema(snapshot.schema, columns, rename or {})
    groups = [snapshot.files[i:i + FILES_PER_TASK] for i in range(0, len(snapshot.files), FILES_PER_TASK)]
    if not groups:
        return ray.data.from_arrow(out_schema.empty_table())
    blocks = [_read_files.remote(group, snapshot.schema, list(columns), dict(rename or {}), out_schema,
                                 time_column, start, end) for group in groups]
    return ray.data.from_arrow_refs(blocks)


def _output_schema(schema: pa.Schema, columns: Sequence[str], rename: Mapping[str, str]) -> pa.Schema:
    fields = []
    for name in columns:
        field = schema.field(name)
        kind = pa.timestamp("us", tz="UTC") if pa.types.is_timestamp(field.type) else field.type
        fields.append(pa.field(rename.get(name, name), kind))
    return pa.schema(fields)


@ray.remote
def _read_files(
    files: Sequence[DataFile],
    schema: pa.Schema,
    columns: list[str],
    rename: dict[str, str],
    out_schema: pa.Schema,
    time_column: str | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> pa.Table:
    """Some data files of a snapshot: the wanted columns, partition values filled in, rows in the window."""
    pieces = []
    for file in files:
        partition = dict(file.partition)
        stored = pa.schema([f for f in schema if f.name not in partition])
        data_columns = [c for c in columns if c not in partition]
        piece = pads.dataset(file.path, schema=stored, format="parquet").to_table(columns=data_columns)
        for name, value in partition.items():
            if name in columns:
                piece = piece.append_column(name, pa.repeat(pa.scalar(value, schema.field(name).type), piece.num_rows))
        pieces.append(piece.select(columns))
    table = pa.concat_tables(pieces)
    table = pa.Table.from_arrays(
        [_cast(table.column(c), f.type) for c, f in zip(columns, out_schema)], schema=out_schema)
    if time_column is not None:
        times = table.column(rename.get(time_column, time_column))
        keep = pc.is_valid(times)
        if start is not None:
            keep = pc.and_(keep, pc.greater_equal(times, pa.scalar(start, pa.timestamp("us", tz="UTC"))))
        if end is not None:
            keep = pc.and_(keep, pc.less_equal(times, pa.scalar(end, pa.timestamp("us", tz="UTC"))))
        table = table.filter(keep)
    return table


def _cast(column: pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray:
    if pa.types.is_timestamp(kind) and column.type != kind:
        if column.type.tz is None:
            column = pc.assume_timezone(column, "UTC")
        return column.cast(kind, safe=False)
    return column
