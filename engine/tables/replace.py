"""Replacing a slice of a table (the rows of some keys, or of a date range) with newly computed rows, in
one commit: the files holding selected rows are rewritten without them in parallel Ray tasks, and the
commit removes those files and adds their remainders and the new files."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import AddAction, RemoveAction, Transaction

from engine.arrow import unify
from engine.config import StorageSettings
from engine.metrics import commit_timer
from engine.tables import delta
from engine.tables.delta_files import add_actions
from engine.tables.files import DataFile, RollingParquetWriter, opaque_columns


@dataclass(frozen=True)
class Slice:
    """The rows a replacement covers.

    Attributes:
        selector: an Arrow expression true for the rows being replaced.
        column: a column whose file statistics bound the slice, to skip files outside it.
        low: the smallest value of `column` in the slice.
        high: the largest value of `column` in the slice.
    """

    selector: pc.Expression
    column: str | None = None
    low: Any = None
    high: Any = None

    @classmethod
    def of_keys(cls, keys: pa.Table) -> Slice:
        """The rows whose key columns match a row of `keys`, bounded by the first key's range."""
        if keys.num_columns == 1:
            name = keys.column_names[0]
            values = pc.unique(keys.column(0).drop_null())
            bounds = pc.min_max(values)
            return cls(pc.field(name).isin(values), name, bounds["min"].as_py(), bounds["max"].as_py())
        struct = pc.make_struct(*[pc.field(n) for n in keys.column_names], field_names=keys.column_names)
        return cls(struct.isin(pa.StructArray.from_arrays(keys.columns, keys.column_names)))

    @classmethod
    def of_range(cls, column: str, low: Any, high: Any) -> Slice:
        """The rows whose `column` lies in [`low`, `high`]."""
        return cls((pc.field(column) >= low) & (pc.field(column) <= high), column, low, high)


@dataclass(frozen=True)
class Replacement:
    """What a replacement did.

    Attributes:
        version: the committed version.
        rows_removed: rows of the slice that were removed.
        files_rewritten: files that held rows of the slice.
        files_skipped: files their statistics showed to be outside the slice.
    """

    version: int
    rows_removed: int
    files_rewritten: int
    files_skipped: int


def replace_slice(
    uri: str,
    table: str,
    where: Slice,
    new_files: Sequence[DataFile],
    *,
    storage: StorageSettings,
    prefix: str,
    metadata: dict[str, Any],
    transaction: Transaction | None = None,
) -> Replacement:
    """Remove the rows of `where` and add `new_files` (already written under `uri`) in one commit.

    Raises:
        CommitConflict: another writer committed `transaction` first.
    """
    snapshot = DeltaTable(uri)
    delta.ensure_not_committed(snapshot, transaction)
    candidates, skipped = _candidates(snapshot, where)
    schema = pa.schema(snapshot.schema().to_arrow())
    opaque = opaque_columns(snapshot.metadata().configuration, schema.names)
    rewrites = ray.get([_without_slice.remote(uri, path, schema, where.selector, storage, prefix, opaque)
                        for path in candidates])
    touched = [(path, result) for path, result in zip(candidates, rewrites) if result is not None]
    actions = add_actions(snapshot)
    sizes = dict(zip(actions.column("path").to_pylist(), actions.column("size_bytes").to_pylist()))
    now = int(time.time() * 1000)
    removes = [RemoveAction(path, True, now, sizes[path]) for path, _ in touched]
    kept = [file for _, (files, _) in touched for file in files]
    adds = [AddAction(f.path, f.size, {}, f.modification_time, True, f.stats) for f in [*kept, *new_files]]
    new_schema = unify([schema, *[f.schema for f in new_files]])
    delta.add_missing_columns(snapshot, new_schema, metadata)
    try:
        with commit_timer("replace"):
            snapshot.create_write_transaction([*adds, *removes], "append", new_schema,
                                              commit_properties=delta.commit_metadata(metadata, transaction))
    except CommitFailedError as err:
        if transaction is not None and "Concurrent transaction" in str(err):
            raise delta.conflict(uri, transaction) from err
        raise
    return Replacement(DeltaTable(uri).version(), sum(removed for _, (_, removed) in touched), len(touched), skipped)


def _candidates(snapshot: DeltaTable, where: Slice) -> tuple[list[str], int]:
    """Files that may hold rows of the slice, and how many the statistics excluded."""
    actions = add_actions(snapshot)
    paths = actions.column("path").to_pylist()
    if where.column is None or f"min.{where.column}" not in actions.column_names:
        return paths, 0
    lows, highs = actions.column(f"min.{where.column}").to_pylist(), actions.column(f"max.{where.column}").to_pylist()
    keep = [p for p, lo, hi in zip(paths, lows, highs)
            if lo is None or hi is None or not (hi < where.low or lo > where.high)]
    return keep, len(paths) - len(keep)


@ray.remote
def _without_slice(
    uri: str, path: str, schema: pa.Schema, selector: pc.Expression, storage: StorageSettings, prefix: str,
    opaque: frozenset[str],
) -> tuple[list[DataFile], int] | None:
    """The file rewritten without the slice's rows, and how many it held; None when it held none."""
    rows = pads.dataset(f"{uri}/{path}", schema=schema, format="parquet").to_table()
    return remainder(rows, selector, RollingParquetWriter(uri, storage, prefix, opaque))


def remainder(rows: pa.Table, selector: pc.Expression, writer: RollingParquetWriter) -> tuple[list[DataFile], int] | None:
    """`rows` without those `selector` selects, written by `writer`, and how many it selected; None (nothing
    written) when it selects none."""
    mask = pc.fill_null(pads.dataset(rows).to_table(columns={"selected": selector}).column("selected"), False)
    selected = pc.sum(mask).as_py() or 0
    if selected == 0:
        return None
    writer.write(rows.filter(pc.invert(mask)))
    return writer.close(), selected
