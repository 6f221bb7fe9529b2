"""The data files of a Delta table version as its log lists them, with their sizes and row counts, and whether
reading those files as they are gives the table's rows (`engine.tables.delta_read` reads them with Ray)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from deltalake import DeltaTable


@dataclass(frozen=True)
class DataFileEntry:
    """One data file of a table version, as the Delta log lists it."""

    uri: str
    size_bytes: int
    num_rows: int | None


def add_actions(table: DeltaTable) -> pa.Table:
    """The add actions of `table`'s version (one row per data file: path, size, statistics, partition values), as
    an Arrow table read from deltalake's stream (`pa.table` of it would import pandas to check its type)."""
    return pa.RecordBatchReader.from_stream(table.get_add_actions(flatten=True)).read_all()


def data_files(uri: str, table: DeltaTable) -> list[DataFileEntry]:
    """The data files of `table` (opened at the version to read), with their sizes and row counts."""
    actions = add_actions(table).select(["path", "size_bytes", "num_records"])
    return [DataFileEntry(f"{uri}/{a['path']}", a["size_bytes"], a["num_records"]) for a in actions.to_pylist()]


def readable_by_files(table: DeltaTable) -> bool:
    """Whether every row of `table` is in its data files as they are: no partition values kept in the log, no
    deletion vectors, no column mapping."""
    return not table.metadata().partition_columns and not table.protocol().reader_features
