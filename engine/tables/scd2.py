"""Type 2 slowly changing dimensions: the history of each key rebuilt from its logged changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake.transaction import Transaction

from engine.arrow import to_storage
from engine.kinds import SCD2, Merge
from engine.tables import changelog
from engine.tables.formats import DeltaStore, TableStore

_ACTION = "__medallion_scd2_action"


@dataclass(frozen=True)
class HistoryOutcome:
    """What applying a batch of changes to an SCD2 table did.

    Attributes:
        version: the table version committed, None when the history did not change.
        changes_logged: incoming changes not seen before.
        rows_upserted: version rows written (opened, closed or updated in place).
        rows_removed: version rows that no longer exist (a late change rewrote the key's history).
    """

    version: int | None
    changes_logged: int
    rows_upserted: int
    rows_removed: int


def build_history(changes: pa.Table, kind: SCD2) -> pa.Table:
    """The versions of every key in `changes` (flagged with `_deleted`, one per key and sequence value).

    A version opens at a change whose tracked columns differ from the previous change of the key, or that
    follows a delete; it carries the latest untracked values seen while it was open; it closes at the
    change that opens the next version or at a delete.
    """
    frame = pl.from_arrow(changes)
    assert isinstance(frame, pl.DataFrame)
    keys, sequence = kind.keys, kind.sequence_by
    stored = [c for c in frame.columns if c not in (changelog.DELETED, *kind.except_columns)]
    tracked = kind.tracked_columns or [c for c in stored if c not in (*keys, sequence)]
    tracked = [c for c in tracked if c in frame.columns]
    deleted = pl.col(changelog.DELETED)
    state = pl.when(deleted).then(None).otherwise(pl.struct(tracked).hash()) if tracked else \
        pl.when(deleted).then(None).otherwise(pl.lit(0, pl.UInt64))
    frame = frame.sort([*keys, sequence], nulls_last=False, maintain_order=True).with_columns(state.alias("_state"))
    previous = pl.col("_state").shift(1).over(keys)
    opens = deleted.not_() & (previous.is_null() | (pl.col("_state") != previous))
    frame = frame.with_columns((opens | deleted).cast(pl.UInt32).cum_sum().over(keys).alias("_version"))
    versions = (
        frame.group_by([*keys, "_version"], maintain_order=True)
        .agg(pl.col(sequence).first().alias("valid_from"), deleted.first().alias("_closing"),
             *[pl.col(c).last() for c in stored if c not in keys])
        .sort([*keys, "valid_from"], nulls_last=False)
        .with_columns(pl.col("valid_from").shift(-1).over(keys).alias("valid_to"))
        .filter(pl.col("_closing").not_())
        .with_columns(pl.col("valid_to").is_null().alias("is_current"))
    )
    return versions.select([*keys, *[c for c in stored if c not in keys], "valid_from", "valid_to",
                            "is_current"]).to_arrow()


def apply_changes(
    uri: str,
    log_uri: str,
    table: str,
    changes: pa.Table,
    kind: SCD2,
    *,
    store: TableStore | None = None,
    metadata: dict[str, Any],
    transaction: Transaction | None = None,
) -> HistoryOutcome:
    """Log `changes`, rebuild the history of the keys they touch from their logged changes, and write the
    difference to the table (in `store`'s format, Delta when None; the log is a Delta table either way) in one
    commit carrying `transaction`: a merge on the version key (keys and `valid_from`) that upserts the new and
    changed version rows and deletes those that no longer exist.

    Raises:
        CommitConflict: another writer committed `transaction` first.
    """
    store = store or DeltaStore()
    flagged = changelog.flag_deletes(changes, kind.delete_when)
    flagged = flagged.drop_columns([c for c in kind.except_columns if c in flagged.column_names])
    identity = [*kind.keys, kind.sequence_by]
    logged = changelog.record(log_uri, table, flagged, identity, metadata=metadata)
    touched = flagged.select(kind.keys)
    history = changelog.read_for_keys(log_uri, table, touched)
    new = pl.from_arrow(to_storage(build_history(history, kind))) if history is not None else None
    assert isinstance(new, pl.DataFrame)
    old = _current_rows(uri, table, touched, store)
    version_key = [*kind.keys, "valid_from"]
    if old is None:
        if new.height == 0:
            return HistoryOutcome(None, logged, 0, 0)
        upserts, removed = new, new.clear()
    else:
        old = old.with_columns([pl.lit(None).cast(new.schema[c]).alias(c) for c in new.columns
                                if c not in old.columns])
        old = old.select(new.columns).cast(dict(new.schema))
        upserts = new.join(old, on=new.columns, how="anti", nulls_equal=True)
        removed = old.join(new, on=version_key, how="anti", nulls_equal=True)
        if upserts.height == 0 and removed.height == 0:
            return HistoryOutcome(None, logged, 0, 0)
    source = pl.concat([upserts.with_columns(pl.lit(False).alias(_ACTION)),
                        removed.with_columns(pl.lit(True).alias(_ACTION))])
    merge = Merge(keys=version_key, delete_when=f'"{_ACTION}"', except_columns=[_ACTION])
    outcome = store.merge_local(uri, table, source.to_arrow(), merge, metadata=metadata, transaction=transaction)
    return HistoryOutcome(outcome.version, logged, upserts.height, removed.height)


def _current_rows(uri: str, table: str, keys: pa.Table, store: TableStore) -> pl.DataFrame | None:
    """The table's version rows of the entities in `keys`; None when the table does not exist."""
    if not store.table_exists(uri):
        return None
    rows = pl.from_arrow(store.read_keys(uri, table, keys))
    wanted = pl.from_arrow(keys).unique()
    assert isinstance(rows, pl.DataFrame) and isinstance(wanted, pl.DataFrame)
    return rows.join(wanted.cast(dict(rows.select(keys.column_names).schema)), on=keys.column_names, how="semi",
                     nulls_equal=True)
