"""Scan plans of an Iceberg table: the tasks (a data file and its delete files) and their rows read in Ray tasks, and
the rows of some keys read with a filter, in any process that holds the table's metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import ray
import ray.data

from engine.tables.iceberg.schema import plain, plain_schema

if TYPE_CHECKING:
    from pyiceberg.io import FileIO
    from pyiceberg.table import Table
    from pyiceberg.table import Transaction as IcebergTransaction
    from pyiceberg.table.metadata import TableMetadata

MATCH_FILTER_LIMIT = 10_000


def scan_tasks(tx: IcebergTransaction, row_filter: Any = None) -> list[Any]:
    """The scan tasks (data file and its delete files) of the table the commit is built on, those whose file may
    hold rows matching `row_filter`."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.table import DataScan

    snapshot = tx.table_metadata.current_snapshot()
    if snapshot is None:
        return []
    scan = DataScan(tx.table_metadata, tx._table.io, row_filter=AlwaysTrue() if row_filter is None else row_filter,
                    snapshot_id=snapshot.snapshot_id)
    return list(scan.plan_files())


def match_filter(latest: pa.Table, keys: Sequence[str]) -> Any:
    """An Iceberg filter selecting the rows whose key equals a change's (null keys never match)."""
    from pyiceberg.expressions import AlwaysFalse, AlwaysTrue
    from pyiceberg.table.upsert_util import create_match_filter

    frame = pl.from_arrow(latest.select(list(keys)))
    assert isinstance(frame, pl.DataFrame)
    frame = frame.drop_nulls().unique()
    if frame.height == 0:
        return AlwaysFalse()
    if len(keys) > 1 and frame.height > MATCH_FILTER_LIMIT:
        return AlwaysTrue()
    return create_match_filter(frame.to_arrow(), list(keys))


@dataclass(frozen=True)
class SnapshotReads:
    """The reads by key of one snapshot of an Iceberg table (the current one of `metadata`; none when None), in
    whichever process holds it: the table's metadata and file IO travel to a Ray task, the catalog does not."""

    metadata: TableMetadata | None
    io: FileIO | None

    def table_exists(self, uri: str) -> bool:
        """Whether the table has a snapshot."""
        return self.metadata is not None and self.metadata.current_snapshot() is not None

    def read_keys(self, uri: str, table: str, keys: pa.Table) -> pa.Table:
        """The rows whose key columns equal a row of `keys`, scanned with that filter (files whose metrics exclude
        the keys are skipped); every row when a key is null, which Iceberg's filter does not match."""
        from pyiceberg.expressions import AlwaysTrue
        from pyiceberg.table import DataScan

        assert self.metadata is not None and self.io is not None
        nulls = any(column.null_count for column in keys.columns)
        row_filter = AlwaysTrue() if nulls else match_filter(keys, keys.column_names)
        return plain(DataScan(self.metadata, self.io, row_filter=row_filter).to_arrow())


def task_identity(task: Any) -> tuple[str, tuple[str, ...]]:
    """A scan task's data file and delete files: equal identities read the same rows."""
    return task.file.file_path, tuple(sorted(d.file_path for d in task.delete_files))


@ray.remote
def _read_task(metadata: Any, io: Any, task: Any) -> pa.Table:
    """One file of a scan plan, as the table's current schema in storage types."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    return plain(ArrowScan(metadata, io, metadata.schema(), AlwaysTrue()).to_table([task]))


def read_tasks(table: Table, tasks: list[Any], ray_options: Mapping[str, Any] | None) -> ray.data.Dataset:
    """A Ray Dataset over the rows of `tasks`, one Ray task (with the resources `ray_options`) per task."""
    schema = plain_schema(table.schema().as_arrow())
    if not tasks:
        return ray.data.from_arrow(schema.empty_table())
    metadata, io = ray.put(table.metadata), ray.put(table.io)
    reader = _read_task.options(**dict(ray_options or {}))
    return ray.data.from_arrow_refs([reader.remote(metadata, io, task) for task in tasks])  # type: ignore[misc]
