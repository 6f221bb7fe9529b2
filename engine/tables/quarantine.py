"""Rejected rows recorded once: a table rebuilt from inputs it had already consumed (after a restore, an
erasure or a forced run) rejects the same rows again, and its quarantine must not record them twice."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import ray

from engine.arrow import to_storage, unify
from engine.columns import RUN_ID, SOURCE_FILE
from engine.config import StorageSettings
from engine.storage import parquet_dataset
from engine.tables import delta
from engine.tables.files import DataFile, RollingParquetWriter, discard_files

COPY = "__medallion_copy"


def unrecorded(
    uri: str, staged: Sequence[DataFile], storage: StorageSettings, prefix: str, opaque: frozenset[str]
) -> list[DataFile]:
    """The staged quarantine files of the quarantine table at `uri`, without the rows it already records.
    The rows are compared in a Ray task: only file descriptions reach the caller.

    Rows are compared on every column but the rejecting run's id, copies counted: a row staged three times
    that the table records once is kept twice. Files left whole are returned as they are; the others are
    rewritten (as `prefix`-named files, keeping `opaque` columns out of their statistics) or deleted. Rows
    that cannot be compared whole (a nested column, a column the table lacks or types differently) are all
    kept.
    """
    if not staged or not delta.table_exists(uri):
        return list(staged)
    return ray.get(_unrecorded_files.remote(uri, list(staged), storage, prefix, opaque))


@ray.remote(num_cpus=1)
def _unrecorded_files(
    uri: str, staged: list[DataFile], storage: StorageSettings, prefix: str, opaque: frozenset[str]
) -> list[DataFile]:
    schema = unify([f.schema for f in staged])
    rejected = to_storage(parquet_dataset([f"{uri}/{f.path}" for f in staged], schema=schema,
                                          format="parquet").to_table())
    recorded = to_storage(_recorded(uri, rejected))
    columns = [name for name in rejected.column_names if name != RUN_ID]
    if not _comparable(rejected.schema, recorded.schema, columns):
        return list(staged)
    new = _numbered(rejected, columns)
    old = _numbered(recorded.select(columns), columns)
    fresh = new.join(old, on=[*columns, COPY], how="anti", nulls_equal=True)
    if fresh.height == rejected.num_rows:
        return list(staged)
    discard_files(uri, staged)
    if fresh.height == 0:
        return []
    writer = RollingParquetWriter(uri, storage, prefix, opaque)
    writer.write(fresh.drop(COPY).to_arrow().cast(rejected.schema))
    return writer.close()


def _recorded(uri: str, rejected: pa.Table) -> pa.Table:
    """The quarantine's rows that may equal some of `rejected`: those of the same landing files when the rows
    carry their source file."""
    dataset = delta.rows_dataset(uri, uri)
    if SOURCE_FILE in rejected.column_names and SOURCE_FILE in dataset.schema.names:
        sources = pc.unique(rejected.column(SOURCE_FILE).drop_null())
        return dataset.to_table(filter=pc.field(SOURCE_FILE).isin(sources))
    return dataset.to_table()


def _comparable(rejected: pa.Schema, recorded: pa.Schema, columns: list[str]) -> bool:
    """Whether rows of the two schemas can be compared on `columns`: flat, present in both, of one type."""
    return all(name in recorded.names and not pa.types.is_nested(rejected.field(name).type)
               and rejected.field(name).type == recorded.field(name).type for name in columns)


def _numbered(rows: pa.Table, columns: list[str]) -> pl.DataFrame:
    """`rows` with the copy number of each row among the rows equal to it on `columns` (0, 1, ...)."""
    frame = pl.from_arrow(rows)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(pl.int_range(pl.len()).over(columns).alias(COPY))
