"""The Ray tasks of a distributed merge (`engine.tables.distributed_merge`): changes split by bucket, files outside
the bucket layout split by bucket, and one bucket's changes applied to its stored rows. Splitting staged changes by
bucket, reducing a bucket's changes to the latest per key and matching them with stored rows serve the Iceberg merge
(`engine.tables.iceberg.merge`) and SCD2 (`engine.tables.scd2`) too."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from engine.arrow import to_storage
from engine.config import StorageSettings
from engine.keyhash import bucket_of
from engine.kinds import Merge
from engine.storage import filesystem_of
from engine.tables import changelog
from engine.tables.delta_merge import DELETE_FLAG, latest_per_key
from engine.tables.files import ChangeFiles, DataFile, RollingParquetWriter, discard_files

_SOURCE_ROW = "__medallion_source_row"
_SOURCE_SEQUENCE = "__medallion_source_sequence"
_STORED_ROW = "__medallion_stored_row"
_SPLIT_ROWS = 1 << 20
SPLIT_BYTES = 128 * 2**20
"""About how many bytes of staged changes one task splits by bucket."""


@ray.remote(scheduling_strategy="SPREAD")
def rewrite_bucket(
    uri: str,
    prefix: str,
    storage: StorageSettings,
    opaque: frozenset[str],
    schema: pa.Schema,
    kind: Merge,
    paths: list[str],
    change_log: str | None,
    table: str,
    changed: int,
    *pieces: pa.Table,
) -> tuple[list[DataFile], dict[str, int], list[DataFile]]:
    """Apply one bucket's changes (the first `changed` of `pieces`) to the bucket's stored rows (its files at
    `paths` plus the other `pieces`, of files outside the layout), streaming those batch by batch, and write the
    bucket's new files.

    With a `change_log` (a `Merge` that logs its deletes), changes older than a delete of their key are dropped
    first, and the bucket's deletes not logged yet are written as files of the log, which the caller commits
    before the table. Returns the table's files, the tallies, and the log's files."""
    started = time.monotonic()
    writer = RollingParquetWriter(uri, storage, prefix, opaque)
    log_writer = RollingParquetWriter(change_log or uri, storage, f"{prefix}-log")
    scan_s = 0.0
    try:
        latest = latest_changes(pieces[:changed], kind, change_log, table, log_writer)
        matcher = Matcher(conform(latest, schema), schema, kind)
        for batch in _stored_batches(uri, paths, pieces[changed:], schema):
            batch_started = time.monotonic()
            kept = matcher.apply(batch)
            scan_s += time.monotonic() - batch_started
            writer.write(kept)
        writer.write(matcher.replacements_and_inserts())
        files, logged = writer.close(), log_writer.close()
    except BaseException:
        discard_files(uri, writer.close())
        discard_files(change_log or uri, log_writer.close())
        raise
    rewrite_s = time.monotonic() - started - scan_s
    return files, matcher.counts | {"scan_time_ms": int(scan_s * 1000), "rewrite_time_ms": int(rewrite_s * 1000)}, logged


def latest_changes(pieces: Sequence[pa.Table], kind: Merge, change_log: str | None, table: str,
                   log_writer: RollingParquetWriter) -> pa.Table:
    """One bucket's changes (`pieces`) reduced to the latest per key, in storage types. With a `change_log` (a `Merge`
    that logs its deletes), the changes older than a delete of their key are dropped first, and the deletes not
    logged yet are written by `log_writer`, for the caller to commit to the log before the table."""
    changes = pa.concat_tables(pieces, promote_options="permissive")
    if change_log is not None:
        changes, deletes = changelog.without_superseded(change_log, table, changes, kind)
        log_writer.write(deletes)
    return to_storage(latest_per_key(changes, kind))


def without_views(changes: pa.Table) -> pa.Table:
    """`changes` with view columns as large strings and binaries, which Arrow can take rows of and Ray can pass
    to a task."""
    views = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}
    return changes.cast(pa.schema([f.with_type(views.get(f.type, f.type)) for f in changes.schema]))


@ray.remote(scheduling_strategy="SPREAD")
def split_changes(changes: ChangeFiles | pa.Table, keys: list[str], buckets: int) -> tuple[Any, ...]:
    """The rows of a group of staged changes (or of changes in memory, `without_views`) split by bucket, hashed on
    their keys in storage types (as the stored keys are), after the count of rows of every bucket."""
    rows = changes.read() if isinstance(changes, ChangeFiles) else changes
    parts = split_rows(rows, bucket_of(to_storage(rows.select(keys)), keys, buckets), buckets)
    return (np.array([part.num_rows for part in parts], np.int64), *parts)


def split_by_bucket(changes: ChangeFiles | pa.Table, keys: Sequence[str], buckets: int,
                    per_task: int) -> tuple[np.ndarray, list[list[ray.ObjectRef]]]:
    """The count of changes of every bucket, and the refs of every bucket's pieces, split by Ray tasks of about
    `per_task` bytes of staged changes each (changes in memory, `without_views`, by one task); this process handles
    the counts and refs only."""
    groups = changes.groups(per_task) if isinstance(changes, ChangeFiles) else [changes]
    split = split_changes.options(num_returns=buckets + 1)
    refs = [split.remote(group, list(keys), buckets) for group in groups]
    counts = np.sum(ray.get([parts[0] for parts in refs]), axis=0)
    return counts, [[parts[b + 1] for parts in refs] for b in range(buckets)]


def conform(latest: pa.Table, schema: pa.Schema) -> pa.Table:
    """`latest` in the table's columns and types (nulls for the columns it lacks), the delete flag last."""
    columns = [latest.column(f.name).cast(f.type) if f.name in latest.column_names else pa.nulls(latest.num_rows, f.type)
               for f in schema]
    flag = [pa.field(DELETE_FLAG, pa.bool_())] if DELETE_FLAG in latest.column_names else []
    return pa.Table.from_arrays([*columns, *(latest.column(DELETE_FLAG) for _ in flag)], schema=pa.schema([*schema, *flag]))


class Matcher:
    """Joins stored batches with one bucket's changes (one row per key, `conform`ed) and tallies what each change
    did."""

    def __init__(self, changes: pa.Table, schema: pa.Schema, kind: Merge) -> None:
        self.keys = list(kind.keys)
        self.sequence = kind.sequence_by
        self.rows = changes.select(schema.names)
        self.deletes = (changes.column(DELETE_FLAG).to_numpy(zero_copy_only=False).astype(bool)
                        if DELETE_FLAG in changes.column_names else np.zeros(changes.num_rows, bool))
        index = changes.select(self.keys).append_column(_SOURCE_ROW, pa.array(np.arange(changes.num_rows)))
        if self.sequence:
            index = index.append_column(_SOURCE_SEQUENCE, changes.column(self.sequence))
        self.index = pl.DataFrame(pl.from_arrow(index))
        self.matched = np.zeros(changes.num_rows, bool)
        self.replacing: list[np.ndarray] = []
        self.counts = {"source_rows": changes.num_rows, "inserted": 0, "updated": 0, "deleted": 0, "copied": 0}

    def apply(self, batch: pa.Table) -> pa.Table:
        """The stored rows of `batch` that stay as they are; the changes that replace the others are noted."""
        stored = pl.DataFrame(pl.from_arrow(batch.select([*self.keys, *([self.sequence] if self.sequence else [])])))
        pairs = stored.with_row_index(_STORED_ROW).join(self.index, on=self.keys, how="inner")
        sources = pairs[_SOURCE_ROW].to_numpy()
        self.matched[sources] = True
        changed = pairs[_STORED_ROW].to_numpy()
        if self.sequence:
            newer = pairs.select((pl.col(_SOURCE_SEQUENCE) >= pl.col(self.sequence)).fill_null(False))
            applies = newer.to_series().to_numpy()
            sources, changed = sources[applies], changed[applies]
        deleted = self.deletes[sources]
        self.replacing.append(sources[~deleted])
        keep = np.ones(batch.num_rows, bool)
        keep[changed] = False
        self.counts["updated"] += int((~deleted).sum())
        self.counts["deleted"] += int(deleted.sum())
        self.counts["copied"] += int(keep.sum())
        return batch.filter(pa.array(keep))

    def replacements(self, since: int = 0) -> pa.Table:
        """The changes that replace stored rows of the batches applied since the `since`-th."""
        return self.rows.take(pa.array(np.concatenate([np.empty(0, np.int64), *self.replacing[since:]]).astype(np.int64)))

    def mark_matched(self, indices: np.ndarray) -> None:
        """Note that the changes at `indices` matched stored rows elsewhere (other files of the table)."""
        self.matched[indices] = True

    def inserts(self) -> pa.Table:
        """The changes of keys no stored row holds that are not deletes."""
        inserts = np.flatnonzero(~self.matched & ~self.deletes)
        self.counts["inserted"] += len(inserts)
        return self.rows.take(pa.array(inserts.astype(np.int64)))

    def replacements_and_inserts(self) -> pa.Table:
        """The changes that replace stored rows, then the changes of new keys that are not deletes."""
        return pa.concat_tables([self.replacements(), self.inserts()])


def _stored_batches(uri: str, paths: list[str], pieces: Sequence[pa.Table], schema: pa.Schema) -> Iterator[pa.Table]:
    """A bucket's stored rows in the table's schema (columns a file lacks as nulls), batch by batch."""
    if paths:
        filesystem, root = filesystem_of(uri)
        dataset = pads.dataset([f"{root}/{p}" for p in paths], schema=schema, format="parquet", filesystem=filesystem)
        for batch in dataset.to_batches():
            if batch.num_rows:
                yield pa.Table.from_batches([batch])
    for piece in pieces:
        if piece.num_rows:
            yield piece


def row_group_chunks(uri: str, path: str) -> list[list[int]]:
    """The row groups of a data file, in consecutive runs of at least `_SPLIT_ROWS` rows (but the last)."""
    filesystem, root = filesystem_of(uri)
    metadata = pq.read_metadata(f"{root}/{path}", filesystem=filesystem)
    chunks: list[list[int]] = [[]]
    rows = 0
    for group in range(metadata.num_row_groups):
        if rows >= _SPLIT_ROWS:
            chunks.append([])
            rows = 0
        chunks[-1].append(group)
        rows += metadata.row_group(group).num_rows
    return chunks


@ray.remote(scheduling_strategy="SPREAD")
def split_file(
    uri: str, path: str, row_groups: list[int], schema: pa.Schema, keys: list[str], buckets: int
) -> tuple[pa.Table, ...] | pa.Table:
    """The rows of some row groups of one data file, in the table's schema, split by bucket."""
    filesystem, root = filesystem_of(uri)
    [fragment] = pads.dataset(f"{root}/{path}", schema=schema, format="parquet", filesystem=filesystem).get_fragments()
    table = fragment.subset(row_group_ids=row_groups).to_table(schema=schema)
    parts = split_rows(table, bucket_of(table, keys, buckets), buckets)
    return tuple(parts) if buckets > 1 else parts[0]


def split_rows(table: pa.Table, numbers: np.ndarray, buckets: int) -> list[pa.Table]:
    """`table`'s rows grouped by bucket `numbers`, one compact table per bucket, row order kept."""
    order = np.argsort(numbers, kind="stable")
    bounds = np.searchsorted(numbers[order], np.arange(buckets + 1))
    return [table.take(pa.array(order[bounds[b]:bounds[b + 1]])) for b in range(buckets)]
