"""Merges by key into a Delta table through deltalake's merge, and what every merge path shares: the latest
change per key, the delete flag and the outcome."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError
from deltalake.table import TableMerger
from deltalake.transaction import CommitProperties, Transaction

from engine.arrow import to_storage
from engine.errors import TableFailed
from engine.kinds import Merge
from engine.metrics import commit_timer
from engine.tables.delta import add_missing_columns, commit_metadata, conflict, ensure_not_committed, table_exists

DELETE_FLAG = "__medallion_delete"


@dataclass(frozen=True)
class MergeOutcome:
    """What a merge did.

    Attributes:
        version: the table version the merge committed.
        duplicates: incoming rows dropped because a later change of the same key came in the same batch.
        metrics: deltalake's merge metrics (rows inserted, updated, deleted, ...).
    """

    version: int
    duplicates: int
    metrics: dict[str, Any]


def merge_changes(
    uri: str,
    changes: pa.Table,
    kind: Merge,
    *,
    metadata: dict[str, Any],
    transaction: Transaction | None = None,
) -> MergeOutcome:
    """Apply `changes` to the table by key: the latest change per key wins, deletes remove the key.

    A change applies only when its `sequence_by` value is at least the stored one, so out-of-order
    changes never overwrite newer ones. Columns the table lacks are added. The merge commit carries
    `transaction`.

    Raises:
        CommitConflict: another writer committed `transaction` first.
    """
    latest = latest_per_key(changes, kind)
    duplicates = changes.num_rows - latest.num_rows
    properties = commit_metadata(metadata, transaction)
    if not table_exists(uri):
        rows = latest.filter(pc.invert(latest[DELETE_FLAG])) if kind.delete_when else latest
        with commit_timer("create"):
            write_deltalake(uri, to_storage(rows.drop_columns([c for c in [DELETE_FLAG] if c in rows.column_names])),
                            mode="error", commit_properties=properties)
        return MergeOutcome(0, duplicates, {"num_target_rows_inserted": rows.num_rows})
    table = DeltaTable(uri)
    ensure_not_committed(table, transaction)
    source = align_with_table(table, to_storage(latest), metadata, steering=[DELETE_FLAG])
    table = DeltaTable(uri)
    ensure_not_committed(table, transaction)
    metrics = _merge_into(table, source, kind, properties)
    return MergeOutcome(DeltaTable(uri).version(), duplicates, metrics)


def align_with_table(
    table: DeltaTable, source: pa.Table, metadata: dict[str, Any], steering: Sequence[str] = ()
) -> pa.Table:
    """`source` with the table's columns it lacks added as nulls; columns the table lacks (but the
    `steering` ones, which only direct the merge) are first added to the table (a metadata-only commit
    carrying `metadata` but its progress), because deltalake's schema-merging merge also fills new columns
    of rows it does not update."""
    target = pa.schema(table.schema().to_arrow())
    add_missing_columns(table, pa.schema([f for f in source.schema if f.name not in steering]), metadata)
    for target_field in target:
        if target_field.name not in source.column_names:
            source = source.append_column(target_field.name, pa.nulls(source.num_rows, type=target_field.type))
    return source


def latest_per_key(changes: pa.Table, kind: Merge) -> pa.Table:
    """One row per key, the last by `sequence_by`, with the delete flag computed and steering columns gone."""
    import polars as pl

    frame = pl.from_arrow(changes)
    assert isinstance(frame, pl.DataFrame)
    if kind.delete_when:
        frame = frame.with_columns(pl.sql_expr(kind.delete_when).fill_null(False).alias(DELETE_FLAG))
    frame = frame.drop([c for c in kind.except_columns if c in frame.columns])
    if kind.sequence_by:
        frame = frame.sort(kind.sequence_by, nulls_last=False, maintain_order=True)
    frame = frame.unique(subset=kind.keys, keep="last", maintain_order=True)
    return frame.to_arrow()


def latest_schema(schema: pa.Schema, kind: Merge) -> pa.Schema:
    """The columns changes of `schema` bring once reduced to the latest per key (`latest_per_key`), in storage
    types: the stored ones and, with `delete_when`, the delete flag."""
    return to_storage(latest_per_key(schema.empty_table(), kind)).schema


def _merge_into(table: DeltaTable, latest: pa.Table, kind: Merge, properties: CommitProperties) -> dict[str, Any]:
    on_keys = " AND ".join(f"t.`{k}` = s.`{k}`" for k in kind.keys)
    newer = f"s.`{kind.sequence_by}` >= t.`{kind.sequence_by}`" if kind.sequence_by else "TRUE"
    merger = table.merge(
        latest,
        predicate=on_keys,
        source_alias="s",
        target_alias="t",
        commit_properties=properties,
    )
    excluded = [DELETE_FLAG] if kind.delete_when else []
    if kind.delete_when:
        merger = merger.when_matched_delete(predicate=f"s.`{DELETE_FLAG}` AND {newer}")
        merger = merger.when_matched_update_all(predicate=f"NOT s.`{DELETE_FLAG}` AND {newer}",
                                                except_cols=excluded)
        merger = merger.when_not_matched_insert_all(predicate=f"NOT s.`{DELETE_FLAG}`", except_cols=excluded)
    else:
        merger = merger.when_matched_update_all(predicate=newer).when_not_matched_insert_all()
    return execute_merge(merger, table.table_uri, properties)


def execute_merge(merger: TableMerger, uri: str, properties: CommitProperties) -> dict[str, Any]:
    """Run a prepared merge; returns its metrics.

    Raises:
        CommitConflict: another writer committed the merge's application transaction first.
        TableFailed: the merge failed otherwise.
    """
    try:
        with commit_timer("merge"):
            return merger.execute()
    except CommitFailedError as err:
        transaction = (properties.app_transactions or [None])[0]
        if transaction is not None and "Concurrent transaction" in str(err):
            raise conflict(uri, transaction) from err
        raise TableFailed(f"merge into `{uri}` failed: {err}", path=uri) from err
    except Exception as err:
        raise TableFailed(f"merge into `{uri}` failed: {err}", path=uri) from err
