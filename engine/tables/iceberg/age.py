"""When an Iceberg table last got data, and the newest value of a column, read from its metadata alone: snapshot
summaries, and the column bounds its manifests keep for each data file (the footers of files whose bounds are
not kept); no data is scanned."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
import pyarrow.fs as pafs

from engine.freshness import as_instant
from engine.tables.delta_age import DATA_OPERATIONS, footer_max
from engine.tables.iceberg.snapshots import snapshot_of

if TYPE_CHECKING:
    from pyiceberg.table import Table

ADDED_FILES = "added_files"
"""The key of a commit info (`IcebergTables.history`) holding the data files its snapshot added."""


def last_data_commit(commits: list[dict[str, Any]], version: int | None = None) -> dict[str, Any] | None:
    """Of `commits` (the effective history, newest first), the newest at or before `version` that brought new
    data: a snapshot of a pipeline run (or of another writer) that added data files."""
    for commit in commits:
        if version is not None and commit["version"] > version:
            continue
        operation = commit.get("medallion.operation")
        if operation is not None and operation not in DATA_OPERATIONS:
            continue
        if commit.get(ADDED_FILES, 0) > 0:
            return commit
    return None


def newest_value(loaded: Table, table: str, column: str, version: int | None = None) -> Any:
    """The newest value of `column` in the data files of the table's snapshot (`version`, current when None),
    from the upper bounds of its manifests, or the Parquet footers of files without one; None when it has no
    non-null value.

    Raises:
        KeyError: the table has no such column.
    """
    if column not in [f.name for f in loaded.schema().fields]:
        raise KeyError(column)
    snapshot = loaded.current_snapshot() if version is None else snapshot_of(loaded, table, version)
    if snapshot is None:
        return None
    files = loaded.inspect.data_files(snapshot.snapshot_id)
    if files.num_rows == 0:
        return None
    metrics = pc.struct_field(files.column("readable_metrics").combine_chunks(), column)
    bounds = pc.struct_field(metrics, "upper_bound").to_pylist()
    nulls = pc.struct_field(metrics, "null_value_count").to_pylist()
    values = []
    for path, records, bound, null_count in zip(files.column("file_path").to_pylist(),
                                                files.column("record_count").to_pylist(), bounds, nulls, strict=True):
        if bound is not None:
            values.append(bound)
        elif records and not (null_count is not None and null_count >= records):
            filesystem, located = pafs.FileSystem.from_uri(path)
            found = footer_max(filesystem, located, column)
            if found is not None:
                values.append(found)
    return max(values, key=lambda v: as_instant(v) or v, default=None)
