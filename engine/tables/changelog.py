"""The change log a table keeps beside it: every change it was fed (SCD2) or the deletes it applied
(tombstones of a merge), so that late and replayed changes are applied exactly.

A change log is a Delta table under `<root>/_changes/<layer>/<name>`, appended once per run before the
table's own commit. Recording is idempotent (a change already logged, by key and sequence value, is not
logged again), so a run that died between the two commits is completed by the next run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.transaction import Transaction

from engine.arrow import to_storage
from engine.kinds import Merge
from engine.metrics import commit_timer
from engine.tables import delta

DELETED = "_deleted"
"""Column of the change log that flags a delete."""


def flag_deletes(changes: pa.Table, delete_when: str | None) -> pa.Table:
    """`changes` with the boolean column `_deleted` computed from the SQL predicate `delete_when`."""
    frame = pl.from_arrow(changes)
    assert isinstance(frame, pl.DataFrame)
    flag = pl.sql_expr(delete_when).fill_null(False) if delete_when else pl.lit(False)
    return frame.with_columns(flag.alias(DELETED)).to_arrow()


def read_for_keys(uri: str, table: str, keys: pa.Table) -> pa.Table | None:
    """The logged changes of the entities in `keys` (a table of key columns); None when nothing was
    ever logged. The log is scanned with a filter on each key column's values, so that only rows of those
    values are read into memory (and files and row groups whose statistics exclude them are skipped)."""
    if not delta.table_exists(uri):
        return None
    logged = pl.from_arrow(delta.read_keys(uri, table, keys))
    wanted = pl.from_arrow(keys).unique()
    assert isinstance(logged, pl.DataFrame) and isinstance(wanted, pl.DataFrame)
    return logged.join(wanted, on=keys.column_names, how="semi", nulls_equal=True).to_arrow()


def append(uri: str, rows: pa.Table, *, metadata: dict[str, Any], transaction: Transaction | None = None) -> None:
    """Append `rows` (in storage types) to the log in one commit, creating it; nothing when there are none."""
    if rows.num_rows == 0:
        return
    target: str | DeltaTable = DeltaTable(uri) if delta.table_exists(uri) else uri
    with commit_timer("changelog"):
        write_deltalake(target, rows, mode="append", schema_mode="merge",
                        commit_properties=delta.commit_metadata(metadata, transaction))


def not_logged(changes: pa.Table, logged: pa.Table | None, identity: Sequence[str]) -> pa.Table:
    """`changes` (in storage types) without those `logged` holds by the `identity` columns, one per identity (the
    last)."""
    incoming = pl.from_arrow(to_storage(changes))
    assert isinstance(incoming, pl.DataFrame)
    incoming = incoming.unique(subset=list(identity), keep="last", maintain_order=True)
    if logged is not None and logged.num_rows:
        done = pl.from_arrow(logged.select(list(identity)))
        assert isinstance(done, pl.DataFrame)
        incoming = incoming.join(done.cast(dict(incoming.select(identity).schema)), on=list(identity),
                                 how="anti", nulls_equal=True)
    return to_storage(incoming.to_arrow())


def without_superseded(uri: str, table: str, changes: pa.Table, kind: Merge) -> tuple[pa.Table, pa.Table]:
    """For a `Merge` with `delete_when` and `sequence_by`, whose log at `uri` keeps the deletes it applied: the
    `changes` without those older than a delete of their key (logged before, or among `changes`), and the deletes
    among `changes` not logged yet, to log before the merge commits. Only the log's rows of the changes' keys are
    read."""
    assert kind.delete_when and kind.sequence_by
    identity = [*kind.keys, kind.sequence_by]
    flagged = flag_deletes(changes, kind.delete_when)
    deletes = flagged.filter(flagged.column(DELETED)).select(identity)
    logged = read_for_keys(uri, table, flagged.select(kind.keys))
    to_log = not_logged(deletes, logged, identity)
    tombstones = pa.concat_tables([*([logged.select(identity)] if logged is not None else []), to_log],
                                  promote_options="permissive")
    kept = drop_superseded(flagged, tombstones, kind.keys, kind.sequence_by)
    return kept.drop_columns([DELETED]), to_log


def drop_superseded(changes: pa.Table, tombstones: pa.Table | None, keys: Sequence[str], sequence_by: str) -> pa.Table:
    """`changes` without the non-delete changes older than a logged delete of the same key, which would
    otherwise bring a deleted entity back."""
    if tombstones is None or tombstones.num_rows == 0:
        return changes
    frame = pl.from_arrow(changes)
    latest_delete = pl.from_arrow(tombstones).group_by(list(keys)).agg(pl.col(sequence_by).max().alias("_deleted_at"))
    assert isinstance(frame, pl.DataFrame)
    types = dict(frame.select([*keys, sequence_by]).schema) | {sequence_by: frame.schema[sequence_by]}
    latest_delete = latest_delete.rename({"_deleted_at": sequence_by}).cast(types).rename({sequence_by: "_deleted_at"})
    joined = frame.join(latest_delete, on=list(keys), how="left", nulls_equal=True)
    keep = pl.col(DELETED) | pl.col("_deleted_at").is_null() | (pl.col(sequence_by) >= pl.col("_deleted_at"))
    return joined.filter(keep).drop("_deleted_at").to_arrow()
