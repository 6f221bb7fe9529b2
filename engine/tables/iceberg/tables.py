"""`IcebergTables`: the operations of `engine.tables.delta` on the Iceberg tables of a storage root, in its SQL
catalog (pyiceberg): reads at a version, one-snapshot commits, merges by key, slice replacement and changed keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray.data
from deltalake.transaction import Transaction

from engine.arrow import storage_schema, to_storage, unify
from engine.config import StorageSettings
from engine.errors import TableNotFound
from engine.kinds import Merge
from engine.tables.delta import METADATA_PREFIX, RESTORED_TO_KEY, all_on_disk, differing_keys
from engine.tables.delta_merge import DELETE_FLAG, MergeOutcome, latest_per_key, latest_schema
from engine.tables.files import ChangeFiles, DataFile, discard_files
from engine.tables.iceberg import age
from engine.tables.iceberg.catalog import IcebergCatalog
from engine.tables.iceberg.merge import stage_merge, staged_latest
from engine.tables.iceberg.merge_tasks import discard
from engine.tables.iceberg.scan import SnapshotReads, read_tasks, scan_tasks, task_identity
from engine.tables.iceberg.schema import as_stored, ensure_name_mapping, evolve, plain, plain_schema
from engine.tables.iceberg.slices import stage_replacement
from engine.tables.iceberg.snapshots import committed_batch, decode, snapshot_of, snapshot_properties, version_of
from engine.tables.replace import Replacement, Slice

if TYPE_CHECKING:
    from pyiceberg.table import Table
    from pyiceberg.table import Transaction as IcebergTransaction


class IcebergTables(IcebergCatalog):
    """The Iceberg tables of one storage root, registered in one SQL catalog.

    Args:
        root: the absolute storage root (the catalog's warehouse).
        catalog_uri: SQLAlchemy URI of the catalog; SQLite under the root when None.
    """

    name = "iceberg"

    def open_table(self, uri: str, table: str, version: int | None = None) -> Table:
        """The Iceberg table at `uri` (`version` is only checked to exist; read it with `snapshot`).

        Raises:
            TableNotFound: nothing was ever committed there, or there is no such version.
        """
        loaded = self.load(uri)
        if loaded is None or loaded.current_snapshot() is None:
            raise TableNotFound(f"table `{table}` has no Iceberg snapshot at `{uri}`; run the pipeline that "
                                "builds it first", table=table, path=uri)
        if version is not None:
            snapshot_of(loaded, table, version)
        return loaded

    def table_exists(self, uri: str) -> bool:
        """Whether the catalog holds a table for `uri` with at least one snapshot."""
        loaded = self.load(uri)
        return loaded is not None and loaded.current_snapshot() is not None

    def latest_version(self, uri: str) -> int | None:
        """The latest committed version at `uri`, None when there is no table."""
        loaded = self.load(uri)
        snapshot = loaded.current_snapshot() if loaded is not None else None
        return None if snapshot is None else version_of(snapshot)

    def version(self, uri: str, table: str, version: int | None = None) -> int:
        """`version` (the latest when None), checked to exist.

        Raises:
            TableNotFound: there is no table or no such version.
        """
        loaded = self.open_table(uri, table)
        snapshot = loaded.current_snapshot() if version is None else snapshot_of(loaded, table, version)
        assert snapshot is not None
        return version_of(snapshot)

    def read_columns(self, uri: str, table: str, columns: Sequence[str]) -> pa.Table:
        """`columns` of every row at the latest version, in this process."""
        return plain(self.open_table(uri, table).scan(selected_fields=tuple(columns)).to_arrow())

    def read_keys(self, uri: str, table: str, keys: pa.Table) -> pa.Table:
        """The latest rows whose key columns equal a row of `keys` (`scan.SnapshotReads.read_keys`).

        Raises:
            TableNotFound: there is no table.
        """
        loaded = self.open_table(uri, table)
        return SnapshotReads(loaded.metadata, loaded.io).read_keys(uri, table, keys)

    def key_reader(self, uri: str) -> SnapshotReads:
        """The reads by key of the table's current snapshot, which a Ray task can be handed (no catalog)."""
        loaded = self.load(uri)
        return SnapshotReads(None, None) if loaded is None else SnapshotReads(loaded.metadata, loaded.io)

    def head(self, uri: str, table: str, version: int | None, limit: int) -> pa.Table:
        """The first `limit` rows of the table at `version`."""
        loaded = self.open_table(uri, table)
        snapshot_id = None if version is None else snapshot_of(loaded, table, version).snapshot_id
        return plain(loaded.scan(snapshot_id=snapshot_id, limit=limit).to_arrow())

    def schema(self, uri: str, table: str) -> pa.Schema:
        """The table's current schema in storage types."""
        return plain_schema(self.open_table(uri, table).schema().as_arrow())

    def as_stored(self, schema: pa.Schema) -> pa.Schema:
        """`schema` as the engine stores it in an Iceberg table (Iceberg has no unsigned integers, for example)."""
        return as_stored(schema)

    def row_count(self, uri: str, table: str, version: int | None = None) -> int:
        """Rows in the table at `version`, from the snapshot summary (no data is read)."""
        loaded = self.open_table(uri, table)
        snapshot = loaded.current_snapshot() if version is None else snapshot_of(loaded, table, version)
        assert snapshot is not None
        summary = snapshot.summary
        total = None if summary is None else summary.get("total-records")
        if summary is None or total is None or int(summary.get("total-equality-deletes") or 0):
            return self.read_table(uri, table, version).num_rows
        return int(total) - int(summary.get("total-position-deletes") or 0)

    def read_table(self, uri: str, table: str, version: int | None = None) -> pa.Table:
        """The whole table at `version`, in this process."""
        loaded = self.open_table(uri, table)
        snapshot_id = None if version is None else snapshot_of(loaded, table, version).snapshot_id
        return plain(loaded.scan(snapshot_id=snapshot_id).to_arrow())

    def read_dataset(self, uri: str, table: str, version: int | None = None,
                     ray_options: Mapping[str, Any] | None = None) -> ray.data.Dataset:
        """A Ray Dataset over the table at `version`: one Ray task per data file of the scan plan (pyiceberg's
        Arrow reader applies name mapping, schema evolution and any delete files)."""
        loaded = self.open_table(uri, table)
        snapshot_id = None if version is None else snapshot_of(loaded, table, version).snapshot_id
        tasks = list(loaded.scan(snapshot_id=snapshot_id).plan_files())
        return read_tasks(loaded, tasks, ray_options)

    def read_added_files(self, uri: str, table: str, since: int, until: int,
                         ray_options: Mapping[str, Any] | None = None) -> tuple[ray.data.Dataset, int] | None:
        """The rows added to the table after version `since` up to `until`, and their count; None when a
        snapshot in between did more than append (an overwrite, merge or delete), so the caller must read the
        table in full."""
        loaded = self.open_table(uri, table)
        start, end = snapshot_of(loaded, table, since), snapshot_of(loaded, table, until)
        between = [s for s in loaded.snapshots() if version_of(start) < version_of(s) <= version_of(end)]
        if any(s.summary is None or s.summary.operation.value != "append" for s in between):
            return None
        before = {t.file.file_path for t in loaded.scan(snapshot_id=start.snapshot_id).plan_files()}
        added = [t for t in loaded.scan(snapshot_id=end.snapshot_id).plan_files() if t.file.file_path not in before]
        if any(t.delete_files for t in added):
            return None
        return read_tasks(loaded, added, ray_options), sum(t.file.record_count for t in added)

    def history(self, uri: str, table: str) -> list[dict[str, Any]]:
        """Snapshots, newest first, as commit infos: `version`, `timestamp` (ms), `operation`, the data files
        added (`added_files`) and the `medallion.<key>` values decoded."""
        loaded = self.open_table(uri, table)
        commits = []
        for snapshot in sorted(loaded.snapshots(), key=lambda s: -(s.sequence_number or 0)):
            properties = dict(snapshot.summary.additional_properties) if snapshot.summary else {}
            commit: dict[str, Any] = {"version": version_of(snapshot), "timestamp": snapshot.timestamp_ms,
                                      "operation": snapshot.summary.operation.value.upper() if snapshot.summary else "",
                                      "snapshot_id": snapshot.snapshot_id,
                                      age.ADDED_FILES: int(properties.get("added-data-files", 0))}
            for key, value in properties.items():
                if key.startswith(METADATA_PREFIX):
                    commit[key] = decode(value)
            commits.append(commit)
        return commits

    def effective_history(self, uri: str, table: str) -> list[dict[str, Any]]:
        """Commit infos, newest first, without the commits a restore undid (as `delta.effective_history`)."""
        kept: list[dict[str, Any]] = []
        undone_above: int | None = None
        for commit in self.history(uri, table):
            if undone_above is not None and commit["version"] > undone_above:
                continue
            undone_above = None
            kept.append(commit)
            restored_to = self.commit_info_value(commit, RESTORED_TO_KEY)
            if restored_to is not None:
                undone_above = int(restored_to)
        return kept

    def last_commit_value(self, uri: str, table: str, key: str) -> Any:
        """The `medallion.<key>` value of the newest commit that has one, None when none has."""
        if not self.table_exists(uri):
            return None
        for commit in self.effective_history(uri, table):
            value = self.commit_info_value(commit, key)
            if value is not None:
                return value
        return None

    def last_data_commit(self, uri: str, table: str, version: int | None = None) -> dict[str, Any] | None:
        """The newest commit (at or before `version`) that brought new data and that no restore undid."""
        return age.last_data_commit(self.effective_history(uri, table), version)

    def newest_value(self, uri: str, table: str, column: str, version: int | None = None) -> Any:
        """The newest value of `column` in the table (at `version`), from its manifests' column bounds.

        Raises:
            KeyError: the table has no such column.
        """
        return age.newest_value(self.open_table(uri, table, version), table, column, version)

    @staticmethod
    def commit_info_value(commit: dict[str, Any], key: str) -> Any:
        """A `medallion.<key>` value of a commit info from `history`."""
        return commit.get(METADATA_PREFIX + key)

    def transaction_version(self, uri: str, app_id: str) -> int | None:
        """The last batch of `app_id` committed to the table, None when none was."""
        loaded = self.load(uri)
        return None if loaded is None else committed_batch(loaded, app_id)

    def next_transaction(self, uri: str, app_id: str) -> Transaction:
        """The marker of the next commit of `app_id`: the last committed batch plus one."""
        return Transaction(app_id, (self.transaction_version(uri, app_id) or 0) + 1)

    def commit_files(
        self,
        uri: str,
        files: Sequence[DataFile],
        *,
        mode: str,
        metadata: dict[str, Any],
        empty_schema: pa.Schema | None = None,
        commit_empty: bool = False,
        transaction: Transaction | None = None,
        table_properties: Mapping[str, str] | None = None,
    ) -> int | None:
        """Commit Parquet files already written under `uri` as one snapshot; returns the new version.

        Same contract as `delta.commit_files`: `mode` is `append` (added columns are merged into the table
        schema) or `overwrite` (the table's files and columns are replaced); no files and no `commit_empty`
        commits nothing on append; a new table is created from the files' schema or `empty_schema`. The files
        are registered as they are (pyiceberg `add_files` semantics: no field ids in the files, columns
        resolved by the table's name mapping), so nothing is rewritten. `table_properties` are set on the table
        in the same commit, before the files are described (so metrics settings apply to them).

        Raises:
            CommitConflict: another writer committed `transaction` first, or the table kept changing under
                this commit for every attempt.
        """
        exists = self.table_exists(uri)
        if not files and ((mode == "append" and not commit_empty) or (not exists and empty_schema is None)):
            return None
        if files:
            new_schema = unify([f.schema for f in files])
        else:
            new_schema = storage_schema(empty_schema) if empty_schema is not None else None
        paths = [f"{uri}/{f.path}" for f in files]
        properties = snapshot_properties(metadata, transaction)

        def build(tx: IcebergTransaction, created: bool) -> None:
            from pyiceberg.io.pyarrow import parquet_file_to_data_file

            if new_schema is not None and not created:
                evolve(tx, new_schema, drop_missing=mode == "overwrite")
            ensure_name_mapping(tx)
            data_files = [parquet_file_to_data_file(tx._table.io, tx.table_metadata, path) for path in paths]
            current = tx.table_metadata.current_snapshot()
            if mode == "overwrite" and not created and current is not None:
                with tx.update_snapshot(snapshot_properties=properties).overwrite() as overwrite:
                    for task in scan_tasks(tx):
                        overwrite.delete_data_file(task.file)
                    for data_file in data_files:
                        overwrite.append_data_file(data_file)
            else:
                with tx.update_snapshot(snapshot_properties=properties).fast_append() as append:
                    for data_file in data_files:
                        append.append_data_file(data_file)

        return self.commit(uri, new_schema, transaction, build, table_properties)

    def merge_changes(
        self,
        uri: str,
        table: str,
        changes: pa.Table,
        kind: Merge,
        *,
        metadata: dict[str, Any],
        transaction: Transaction | None = None,
        table_properties: Mapping[str, str] | None = None,
    ) -> MergeOutcome:
        """Apply `changes` by key with `delta_merge.merge_changes`' semantics, in one snapshot (with
        `table_properties` set in the same commit).

        The latest change per key wins (`sequence_by`); a change applies to a stored row only when its
        `sequence_by` is at least the stored one (SQL nulls never match and never compare as newer); `delete_when`
        rows delete. The files whose key bounds may hold a changed key are read; only those holding a replaced or
        deleted key are rewritten (copy-on-write), and the commit removes them and adds the rewrites and the new
        rows (`merge.stage_merge`). A batch of inserts only is a plain append. The changes are in memory, so the
        rows are read, joined and written in this process (`merge_staged` does it in Ray tasks).

        Raises:
            CommitConflict: another writer committed `transaction` first, or the table kept changing.
        """
        latest = to_storage(latest_per_key(changes, kind))
        schema = latest.drop_columns([c for c in [DELETE_FLAG] if c in latest.column_names]).schema
        return self._merge(uri, schema, [latest], latest.num_rows, changes.num_rows, kind, metadata=metadata,
                           transaction=transaction, table_properties=table_properties, in_tasks=False)

    def merge_staged(
        self,
        uri: str,
        table: str,
        changes: ChangeFiles,
        kind: Merge,
        *,
        metadata: dict[str, Any],
        storage: StorageSettings,
        transaction: Transaction | None = None,
        table_properties: Mapping[str, str] | None = None,
        change_log: str | None = None,
    ) -> MergeOutcome:
        """`merge_changes` of changes staged in files, by Ray tasks: split by hash bucket of the key and reduced to
        the latest per key (`merge.staged_latest`, which drops the changes a delete in `change_log` supersedes and
        logs the new deletes first), then the files their keys may be in read, joined and rewritten, a group of
        files per task, and the inserts written by a task per bucket; this process plans and commits the snapshot
        from file names, key bounds, counts and object refs.

        Raises:
            CommitConflict: another writer committed `transaction` first, or the table kept changing.
        """
        pieces, rows = staged_latest(changes, kind, table=table, storage=storage, change_log=change_log,
                                     metadata=metadata)
        schema = pa.schema([f for f in latest_schema(changes.schema, kind) if f.name != DELETE_FLAG])
        return self._merge(uri, schema, pieces, rows, changes.rows, kind, metadata=metadata, transaction=transaction,
                           table_properties=table_properties, in_tasks=True)

    def _merge(self, uri: str, schema: pa.Schema, pieces: list[Any], source_rows: int, received: int, kind: Merge, *,
               metadata: dict[str, Any], transaction: Transaction | None, table_properties: Mapping[str, str] | None,
               in_tasks: bool) -> MergeOutcome:
        """Commit the snapshot applying `pieces` (`merge.stage_merge`), rebuilt when another writer got in first; the
        files of an attempt that did not commit are deleted."""
        properties = snapshot_properties(metadata, transaction)
        metrics: dict[str, Any] = {}
        written: list[Any] = []

        def build(tx: IcebergTransaction, created: bool) -> None:
            discard(written)
            written.clear()
            metrics.clear()
            metrics.update({"num_source_rows": source_rows} | stage_merge(
                tx, created, schema, pieces, kind, properties, written, in_tasks=in_tasks))

        try:
            version = self.commit(uri, schema, transaction, build, table_properties)
        except BaseException:
            discard(written)
            raise
        assert version is not None
        return MergeOutcome(version, received - source_rows, dict(metrics))

    def replace_slice(
        self,
        uri: str,
        table: str,
        where: Slice,
        new_files: Sequence[DataFile],
        *,
        storage: StorageSettings,
        prefix: str,
        metadata: dict[str, Any],
        transaction: Transaction | None = None,
        table_properties: Mapping[str, str] | None = None,
    ) -> Replacement:
        """Remove the rows of `where` and add `new_files` (already written under `uri`) in one snapshot, as
        `replace.replace_slice` does on Delta.

        The files whose metrics may hold rows of the slice (`where.column` between its bounds) are rewritten
        without those rows in Ray tasks; files holding none are left alone. The snapshot removes the rewritten
        files and adds their remainders and `new_files` (an `append` when nothing was rewritten).

        Raises:
            TableNotFound: there is no table.
            CommitConflict: another writer committed `transaction` first, or the table kept changing.
        """
        self.open_table(uri, table)
        new_schema = unify([f.schema for f in new_files]) if new_files else None
        properties = snapshot_properties(metadata, transaction)
        rewritten: list[DataFile] = []
        outcome: dict[str, int] = {}

        def build(tx: IcebergTransaction, created: bool) -> None:
            discard_files(uri, rewritten)
            rewritten.clear()
            outcome.update(stage_replacement(tx, created, where, new_files, new_schema, rewritten, uri=uri,
                                             storage=storage, prefix=prefix, properties=properties))

        try:
            version = self.commit(uri, new_schema, transaction, build, table_properties)
        except BaseException:
            discard_files(uri, rewritten)
            raise
        assert version is not None
        return Replacement(version, **outcome)

    def changed_keys(self, uri: str, table: str, since: int, until: int, keys: Sequence[str]) -> pa.Table | None:
        """The distinct `keys` values of rows that differ between versions `since` and `until` (as
        `delta.changed_keys`); only the data files (with their delete files) one version has and the other lacks
        are read. None when one of them is no longer on disk (deleted with an expired snapshot), so the caller
        must recompute in full."""
        from pyiceberg.expressions import AlwaysTrue
        from pyiceberg.io.pyarrow import ArrowScan

        loaded = self.open_table(uri, table)
        plans = [{task_identity(t): t for t in loaded.scan(snapshot_id=snapshot_of(loaded, table, v).snapshot_id)
                  .plan_files()} for v in (since, until)]
        differing = [[t for key, t in one.items() if key not in other] for one, other in (plans, plans[::-1])]
        files = [path for tasks in differing for task in tasks
                 for path in (task.file.file_path, *(d.file_path for d in task.delete_files))]
        if not all_on_disk(uri, files):
            return None
        scan = ArrowScan(loaded.metadata, loaded.io, loaded.schema(), AlwaysTrue())
        old, new = (plain(scan.to_table(tasks)) for tasks in differing)
        return differing_keys(old, new, keys)

    def set_table_properties(self, uri: str, properties: Mapping[str, str]) -> None:
        """Set `properties` on the table, when it exists and lacks them: a catalog commit without a snapshot, so
        the version does not change."""
        loaded = self.load(uri)
        if loaded is not None and any(loaded.metadata.properties.get(k) != v for k, v in properties.items()):
            self.commit(uri, None, None, lambda tx, created: None, properties)

    def table_properties(self, uri: str, table: str) -> dict[str, str]:
        """The table's current properties."""
        return dict(self.open_table(uri, table).metadata.properties)
