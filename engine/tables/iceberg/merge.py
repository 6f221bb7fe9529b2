"""Merges by key into an Iceberg table: the latest change per key applied copy-on-write in one snapshot.

Same semantics as `engine.tables.delta_merge.merge_changes` (see `IcebergTables.merge_changes`). This process plans
the snapshot from metadata only: the table's data files and the bounds of their key columns, the files the changes'
keys may be in (as the steps holding the changes answer), and the files the steps wrote. The steps
(`engine.tables.iceberg.merge_tasks`) read, join and write rows: as Ray tasks for changes held as object refs (staged
changes, split by hash bucket of the key and reduced in Ray tasks by `staged_latest`), as calls in this process for
changes in memory.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import ray

from engine.config import StorageSettings
from engine.kinds import Merge
from engine.tables.bucket_tasks import SPLIT_BYTES, split_by_bucket
from engine.tables.delta import commit_files
from engine.tables.files import ChangeFiles, discard_files, gathered, groups_of_bytes
from engine.tables.iceberg.merge_tasks import REMOTE, files_holding, reduce_bucket, rewrite_files, write_inserts
from engine.tables.iceberg.scan import scan_tasks
from engine.tables.iceberg.schema import evolve, plain_schema

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile as IcebergDataFile
    from pyiceberg.table import FileScanTask
    from pyiceberg.table import Transaction as IcebergTransaction


def staged_latest(changes: ChangeFiles, kind: Merge, *, table: str, storage: StorageSettings,
                  change_log: str | None, metadata: dict[str, Any]) -> tuple[list[ray.ObjectRef], int]:
    """The staged `changes` split by hash bucket of the key and reduced to the latest per key, by Ray tasks: the refs
    of every bucket's rows, and how many there are. With a `change_log` (a `Merge` that logs its deletes), the
    changes older than a logged delete of their key are dropped, and the deletes not logged yet committed to the log
    (with `metadata`) here, before the table."""
    buckets = max(1, -(-changes.size // SPLIT_BYTES))
    counts, parts = split_by_bucket(changes, kind.keys, buckets, SPLIT_BYTES)
    prefix = f"merge-{uuid.uuid4().hex[:8]}"
    reduced = [reduce_bucket.remote(change_log, table, kind, storage, f"{prefix}-b{bucket}", *parts[bucket])
               for bucket in range(buckets) if counts[bucket]]
    summaries, failure = gathered([summary for summary, _ in reduced])
    logged = [file for _, files in summaries for file in files]
    if failure is not None:
        discard_files(change_log or "", logged)
        raise failure
    if change_log is not None and logged:
        commit_files(change_log, logged, mode="append", metadata=metadata)
    return [rows for _, rows in reduced], sum(count for count, _ in summaries)


def stage_merge(
    tx: IcebergTransaction,
    created: bool,
    schema: pa.Schema,
    pieces: Sequence[Any],
    kind: Merge,
    properties: dict[str, str],
    written: list[IcebergDataFile],
    *,
    in_tasks: bool,
) -> dict[str, int]:
    """Stage in `tx` the snapshot applying `pieces` (the latest change per key, of disjoint keys: tables in memory, or
    object refs with `in_tasks`) to the table, whose columns `schema` (the changes' columns) adds to; returns the
    metrics but `num_source_rows`. Every file the steps wrote is added to `written`, for the caller to delete when
    the commit fails.

    The files whose key bounds may hold a change's key are read, a group of about `SPLIT_BYTES` per step, with the
    changes of the buckets that may match them; a file holding a replaced or deleted row is rewritten (its other
    rows and the replacing changes), any other is left alone. Each bucket's changes that matched nothing and are no
    deletes are written by a step of their own. The snapshot removes the rewritten files and adds the new ones (an
    append when nothing was rewritten).
    """
    if not created:
        evolve(tx, schema, drop_missing=False)
    target = plain_schema(tx.table_metadata.schema().as_arrow())
    steps: _Steps = _InTasks() if in_tasks else _InProcess()
    tasks, bounds = ([], None) if created else key_bounds(tx, kind.keys, target)
    buckets_of = _pieces_of_files(steps, bounds, kind.keys, pieces) if tasks else {}
    candidates = sorted(buckets_of)
    metadata, io = steps.put(tx.table_metadata), steps.put(tx._table.io)
    matched: list[list[Any]] = [[] for _ in pieces]
    summaries = []
    size = sum(tasks[file].file.file_size_in_bytes for file in candidates)
    for group in groups_of_bytes(candidates, size, SPLIT_BYTES):
        buckets = sorted({bucket for file in group for bucket in buckets_of[file]})
        outputs = steps.submit(rewrite_files, 1 + len(buckets), metadata, io, [tasks[file] for file in group], target,
                               kind, *[pieces[bucket] for bucket in buckets])
        summaries.append(outputs[0])
        for bucket, output in zip(buckets, outputs[1:]):
            matched[bucket].append(output)
    inserts = [steps.submit(write_inserts, 1, metadata, io, target, kind, piece, *matched[bucket])
               for bucket, piece in enumerate(pieces)]
    rewrites, failure = steps.gather(summaries)
    inserted, insert_failure = steps.gather(inserts)
    added = [file for _, files, _ in rewrites for file in files] + [file for files, _ in inserted for file in files]
    written.extend(added)
    failure = failure or insert_failure
    if failure is not None:
        raise failure
    by_path = {task.file.file_path: task for task in tasks}
    removed = [by_path[path] for paths, _, _ in rewrites for path in paths]
    tallies = Counter[str]()
    for _, _, counts in rewrites:
        tallies.update(counts)
    snapshot = tx.update_snapshot(snapshot_properties=properties)
    with snapshot.overwrite() if removed else snapshot.fast_append() as update:
        for task in removed:
            update.delete_data_file(task.file)
        for file in added:
            update.append_data_file(file)
    return {"num_target_rows_inserted": sum(count for _, count in inserted),
            "num_target_rows_updated": tallies["updated"], "num_target_rows_deleted": tallies["deleted"],
            "num_target_files_removed": len(removed), "num_target_files_added": len(added),
            "num_target_files_scanned": len(candidates)}


def _pieces_of_files(steps: _Steps, bounds: pa.Table, keys: Sequence[str],
                     pieces: Sequence[Any]) -> dict[int, list[int]]:
    """For every data file (row of `bounds`) whose key bounds may hold the key of a change, the pieces holding such
    changes, as the steps holding the pieces find (`merge_tasks.files_holding`)."""
    bounds_ref = steps.put(bounds)
    holding, failure = steps.gather([steps.submit(files_holding, 1, bounds_ref, list(keys), piece) for piece in pieces])
    if failure is not None:
        raise failure
    pieces_of: dict[int, list[int]] = {}
    for piece, files in enumerate(holding):
        for file in files.tolist():
            pieces_of.setdefault(file, []).append(piece)
    return pieces_of


def key_bounds(tx: IcebergTransaction, keys: Sequence[str], target: pa.Schema) -> tuple[list[FileScanTask], pa.Table]:
    """The scan tasks of the table's data files that may hold a row whose every key column is set, and the bounds of
    their key columns (`lower:<key>`, `upper:<key>`, in the table's types; null where the manifest holds none or it
    does not convert): read from the manifests, no data file."""
    from pyiceberg.conversions import from_bytes
    from pyiceberg.types import PrimitiveType

    schema = tx.table_metadata.schema()
    fields = [schema.find_field(key) for key in keys]
    tasks = [task for task in scan_tasks(tx)
             if task.file.record_count != 0 and not any(_nulls_only(task.file, f.field_id) for f in fields)]
    columns = {}
    for key, field in zip(keys, fields):
        primitive = field.field_type if isinstance(field.field_type, PrimitiveType) else None
        for side in ("lower", "upper"):
            raw = [(getattr(task.file, f"{side}_bounds") or {}).get(field.field_id) for task in tasks]
            values = [None if value is None or primitive is None else from_bytes(primitive, value) for value in raw]
            columns[f"{side}:{key}"] = _typed(values, target.field(key).type)
    return tasks, pa.table(columns)


def _nulls_only(file: IcebergDataFile, field_id: int) -> bool:
    """Whether the file's column `field_id` holds nulls only, as its metrics say."""
    values, nulls = (file.value_counts or {}).get(field_id), (file.null_value_counts or {}).get(field_id)
    return bool(values) and values == nulls


def _typed(values: list[Any], arrow_type: pa.DataType) -> pa.Array:
    """`values` (decoded bounds) as an Arrow array of `arrow_type`; all null when they do not convert."""
    try:
        return pa.array(values, arrow_type)
    except (pa.ArrowException, TypeError, ValueError):
        return pa.nulls(len(values), arrow_type)


class _Failed:
    """What a step that failed in this process returned: the error, passed on like a failed Ray task's outputs."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Steps(Protocol):
    def put(self, value: Any) -> Any: ...
    def submit(self, step: Any, returns: int, *args: Any) -> Any: ...
    def gather(self, outputs: Sequence[Any]) -> tuple[list[Any], Exception | None]: ...


class _InProcess:
    """Runs each step as a call in this process. A step's error is kept as its output and raised by `gather`, once
    every step has run and their files are known; a step given a failed step's output fails alike."""

    @staticmethod
    def put(value: Any) -> Any:
        return value

    @staticmethod
    def submit(step: Any, returns: int, *args: Any) -> Any:
        failed = next((arg for arg in args if isinstance(arg, _Failed)), None)
        if failed is None:
            try:
                return step(*args)
            except Exception as err:
                failed = _Failed(err)
        return failed if returns == 1 else [failed] * returns

    @staticmethod
    def gather(outputs: Sequence[Any]) -> tuple[list[Any], Exception | None]:
        failures = [output.error for output in outputs if isinstance(output, _Failed)]
        return [output for output in outputs if not isinstance(output, _Failed)], next(iter(failures), None)


class _InTasks:
    """Runs each step as a Ray task; this process holds object refs."""

    @staticmethod
    def put(value: Any) -> Any:
        return ray.put(value)

    @staticmethod
    def submit(step: Any, returns: int, *args: Any) -> Any:
        return REMOTE[step.__name__].options(num_returns=returns).remote(*args)

    @staticmethod
    def gather(outputs: Sequence[Any]) -> tuple[list[Any], Exception | None]:
        return gathered(outputs)
