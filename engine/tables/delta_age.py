"""When a Delta table last got data, and the newest value of a column, read from its log alone: statistics of
the live files, or the footers of files whose log entry has none; no data is scanned."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from engine.freshness import as_instant
from engine.tables.delta import RESTORED_TO_KEY, commit_info_value, newest_commits, open_table
from engine.tables.delta_files import add_actions

DATA_OPERATIONS = frozenset({"run"})
"""`medallion.operation` values of commits that bring new data; commits without the key (other writers)
count too, unless they are a restore."""


def last_data_commit(uri: str, table: str, version: int | None = None) -> dict[str, Any] | None:
    """The newest commit (at or before `version`) that brought new data and that no restore undid, None
    when there is none: a commit of a pipeline run (or of another writer) that added data files."""
    undone_above: int | None = None
    for commit in newest_commits(uri, table):
        if (version is not None and commit["version"] > version) or \
                (undone_above is not None and commit["version"] > undone_above):
            continue
        undone_above = None
        restored_to = commit_info_value(commit, RESTORED_TO_KEY)
        if restored_to is not None:
            undone_above = int(restored_to)
        operation = commit_info_value(commit, "operation")
        if operation is None and str(commit.get("operation", "")).upper() == "RESTORE":
            continue
        if operation is not None and operation not in DATA_OPERATIONS:
            continue
        if _commit_adds_data(uri, commit["version"]):
            return commit
    return None


def _commit_adds_data(uri: str, version: int) -> bool:
    """Whether the commit file of `version` adds a data file (`dataChange`); True when the file is gone
    (log cleaned up), since the commit's operation already qualified it."""
    filesystem, base = pafs.FileSystem.from_uri(f"{uri}/_delta_log/{version:020d}.json")
    try:
        with filesystem.open_input_stream(base) as stream:
            lines = stream.read().decode().splitlines()
    except (FileNotFoundError, OSError):
        return True
    for line in lines:
        if '"add"' not in line:
            continue
        action = json.loads(line).get("add")
        if action is not None and action.get("dataChange", True):
            return True
    return False


def newest_value(uri: str, table: str, column: str, version: int | None = None) -> Any:
    """The newest value of `column` in the live files of the table (at `version`), from the Delta log's
    statistics, or the Parquet footers of files whose log entry has none; None when it has no non-null value.

    Raises:
        KeyError: the table has no such column.
    """
    opened = open_table(uri, table, version)
    if column not in opened.schema().to_arrow().names:  # type: ignore[union-attr]
        raise KeyError(column)
    actions = add_actions(opened)
    if f"partition.{column}" in actions.column_names:
        values = [v for v in actions.column(f"partition.{column}").to_pylist() if v is not None]
        return max(values, default=None)
    stats = actions.column(f"max.{column}") if f"max.{column}" in actions.column_names else None
    maxes = _python_values(stats) if stats is not None else [None] * actions.num_rows
    nulls = (actions.column(f"null_count.{column}").to_pylist() if f"null_count.{column}" in actions.column_names
             else [None] * actions.num_rows)
    values, unknown = [], []
    for path, records, value, null_count in zip(actions.column("path").to_pylist(),
                                                actions.column("num_records").to_pylist(), maxes, nulls, strict=True):
        if records == 0:
            continue
        if value is not None:
            values.append(value)
        elif not (null_count is not None and records is not None and null_count >= records):
            unknown.append(path)
    filesystem, base = pafs.FileSystem.from_uri(opened.table_uri)
    values.extend(v for v in (footer_max(filesystem, f"{base}/{path}", column) for path in unknown) if v is not None)
    return max(values, key=lambda v: as_instant(v) or dt.datetime.min.replace(tzinfo=dt.UTC), default=None)


def _python_values(column: pa.ChunkedArray) -> list[Any]:
    """`column`'s values as Python values; timestamps made here from their integer values (pyarrow's own
    conversion of a zoned timestamp imports pandas, which a reading command does not otherwise need)."""
    if not pa.types.is_timestamp(column.type):
        return column.to_pylist()
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[column.type.unit]
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    zone = None if column.type.tz is None else dt.UTC if column.type.tz in ("UTC", "+00:00") else _zone(column.type.tz)
    instants = [None if ticks is None else epoch + dt.timedelta(microseconds=ticks * 1_000_000 // per_second)
                for ticks in column.cast(pa.int64()).to_pylist()]
    return [None if i is None else i.replace(tzinfo=None) if zone is None else i.astimezone(zone) for i in instants]


def _zone(name: str) -> dt.tzinfo:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def footer_max(filesystem: pafs.FileSystem, path: str, column: str) -> Any:
    """The max of `column` over the row-group statistics of one data file's Parquet footer."""
    with filesystem.open_input_file(path) as source:
        metadata = pq.ParquetFile(source).metadata
    names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    if column not in names:
        return None
    index = names.index(column)
    highest = None
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max:
            continue
        value = stats.max
        if highest is None or (as_instant(value) or value) > (as_instant(highest) or highest):
            highest = value
    return highest
