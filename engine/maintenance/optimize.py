"""Compaction and Z-order: small data files rewritten into files of a target size, clustered by columns.

Compaction runs in Ray tasks, one per group of files, and this process handles only file names, sizes and
the commit. In a plain table, the small files are packed, in the log's order, into groups of up to the target
size. In a hash-bucketed `Merge` table (see `engine.tables.distributed_merge`), each bucket's small files are a
group whose rewritten files keep the bucket's name prefix, so the table stays bucketed and the next merge
still rewrites only the buckets it touches; files outside the bucket layout are left for the next merge to fold
in. A bucketed table is Z-ordered bucket by bucket the same way; a plain table along one curve over the whole
table, sorted by Ray tasks (`engine.maintenance.zorder`), a task writing each stretch of the curve. A table with
partition columns or reader features (written by other tools) is compacted or Z-ordered by deltalake's optimize
in one Ray task. Either way the rewrite is one commit that changes no data (`dataChange: false`) and
carries `medallion.operation` = `optimize` and `medallion.reason`. A writer that appends meanwhile does not stop
it; one that removed a file it rewrote does, and nothing is changed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads
import ray
from deltalake import DeltaTable, WriterProperties
from deltalake.exceptions import DeltaError
from deltalake.transaction import AddAction, RemoveAction

from engine.arrow import storage_schema, to_storage
from engine.config import StorageSettings
from engine.errors import MaintenanceError
from engine.governance.actor import audit_fields
from engine.maintenance.policy import Maintenance
from engine.maintenance.zorder import zorder_indices, zordered
from engine.runtime import ensure_ray
from engine.storage import filesystem_of
from engine.tables.delta import commit_info_value, commit_metadata, newest_commits, open_table
from engine.tables.delta_files import add_actions, data_files, readable_by_files
from engine.tables.distributed_merge import BUCKET_FILE
from engine.tables.files import DataFile, RollingParquetWriter, discard_files, gather_written, opaque_columns

OPERATION = "optimize"
COMMIT_TOKEN = "commit_token"
"""Commit info key (`medallion.commit_token`) of a value only one compaction's commit carries."""
PACKED_PREFIX = "compacted-"
_SLICE_ROWS = 1 << 16
_LOOSE = ""
_COMPRESSION = {"zstd": "ZSTD", "snappy": "SNAPPY", "lz4": "LZ4", "gzip": "GZIP", "none": "UNCOMPRESSED"}


@dataclass(frozen=True)
class Optimized:
    """What one optimize did to one table.

    Attributes:
        table: the table's name.
        version: the commit it made, None when there was nothing to rewrite.
        files_before: data files of the table before.
        files_after: data files after.
        files_rewritten: files replaced by the rewrite.
        bucketed: the table is hash-bucketed and was compacted within its buckets.
        z_order: the columns the rewritten files were clustered by.
    """

    table: str
    version: int | None
    files_before: int
    files_after: int
    files_rewritten: int
    bucketed: bool
    z_order: tuple[str, ...]


def target_bytes(storage: StorageSettings, policy: Maintenance) -> int:
    """The size of compacted files: the table's declared one, else `storage.target_file_mb`."""
    return (policy.target_file_mb or storage.target_file_mb) * 2**20


def compactable_files(opened: DeltaTable, target: int) -> int:
    """How many files compaction would merge in the `opened` table: files under half the target size, counted
    only in groups (the table, or each bucket of a bucketed table) that hold at least two of them."""
    paths, sizes = _files(opened)
    groups = _groups(paths)
    small = {p for p, s in zip(paths, sizes) if s < target // 2}
    counts = [sum(1 for p in members if p in small) for key, members in groups.items() if key != _LOOSE]
    return sum(c for c in counts if c >= 2)


def optimize_table(uri: str, table: str, *, storage: StorageSettings, policy: Maintenance | None = None,
                   reason: str) -> Optimized:
    """Compact the table's small files to the target size, and cluster its files by `policy.z_order` (which
    rewrites every file), in one commit; the rows are rewritten by Ray tasks (on the Ray in use, else a private
    instance, as `runtime.ensure_ray` starts one).

    Raises:
        TableNotFound: there is no table at `uri`.
        MaintenanceError: a z-order column is not in the table, or the rewrite or its commit failed (for
            example because another writer committed meanwhile).
    """
    policy = policy or Maintenance()
    delta_table = open_table(uri, table)
    schema = pa.schema(delta_table.schema().to_arrow())
    missing = [c for c in policy.z_order if c not in schema.names]
    if missing:
        raise MaintenanceError(f"table `{table}` has no column(s) {missing} to z-order by; its columns are "
                               f"{schema.names}", table=table, path=uri)
    paths, _ = _files(delta_table)
    metadata = audit_fields(OPERATION, reason) | {"table": table} | (
        {"z_order": ",".join(policy.z_order)} if policy.z_order else {})
    target = target_bytes(storage, policy)
    bucketed = any(BUCKET_FILE.match(_name(p)) for p in paths)
    ensure_ray()
    try:
        if bucketed:
            version, rewritten = _rewrite_groups(delta_table, table, storage, policy, target, metadata,
                                                 _bucket_work(delta_table, policy, target))
        elif not readable_by_files(delta_table):
            version, rewritten = _optimize_with_deltalake(delta_table, table, storage, policy, target, metadata)
        elif policy.z_order:
            version, rewritten = _zorder_plain(delta_table, table, storage, policy, target, metadata)
        else:
            version, rewritten = _rewrite_groups(delta_table, table, storage, policy, target, metadata,
                                                 _packed_work(delta_table, target))
    except DeltaError as err:
        raise MaintenanceError(f"optimize of `{table}` failed, nothing was changed: {err}; run it again",
                               table=table, path=uri) from err
    after = len(DeltaTable(uri).file_uris()) if version is not None else len(paths)
    return Optimized(table, version, len(paths), after, rewritten, bucketed, policy.z_order)


def _optimize_with_deltalake(delta_table: DeltaTable, table: str, storage: StorageSettings, policy: Maintenance,
                             target: int, metadata: dict[str, str]) -> tuple[int | None, int]:
    """deltalake's compaction or z-order in one Ray task (for a table with partition columns or reader features),
    so that the rows pass through a worker, not this process; the new version (None: nothing rewritten) and files
    rewritten.

    Raises:
        MaintenanceError: the optimize failed in the task, nothing was changed.
    """
    removed, version, failure = ray.get(_optimize_in_task.remote(delta_table.table_uri, storage, policy, target,
                                                                metadata))
    if failure is not None:
        raise MaintenanceError(f"optimize of `{table}` failed, nothing was changed: {failure}; run it again",
                               table=table, path=delta_table.table_uri)
    return version, removed


@ray.remote
def _optimize_in_task(uri: str, storage: StorageSettings, policy: Maintenance, target: int,
                      metadata: dict[str, str]) -> tuple[int, int | None, str | None]:
    """deltalake's compaction (or z-order) of the plain table at `uri`: files rewritten, the new version (None when
    nothing was) and the failure's message (reported, not raised, so that the caller's error stays one line)."""
    compression = _COMPRESSION[storage.compression]
    writer = WriterProperties(compression=compression,  # type: ignore[arg-type]
                              compression_level=storage.compression_level if compression in ("ZSTD", "GZIP")
                              else None)
    properties = commit_metadata(metadata)
    delta_table = DeltaTable(uri)
    try:
        if policy.z_order:
            metrics = delta_table.optimize.z_order(policy.z_order, target_size=target, writer_properties=writer,
                                                   commit_properties=properties)
        else:
            metrics = delta_table.optimize.compact(target_size=target, writer_properties=writer,
                                                   commit_properties=properties)
    except DeltaError as err:
        return 0, None, str(err)
    removed = int(metrics.get("numFilesRemoved", 0))
    return removed, (DeltaTable(uri).version() if removed else None), None


def _bucket_work(delta_table: DeltaTable, policy: Maintenance, target: int) -> dict[str, list[str]]:
    """Per bucket prefix, the files to rewrite: its small files when it has two or more (every file of every
    bucket when z-ordering)."""
    paths, sizes = _files(delta_table)
    size_of = dict(zip(paths, sizes))
    work = {}
    for prefix, members in _groups(paths).items():
        if prefix == _LOOSE:
            continue
        chosen = members if policy.z_order else [p for p in members if size_of[p] < target // 2]
        if len(chosen) >= 2 or (policy.z_order and chosen):
            work[prefix] = chosen
    return work


def _packed_work(delta_table: DeltaTable, target: int) -> dict[str, list[str]]:
    """The small files of a plain table packed, in the log's order, into groups of up to `target` bytes; the
    groups of two or more files, each under a prefix of its own."""
    paths, sizes = _files(delta_table)
    groups: list[list[str]] = []
    total = target
    for path, size in zip(paths, sizes):
        if size >= target // 2:
            continue
        if total + size > target:
            groups.append([])
            total = 0
        groups[-1].append(path)
        total += size
    return {f"{PACKED_PREFIX}{index:05d}": group for index, group in enumerate(groups) if len(group) >= 2}


def _rewrite_groups(delta_table: DeltaTable, table: str, storage: StorageSettings, policy: Maintenance,
                    target: int, metadata: dict[str, str], work: dict[str, list[str]]) -> tuple[int | None, int]:
    """Rewrite each group of `work` (prefix: its files) in a Ray task into files named with its prefix (in Z-order
    of `policy.z_order` within the group, when given); one commit for all. The new version (None: nothing to
    rewrite) and the files rewritten."""
    if not work:
        return None, 0
    uri = delta_table.table_uri.rstrip("/")
    schema = storage_schema(pa.schema(delta_table.schema().to_arrow()))
    sized = storage.model_copy(update={"target_file_mb": max(1, target // 2**20)})
    opaque = opaque_columns(delta_table.metadata().configuration, schema.names)
    refs = [_rewrite_group.remote(uri, prefix, sized, opaque, schema, members, list(policy.z_order))
            for prefix, members in work.items()]
    try:
        written = gather_written(uri, refs)
    except Exception as err:
        raise MaintenanceError(f"compacting table `{table}` failed: {type(err).__name__}: {err}", table=table,
                               path=uri) from err
    removed = sorted(p for members in work.values() for p in members)
    return _commit_rewrite(delta_table, table, written, removed, metadata), len(removed)


def _zorder_plain(delta_table: DeltaTable, table: str, storage: StorageSettings, policy: Maintenance, target: int,
                  metadata: dict[str, str]) -> tuple[int | None, int]:
    """Every file of a plain table rewritten along one Z-order curve over `policy.z_order` (`zorder.zordered`, in
    Ray tasks), a task writing each contiguous block of the curve into files of the target size; one commit."""
    uri = delta_table.table_uri.rstrip("/")
    paths, _ = _files(delta_table)
    if not paths:
        return None, 0
    schema = pa.schema(delta_table.schema().to_arrow())
    blocks = zordered(data_files(uri, delta_table), schema, policy.z_order).to_arrow_refs()
    sized = storage.model_copy(update={"target_file_mb": max(1, target // 2**20)})
    opaque = opaque_columns(delta_table.metadata().configuration, schema.names)
    prefix = f"zorder-{uuid.uuid4().hex[:8]}"
    refs = [_write_block.remote(uri, f"{prefix}-{index:05d}", sized, opaque, block)
            for index, block in enumerate(blocks)]
    try:
        written = gather_written(uri, refs)
    except Exception as err:
        raise MaintenanceError(f"z-ordering table `{table}` failed: {type(err).__name__}: {err}", table=table,
                               path=uri) from err
    return _commit_rewrite(delta_table, table, written, paths, metadata), len(paths)


@ray.remote
def _write_block(uri: str, prefix: str, storage: StorageSettings, opaque: frozenset[str],
                 rows: pa.Table) -> list[DataFile]:
    """One block of rows written, in its order, into files of the target size named with `prefix`."""
    writer = RollingParquetWriter(uri, storage, prefix, opaque)
    try:
        for batch in to_storage(rows).to_batches(max_chunksize=_SLICE_ROWS):
            writer.write(pa.Table.from_batches([batch]))
        return writer.close()
    except BaseException:
        discard_files(uri, writer.close())
        raise


def _commit_rewrite(delta_table: DeltaTable, table: str, written: Sequence[DataFile], removed: Sequence[str],
                    metadata: dict[str, str]) -> int:
    """Commit the `written` files in place of the `removed` ones (paths relative to the table), changing no data;
    the version committed.

    Raises:
        MaintenanceError: another writer removed or rewrote one of the `removed` files meanwhile; the `written`
            files are deleted.
    """
    uri = delta_table.table_uri.rstrip("/")
    size_of = dict(zip(*_files(delta_table)))
    now = int(time.time() * 1000)
    token = uuid.uuid4().hex
    properties = commit_metadata({**metadata, COMMIT_TOKEN: token})
    actions = [*(AddAction(f.path, f.size, {}, f.modification_time, False, f.stats) for f in written),
               *(RemoveAction(p, False, now, size_of[p]) for p in removed)]
    try:
        delta_table.create_write_transaction(actions, "append", delta_table.schema(), commit_properties=properties)
    except DeltaError as err:
        discard_files(uri, written)
        raise MaintenanceError(f"the compaction of `{table}` could not commit ({err}): another writer removed or "
                               "rewrote files it compacted meanwhile; nothing was changed; run the optimize again",
                               table=table, path=uri) from err
    return _version_of(uri, table, token)


def _version_of(uri: str, table: str, token: str) -> int:
    """The version of the commit carrying `token` (writers that appended meanwhile may have moved it on)."""
    return next(commit["version"] for commit in newest_commits(uri, table)
                if commit_info_value(commit, COMMIT_TOKEN) == token)


@ray.remote
def _rewrite_group(uri: str, prefix: str, storage: StorageSettings, opaque: frozenset[str], schema: pa.Schema,
                   paths: list[str], z_order: list[str]) -> list[DataFile]:
    """One group's files `paths` rewritten into files of the target size named with the group's `prefix`, rows
    in Z-order of `z_order` when given."""
    filesystem, root = filesystem_of(uri)
    rows = pads.dataset([f"{root}/{p}" for p in paths], schema=schema, format="parquet",
                        filesystem=filesystem).to_table()
    if z_order:
        rows = rows.take(pa.array(zorder_indices(rows, z_order)))
    writer = RollingParquetWriter(uri, storage, prefix, opaque)
    try:
        for batch in rows.to_batches(max_chunksize=_SLICE_ROWS):
            writer.write(pa.Table.from_batches([batch], schema=schema))
        return writer.close()
    except BaseException:
        discard_files(uri, writer.close())
        raise


def _groups(paths: Sequence[str]) -> dict[str, list[str]]:
    """Data files by bucket prefix (`b00003of00016-k1a2b3c4d`); in a table without buckets, every file in one
    group; files outside the layout of a bucketed table under `_LOOSE`."""
    matches = [BUCKET_FILE.match(_name(p)) for p in paths]
    if not any(matches):
        return {"table": list(paths)}
    groups: dict[str, list[str]] = {}
    for path, match in zip(paths, matches):
        groups.setdefault(match[0][len("part-"):-1] if match else _LOOSE, []).append(path)
    return groups


def _files(delta_table: DeltaTable) -> tuple[list[str], list[int]]:
    """The relative paths and sizes of the table's data files."""
    actions = add_actions(delta_table).select(["path", "size_bytes"])
    return actions.column("path").to_pylist(), actions.column("size_bytes").to_pylist()


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]
