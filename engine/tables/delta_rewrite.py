"""Every row of a Delta table rewritten through a function (a declared schema migration, a key rotation) in one
overwrite commit that also replaces the table's schema.

A table whose data files hold more than `TASKS_FROM_BYTES` is rewritten by Ray tasks, each reading a group of its
files, passing their rows through the function and writing the result as new files: its rows pass through the
cluster's workers, and this process handles the list of files and the commit. A smaller table is rewritten in this
process, where starting tasks would cost more than the work. Either way nothing is committed until every group is
written, and the files of a failed rewrite are deleted.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError
from deltalake.transaction import AddAction

from engine.arrow import to_storage
from engine.config import StorageSettings
from engine.errors import EngineError, TableFailed
from engine.metrics import commit_timer
from engine.tables.delta import commit_metadata, open_table, read_data_file, readable_by_files, rows_dataset
from engine.tables.delta_files import data_files
from engine.tables.files import (
    DataFile,
    RollingParquetWriter,
    discard_files,
    gather_written,
    groups_of_bytes,
    opaque_columns,
)

TASKS_FROM_BYTES = 64 * 2**20
"""A table whose data files hold more bytes than this is rewritten by Ray tasks."""
BYTES_PER_TASK = 128 * 2**20
"""About how many bytes of data files one task rewrites."""

Transform = Callable[[pa.Table], pa.Table]


def rewrite(uri: str, table: str, transform: Transform, *, metadata: dict[str, Any], storage: StorageSettings,
            need_ray: Callable[[], None]) -> int:
    """Rewrite every row of the table through `transform` in one overwrite commit carrying `metadata`, with the
    schema `transform` gives (a declared rename, drop or type change); returns the new version. `need_ray` makes
    Ray available when the table is large enough for tasks.

    Raises:
        TableFailed: a group of files could not be rewritten, or another writer committed to the table meanwhile;
            nothing was changed.
    """
    snapshot = open_table(uri, table)
    source = pa.schema(snapshot.schema().to_arrow())
    target = to_storage(transform(source.empty_table())).schema
    opaque = opaque_columns(snapshot.metadata().configuration, target.names)
    prefix = f"rewrite-{uuid.uuid4().hex[:8]}"
    files = data_files(uri, snapshot)
    size = sum(entry.size_bytes for entry in files)
    written: list[DataFile] = []
    try:
        if not readable_by_files(snapshot):
            written = _written([rows_dataset(uri, table, opened=snapshot).to_table()], transform,
                               RollingParquetWriter(uri, storage, prefix, opaque))
        elif size > TASKS_FROM_BYTES:
            written = _rewrite_in_tasks(uri, [entry.uri for entry in files], size, source, transform, storage,
                                        prefix, opaque, need_ray)
        else:
            written = _rewrite_group(uri, [entry.uri for entry in files], source, transform, storage, prefix, opaque)
        return _commit(snapshot, table, written, target, metadata)
    except Exception as err:
        discard_files(uri, written)
        if isinstance(err, EngineError):
            raise
        raise TableFailed(f"rewriting the rows of table `{table}` failed, nothing was changed: "
                          f"{type(err).__name__}: {err}", table=table, path=uri) from err


def _rewrite_in_tasks(uri: str, files: Sequence[str], size: int, source: pa.Schema, transform: Transform,
                      storage: StorageSettings, prefix: str, opaque: frozenset[str],
                      need_ray: Callable[[], None]) -> list[DataFile]:
    """The files rewritten by Ray tasks, a group of about `BYTES_PER_TASK` each; when one fails, what the others
    wrote is deleted and its error (the exception raised in the task) raised."""
    import ray

    need_ray()
    rewrite_group = ray.remote(_rewrite_group)
    refs = [rewrite_group.remote(uri, group, source, transform, storage, prefix, opaque)
            for group in groups_of_bytes(files, size, BYTES_PER_TASK)]
    return gather_written(uri, refs)


def _rewrite_group(uri: str, files: Sequence[str], source: pa.Schema, transform: Transform,
                   storage: StorageSettings, prefix: str, opaque: frozenset[str]) -> list[DataFile]:
    """The rows of the data `files`, read in the table's `source` schema, passed through `transform` and written as
    new files of the table."""
    return _written((read_data_file(file, source) for file in files), transform,
                    RollingParquetWriter(uri, storage, prefix, opaque))


def _written(parts: Iterable[pa.Table], transform: Transform, writer: RollingParquetWriter) -> list[DataFile]:
    """Each of `parts` passed through `transform` and written by `writer`; what it wrote is deleted again when a
    part fails."""
    try:
        for rows in parts:
            writer.write(to_storage(transform(rows)))
        return writer.close()
    except BaseException:
        discard_files(writer.folder, writer.close())
        raise


def _commit(snapshot: DeltaTable, table: str, files: Sequence[DataFile], schema: pa.Schema,
            metadata: dict[str, Any]) -> int:
    """Replace every file of the `snapshot` with `files`, and the table's schema with `schema`, in one commit that
    another writer's commit since the snapshot fails; the new version."""
    properties = commit_metadata(metadata)
    properties.max_commit_retries = 0
    actions = [AddAction(f.path, f.size, {}, f.modification_time, True, f.stats) for f in files]
    try:
        with commit_timer("rewrite"):
            snapshot.create_write_transaction(actions, "overwrite", schema, commit_properties=properties)
    except DeltaError as err:
        raise TableFailed(f"the rewrite of table `{table}` could not commit ({err}), for example because another "
                          "writer committed meanwhile; nothing was changed; run again", table=table,
                          path=snapshot.table_uri) from err
    return snapshot.version() + 1
