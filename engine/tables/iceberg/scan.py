"""Scan plans of an Iceberg table: the tasks (a data file and its delete files) and their rows read in Ray tasks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray
import ray.data

from engine.tables.iceberg.schema import plain, plain_schema

if TYPE_CHECKING:
    from pyiceberg.table import Table
    from pyiceberg.table import Transaction as IcebergTransaction


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
