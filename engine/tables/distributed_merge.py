"""Merges by key that scale past one process: hash buckets of a Delta table rewritten in parallel Ray tasks.

A merged table is a plain Delta table whose data files each hold the rows of one hash bucket of the key.
The bucket, the bucket count and a tag of the key columns and hash scheme are part of every file name
(`part-b00007of00016-k1a2b3c4d-<uuid>.zstd.parquet`), so any Delta reader reads the table as usual and the
layout is committed atomically with the data it describes. Ray tasks (`engine.tables.bucket_tasks`) split the
staged changes by bucket; one Ray task per touched bucket (spread over the nodes) drops the changes a logged
delete supersedes, reduces them to the latest per key, streams the bucket's files through them and writes the
bucket's new files; the driver, which holds file names, counts and object refs but no change, then commits the
removed and added files of every bucket as one transaction.
Files outside the layout (from another writer, `deltalake`'s merge or a compaction) are split by bucket in
Ray tasks and folded in by the next merge, which then rewrites every bucket once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from deltalake import DeltaTable, Schema
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import (
    AddAction,
    CommitProperties,
    RemoveAction,
    Transaction,
    create_table_with_add_actions,
)

from engine.arrow import storage_schema
from engine.config import StorageSettings
from engine.errors import TableFailed
from engine.keyhash import check_comparable
from engine.kinds import Merge
from engine.metrics import commit_timer
from engine.tables.bucket_tasks import (
    SPLIT_BYTES,
    rewrite_bucket,
    row_group_chunks,
    split_by_bucket,
    split_file,
    without_views,
)
from engine.tables.delta import commit_files, commit_metadata, ensure_not_committed, table_exists
from engine.tables.delta_files import add_actions
from engine.tables.delta_merge import DELETE_FLAG, MergeOutcome, align_with_table, latest_schema
from engine.tables.files import ChangeFiles, DataFile, discard_files, opaque_columns

log = logging.getLogger(__name__)

GROW_FACTOR = 2
"""A table whose buckets hold on average more than this many times the target file size is re-bucketed, when its
`Merge` sets no bucket count."""
MAX_BUCKETS = 99999
DEFAULT_ATTEMPTS = 5
HASH_SCHEME = 1
"""Version of `keyhash.key_hash`. It is part of the layout tag in file names, so a new scheme re-buckets a table
instead of misreading it."""

BUCKET_FILE = re.compile(r"^part-b(\d{5})of(\d{5})-k([0-9a-f]{8})-")


def merge_distributed(
    uri: str,
    table: str,
    changes: pa.Table | ChangeFiles,
    kind: Merge,
    *,
    metadata: dict[str, Any],
    transaction: Transaction | None = None,
    buckets: int | None = None,
    storage: StorageSettings | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    change_log: str | None = None,
) -> MergeOutcome:
    """Apply `changes` to the table by key, as `delta_merge.merge_changes` does, rewriting buckets in Ray tasks.

    The latest change per key wins; a change applies to a stored row only when its `sequence_by` value is
    at least the stored one; deletes remove the key; columns the table lacks are added first (a
    metadata-only commit). The data is committed once, with `metadata` and the `transaction` marker. A
    commit that loses a race with a concurrent writer is redone on the new table version, keeping the
    rewritten buckets whose files that writer left alone, up to `attempts` commits in all.

    Args:
        uri: the table folder.
        table: the table's name, for error messages.
        changes: the incoming rows, possibly several per key: the files a run staged them in, which Ray tasks
            split by bucket (this process handles their names only), or a table in memory.
        kind: keys, sequence column, delete predicate and steering columns.
        metadata: `medallion.<key>` values for the commit infos.
        transaction: application transaction marker, put on the data commit only.
        buckets: the table's bucket count: a table laid out with another count is re-bucketed by this merge.
            None sizes it from the data (`bucket_count`): a new table gets one bucket per target file size
            of its first changes, and a table keeps the count its file names record until its buckets
            outgrow the target size `GROW_FACTOR` times over, when it is re-bucketed to the count its size
            calls for.
        storage: compression and target size of the written files (engine defaults when None).
        attempts: commits tried before giving up on a table that keeps changing underneath.
        change_log: the log of the deletes a `Merge` with `delete_when` and `sequence_by` applied: each bucket's
            task drops the changes older than a delete of their key and writes the deletes not logged yet, which
            are committed to the log before the table (`changelog.without_superseded`).

    Raises:
        CommitConflict: another writer committed `transaction` first.
        TableFailed: the changes do not fit the table, a bucket rewrite failed, or every commit lost its race.
    """
    if buckets is not None and not 1 <= buckets <= MAX_BUCKETS:
        raise TableFailed(f"merge into `{table}`: buckets must be between 1 and {MAX_BUCKETS}, not {buckets}",
                          table=table, path=uri)
    started = time.monotonic()
    job = _MergeJob(uri, table, kind, storage or StorageSettings(), buckets, metadata, transaction, change_log)
    if isinstance(changes, pa.Table):
        changes = without_views(changes)
    received = changes.num_rows if isinstance(changes, pa.Table) else changes.rows
    lost: Exception | None = None
    try:
        for attempt in range(1, attempts + 1):
            try:
                version, metrics = job.merge(changes) if table_exists(uri) else job.create(changes)
            except (CommitFailedError, _TableCreatedMeanwhile) as err:
                log.info("merge into `%s`: commit %d of %d lost a race with another writer (%s)",
                         table, attempt, attempts, err)
                lost = err
                continue
            except DeltaError as err:
                raise TableFailed(f"merge into `{table}` failed: {err}", table=table, path=uri) from err
            job.pending = {}
            metrics |= {"attempts": attempt, "execution_time_ms": int((time.monotonic() - started) * 1000)}
            return MergeOutcome(version, received - metrics["num_source_rows"], metrics)
    finally:
        job.discard()
    raise TableFailed(
        f"merge into `{table}` lost its commit to concurrent writers {attempts} times in a row ({lost}); run it "
        "again, or merge into the table from one run at a time",
        table=table,
        path=uri,
    ) from lost


class _TableCreatedMeanwhile(Exception):
    """Another writer created the table between the existence check and this merge's create commit."""


def bucket_count(recorded: int | None, table_bytes: int, target_bytes: int) -> int:
    """The bucket count of a table whose `Merge` sets none: the `recorded` one while its buckets average at most
    `GROW_FACTOR` target sizes, else (and for a table not bucketed yet) the power of two that brings them to at
    most one target size. A table never shrinks to fewer buckets on its own: that would rewrite it whole."""
    if recorded is not None and table_bytes <= recorded * target_bytes * GROW_FACTOR:
        return recorded
    needed = max(1, -(-table_bytes // max(target_bytes, 1)))
    return min(MAX_BUCKETS, max(recorded or 1, 1 << (needed - 1).bit_length()))


@dataclass(frozen=True)
class _Layout:
    """How a table's rows are spread over files: the bucket count and a tag of the keys and hash scheme."""

    buckets: int
    tag: str

    @classmethod
    def of(cls, keys: Sequence[str], paths: Sequence[str], buckets: int | None, table_bytes: int,
           target_bytes: int) -> _Layout:
        """The layout of a merge into the table whose data files are at `paths`: `buckets` when given, else the
        count `bucket_count` picks from the count the file names record (the most used) and the table's size."""
        tag = hashlib.sha256(json.dumps({"scheme": HASH_SCHEME, "keys": list(keys)}).encode()).hexdigest()[:8]
        names = (BUCKET_FILE.match(path.rsplit("/", 1)[-1]) for path in paths)
        counts = Counter(int(name[2]) for name in names if name is not None and name[3] == tag)
        recorded = max(counts, key=lambda count: (counts[count], count)) if counts else None
        return cls(buckets or bucket_count(recorded, table_bytes, target_bytes), tag)

    def prefix(self, bucket: int) -> str:
        """The `RollingParquetWriter` prefix of the files of `bucket`."""
        return f"b{bucket:05d}of{self.buckets:05d}-k{self.tag}"

    def bucket(self, path: str) -> int | None:
        """The bucket of the data file at `path`, None when the file is not laid out this way."""
        name = BUCKET_FILE.match(path.rsplit("/", 1)[-1])
        if name is None or int(name[2]) != self.buckets or name[3] != self.tag:
            return None
        return int(name[1])


@dataclass(frozen=True)
class _Rewrite:
    """The new files of one bucket, and what they were computed from; the files of the deletes it logs."""

    layout: _Layout
    inputs: frozenset[str]
    schema: pa.Schema
    files: list[DataFile]
    metrics: dict[str, int]
    logged: list[DataFile]


@dataclass
class _MergeJob:
    """One merge across its attempts; `pending` holds the bucket rewrites not committed yet, `reused` how
    many of them the latest attempt kept from the one before."""

    uri: str
    table: str
    kind: Merge
    storage: StorageSettings
    buckets: int | None
    metadata: dict[str, Any]
    transaction: Transaction | None
    change_log: str | None
    pending: dict[int, _Rewrite] = field(default_factory=dict)
    reused: int = 0
    opaque: frozenset[str] = frozenset()
    splits: dict[int, tuple[np.ndarray, list[list[ray.ObjectRef]]]] = field(default_factory=dict)
    log_committed: set[str] = field(default_factory=set)

    @property
    def target_bytes(self) -> int:
        """The target size of a written file."""
        return self.storage.target_file_mb * 2**20

    @property
    def properties(self) -> CommitProperties:
        """The data commit's properties: metadata and transaction marker, and no silent rebase onto a newer
        version (deltalake would not notice a concurrent writer adding rows to a bucket this merge rewrote)."""
        properties = commit_metadata(self.metadata, self.transaction)
        properties.max_commit_retries = 0
        return properties

    def create(self, changes: pa.Table | ChangeFiles) -> tuple[int, dict[str, int]]:
        """Create the table, already bucketed, from the changes that are not deletes: version 0."""
        size = changes.nbytes if isinstance(changes, pa.Table) else changes.size
        layout = _Layout.of(self.kind.keys, [], self.buckets, size, self.target_bytes)
        schema = pa.schema([f for f in latest_schema(changes.schema, self.kind) if f.name != DELETE_FLAG])
        counts, parts = self._split_changes(changes, layout)
        self._rewrite(layout, schema, {b: frozenset() for b in range(layout.buckets) if counts[b]}, parts, {}, [])
        self._commit_log()
        try:
            with commit_timer("create"):
                create_table_with_add_actions(self.uri, Schema.from_arrow(schema), [_add(f) for f in self._files()],
                                              mode="error", commit_properties=self.properties)
        except DeltaError as err:
            if table_exists(self.uri):
                raise _TableCreatedMeanwhile(str(err)) from err
            raise
        return 0, self._metrics(layout, scanned=0, skipped=0)

    def merge(self, changes: pa.Table | ChangeFiles) -> tuple[int, dict[str, int]]:
        """Rewrite the buckets the changes touch (all of them while files outside the layout remain) and
        commit once; returns the new version."""
        delta_table = DeltaTable(self.uri)
        if delta_table.metadata().partition_columns:
            raise TableFailed(f"merge into `{self.table}`: partitioned tables cannot be merged by bucket; "
                              "rewrite the table without partition columns", table=self.table, path=self.uri)
        ensure_not_committed(delta_table, self.transaction)
        align_with_table(delta_table, latest_schema(changes.schema, self.kind).empty_table(), self.metadata,
                         steering=[DELETE_FLAG])
        delta_table = DeltaTable(self.uri)
        ensure_not_committed(delta_table, self.transaction)
        schema = storage_schema(pa.schema(delta_table.schema().to_arrow()))
        self.opaque = opaque_columns(delta_table.metadata().configuration, schema.names)
        check_comparable({f"table `{self.table}`": schema, "the changes": changes.schema}, self.kind.keys,
                         f"merge into `{self.table}`")
        actions = add_actions(delta_table).select(["path", "size_bytes"])
        paths, sizes = actions.column("path").to_pylist(), actions.column("size_bytes").to_pylist()
        layout = _Layout.of(self.kind.keys, paths, self.buckets, sum(sizes), self.target_bytes)
        by_bucket: dict[int, list[str]] = {}
        loose: list[str] = []
        for path in paths:
            bucket = layout.bucket(path)
            (loose if bucket is None else by_bucket.setdefault(bucket, [])).append(path)
        counts, parts = self._split_changes(changes, layout)
        touched = range(layout.buckets) if loose else [b for b in range(layout.buckets) if counts[b]]
        inputs = {b: frozenset([*by_bucket.get(b, []), *loose]) for b in touched}
        self._rewrite(layout, schema, inputs, parts, by_bucket, loose)
        self._commit_log()
        removed = sorted(set().union(*inputs.values()))
        now = int(time.time() * 1000)
        size_of = dict(zip(paths, sizes))
        with commit_timer("bucket_merge"):
            delta_table.create_write_transaction(
                [*(_add(f) for f in self._files()), *(RemoveAction(p, True, now, size_of[p]) for p in removed)],
                "append", delta_table.schema(), commit_properties=self.properties)
        return delta_table.version() + 1, self._metrics(layout, scanned=len(removed), skipped=len(paths) - len(removed))

    def discard(self) -> None:
        """Delete the files of rewrites that were never committed."""
        self._discard(self.pending.values())
        self.pending = {}

    def _discard(self, rewrites: Iterable[_Rewrite]) -> None:
        """Delete the table's and the log's files of `rewrites`, but the log's files already committed."""
        for rewrite in rewrites:
            discard_files(self.uri, rewrite.files)
            discard_files(self.change_log or self.uri, [f for f in rewrite.logged if f.path not in self.log_committed])

    def _commit_log(self) -> None:
        """Commit to the change log, in one commit, the deletes the pending rewrites logged and no earlier attempt
        committed (a rewrite run again finds its deletes logged already, and logs none)."""
        files = [f for rewrite in self.pending.values() for f in rewrite.logged if f.path not in self.log_committed]
        if self.change_log is not None and files:
            commit_files(self.change_log, files, mode="append", metadata=self.metadata)
            self.log_committed.update(f.path for f in files)

    def _split_changes(self, changes: pa.Table | ChangeFiles,
                       layout: _Layout) -> tuple[np.ndarray, list[list[ray.ObjectRef]]]:
        """The count of changes of every bucket, and the refs of their pieces, split by Ray tasks of about
        `SPLIT_BYTES` of staged changes each (changes in memory by one task); once per bucket count."""
        if layout.buckets not in self.splits:
            self.splits[layout.buckets] = split_by_bucket(changes, self.kind.keys, layout.buckets, SPLIT_BYTES)
        return self.splits[layout.buckets]

    def _rewrite(
        self,
        layout: _Layout,
        schema: pa.Schema,
        inputs: dict[int, frozenset[str]],
        parts: list[list[ray.ObjectRef]],
        by_bucket: dict[int, list[str]],
        loose: list[str],
    ) -> None:
        """Make `pending` hold a rewrite of every bucket of `inputs`: an earlier attempt's when its layout,
        input files and schema are unchanged, else a new one computed by a Ray task."""
        kept = {b: r for b, r in self.pending.items()
                if r.layout == layout and r.inputs == inputs.get(b) and r.schema.equals(schema)}
        self._discard(r for b, r in self.pending.items() if b not in kept)
        self.pending, self.reused = kept, len(kept)
        todo = [b for b in inputs if b not in kept]
        pieces = self._split_loose(layout, schema, loose) if todo and loose else {}
        refs = [rewrite_bucket.remote(self.uri, layout.prefix(b), self.storage, self.opaque, schema, self.kind,
                                      by_bucket.get(b, []), self.change_log, self.table, len(parts[b]), *parts[b],
                                      *pieces.get(b, [])) for b in todo]
        failure: ray.exceptions.RayError | None = None
        for bucket, ref in zip(todo, refs):
            try:
                files, metrics, logged = ray.get(ref)
            except ray.exceptions.RayError as err:
                failure = failure or err
                continue
            self.pending[bucket] = _Rewrite(layout, inputs[bucket], schema, files, metrics, logged)
        if failure is not None:
            raise TableFailed(f"merge into `{self.table}` failed while rewriting a bucket: {failure}",
                              table=self.table, path=self.uri) from failure

    def _split_loose(self, layout: _Layout, schema: pa.Schema, loose: list[str]) -> dict[int, list[ray.ObjectRef]]:
        """The rows of the files outside the layout, split by bucket in Ray tasks of about a million rows
        (whole row groups) each."""
        splits = [split_file.options(num_returns=layout.buckets).remote(self.uri, path, row_groups, schema,
                                                                         self.kind.keys, layout.buckets)
                  for path in loose for row_groups in row_group_chunks(self.uri, path)]
        if layout.buckets == 1:
            return {0: splits}
        return {b: [split[b] for split in splits] for b in range(layout.buckets)}

    def _files(self) -> list[DataFile]:
        return [f for rewrite in self.pending.values() for f in rewrite.files]

    def _metrics(self, layout: _Layout, *, scanned: int, skipped: int) -> dict[str, int]:
        """deltalake's merge metrics summed over the bucket rewrites, and the bucket counts."""
        totals = Counter[str]()
        for rewrite in self.pending.values():
            totals.update(rewrite.metrics)
        return {
            "num_source_rows": totals["source_rows"],
            "num_target_rows_inserted": totals["inserted"],
            "num_target_rows_updated": totals["updated"],
            "num_target_rows_deleted": totals["deleted"],
            "num_target_rows_copied": totals["copied"],
            "num_output_rows": totals["inserted"] + totals["updated"] + totals["copied"],
            "num_target_files_scanned": scanned,
            "num_target_files_skipped_during_scan": skipped,
            "num_target_files_added": len(self._files()),
            "num_target_files_removed": scanned,
            "scan_time_ms": totals["scan_time_ms"],
            "rewrite_time_ms": totals["rewrite_time_ms"],
            "num_buckets": layout.buckets,
            "num_buckets_rewritten": len(self.pending),
            "num_buckets_reused": self.reused,
        }


def _add(file: DataFile) -> AddAction:
    return AddAction(file.path, file.size, {}, file.modification_time, True, file.stats)
