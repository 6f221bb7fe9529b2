"""Table formats: which module stores a table (Delta Lake by default, or Apache Iceberg), chosen per table.

The runner asks `TableFormats.for_table(name)` for a `TableStore` and calls the same operations whatever the
format; a table whose location already holds a table of the other format is refused with `TableFormatError`.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake.transaction import Transaction

from engine.arrow import storage_schema, to_storage
from engine.config import StorageSettings
from engine.errors import TableFormatError
from engine.governance import encryption
from engine.layout import Layout
from engine.names import DELTA, ICEBERG
from engine.tables import delta, delta_age, delta_merge, delta_rewrite, deltalog, progress
from engine.tables.files import ChangeFiles, DataFile, RollingParquetWriter, discard_files

if TYPE_CHECKING:
    import ray.data

    from engine.config import Settings
    from engine.kinds import Merge
    from engine.tables.delta_merge import MergeOutcome
    from engine.tables.iceberg import IcebergTables
    from engine.tables.replace import Replacement, Slice



class KeyReader(Protocol):
    """Reads of a table's rows by key that can be handed to a Ray task."""

    def table_exists(self, uri: str) -> bool: ...
    def read_keys(self, uri: str, table: str, keys: pa.Table) -> pa.Table: ...


class TableStore(Protocol):
    """The operations the engine needs from a table format, on the table at `uri` named `table`."""

    name: str

    def table_exists(self, uri: str) -> bool: ...
    def latest_version(self, uri: str) -> int | None: ...
    def version(self, uri: str, table: str, version: int | None = None) -> int: ...
    def head(self, uri: str, table: str, version: int | None, limit: int) -> pa.Table: ...
    def read_columns(self, uri: str, table: str, columns: Sequence[str]) -> pa.Table: ...
    def read_keys(self, uri: str, table: str, keys: pa.Table) -> pa.Table: ...
    def key_reader(self, uri: str) -> KeyReader: ...
    def row_count(self, uri: str, table: str, version: int | None = None) -> int: ...
    def schema(self, uri: str, table: str) -> pa.Schema: ...
    def as_stored(self, schema: pa.Schema) -> pa.Schema: ...
    def read_dataset(self, uri: str, table: str, version: int | None = None,
                     ray_options: Mapping[str, Any] | None = None) -> ray.data.Dataset: ...
    def read_added_files(self, uri: str, table: str, since: int, until: int,
                         ray_options: Mapping[str, Any] | None = None) -> tuple[ray.data.Dataset, int] | None: ...
    def history(self, uri: str, table: str) -> list[dict[str, Any]]: ...
    def effective_history(self, uri: str, table: str) -> Iterable[dict[str, Any]]: ...
    def last_commit_value(self, uri: str, table: str, key: str) -> Any: ...
    def history_complete(self, uri: str) -> bool: ...
    def last_data_commit(self, uri: str, table: str, version: int | None = None) -> dict[str, Any] | None: ...
    def newest_value(self, uri: str, table: str, column: str, version: int | None = None) -> Any: ...
    def commit_info_value(self, commit: dict[str, Any], key: str) -> Any: ...
    def next_transaction(self, uri: str, app_id: str) -> Transaction: ...
    def commit_files(self, uri: str, files: Sequence[DataFile], *, mode: str, metadata: dict[str, Any],
                     empty_schema: pa.Schema | None = None, commit_empty: bool = False,
                     transaction: Transaction | None = None) -> int | None: ...
    def merge(self, uri: str, table: str, changes: ChangeFiles, kind: Merge, *, metadata: dict[str, Any],
              transaction: Transaction | None, storage: StorageSettings, change_log: str | None) -> MergeOutcome: ...
    def merge_local(self, uri: str, table: str, changes: pa.Table, kind: Merge, *, metadata: dict[str, Any],
                    transaction: Transaction | None) -> MergeOutcome: ...
    def replace(self, uri: str, table: str, where: Slice, new_files: Sequence[DataFile], *,
                storage: StorageSettings, prefix: str, metadata: dict[str, Any],
                transaction: Transaction | None) -> Replacement: ...
    def keep_out_of_stats(self, uri: str, table: str, personal: Collection[str], metadata: dict[str, Any],
                          encrypted: Mapping[str, str], key_columns: Sequence[str]) -> bool: ...
    def table_properties(self, uri: str, table: str, version: int | None = None) -> Mapping[str, str]: ...
    def set_table_properties(self, uri: str, table: str, properties: Mapping[str, str],
                             metadata: dict[str, Any]) -> None: ...
    def rewrite(self, uri: str, table: str, transform: Callable[[pa.Table], pa.Table], *,
                metadata: dict[str, Any], storage: StorageSettings, need_ray: Callable[[], None]) -> int: ...
    def changed_keys(self, uri: str, table: str, since: int, until: int,
                     keys: Sequence[str]) -> pa.Table | None: ...


class DeltaStore:
    """`engine.tables.delta` as a `TableStore`; merges go through the distributed merge (`merge_local`, for
    small change sets, through deltalake's merge)."""

    name = DELTA
    table_exists = staticmethod(delta.table_exists)
    latest_version = staticmethod(delta.latest_version)
    row_count = staticmethod(delta.row_count)
    as_stored = staticmethod(delta.as_stored)
    read_dataset = staticmethod(delta.read_dataset)
    read_added_files = staticmethod(delta.read_added_files)
    read_keys = staticmethod(delta.read_keys)
    history = staticmethod(delta.history)
    effective_history = staticmethod(delta.effective_history)
    last_commit_value = staticmethod(delta.last_commit_value)
    history_complete = staticmethod(progress.history_complete)
    last_data_commit = staticmethod(delta_age.last_data_commit)
    newest_value = staticmethod(delta_age.newest_value)
    commit_info_value = staticmethod(delta.commit_info_value)
    next_transaction = staticmethod(delta.next_transaction)
    commit_files = staticmethod(delta.commit_files)
    rewrite = staticmethod(delta_rewrite.rewrite)
    changed_keys = staticmethod(delta.changed_keys)

    @staticmethod
    def schema(uri: str, table: str) -> pa.Schema:
        return pa.schema(delta.open_table(uri, table).schema().to_arrow())

    @staticmethod
    def key_reader(uri: str) -> KeyReader:
        """A Delta store, whose reads by key open the table in the process that calls them."""
        return DeltaStore()

    @staticmethod
    def version(uri: str, table: str, version: int | None = None) -> int:
        """`version` (the latest when None), checked to exist; raises `TableNotFound` otherwise."""
        return delta.open_table(uri, table, version).version()

    @staticmethod
    def read_columns(uri: str, table: str, columns: Sequence[str]) -> pa.Table:
        """`columns` of every row at the latest version, in this process."""
        return delta.rows_dataset(uri, table).to_table(columns=list(columns))

    @staticmethod
    def head(uri: str, table: str, version: int | None, limit: int) -> pa.Table:
        """The first `limit` rows of the table at `version`."""
        return delta.rows_dataset(uri, table, version).head(limit)

    @staticmethod
    def merge(uri: str, table: str, changes: ChangeFiles, kind: Merge, *, metadata: dict[str, Any],
              transaction: Transaction | None, storage: StorageSettings, change_log: str | None) -> MergeOutcome:
        """The staged `changes` merged by Ray tasks (`distributed_merge`); this process handles their file names,
        and the counts and object refs of their pieces."""
        from engine.tables.distributed_merge import merge_distributed

        return merge_distributed(uri, table, changes, kind, metadata=metadata, transaction=transaction,
                                 buckets=kind.buckets, storage=storage, change_log=change_log)

    @staticmethod
    def merge_local(uri: str, table: str, changes: pa.Table, kind: Merge, *, metadata: dict[str, Any],
                    transaction: Transaction | None) -> MergeOutcome:
        return delta_merge.merge_changes(uri, changes, kind, metadata=metadata, transaction=transaction)

    @staticmethod
    def replace(uri: str, table: str, where: Slice, new_files: Sequence[DataFile], *, storage: StorageSettings,
                prefix: str, metadata: dict[str, Any], transaction: Transaction | None) -> Replacement:
        from engine.tables.replace import replace_slice

        return replace_slice(uri, table, where, new_files, storage=storage, prefix=prefix, metadata=metadata,
                             transaction=transaction)

    @staticmethod
    def keep_out_of_stats(uri: str, table: str, personal: Collection[str], metadata: dict[str, Any],
                          encrypted: Mapping[str, str], key_columns: Sequence[str]) -> bool:
        """`deltalog.keep_out_of_stats`: True when it committed to the table."""
        return deltalog.keep_out_of_stats(uri, personal, metadata, encrypted, key_columns)

    @staticmethod
    def table_properties(uri: str, table: str, version: int | None = None) -> Mapping[str, str]:
        """The table's configuration at `version`."""
        return delta.open_table(uri, table, version).metadata().configuration

    @staticmethod
    def set_table_properties(uri: str, table: str, properties: Mapping[str, str], metadata: dict[str, Any]) -> None:
        """Set `properties` on the table in a commit carrying `metadata`, unless it has them already."""
        loaded = delta.open_table(uri, table)
        current = loaded.metadata().configuration
        changed = {name: value for name, value in properties.items() if current.get(name) != value}
        if changed:
            loaded.alter.set_table_properties(changed, raise_if_not_exists=False,
                                              commit_properties=delta.commit_metadata(metadata))


class IcebergStore:
    """`IcebergTables` as a `TableStore` for a table whose `personal` columns are kept out of the column metrics
    of its manifests (`write.metadata.metrics.column.<name>` = `none`, set in every commit, before any file of
    it is described); what Iceberg cannot do yet raises `TableFormatError`."""

    name = ICEBERG

    def __init__(self, tables: IcebergTables, storage: StorageSettings, personal: Collection[str] = ()) -> None:
        self.tables = tables
        self.storage = storage
        from engine.tables.iceberg import without_metrics

        self.properties = without_metrics(personal)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.tables, attribute)

    def commit_files(self, uri: str, files: Sequence[DataFile], *, mode: str, metadata: dict[str, Any],
                     empty_schema: pa.Schema | None = None, commit_empty: bool = False,
                     transaction: Transaction | None = None) -> int | None:
        return self.tables.commit_files(uri, files, mode=mode, metadata=metadata, empty_schema=empty_schema,
                                        commit_empty=commit_empty, transaction=transaction,
                                        table_properties=self.properties)

    @staticmethod
    def history_complete(uri: str) -> bool:
        """True: the engine never expires Iceberg snapshots, so their summaries keep every commit's progress."""
        return True

    def merge(self, uri: str, table: str, changes: ChangeFiles, kind: Merge, *, metadata: dict[str, Any],
              transaction: Transaction | None, storage: StorageSettings, change_log: str | None) -> MergeOutcome:
        """The staged `changes` merged copy-on-write in one snapshot by Ray tasks (`IcebergTables.merge_staged`);
        this process handles file names, key bounds, counts and object refs. With a `change_log`, the changes older
        than a logged delete of their key are dropped first, and the new deletes logged."""
        return self.tables.merge_staged(uri, table, changes, kind, metadata=metadata, storage=storage,
                                        transaction=transaction, table_properties=self.properties,
                                        change_log=change_log)

    def merge_local(self, uri: str, table: str, changes: pa.Table, kind: Merge, *, metadata: dict[str, Any],
                    transaction: Transaction | None) -> MergeOutcome:
        return self.tables.merge_changes(uri, table, changes, kind, metadata=metadata, transaction=transaction,
                                         table_properties=self.properties)

    def replace(self, uri: str, table: str, where: Slice, new_files: Sequence[DataFile], *,
                storage: StorageSettings, prefix: str, metadata: dict[str, Any],
                transaction: Transaction | None) -> Replacement:
        return self.tables.replace_slice(uri, table, where, new_files, storage=storage, prefix=prefix,
                                         metadata=metadata, transaction=transaction, table_properties=self.properties)

    def keep_out_of_stats(self, uri: str, table: str, personal: Collection[str], metadata: dict[str, Any],
                          encrypted: Mapping[str, str], key_columns: Sequence[str]) -> bool:
        """Keep `personal` columns out of the column metrics of the files the table gets from now on, and record
        the `encrypted` columns (column: key id) and the `key_columns` their values are bound to
        (`encryption.encryption_properties`), in a commit without a snapshot; always False (the table's version
        does not change)."""
        if not self.tables.table_exists(uri):
            return False
        current = self.tables.table_properties(uri, table)
        names = set(self.tables.schema(uri, table).names)
        from engine.tables.iceberg import without_metrics

        wanted = without_metrics([c for c in personal if c in names])
        recorded = {c: key for c, key in encrypted.items() if c in names}
        if recorded or encryption.ENCRYPTED_PROPERTY in current:
            wanted |= encryption.encryption_properties(recorded, key_columns)
        self.tables.set_table_properties(uri, wanted)
        return False

    def table_properties(self, uri: str, table: str, version: int | None = None) -> Mapping[str, str]:
        """The table's current properties (Iceberg keeps no history of them)."""
        return self.tables.table_properties(uri, table)

    def set_table_properties(self, uri: str, table: str, properties: Mapping[str, str],
                             metadata: dict[str, Any]) -> None:
        """Set `properties` on the table, in a commit without a snapshot (`metadata` goes into none)."""
        self.tables.set_table_properties(uri, properties)

    def rewrite(self, uri: str, table: str, transform: Callable[[pa.Table], pa.Table], *,
                metadata: dict[str, Any], storage: StorageSettings, need_ray: Callable[[], None]) -> int:
        """Rewrite every row of the table through `transform`, which keeps the schema, in one overwrite snapshot
        of files written with `storage`'s settings; returns the new version. The rows pass through this process's
        memory, which needs no Ray (`need_ray` is not called).

        Raises:
            TableFormatError: `transform` changes the schema (a declared schema migration), which Iceberg tables
                do not support yet.
        """
        rows = self.tables.read_table(uri, table)
        rewritten = to_storage(transform(rows))
        if not rewritten.schema.equals(storage_schema(rows.schema)):
            raise TableFormatError(f"table `{table}`: rewriting existing rows for a declared schema migration is "
                                   "not supported on Iceberg tables yet; declare the table with "
                                   "`table_format=\"delta\"`", table=table, path=uri)
        writer = RollingParquetWriter(uri, storage, f"rewrite-{uuid.uuid4().hex[:8]}")
        try:
            writer.write(rewritten)
            version = self.commit_files(uri, writer.close(), mode="overwrite", metadata=metadata)
        except BaseException:
            discard_files(uri, writer.close())
            raise
        assert version is not None
        return version


@functools.lru_cache(maxsize=16)
def _iceberg_tables(root: str, catalog_uri: str | None) -> IcebergTables:
    from engine.tables.iceberg import IcebergTables

    return IcebergTables(root, catalog_uri)


def iceberg_store(storage: StorageSettings, personal: Collection[str] = ()) -> IcebergStore:
    """The Iceberg tables of the storage root, in its catalog (one catalog connection per root and URI), for a
    table with `personal` columns."""
    uri = storage.iceberg_catalog_uri.get_secret_value() if storage.iceberg_catalog_uri else None
    return IcebergStore(_iceberg_tables(Layout.at(storage.root).root, uri), storage, personal)


def found_format(uri: str) -> str | None:
    """The format of the table stored at `uri` (a Delta log, or Iceberg metadata files), None when neither."""
    if delta.table_exists(uri):
        return DELTA
    filesystem, path = pafs.FileSystem.from_uri(uri)
    infos = filesystem.get_file_info(pafs.FileSelector(f"{path}/metadata", allow_not_found=True))
    if any(info.base_name.endswith(".metadata.json") for info in infos):
        return ICEBERG
    return None


class TableFormats:
    """The store of every table of a root: the declared format of a pipeline's tables, the one found on disk for
    any other.

    Args:
        settings: the storage root and the Iceberg catalog (the settings or their `storage` section).
        declared: table name -> declared format.
        personal: table name -> its personal-data columns, which its store keeps out of file statistics.
    """

    def __init__(self, settings: Settings | StorageSettings, declared: Mapping[str, str] | None = None,
                 personal: Mapping[str, Collection[str]] | None = None) -> None:
        self.storage = settings if isinstance(settings, StorageSettings) else settings.storage
        self.layout = Layout.at(self.storage.root)
        self.declared = dict(declared or {})
        self.personal = dict(personal or {})
        self._checked: dict[str, TableStore] = {}

    def store(self, table_format: str, personal: Collection[str] = ()) -> TableStore:
        """The store of a format (for a table with `personal` columns)."""
        return iceberg_store(self.storage, personal) if table_format == ICEBERG else DeltaStore()

    def for_table(self, table: str) -> TableStore:
        """The store of `table` (`<layer>.<name>`): its declared format, else the one found at its location.

        Raises:
            TableFormatError: the location holds a table of another format than the declared one.
        """
        if table in self._checked:
            return self._checked[table]
        uri = self.layout.table(table)
        found = found_format(uri)
        declared = self.declared.get(table, found or DELTA)
        if found is not None and found != declared:
            raise TableFormatError(
                f"table `{table}` is declared `{declared}` but `{uri}` holds a {found} table; declare it with "
                f"`table_format=\"{found}\"`, or move the existing table away to rebuild it as {declared}",
                table=table, path=uri)
        self._checked[table] = self.store(declared, self.personal.get(table, ()))
        return self._checked[table]

    def at(self, uri: str) -> TableStore:
        """The store of whatever table lies at `uri` (Delta when nothing does)."""
        return self.store(found_format(uri) or DELTA)
