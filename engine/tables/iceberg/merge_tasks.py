"""The row-level steps of a merge into an Iceberg table (`engine.tables.iceberg.merge`), each a Ray task (or, for
changes in memory, a call in this process): a bucket's staged changes reduced to the latest per key, the data files
whose key bounds may hold their keys, candidate files read, joined and rewritten, and the inserts written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from engine.config import StorageSettings
from engine.kinds import Merge
from engine.storage import delete_file
from engine.tables.bucket_tasks import Matcher, conform, latest_changes
from engine.tables.files import DataFile, RollingParquetWriter, discard_files
from engine.tables.iceberg.schema import plain

if TYPE_CHECKING:
    from pyiceberg.io import FileIO
    from pyiceberg.manifest import DataFile as IcebergDataFile
    from pyiceberg.table import FileScanTask
    from pyiceberg.table.metadata import TableMetadata


@ray.remote(scheduling_strategy="SPREAD", num_returns=2)
def reduce_bucket(change_log: str | None, table: str, kind: Merge, storage: StorageSettings, prefix: str,
                  *pieces: pa.Table) -> tuple[tuple[int, list[DataFile]], pa.Table]:
    """One bucket's staged changes (`pieces`) reduced to the latest per key (`bucket_tasks.latest_changes`, which
    writes the deletes a `change_log` lacks): their count and the log's new files, then the rows."""
    log_writer = RollingParquetWriter(change_log or "", storage, f"{prefix}-log")
    try:
        latest = latest_changes(pieces, kind, change_log, table, log_writer)
        return (latest.num_rows, log_writer.close()), latest
    except BaseException:
        discard_files(change_log or "", log_writer.close())
        raise


def files_holding(bounds: pa.Table, keys: list[str], latest: pa.Table) -> np.ndarray:
    """The rows of `bounds` (data files, with `lower:<key>` and `upper:<key>` columns, null for no bound) whose
    bounds hold the key of a change of `latest` in every key column; keys with a null never match."""
    wanted = latest.select(keys).cast(pa.schema([bounds.schema.field(f"lower:{key}").with_name(key) for key in keys]))
    wanted = wanted.drop_null()
    if wanted.num_rows == 0 or bounds.num_rows == 0:
        return np.empty(0, np.int64)
    columns = []
    for key in keys:
        column = wanted.column(key).combine_chunks()
        order = pc.sort_indices(column).to_numpy()
        values = column.to_numpy(zero_copy_only=False)
        extremes = pc.min_max(column)
        low = pc.fill_null(bounds.column(f"lower:{key}"), extremes["min"]).to_numpy(zero_copy_only=False)
        high = pc.fill_null(bounds.column(f"upper:{key}"), extremes["max"]).to_numpy(zero_copy_only=False)
        ordered = values[order]
        columns.append((values, order, low, high, np.searchsorted(ordered, low, "left"),
                        np.searchsorted(ordered, high, "right")))
    counts = np.stack([end - start for *_, start, end in columns])
    possible = np.flatnonzero((counts > 0).all(axis=0))
    if len(keys) == 1:
        return possible
    holding = []
    for file in possible:
        narrowest = int(np.argmin(counts[:, file]))
        _, order, _, _, start, end = columns[narrowest]
        rows = order[start[file]:end[file]]
        inside = np.ones(len(rows), bool)
        for values, _, low, high, _, _ in (c for number, c in enumerate(columns) if number != narrowest):
            inside &= (values[rows] >= low[file]) & (values[rows] <= high[file])
        if inside.any():
            holding.append(file)
    return np.array(holding, np.int64)


def rewrite_files(metadata: TableMetadata, io: FileIO, tasks: list[FileScanTask], target: pa.Schema, kind: Merge,
                  *pieces: pa.Table) -> tuple[Any, ...]:
    """The data files of `tasks` joined with the changes of `pieces` (one row per key; the buckets whose keys the
    files may hold), file by file: a file holding a row that a change replaces or deletes is written anew with its
    other rows and the replacing changes. Returns the paths of the files rewritten, their new files and the rows
    updated and deleted, then for each piece the positions of its changes that matched a stored row."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    matcher = Matcher(conform(pa.concat_tables(pieces, promote_options="permissive"), target), target, kind)
    scan = ArrowScan(metadata, io, metadata.schema(), AlwaysTrue())
    rewritten: list[str] = []
    files: list[IcebergDataFile] = []
    try:
        for task in tasks:
            stored = plain(scan.to_table([task]))
            kept = matcher.apply(stored)
            if kept.num_rows < stored.num_rows:
                replacing = matcher.replacements(since=len(matcher.replacing) - 1)
                files.extend(write_rows(metadata, io, pa.concat_tables([kept.cast(target), replacing])))
                rewritten.append(task.file.file_path)
    except BaseException:
        discard(files)
        raise
    ends = np.cumsum([piece.num_rows for piece in pieces])
    matched = [np.flatnonzero(matcher.matched[end - piece.num_rows:end]) for piece, end in zip(pieces, ends)]
    tallies = {"updated": matcher.counts["updated"], "deleted": matcher.counts["deleted"]}
    return (rewritten, files, tallies), *matched


def write_inserts(metadata: TableMetadata, io: FileIO, target: pa.Schema, kind: Merge, latest: pa.Table,
                  *matched: np.ndarray) -> tuple[list[IcebergDataFile], int]:
    """The changes of `latest` that are no deletes and matched no stored row (`matched`: the positions that did, from
    every `rewrite_files` that had them) written as new data files; the files and the rows inserted."""
    matcher = Matcher(conform(latest, target), target, kind)
    for positions in matched:
        matcher.mark_matched(positions)
    rows = matcher.inserts()
    return write_rows(metadata, io, rows), rows.num_rows


def write_rows(metadata: TableMetadata, io: FileIO, rows: pa.Table) -> list[IcebergDataFile]:
    """`rows` (in the table's columns) written as data files of the table, described with their column metrics as
    its properties allow; none when there are no rows."""
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    return list(_dataframe_to_data_files(metadata, rows, io)) if rows.num_rows else []


def discard(files: list[IcebergDataFile]) -> None:
    """Delete data files written for a commit that will not include them."""
    for file in files:
        delete_file(file.file_path)


REMOTE = {step.__name__: ray.remote(scheduling_strategy="SPREAD")(step)
          for step in (files_holding, rewrite_files, write_inserts)}
"""The steps as Ray tasks, by name."""
