"""Merges by key into an Iceberg table: the latest change per key applied copy-on-write in one snapshot.

Same semantics as `engine.tables.delta_merge.merge_changes` (see `engine.tables.iceberg.tables.IcebergTables.merge_changes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from engine.arrow import to_storage
from engine.kinds import Merge
from engine.tables.delta_merge import DELETE_FLAG
from engine.tables.iceberg.scan import scan_tasks
from engine.tables.iceberg.schema import evolve, plain, plain_schema

if TYPE_CHECKING:
    from pyiceberg.table import Transaction as IcebergTransaction

MATCH_FILTER_LIMIT = 10_000


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """`rows` with exactly the columns of `schema`, in its order and types (missing ones null)."""
    columns = [rows.column(f.name).cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


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


def merge_into(
    tx: IcebergTransaction,
    created: bool,
    latest: pa.Table,
    value_columns: list[str],
    kind: Merge,
    properties: dict[str, str],
) -> dict[str, Any]:
    """Stage the snapshot applying `latest` (one change per key) to the table of `tx`; returns the metrics."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files

    keys, sequence = list(kind.keys), kind.sequence_by
    if not created:
        evolve(tx, latest.select(value_columns).schema, drop_missing=False)
    target = plain_schema(tx.table_metadata.schema().as_arrow())
    types = {f.name: f.type for f in target}
    changes = pl.from_arrow(pa.Table.from_arrays(
        [c.cast(types[n]) if n in types else c for n, c in zip(latest.column_names, latest.columns)],
        names=latest.column_names))
    assert isinstance(changes, pl.DataFrame)
    if DELETE_FLAG not in changes.columns:
        changes = changes.with_columns(pl.lit(False).alias(DELETE_FLAG))
    candidates = [] if created else scan_tasks(tx, match_filter(latest, keys))
    io = tx._table.io
    scan = ArrowScan(tx.table_metadata, io, tx.table_metadata.schema(), AlwaysTrue())
    stored_parts = []
    for index, task in enumerate(candidates):
        rows = plain(scan.to_table([task]))
        frame = pl.from_arrow(rows)
        assert isinstance(frame, pl.DataFrame)
        stored_parts.append(frame.with_columns(pl.lit(index, pl.Int64).alias("__file")))
    stored = pl.concat(stored_parts, how="vertical_relaxed") if stored_parts else None
    if stored is not None:
        probe = stored.select([*keys, *([sequence] if sequence else []), "__file"]).with_columns(
            pl.lit(True).alias("__matched"))
        if sequence:
            probe = probe.rename({sequence: "__stored_sequence"})
        joined = changes.join(probe, on=keys, how="left")
    else:
        joined = changes.with_columns(pl.lit(None, pl.Int64).alias("__file"), pl.lit(None, pl.Boolean).alias("__matched"))
    matched = pl.col("__matched").fill_null(False)
    if sequence and stored is not None:
        newer = (pl.col(sequence) >= pl.col("__stored_sequence")).fill_null(False)
        applies = matched.not_() | newer
    else:
        applies = pl.lit(True)
    joined = joined.with_columns(matched.alias("__matched"), applies.alias("__applies"))
    deleted = pl.col(DELETE_FLAG).fill_null(False)
    replaced = joined.filter(pl.col("__matched") & pl.col("__applies"))
    new_rows = joined.filter(pl.col("__applies") & deleted.not_()).select(value_columns)
    metrics = {
        "num_source_rows": changes.height,
        "num_target_rows_inserted": joined.filter(pl.col("__matched").not_() & pl.col("__applies") & deleted.not_()).height,
        "num_target_rows_updated": replaced.filter(deleted.not_()).height,
        "num_target_rows_deleted": replaced.filter(deleted).height,
    }
    rewritten = sorted(set(replaced["__file"].drop_nulls().to_list()))
    outputs = []
    if stored is not None and rewritten:
        kept = stored.filter(pl.col("__file").is_in(rewritten)).join(replaced.select(keys), on=keys, how="anti")
        outputs.append(kept.drop("__file").to_arrow())
    if new_rows.height:
        outputs.append(new_rows.to_arrow())
    written = [_conform(to_storage(o), target) for o in outputs if o.num_rows]
    producer = (tx.update_snapshot(snapshot_properties=properties).overwrite() if rewritten
                else tx.update_snapshot(snapshot_properties=properties).fast_append())
    added = 0
    with producer as update:
        for index in rewritten:
            update.delete_data_file(candidates[index].file)
        if written:
            rows = pa.concat_tables(written)
            for data_file in _dataframe_to_data_files(tx.table_metadata, rows, io, write_uuid=update.commit_uuid):
                update.append_data_file(data_file)
                added += 1
    metrics |= {"num_target_files_removed": len(rewritten), "num_target_files_added": added,
                "num_target_files_scanned": len(candidates)}
    return metrics
