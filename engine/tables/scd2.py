"""Type 2 slowly changing dimensions: the history of each key rebuilt from its logged changes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import ray
from deltalake.transaction import Transaction

from engine.arrow import to_storage
from engine.config import StorageSettings
from engine.kinds import SCD2, Merge
from engine.names import DELTA
from engine.tables import changelog, delta_merge
from engine.tables.bucket_tasks import split_by_bucket
from engine.tables.delta import commit_files
from engine.tables.delta_merge import MergeOutcome
from engine.tables.files import ChangeFiles, DataFile, RollingParquetWriter, discard_files, gathered
from engine.tables.formats import DeltaStore, KeyReader, TableStore

_ACTION = "__medallion_scd2_action"
SPLIT_BYTES = 128 * 2**20
"""About how many bytes of staged changes one task splits by bucket, and one bucket holds."""


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
    changes: pa.Table | ChangeFiles,
    kind: SCD2,
    *,
    store: TableStore | None = None,
    metadata: dict[str, Any],
    transaction: Transaction | None = None,
    storage: StorageSettings | None = None,
    scratch: str | None = None,
) -> HistoryOutcome:
    """Log `changes`, rebuild the history of the keys they touch from their logged changes, and write the
    difference to the table (in `store`'s format, Delta when None; the log is a Delta table either way) in one
    commit carrying `transaction`: a merge on the version key (keys and `valid_from`) that upserts the new and
    changed version rows and deletes those that no longer exist.

    Changes staged in files (`ChangeFiles`) are handled by Ray tasks: split by hash bucket of the key, each
    bucket's history rebuilt and compared with its version rows in a task that writes the changes to log and the
    difference as files (the difference under `scratch`), the log committed here, then the difference merged into
    the table (on Delta by one task running deltalake's merge, on Iceberg by the store's merge of staged changes,
    in Ray tasks); this process holds file names, counts and object refs. Changes in memory are handled in this
    process.

    Raises:
        CommitConflict: another writer committed `transaction` first.
    """
    store = store or DeltaStore()
    if isinstance(changes, ChangeFiles) and scratch is not None:
        return _apply_in_tasks(uri, log_uri, table, changes, kind, store=store, metadata=metadata,
                               transaction=transaction, storage=storage or StorageSettings(), scratch=scratch)
    rows = changes.read() if isinstance(changes, ChangeFiles) else changes
    diff = _difference(uri, log_uri, table, rows, kind, store)
    changelog.append(log_uri, diff.to_log, metadata=metadata)
    if diff.unchanged:
        return HistoryOutcome(None, diff.to_log.num_rows, 0, 0)
    outcome = store.merge_local(uri, table, diff.source(), version_merge(kind), metadata=metadata, transaction=transaction)
    return HistoryOutcome(outcome.version, diff.to_log.num_rows, diff.upserts.height, diff.removed.height)


def version_merge(kind: SCD2) -> Merge:
    """The merge that writes a history difference (`_Difference.source`): on the version key (keys and
    `valid_from`), rows flagged removed deleted."""
    return Merge(keys=[*kind.keys, "valid_from"], delete_when=f'"{_ACTION}"', except_columns=[_ACTION])


@dataclass(frozen=True)
class _Difference:
    """What a batch of changes does to an SCD2 table: the changes to log, and the version rows to upsert and to
    remove."""

    to_log: pa.Table
    upserts: pl.DataFrame
    removed: pl.DataFrame

    @property
    def unchanged(self) -> bool:
        return self.upserts.height == 0 and self.removed.height == 0

    def source(self) -> pa.Table:
        """The rows of the merge that applies the difference, removed ones flagged."""
        return pl.concat([self.upserts.with_columns(pl.lit(False).alias(_ACTION)),
                          self.removed.with_columns(pl.lit(True).alias(_ACTION))]).to_arrow()


def _difference(uri: str, log_uri: str, table: str, changes: pa.Table, kind: SCD2,
                store: KeyReader) -> _Difference:
    """The changes not logged yet, and the version rows of the keys the `changes` touch that the history rebuilt
    from every logged change of those keys (and the new ones) adds, changes or no longer has. Reads the log's and
    the table's rows of those keys only."""
    flagged = changelog.flag_deletes(changes, kind.delete_when)
    flagged = flagged.drop_columns([c for c in kind.except_columns if c in flagged.column_names])
    touched = flagged.select(kind.keys)
    logged = changelog.read_for_keys(log_uri, table, touched)
    to_log = changelog.not_logged(flagged, logged, [*kind.keys, kind.sequence_by])
    history = pa.concat_tables([*([logged] if logged is not None else []), to_log], promote_options="permissive")
    new = pl.from_arrow(to_storage(build_history(history, kind)))
    assert isinstance(new, pl.DataFrame)
    old = _current_rows(uri, table, touched, store)
    if old is None:
        return _Difference(to_log, new, new.clear())
    old = old.with_columns([pl.lit(None).cast(new.schema[c]).alias(c) for c in new.columns if c not in old.columns])
    old = old.select(new.columns).cast(dict(new.schema))
    version_key = [*kind.keys, "valid_from"]
    return _Difference(to_log, new.join(old, on=new.columns, how="anti", nulls_equal=True),
                       old.join(new, on=version_key, how="anti", nulls_equal=True))


def _apply_in_tasks(uri: str, log_uri: str, table: str, changes: ChangeFiles, kind: SCD2, *, store: TableStore,
                    metadata: dict[str, Any], transaction: Transaction | None, storage: StorageSettings,
                    scratch: str) -> HistoryOutcome:
    """`apply_changes` of staged changes, by Ray tasks (see there)."""
    buckets = max(1, -(-changes.size // SPLIT_BYTES))
    counts, parts = split_by_bucket(changes, kind.keys, buckets, SPLIT_BYTES)
    prefix, reader = f"scd2-{uuid.uuid4().hex[:8]}", ray.put(store.key_reader(uri))
    results, failure = gathered([
        _bucket_difference.remote(uri, log_uri, table, kind, reader, storage, scratch, f"{prefix}-b{bucket}",
                                  *parts[bucket])
        for bucket in range(buckets) if counts[bucket]])
    logged = [file for files, _, _ in results for file in files]
    if failure is not None:
        discard_files(log_uri, logged)
        raise failure
    written = [file for _, files, _ in results for file in files]
    tallies = np.sum([tally for _, _, tally in results], axis=0)
    commit_files(log_uri, logged, mode="append", metadata=metadata)
    if not written:
        return HistoryOutcome(None, int(tallies[0]), 0, 0)
    difference = ChangeFiles(scratch, tuple(written))
    if store.name == DELTA:
        marker = None if transaction is None else (transaction.app_id, transaction.version, transaction.last_updated)
        merged, failure = gathered([_merge_difference.remote(uri, difference, version_merge(kind), metadata, marker)])
        if failure is not None:
            raise failure
        version = merged[0].version
    else:
        version = store.merge(uri, table, difference, version_merge(kind), metadata=metadata, transaction=transaction,
                              storage=storage, change_log=None).version
    return HistoryOutcome(version, int(tallies[0]), int(tallies[1]), int(tallies[2]))


@ray.remote(scheduling_strategy="SPREAD")
def _bucket_difference(uri: str, log_uri: str, table: str, kind: SCD2, reader: KeyReader, storage: StorageSettings,
                       scratch: str, prefix: str, *changes: pa.Table) -> tuple[list[DataFile], list[DataFile], list[int]]:
    """One bucket's `_difference` (the table's version rows of its keys read by `reader`): the changes to log
    written as files of the log, the merge source as files under `scratch`; with the counts logged, upserted and
    removed."""
    diff = _difference(uri, log_uri, table, pa.concat_tables(changes, promote_options="permissive"), kind, reader)
    log_writer = RollingParquetWriter(log_uri, storage, f"{prefix}-log")
    writer = RollingParquetWriter(scratch, storage, prefix)
    try:
        log_writer.write(diff.to_log)
        if not diff.unchanged:
            writer.write(to_storage(diff.source()))
        return log_writer.close(), writer.close(), [diff.to_log.num_rows, diff.upserts.height, diff.removed.height]
    except BaseException:
        discard_files(log_uri, log_writer.close())
        discard_files(scratch, writer.close())
        raise


@ray.remote
def _merge_difference(uri: str, source: ChangeFiles, merge: Merge, metadata: dict[str, Any],
                      marker: tuple[str, int, int | None] | None) -> MergeOutcome:
    """deltalake's merge of a history difference staged in files, in a task; `marker`: the fields of the commit's
    application transaction (deltalake's `Transaction` does not pickle)."""
    transaction = None if marker is None else Transaction(*marker)
    return delta_merge.merge_changes(uri, source.read(), merge, metadata=metadata, transaction=transaction)


def _current_rows(uri: str, table: str, keys: pa.Table, store: KeyReader) -> pl.DataFrame | None:
    """The table's version rows of the entities in `keys`; None when the table does not exist."""
    if not store.table_exists(uri):
        return None
    rows = pl.from_arrow(store.read_keys(uri, table, keys))
    wanted = pl.from_arrow(keys).unique()
    assert isinstance(rows, pl.DataFrame) and isinstance(wanted, pl.DataFrame)
    return rows.join(wanted.cast(dict(rows.select(keys.column_names).schema)), on=keys.column_names, how="semi",
                     nulls_equal=True)
