"""Replacing a slice of an Iceberg table: the files that may hold its rows rewritten without them in Ray tasks,
in the snapshot that adds the slice's new files (as `engine.tables.replace` does on Delta)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from engine.config import StorageSettings
from engine.tables.files import DataFile, RollingParquetWriter
from engine.tables.iceberg.scan import scan_tasks
from engine.tables.iceberg.schema import ensure_name_mapping, evolve, plain
from engine.tables.replace import Slice, remainder

if TYPE_CHECKING:
    from pyiceberg.table import Transaction as IcebergTransaction


def stage_replacement(
    tx: IcebergTransaction,
    created: bool,
    where: Slice,
    new_files: Sequence[DataFile],
    new_schema: pa.Schema | None,
    rewritten: list[DataFile],
    *,
    uri: str,
    storage: StorageSettings,
    prefix: str,
    properties: dict[str, str],
) -> dict[str, int]:
    """Stage in `tx` the snapshot removing the rows of `where` and adding `new_files` (already written under
    `uri`); returns its counts (`rows_removed`, `files_rewritten`, `files_skipped`).

    The remainders of the rewritten files are added to `rewritten` as soon as they are written, so the caller
    can discard them when the commit fails. The snapshot is an `append` when no file held rows of the slice.
    """
    from pyiceberg.io.pyarrow import parquet_file_to_data_file

    if new_schema is not None and not created:
        evolve(tx, new_schema, drop_missing=False)
    ensure_name_mapping(tx)
    candidates, total = scan_tasks(tx, _slice_filter(tx, where)), len(scan_tasks(tx))
    metadata_ref, io_ref = ray.put(tx.table_metadata), ray.put(tx._table.io)
    results = ray.get([_without_slice.remote(metadata_ref, io_ref, task, uri, where.selector, storage, prefix)
                       for task in candidates])
    touched = [(task, result) for task, result in zip(candidates, results) if result is not None]
    rewritten.extend(file for _, (remainders, _) in touched for file in remainders)
    io = tx._table.io
    added = [parquet_file_to_data_file(io, tx.table_metadata, f"{uri}/{f.path}") for f in [*rewritten, *new_files]]
    snapshot = tx.update_snapshot(snapshot_properties=properties)
    with snapshot.overwrite() if touched else snapshot.fast_append() as update:
        for task, _ in touched:
            update.delete_data_file(task.file)
        for data_file in added:
            update.append_data_file(data_file)
    return {"rows_removed": sum(removed for _, (_, removed) in touched), "files_rewritten": len(touched),
            "files_skipped": total - len(candidates)}


def _slice_filter(tx: IcebergTransaction, where: Slice) -> Any:
    """An Iceberg filter keeping the files whose metrics may hold rows of `where` (every file when the slice
    has no bounds, or its bounds do not fit the column's type)."""
    from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, LessThanOrEqual
    from pyiceberg.expressions.visitors import bind

    if where.column is None or where.low is None or where.high is None:
        return AlwaysTrue()
    bounds = And(GreaterThanOrEqual(where.column, where.low), LessThanOrEqual(where.column, where.high))
    try:
        bind(tx.table_metadata.schema(), bounds, case_sensitive=True)
    except (TypeError, ValueError):
        return AlwaysTrue()
    return bounds


@ray.remote
def _without_slice(metadata: Any, io: Any, task: Any, uri: str, selector: pc.Expression, storage: StorageSettings,
                   prefix: str) -> tuple[list[DataFile], int] | None:
    """One data file of a scan plan rewritten without the slice's rows (see `replace.remainder`)."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    rows = plain(ArrowScan(metadata, io, metadata.schema(), AlwaysTrue()).to_table([task]))
    return remainder(rows, selector, RollingParquetWriter(uri, storage, prefix))
