"""Delta Lake tables through deltalake: reads at a version, changed keys between versions, one-commit writes
with application transaction markers, and commit history (merges by key: `engine.tables.delta_merge`)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from itertools import takewhile
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable, Field, Schema, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, Transaction, create_table_with_add_actions

from engine.arrow import key_filter, storage_schema, unify
from engine.errors import CommitConflict, TableNotFound
from engine.metrics import commit_timer
from engine.storage import filesystem_of, parquet_dataset
from engine.tables import progress, snapshots
from engine.tables.delta_files import DataFileEntry, add_actions, data_files, readable_by_files
from engine.tables.files import DataFile

if TYPE_CHECKING:
    import pyarrow.dataset as pads
    import ray.data

METADATA_PREFIX = "medallion."


def commit_metadata(
    values: dict[str, Any], transaction: Transaction | None = None, resets: Sequence[Transaction] = ()
) -> CommitProperties:
    """Commit properties carrying `values` as `medallion.<key>` entries of the commit info, the progress they
    record also as application transactions (`engine.tables.progress`), the application transaction marker
    `transaction` when given (only ever on a table's data commit), and the progress `resets` of a restore."""
    carried = [*([transaction] if transaction else []), *progress.transactions(values), *resets]
    return CommitProperties(custom_metadata={METADATA_PREFIX + k: v for k, v in values.items()},
                            app_transactions=carried or None)


def next_transaction(uri: str, app_id: str) -> Transaction:
    """The application transaction marker for the next commit of `app_id` to the table at `uri`: the
    last committed version for that app plus one (1 for a new table or app)."""
    try:
        last = DeltaTable(uri).transaction_version(app_id)
    except TableNotFoundError:
        last = None
    return Transaction(app_id, (last or 0) + 1)


def ensure_not_committed(table: DeltaTable, transaction: Transaction | None) -> None:
    """Raise when the table already holds a commit of `transaction`'s app at its version or later.

    Raises:
        CommitConflict: another writer committed this batch first.
    """
    if transaction is None:
        return
    committed = table.transaction_version(transaction.app_id)
    if committed is not None and committed >= transaction.version:
        raise conflict(table.table_uri, transaction, committed)


def conflict(uri: str, transaction: Transaction, committed: int | None = None) -> CommitConflict:
    """The error of a writer whose batch `transaction` another writer committed first."""
    seen = f" (it is at {committed})" if committed is not None else ""
    return CommitConflict(
        f"batch {transaction.version} of `{transaction.app_id}` was already committed to `{uri}` by another "
        f"writer{seen}; this writer's work was discarded; run again to process what is still new",
        path=uri,
    )


def as_stored(schema: pa.Schema) -> pa.Schema:
    """`schema` as a Delta table stores it (Delta has no unsigned integers, for example)."""
    return pa.schema(Schema.from_arrow(schema).to_arrow())


def open_table(uri: str, table: str, version: int | None = None) -> DeltaTable:
    """The Delta table at `uri`, at `version` (latest when None).

    Raises:
        TableNotFound: nothing was ever committed there.
    """
    try:
        return DeltaTable(uri, version=version)
    except DeltaError as err:
        if version is not None and table_exists(uri):
            latest = DeltaTable(uri).version()
            reason = (f"its newest is version {latest}; give a version up to {latest} or an ISO-8601 time"
                      if version > latest else
                      f"log cleanup deleted its commit files; give a later version, up to {latest}")
            raise TableNotFound(f"table `{table}` has no version {version}: {reason}", table=table, path=uri) from None
        if not isinstance(err, TableNotFoundError):
            raise
        raise TableNotFound(
            f"table `{table}` has no Delta log at `{uri}`; run the pipeline that builds it first",
            table=table,
            path=uri,
        ) from None


def rows_dataset(uri: str, table: str, version: int | None = None, opened: DeltaTable | None = None) -> pads.Dataset:
    """An Arrow dataset over the table's rows at `version` (or of the already `opened` table), for reads in this
    process: its data files through Arrow's own filesystem, with the table's schema; a table whose files do not
    hold its rows as they are (`readable_by_files`) through deltalake's dataset.

    Arrow's own filesystem also keeps the process clear of deltalake's Python filesystem handler, which Arrow's
    I/O threads may still call into while the interpreter exits, aborting it.
    """
    opened = opened or open_table(uri, table, version)
    if not readable_by_files(opened):
        return opened.to_pyarrow_dataset()
    return parquet_dataset([entry.uri for entry in data_files(uri, opened)],
                           schema=pa.schema(opened.schema().to_arrow()), format="parquet")


def read_rows(uri: str, table: str, version: int | None = None) -> pa.Table:
    """Every row of a small table (run records, check metrics, ...) at `version`, read whole in this process:
    file by file with Parquet's reader, columns a file lacks as nulls, then cast to the table's schema. Lighter
    to start than `rows_dataset` (no Arrow dataset module, which loads pandas) for the reading commands."""
    opened = open_table(uri, table, version)
    if not readable_by_files(opened):
        return rows_dataset(uri, table, opened=opened).to_table()
    schema = pa.schema(opened.schema().to_arrow())
    parts = [read_data_file(entry.uri, schema) for entry in data_files(uri, opened)]
    return pa.concat_tables(parts) if parts else pa.Table.from_batches([], schema)


def read_keys(uri: str, table: str, keys: pa.Table) -> pa.Table:
    """The latest rows whose key columns hold `keys`' values (`arrow.key_filter`: a superset of `keys`' rows,
    which the caller joins on), scanned with that filter so that only those rows come into memory."""
    dataset = rows_dataset(uri, table)
    return dataset.to_table(filter=key_filter(dataset.schema, keys))


def read_data_file(file_uri: str, schema: pa.Schema) -> pa.Table:
    """The rows of one data file of a table whose files are readable as they are (`readable_by_files`), in the
    table's `schema`: columns the file lacks (added to the table later) as nulls."""
    import pyarrow.parquet as pq

    filesystem, path = filesystem_of(file_uri)
    with filesystem.open_input_file(path) as source:
        rows = pq.ParquetFile(source).read()
    return pa.table({f.name: rows[f.name] if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
                     for f in schema}).cast(schema)


class AppendLog:
    """A Delta table that one process appends to again and again, such as the run records and the quality metrics
    of a run: opened once, then kept at the version of its own appends, so that an append reads only the commits
    other writers made since instead of the whole log. Appends of other writers never conflict with it; when one
    changed the table's schema, the append is made again on the table opened anew."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._table: DeltaTable | None = None

    def append(self, rows: pa.Table, *, schema_mode: Literal["merge"] | None = None) -> None:
        """Append `rows` in one commit, creating the table when there is none."""
        if self._table is None and table_exists(self.uri):
            self._table = DeltaTable(self.uri)
        try:
            write_deltalake(self._table or self.uri, rows, mode="append", schema_mode=schema_mode)
        except CommitFailedError:
            if self._table is None:
                raise
            self._table = DeltaTable(self.uri)
            write_deltalake(self._table, rows, mode="append", schema_mode=schema_mode)


def table_exists(uri: str) -> bool:
    """Whether a Delta log exists at `uri` (once it did, known without asking the storage while
    `snapshots.kept()` lasts)."""
    if snapshots.known_to_exist(uri):
        return True
    found = DeltaTable.is_deltatable(uri)
    if found:
        snapshots.remember_exists(uri)
    return found


def latest_version(uri: str) -> int | None:
    """The latest committed version at `uri`, None when there is no table. The table opened to find it is kept
    for reads at that version while `snapshots.kept()` lasts."""
    try:
        opened = DeltaTable(uri)
    except TableNotFoundError:
        return None
    snapshots.remember(uri, opened)
    return opened.version()


def snapshot(uri: str, table: str, version: int | None) -> DeltaTable:
    """The table at `version` (latest when None) to read from: a kept snapshot when there is one
    (`snapshots.kept()`), else the table opened (`open_table`)."""
    kept = snapshots.at_version(uri, version) if version is not None else None
    return kept or open_table(uri, table, version)


def row_count(uri: str, table: str, version: int | None = None) -> int:
    """Rows in the table at `version`, from the Delta log's file statistics (no data is read)."""
    counts = add_actions(snapshot(uri, table, version)).column("num_records")
    return sum(value or 0 for value in counts.to_pylist())


def read_dataset(
    uri: str, table: str, version: int | None = None, ray_options: Mapping[str, Any] | None = None
) -> ray.data.Dataset:
    """A Ray Dataset over the table's files at `version`, read through the Delta log by tasks with the
    resources `ray_options` (one per data file, see `engine.tables.delta_read`)."""
    import ray.data

    from engine.tables.delta_read import read_files

    opened = snapshot(uri, table, version)
    if not readable_by_files(opened):
        return ray.data.read_delta(uri, version=version, ray_remote_args=dict(ray_options or {}))
    return read_files(data_files(uri, opened), pa.schema(opened.schema().to_arrow()), ray_options)


def read_added_files(
    uri: str, table: str, since: int, until: int, ray_options: Mapping[str, Any] | None = None
) -> tuple[ray.data.Dataset, int] | None:
    """The rows added to the table after version `since` up to `until`, and their count.

    Compactions and key rotations in between (`medallion.operation` = `optimize` or `rotate-keys`, or
    deltalake's OPTIMIZE: files rewritten, rows unchanged) and erasures (rows of a subject removed) are seen
    through: the files appended before
    them are read where they still lie, until a vacuum or the erasure deletes them. Returns None when those
    versions did more than add files (an overwrite, merge or delete rewrote or removed data), or an appended
    file is gone, so the caller must read the table in full.
    """
    from engine.tables.delta_read import read_files

    before = set(open_table(uri, table, since).file_uris())
    now = snapshot(uri, table, until)
    if not readable_by_files(now):
        return None
    if before <= set(now.file_uris()):
        added = [entry for entry in data_files(uri, now) if entry.uri not in before]
    else:
        appended = _appended_through_compactions(uri, table, since, until)
        if appended is None:
            return None
        added = appended
    schema = pa.schema(now.schema().to_arrow())
    return read_files(added, schema, ray_options), sum(entry.num_rows or 0 for entry in added)


LOCAL_CHANGE_BYTES = 32 * 2**20
"""Up to this many bytes of files that differ between two versions, `changed_keys` compares their rows in this
process; above, Ray tasks do (`_differing_keys_in_tasks`)."""


def changed_keys(uri: str, table: str, since: int, until: int, keys: Sequence[str]) -> pa.Table | None:
    """The distinct `keys` values of rows that differ between versions `since` and `until`: rows added,
    removed, changed or repeated a different number of times. Only the files one version has and the
    other lacks are read. None when one of them is no longer on disk (an erasure deletes the files that
    held its subject, a vacuum those out of retention): what changed cannot be known, and the caller must
    recompute in full. Above `LOCAL_CHANGE_BYTES` of such files, their rows are compared in Ray tasks and only the
    changed keys reach this process."""
    then = open_table(uri, table, since)
    now = snapshot(uri, table, until)
    before, after = set(then.file_uris()), set(now.file_uris())
    removed, added = sorted(before - after), sorted(after - before)
    if not all_on_disk(uri, [*removed, *added]):
        return None
    schema = pa.schema(now.schema().to_arrow())
    sizes = {entry.uri: entry.size_bytes for entry in [*data_files(uri, then), *data_files(uri, now)]}
    if sum(sizes.get(file, 0) for file in [*removed, *added]) > LOCAL_CHANGE_BYTES:
        return _differing_keys_in_tasks([DataFileEntry(f, sizes.get(f, 0), None) for f in removed],
                                        [DataFileEntry(f, sizes.get(f, 0), None) for f in added], schema, keys)
    old = parquet_dataset(removed, schema=schema, format="parquet").to_table()
    new = parquet_dataset(added, schema=schema, format="parquet").to_table()
    return differing_keys(old, new, keys)


def _differing_keys_in_tasks(removed: Sequence[DataFileEntry], added: Sequence[DataFileEntry], schema: pa.Schema,
                             keys: Sequence[str]) -> pa.Table:
    """`differing_keys` of the rows of the `removed` and `added` files, computed by Ray tasks: the files read by
    whole-file tasks and hash-partitioned on the keys, so every row of a key meets the others in one partition;
    only each partition's changed keys come back."""
    import ray

    from engine.partitioning import co_partition
    from engine.tables.delta_read import read_files

    inputs = {"old": read_files(removed, schema), "new": read_files(added, schema)}
    parts = ray.get(co_partition(inputs, keys, _differing_in_partition, fn_kwargs={"keys": list(keys)})
                    .to_arrow_refs())
    return pa.concat_tables(parts) if parts else pa.schema([schema.field(k) for k in keys]).empty_table()


def _differing_in_partition(old: pa.Table, new: pa.Table, keys: list[str]) -> pa.Table:
    return differing_keys(old, new, keys)


def all_on_disk(uri: str, files: Sequence[str]) -> bool:
    """Whether every one of `files` (URIs of the table at `uri`) still exists."""
    if not files:
        return True
    filesystem, _ = filesystem_of(uri)
    infos = filesystem.get_file_info([filesystem_of(file)[1] for file in files])
    return all(info.type != pafs.FileType.NotFound for info in infos)


def differing_keys(old: pa.Table, new: pa.Table, keys: Sequence[str]) -> pa.Table:
    """The distinct `keys` values of the rows (compared on their non-nested columns) that one of `old` and `new`
    (tables of the same columns) holds a different number of times than the other."""
    import polars as pl

    before, after = pl.from_arrow(old), pl.from_arrow(new)
    assert isinstance(before, pl.DataFrame) and isinstance(after, pl.DataFrame)
    columns = [c for c in after.columns if not isinstance(after.schema[c], pl.List | pl.Struct | pl.Array)]
    counted = [frame.group_by(columns).agg(pl.len().alias("__copies")) for frame in (before, after)]
    changed = counted[0].join(counted[1], on=columns, how="full", nulls_equal=True, coalesce=True).filter(
        pl.col("__copies").ne_missing(pl.col("__copies_right")))
    return changed.select(list(keys)).unique().to_arrow()


def _appended_through_compactions(uri: str, table: str, since: int, until: int) -> list[DataFileEntry] | None:
    """The data files appended after `since` up to `until`, when every commit in between only appended files,
    only compacted them, re-encrypted them under another key (`rotate-keys`: the same rows) or erased a subject
    from them (`medallion.operation` = `erase`: rows only removed, from the downstream tables too) and those
    files are still on disk; else None."""
    rewrites = {c["version"] for c in takewhile(lambda c: c["version"] > since, newest_commits(uri, table))
                if c["version"] <= until and (c.get("operation") == "OPTIMIZE"
                                              or commit_info_value(c, "operation") in ("optimize", "rotate-keys",
                                                                                        "erase"))}
    previous = data_files(uri, open_table(uri, table, since))
    added: list[DataFileEntry] = []
    for version in range(since + 1, until + 1):
        current = data_files(uri, open_table(uri, table, version))
        known = {entry.uri for entry in previous}
        if version not in rewrites:
            if not known <= {entry.uri for entry in current}:
                return None
            added.extend(entry for entry in current if entry.uri not in known)
        previous = current
    return added if all_on_disk(uri, [entry.uri for entry in added]) else None


RESTORED_TO_KEY = "restored_to"


def effective_history(uri: str, table: str) -> Iterator[dict[str, Any]]:
    """Commit infos, newest first, without the commits a restore undid: after a commit recording
    `medallion.restored_to` = k, the commits between k and it are left out. Read as `newest_commits` reads them,
    so a caller that stops early reads only the newest commits."""
    undone_above: int | None = None
    for commit in newest_commits(uri, table):
        if undone_above is not None and commit["version"] > undone_above:
            continue
        undone_above = None
        yield commit
        restored_to = commit_info_value(commit, RESTORED_TO_KEY)
        if restored_to is not None:
            undone_above = int(restored_to)


def last_commit_value(uri: str, table: str, key: str) -> Any:
    """The `medallion.<key>` value of the newest commit that has one and that no restore undid, None when
    none has."""
    if not table_exists(uri):
        return None
    for commit in effective_history(uri, table):
        value = commit_info_value(commit, key)
        if value is not None:
            return value
    return None


def history(uri: str, table: str) -> list[dict[str, Any]]:
    """Commit infos, newest first, each with its `version`."""
    return open_table(uri, table).history()


FIRST_COMMITS_READ = 16
"""How many of a table's newest commit infos `newest_commits` reads first; each further read takes 8 times as
many."""


def newest_commits(uri: str, table: str, opened: DeltaTable | None = None) -> Iterator[dict[str, Any]]:
    """Commit infos, newest first, read from the log a few at a time: a table's whole history grows by a commit
    per run for ever (a micro-batch a minute is 1,440 a day), and most questions are answered by its newest
    commits. `opened`: the table already open at `uri`."""
    opened = opened or open_table(uri, table)
    given, limit = 0, FIRST_COMMITS_READ
    while True:
        commits = opened.history(limit)
        yield from commits[given:]
        if len(commits) < limit:
            return
        given, limit = len(commits), limit * 8


def commit_files(
    uri: str,
    files: Sequence[DataFile],
    *,
    mode: str,
    metadata: dict[str, Any],
    empty_schema: pa.Schema | None = None,
    commit_empty: bool = False,
    transaction: Transaction | None = None,
) -> int | None:
    """Commit already written data files as one transaction; returns the new version.

    `mode` is `append` or `overwrite`. Added columns are merged into the table schema. With no files,
    an append commits nothing (None is returned) unless `commit_empty` asks for a commit that carries
    only its metadata, and an overwrite empties the table; a table that does not exist yet is created
    from `empty_schema`. The data commit carries `transaction`, and is refused when that batch was
    already committed.

    Raises:
        CommitConflict: another writer committed `transaction` first.
    """
    actions = [
        AddAction(f.path, f.size, {}, f.modification_time, True, f.stats) for f in files
    ]
    exists = table_exists(uri)
    if not actions and ((mode == "append" and not commit_empty) or (not exists and empty_schema is None)):
        return None
    properties = commit_metadata(metadata, transaction)
    if not exists:
        new_schema = unify([f.schema for f in files]) if files else storage_schema(empty_schema)
        with commit_timer("create"):
            create_table_with_add_actions(uri, Schema.from_arrow(new_schema), actions, mode="error",
                                          commit_properties=properties)
        snapshots.remember_exists(uri)
        return 0
    table = DeltaTable(uri)
    ensure_not_committed(table, transaction)
    current = pa.schema(table.schema().to_arrow())
    if files:
        new_schema = unify([f.schema for f in files])
    else:
        new_schema = storage_schema(empty_schema) if empty_schema is not None else current
    if mode == "append":
        add_missing_columns(table, new_schema, metadata)
        new_schema = unify([current, new_schema])
    try:
        with commit_timer(mode):
            table.create_write_transaction(actions, mode, new_schema, commit_properties=properties)
    except CommitFailedError as err:
        if transaction is not None and "Concurrent transaction" in str(err):
            raise conflict(uri, transaction) from err
        raise
    return DeltaTable(uri).version()


def add_missing_columns(table: DeltaTable, schema: pa.Schema, metadata: dict[str, Any]) -> None:
    """Add the fields of `schema` that the table lacks, as nullable columns, in a metadata-only commit
    carrying `metadata` but the progress it records (which only the data commit that follows may claim).

    deltalake does not widen the table schema on an append transaction, so this runs first.
    """
    present = set(pa.schema(table.schema().to_arrow()).names)
    missing = [f for f in schema if f.name not in present]
    if missing:
        with commit_timer("add_columns"):
            table.alter.add_columns([Field.from_arrow(f.with_nullable(True)) for f in missing],
                                    commit_properties=commit_metadata(progress.without_progress(metadata)))


def commit_info_value(commit: dict[str, Any], key: str) -> Any:
    """A `medallion.<key>` value of a commit info, JSON-decoded when it was stored as JSON text."""
    value = commit.get(METADATA_PREFIX + key)
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value
