"""Apache Iceberg tables through pyiceberg: reads at a version, one-commit writes, and merges by key.

The same operations as `engine.tables.delta`, on an Iceberg table registered in a SQL catalog (SQLite under
`<root>/_meta/iceberg/catalog.db` by default, or `storage.iceberg_catalog_uri`): namespace = layer, table name
= name, location `<root>/<layer>/<name>`.

- **Versions** are snapshot sequence numbers minus one: the first snapshot is version 0, like Delta's first
  commit. Every engine commit makes exactly one snapshot (schema changes and the transaction marker ride in
  the same catalog commit without a snapshot of their own), so versions written by the engine are dense.
- **Commit metadata** goes into the snapshot summary as `medallion.<key>` = JSON text.
- **Exactly-once**: a batch's marker (application id, version) is kept in the table properties
  (`medallion.txn.<app id>`, so it survives snapshot expiry) and in the snapshot summary. It is checked
  against the table the commit is built on, and the catalog's compare-and-swap on the metadata location
  refuses a commit built on a stale table; the writer then reloads, checks the marker again (a concurrent
  commit of the same batch raises `CommitConflict`) and rebuilds its commit. pyiceberg's own rebasing
  retries are switched off (`commit.retry.num-retries` = 0) because they would skip that check.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from deltalake.transaction import Transaction

from engine.arrow import storage_schema, to_storage, unify
from engine.config import StorageSettings
from engine.errors import CommitConflict, TableFailed, TableFormatError, TableNotFound
from engine.kinds import Merge
from engine.storage import iceberg_io_properties, is_local
from engine.tables.delta import (
    DELETE_FLAG,
    METADATA_PREFIX,
    RESTORED_TO_KEY,
    MergeOutcome,
    _latest_per_key,
    all_on_disk,
    differing_keys,
)
from engine.tables.files import DataFile, RollingParquetWriter, discard_files
from engine.tables.replace import Replacement, Slice, remainder

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table
    from pyiceberg.table import Transaction as IcebergTransaction
    from pyiceberg.table.snapshots import Snapshot

log = logging.getLogger(__name__)

CATALOG_NAME = "medallion"
MARKER_PREFIX = METADATA_PREFIX + "txn."
APP_ID_KEY = METADATA_PREFIX + "app_id"
APP_VERSION_KEY = METADATA_PREFIX + "app_version"
TABLE_PROPERTIES = {"commit.retry.num-retries": "0", "format-version": "2"}
METRICS_PREFIX = "write.metadata.metrics.column."
ATTEMPTS = 8


def without_metrics(columns: Collection[str]) -> dict[str, str]:
    """Table properties that keep `columns` out of the column metrics (counts and bounds) of manifest entries."""
    return {f"{METRICS_PREFIX}{name}": "none" for name in sorted(columns)}


def default_catalog_uri(root: str) -> str:
    """The SQLite catalog of a local root: `sqlite:///<root>/_meta/iceberg/catalog.db`."""
    return f"sqlite:///{root}/_meta/iceberg/catalog.db"


class IcebergTables:
    """The Iceberg tables of one storage root, registered in one SQL catalog.

    Args:
        root: the absolute storage root (the catalog's warehouse).
        catalog_uri: SQLAlchemy URI of the catalog; SQLite under the root when None.
    """

    name = "iceberg"

    def __init__(self, root: str, catalog_uri: str | None = None) -> None:
        self.root = root.rstrip("/")
        self._catalog_uri = catalog_uri
        self._catalog: SqlCatalog | None = None
        self._lock = threading.Lock()

    @property
    def catalog(self) -> SqlCatalog:
        """The SQL catalog, created on first use (the SQLite file and its folder too)."""
        with self._lock:
            if self._catalog is None:
                from pyiceberg.catalog.sql import SqlCatalog

                if self._catalog_uri is None and not is_local(self.root):
                    raise TableFormatError(
                        f"storage root `{self.root}` is remote, so the default SQLite Iceberg catalog cannot live "
                        "there; set storage.iceberg_catalog_uri (MEDALLION__STORAGE__ICEBERG_CATALOG_URI) to a "
                        "PostgreSQL catalog shared by every writer, e.g. postgresql+psycopg://user@host/catalog")
                uri = self._catalog_uri or default_catalog_uri(self.root)
                if uri.startswith("sqlite:///"):
                    os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")), exist_ok=True)
                warehouse = self.root if "://" in self.root else f"file://{self.root}"
                self._catalog = SqlCatalog(CATALOG_NAME, uri=uri, warehouse=warehouse, **iceberg_io_properties())
            return self._catalog

    def identifier(self, uri: str) -> tuple[str, str]:
        """`(layer, name)` of the table at `<root>/<layer>/<name>`."""
        layer, name = uri.rstrip("/").split("/")[-2:]
        return layer, name

    def _load(self, uri: str) -> Table | None:
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        try:
            table = self.catalog.load_table(self.identifier(uri))
        except (NoSuchTableError, NoSuchNamespaceError):
            return None
        if _plain_location(table.location()) != _plain_location(uri):
            raise TableFailed(
                f"Iceberg table `{'.'.join(self.identifier(uri))}` of the catalog lives at `{table.location()}`, "
                f"not at `{uri}`; give this root a catalog of its own (`storage.iceberg_catalog_uri`)",
                table=".".join(self.identifier(uri)), path=uri)
        return table

    def open_table(self, uri: str, table: str, version: int | None = None) -> Table:
        """The Iceberg table at `uri` (`version` is only checked to exist; read it with `snapshot`).

        Raises:
            TableNotFound: nothing was ever committed there, or there is no such version.
        """
        loaded = self._load(uri)
        if loaded is None or loaded.current_snapshot() is None:
            raise TableNotFound(f"table `{table}` has no Iceberg snapshot at `{uri}`; run the pipeline that "
                                "builds it first", table=table, path=uri)
        if version is not None:
            snapshot_of(loaded, table, version)
        return loaded

    def table_exists(self, uri: str) -> bool:
        """Whether the catalog holds a table for `uri` with at least one snapshot."""
        loaded = self._load(uri)
        return loaded is not None and loaded.current_snapshot() is not None

    def latest_version(self, uri: str) -> int | None:
        """The latest committed version at `uri`, None when there is no table."""
        loaded = self._load(uri)
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
        return _plain(self.open_table(uri, table).scan(selected_fields=tuple(columns)).to_arrow())

    def head(self, uri: str, table: str, version: int | None, limit: int) -> pa.Table:
        """The first `limit` rows of the table at `version`."""
        loaded = self.open_table(uri, table)
        snapshot_id = None if version is None else snapshot_of(loaded, table, version).snapshot_id
        return _plain(loaded.scan(snapshot_id=snapshot_id, limit=limit).to_arrow())

    def schema(self, uri: str, table: str) -> pa.Schema:
        """The table's current schema in storage types."""
        return _plain_schema(self.open_table(uri, table).schema().as_arrow())

    def as_stored(self, schema: pa.Schema) -> pa.Schema:
        """`schema` as the engine stores it in an Iceberg table (Iceberg has no unsigned integers, for example)."""
        from pyiceberg.io.pyarrow import _pyarrow_to_schema_without_ids

        stored = _plain_schema(_pyarrow_to_schema_without_ids(_nullable(schema)).as_arrow())
        return pa.schema([f.with_nullable(schema.field(f.name).nullable) for f in stored])

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
        return _plain(loaded.scan(snapshot_id=snapshot_id).to_arrow())

    def read_dataset(self, uri: str, table: str, version: int | None = None,
                     ray_options: Mapping[str, Any] | None = None) -> ray.data.Dataset:
        """A Ray Dataset over the table at `version`: one Ray task per data file of the scan plan (pyiceberg's
        Arrow reader applies name mapping, schema evolution and any delete files)."""
        loaded = self.open_table(uri, table)
        snapshot_id = None if version is None else snapshot_of(loaded, table, version).snapshot_id
        tasks = list(loaded.scan(snapshot_id=snapshot_id).plan_files())
        return _read_tasks(loaded, tasks, ray_options)

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
        return _read_tasks(loaded, added, ray_options), sum(t.file.record_count for t in added)

    def history(self, uri: str, table: str) -> list[dict[str, Any]]:
        """Snapshots, newest first, as commit infos: `version`, `timestamp` (ms), `operation` and the
        `medallion.<key>` values decoded."""
        loaded = self.open_table(uri, table)
        commits = []
        for snapshot in sorted(loaded.snapshots(), key=lambda s: -(s.sequence_number or 0)):
            properties = dict(snapshot.summary.additional_properties) if snapshot.summary else {}
            commit: dict[str, Any] = {"version": version_of(snapshot), "timestamp": snapshot.timestamp_ms,
                                      "operation": snapshot.summary.operation.value.upper() if snapshot.summary else "",
                                      "snapshot_id": snapshot.snapshot_id}
            for key, value in properties.items():
                if key.startswith(METADATA_PREFIX):
                    commit[key] = _decode(value)
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

    @staticmethod
    def commit_info_value(commit: dict[str, Any], key: str) -> Any:
        """A `medallion.<key>` value of a commit info from `history`."""
        return commit.get(METADATA_PREFIX + key)

    def transaction_version(self, uri: str, app_id: str) -> int | None:
        """The last batch of `app_id` committed to the table, None when none was."""
        loaded = self._load(uri)
        return None if loaded is None else _committed(loaded, app_id)

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
                _evolve(tx, new_schema, drop_missing=mode == "overwrite")
            _ensure_name_mapping(tx)
            data_files = [parquet_file_to_data_file(tx._table.io, tx.table_metadata, path) for path in paths]
            current = tx.table_metadata.current_snapshot()
            if mode == "overwrite" and not created and current is not None:
                with tx.update_snapshot(snapshot_properties=properties).overwrite() as overwrite:
                    for task in _scan_tasks(tx):
                        overwrite.delete_data_file(task.file)
                    for data_file in data_files:
                        overwrite.append_data_file(data_file)
            else:
                with tx.update_snapshot(snapshot_properties=properties).fast_append() as append:
                    for data_file in data_files:
                        append.append_data_file(data_file)

        return self._commit(uri, new_schema, transaction, build, table_properties)

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
        """Apply `changes` by key with `delta.merge_changes`' semantics, in one snapshot (with
        `table_properties` set in the same commit).

        The latest change per key wins (`sequence_by`); a change applies to a stored row only when its
        `sequence_by` is at least the stored one (SQL nulls never match and never compare as newer); `delete_when`
        rows delete. The files that may hold a changed key (pruned by the file statistics) are read on the
        driver; only those holding a replaced or deleted key are rewritten (copy-on-write), and the commit
        removes them and adds the rewrites and the new rows. A batch of inserts only is a plain append.

        Raises:
            CommitConflict: another writer committed `transaction` first, or the table kept changing.
        """
        latest = to_storage(_latest_per_key(changes, kind))
        duplicates = changes.num_rows - latest.num_rows
        value_columns = [c for c in latest.column_names if c != DELETE_FLAG]
        properties = snapshot_properties(metadata, transaction)
        metrics: dict[str, Any] = {}

        def build(tx: IcebergTransaction, created: bool) -> None:
            from engine.tables.iceberg_merge import merge_into

            metrics.clear()
            metrics.update(merge_into(tx, created, latest, value_columns, kind, properties))

        version = self._commit(uri, latest.select(value_columns).schema, transaction, build, table_properties)
        assert version is not None
        return MergeOutcome(version, duplicates, dict(metrics))

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
            from pyiceberg.io.pyarrow import parquet_file_to_data_file

            discard_files(uri, rewritten)
            rewritten.clear()
            if new_schema is not None and not created:
                _evolve(tx, new_schema, drop_missing=False)
            _ensure_name_mapping(tx)
            candidates, total = _scan_tasks(tx, _slice_filter(tx, where)), len(_scan_tasks(tx))
            metadata_ref, io_ref = ray.put(tx.table_metadata), ray.put(tx._table.io)
            results = ray.get([_without_slice.remote(metadata_ref, io_ref, task, uri, where.selector, storage, prefix)
                               for task in candidates])
            touched = [(task, result) for task, result in zip(candidates, results) if result is not None]
            rewritten.extend(file for _, (remainders, _) in touched for file in remainders)
            io = tx._table.io
            added = [parquet_file_to_data_file(io, tx.table_metadata, f"{uri}/{f.path}")
                     for f in [*rewritten, *new_files]]
            snapshot = tx.update_snapshot(snapshot_properties=properties)
            with snapshot.overwrite() if touched else snapshot.fast_append() as update:
                for task, _ in touched:
                    update.delete_data_file(task.file)
                for data_file in added:
                    update.append_data_file(data_file)
            outcome.update(rows_removed=sum(removed for _, (_, removed) in touched), files_rewritten=len(touched),
                           files_skipped=total - len(candidates))

        try:
            version = self._commit(uri, new_schema, transaction, build, table_properties)
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
        plans = [{_task_identity(t): t for t in loaded.scan(snapshot_id=snapshot_of(loaded, table, v).snapshot_id)
                  .plan_files()} for v in (since, until)]
        differing = [[t for key, t in one.items() if key not in other] for one, other in (plans, plans[::-1])]
        files = [path for tasks in differing for task in tasks
                 for path in (task.file.file_path, *(d.file_path for d in task.delete_files))]
        if not all_on_disk(uri, files):
            return None
        scan = ArrowScan(loaded.metadata, loaded.io, loaded.schema(), AlwaysTrue())
        old, new = (_plain(scan.to_table(tasks)) for tasks in differing)
        return differing_keys(old, new, keys)

    def set_table_properties(self, uri: str, properties: Mapping[str, str]) -> None:
        """Set `properties` on the table, when it exists and lacks them: a catalog commit without a snapshot, so
        the version does not change."""
        loaded = self._load(uri)
        if loaded is not None and any(loaded.metadata.properties.get(k) != v for k, v in properties.items()):
            self._commit(uri, None, None, lambda tx, created: None, properties)

    def table_properties(self, uri: str, table: str) -> dict[str, str]:
        """The table's current properties."""
        return dict(self.open_table(uri, table).metadata.properties)

    def _commit(
        self,
        uri: str,
        schema: pa.Schema | None,
        transaction: Transaction | None,
        build: Callable[[IcebergTransaction, bool], None],
        table_properties: Mapping[str, str] | None = None,
    ) -> int | None:
        """Build a commit on the current table (or a new one from `schema`) and commit it, rebuilding it on a
        fresh table when another writer got in first; returns the new version. `table_properties` are set first,
        in the same commit."""
        from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError, ValidationError

        table_name = ".".join(self.identifier(uri))
        for attempt in range(1, ATTEMPTS + 1):
            loaded = self._load(uri)
            if loaded is not None and transaction is not None:
                committed = _committed(loaded, transaction.app_id)
                if committed is not None and committed >= transaction.version:
                    raise conflict(uri, transaction, committed)
            created = loaded is None
            tx: IcebergTransaction
            if created:
                if schema is None:
                    return None
                self.catalog.create_namespace_if_not_exists(self.identifier(uri)[0])
                tx = self.catalog.create_table_transaction(
                    self.identifier(uri), schema=_nullable(schema), location=uri,
                    properties=TABLE_PROPERTIES | dict(table_properties or {}))
            else:
                assert loaded is not None
                tx = loaded.transaction()
                changed = {k: v for k, v in (table_properties or {}).items() if loaded.metadata.properties.get(k) != v}
                if changed:
                    tx.set_properties(changed)
                _warn_of_earlier_metrics(table_name, loaded, changed)
            if transaction is not None:
                tx.set_properties({MARKER_PREFIX + transaction.app_id: str(transaction.version)})
            try:
                build(tx, created)
            except (ValueError, TypeError, ValidationError) as err:
                raise TableFailed(f"table `{table_name}`: the Iceberg commit cannot be built: {err}",
                                  table=table_name, path=uri) from err
            try:
                committed_table = tx.commit_transaction()
            except (CommitFailedException, TableAlreadyExistsError) as err:
                log.info("table `%s`: commit attempt %d lost to a concurrent commit (%s); retrying",
                         table_name, attempt, err)
                continue
            snapshot = committed_table.current_snapshot()
            return None if snapshot is None else version_of(snapshot)
        error = CommitConflict(
            f"table `{table_name}` kept changing under this commit ({ATTEMPTS} attempts); this writer's work was "
            "discarded; run again", table=table_name, path=uri)
        raise error


def snapshot_properties(values: dict[str, Any], transaction: Transaction | None = None) -> dict[str, str]:
    """Snapshot summary properties carrying `values` as `medallion.<key>` JSON text, and the marker."""
    properties = {METADATA_PREFIX + k: json.dumps(v, sort_keys=True, default=str) for k, v in values.items()}
    if transaction is not None:
        properties |= {APP_ID_KEY: transaction.app_id, APP_VERSION_KEY: str(transaction.version)}
    return properties


def conflict(uri: str, transaction: Transaction, committed: int | None = None) -> CommitConflict:
    """The error of a writer whose batch `transaction` another writer committed first."""
    seen = f" (it is at {committed})" if committed is not None else ""
    return CommitConflict(
        f"batch {transaction.version} of `{transaction.app_id}` was already committed to `{uri}` by another "
        f"writer{seen}; this writer's work was discarded; run again to process what is still new",
        path=uri,
    )


def version_of(snapshot: Snapshot) -> int:
    """The engine version of a snapshot: its sequence number minus one."""
    return (snapshot.sequence_number or 0) - 1


def snapshot_of(table: Table, name: str, version: int) -> Snapshot:
    """The snapshot of engine version `version`.

    Raises:
        TableNotFound: the table has no such version.
    """
    for snapshot in table.snapshots():
        if version_of(snapshot) == version:
            return snapshot
    latest = table.current_snapshot()
    raise TableNotFound(f"table `{name}` has no version {version} (latest is "
                        f"{None if latest is None else version_of(latest)})", table=name, path=table.location())


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` in storage types without field metadata: Iceberg field ids must not travel into files the engine
    writes, where readers would resolve columns by them."""
    return pa.schema([f.with_type(f.type).remove_metadata() for f in storage_schema(schema)])


def _plain(rows: pa.Table) -> pa.Table:
    """`rows` read from an Iceberg table, in storage types without field ids."""
    rows = to_storage(rows)
    return pa.Table.from_arrays(rows.columns, schema=_plain_schema(rows.schema))


def _committed(table: Table, app_id: str) -> int | None:
    value = table.metadata.properties.get(MARKER_PREFIX + app_id)
    return None if value is None else int(value)


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _plain_location(location: str) -> str:
    return location.removeprefix("file://").rstrip("/")


_WIDER = {pa.uint8(): pa.int32(), pa.uint16(): pa.int32(), pa.uint32(): pa.int64(), pa.uint64(): pa.int64()}


def _nullable(schema: pa.Schema) -> pa.Schema:
    """The Arrow schema of the Iceberg columns for `schema`: every column optional (Iceberg requires non-nullable
    Arrow fields for required columns, and the engine's files may hold nulls anywhere), unsigned integers widened
    to the signed type holding all their values (pyiceberg would map uint32 to a 32-bit int)."""
    return pa.schema([f.with_type(_WIDER.get(f.type, f.type)).with_nullable(True).remove_metadata()
                      for f in storage_schema(schema)])


def _evolve(tx: IcebergTransaction, schema: pa.Schema, drop_missing: bool) -> None:
    """Add the columns of `schema` the table lacks (and widen types), in the commit being built; with
    `drop_missing` (an overwrite) also drop the columns `schema` lacks."""
    current = tx.table_metadata.schema()
    present = {f.name for f in current.fields}
    missing = [name for name in present if name not in schema.names] if drop_missing else []
    incoming = _nullable(schema)
    if all(f.name in present for f in incoming) and not missing:
        from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible

        try:
            _check_pyarrow_schema_compatible(current, incoming, format_version=tx.table_metadata.format_version)
            return
        except ValueError:
            pass
    with tx.update_schema() as update:
        update.union_by_name(incoming)
        for name in missing:
            update.delete_column(name)


def _ensure_name_mapping(tx: IcebergTransaction) -> None:
    """Map column names to field ids for files written without ids (what `add_files` does)."""
    from pyiceberg.table import TableProperties

    if tx.table_metadata.name_mapping() is None:
        tx.set_properties({
            TableProperties.DEFAULT_NAME_MAPPING: tx.table_metadata.schema().name_mapping.model_dump_json()})


def _scan_tasks(tx: IcebergTransaction, row_filter: Any = None) -> list[Any]:
    """The scan tasks (data file and its delete files) of the table the commit is built on, those whose file may
    hold rows matching `row_filter`."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.table import DataScan

    snapshot = tx.table_metadata.current_snapshot()
    if snapshot is None:
        return []
    scan = DataScan(tx.table_metadata, tx._table.io, row_filter=AlwaysTrue() if row_filter is None else row_filter,
                    snapshot_id=snapshot.snapshot_id)
    return list(scan.plan_files())


@ray.remote
def _read_task(metadata: Any, io: Any, task: Any) -> pa.Table:
    """One file of a scan plan, as the table's current schema in storage types."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    return _plain(ArrowScan(metadata, io, metadata.schema(), AlwaysTrue()).to_table([task]))


def _read_tasks(table: Table, tasks: list[Any], ray_options: Mapping[str, Any] | None) -> ray.data.Dataset:
    schema = _plain_schema(table.schema().as_arrow())
    if not tasks:
        return ray.data.from_arrow(schema.empty_table())
    metadata, io = ray.put(table.metadata), ray.put(table.io)
    reader = _read_task.options(**dict(ray_options or {}))
    return ray.data.from_arrow_refs([reader.remote(metadata, io, task) for task in tasks])  # type: ignore[misc]


def _warn_of_earlier_metrics(table: str, loaded: Table, changed: Mapping[str, str]) -> None:
    """Warn when columns are kept out of the metrics of a table whose earlier files' manifests hold theirs."""
    hidden = [k.removeprefix(METRICS_PREFIX) for k, v in changed.items() if k.startswith(METRICS_PREFIX) and v == "none"]
    if hidden and loaded.current_snapshot() is not None:
        log.warning("table `%s`: columns %s are kept out of column metrics from this commit on, but the manifests of "
                    "the files committed before still hold their counts and bounds; rebuild the table (`medallion "
                    "run PIPELINE --full-refresh --select %s`) and expire its older snapshots with the catalog's "
                    "tools", table, ", ".join(f"`{c}`" for c in hidden), table)


def _task_identity(task: Any) -> tuple[str, tuple[str, ...]]:
    """A scan task's data file and delete files: equal identities read the same rows."""
    return task.file.file_path, tuple(sorted(d.file_path for d in task.delete_files))


def _slice_filter(tx: IcebergTransaction, where: Slice) -> Any:
    """An Iceberg filter keeping the files whose metrics may hold rows of `where` (every file when the slice
    has no bounds, or its bounds do not fit the column's type)."""
    from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, LessThanOrEqual
    from pyiceberg.expressions.visitors import bind

    if where.column is None or where.low is None or where.high is None:
        return AlwaysTrue()
    bounds = And(GreaterThanOrEqual(where.column, where.low), LessThanOrEqual(where.column, where.high))
    try:
        bind(tx.table_metadata.schema(), bounds, case_sensitive=True)
    except (TypeError, ValueError):
        return AlwaysTrue()
    return bounds


@ray.remote
def _without_slice(metadata: Any, io: Any, task: Any, uri: str, selector: pc.Expression, storage: StorageSettings,
                   prefix: str) -> tuple[list[DataFile], int] | None:
    """One data file of a scan plan rewritten without the slice's rows (see `replace.remainder`)."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    rows = _plain(ArrowScan(metadata, io, metadata.schema(), AlwaysTrue()).to_table([task]))
    return remainder(rows, selector, RollingParquetWriter(uri, storage, prefix))
