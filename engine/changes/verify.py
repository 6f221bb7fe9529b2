"""Whether a rebuild left a table's existing columns as they were: the check behind a non-breaking change.

Two versions hold the same rows in the columns they share when they have the same columns' types, the same
row count and the same multiset of row hashes (`keyhash.key_hash` over the shared columns, summed modulo 2^64).
Floating-point values are hashed as float32, so sums that differ in their last bits from one partitioning to
the next still compare equal. Each read task hashes its own rows; the driver adds one number per block.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.keyhash import key_hash
from engine.tables.formats import TableStore


def added_columns(before: pa.Schema, after: pa.Schema) -> tuple[str, ...] | None:
    """The columns `after` adds to `before`; None when `after` drops a column or changes a type."""
    for column in before:
        if column.name not in after.names or after.field(column.name).type != column.type:
            return None
    return tuple(name for name in after.names if name not in before.names)


def same_rows(store: TableStore, uri: str, table: str, before: int, after: int, columns: list[str],
              ray_options: dict[str, Any] | None = None) -> bool:
    """Whether versions `before` and `after` of the table hold the same rows in `columns`."""
    if store.row_count(uri, table, before) != store.row_count(uri, table, after):
        return False
    return _row_hash_sum(store, uri, table, before, columns, ray_options) == _row_hash_sum(
        store, uri, table, after, columns, ray_options)


def _row_hash_sum(store: TableStore, uri: str, table: str, version: int, columns: list[str],
                  ray_options: dict[str, Any] | None) -> int:
    dataset = store.read_dataset(uri, table, version, ray_options).select_columns(columns)
    sums = dataset.map_batches(_block_sum, batch_format="pyarrow", fn_kwargs={"columns": columns}).take_all()
    return sum(int(row["sum"]) for row in sums) % 2**64


def _block_sum(batch: pa.Table, columns: list[str]) -> pa.Table:
    comparable = pa.table({name: _comparable(batch.column(name)) for name in columns})
    with np.errstate(over="ignore"):
        total = int(key_hash(comparable, columns).sum(dtype=np.uint64)) if batch.num_rows else 0
    return pa.table({"sum": pa.array([total], pa.uint64())})


def _comparable(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.cast(column, pa.float32()) if pa.types.is_floating(column.type) else column
