"""Backups of a storage root: every table's current version and its pinned ones (their data files and the
log up to the current version) and the metadata under `_meta` (run records, quality metrics, pins, feature
store, MLflow), with a `manifest.json` of the versions, row counts and content hashes; restored and verified
against it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from engine.errors import EngineError, MaintenanceError
from engine.keyhash import key_hash
from engine.layout import META, Layout, absolute_root
from engine.maintenance.backup_tasks import TASKS_FROM_BYTES, copy_bytes, copy_in_tasks, hash_in_tasks
from engine.maintenance.pins import list_pins
from engine.recovery import tables_under
from engine.storage import delta_tables_under, exists, files_under, filesystem_of
from engine.tables.delta import open_table, rows_dataset
from engine.tables.delta_files import data_files, readable_by_files

MANIFEST = "manifest.json"
LOG = "_delta_log"
LEASES = "leases/"
SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True)
class TableSnapshot:
    """One table in a backup.

    Attributes:
        path: the table's folder relative to the root (`silver/orders`, `_meta/runs`).
        version: the version backed up.
        rows: its rows.
        content_hash: a hash of its rows that ignores their order (see `content_hash`).
        files: its data files.
        pinned: older versions whose data files the backup also holds, because a pin needs them.
    """

    path: str
    version: int
    rows: int
    content_hash: str
    files: int
    pinned: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Manifest:
    """What a backup holds.

    Attributes:
        created_at: when the backup was taken (ISO-8601, UTC).
        root: the storage root it was taken from.
        tables: every table, with its version.
        files: the other files under `_meta`, relative to the root, with their SHA-256.
    """

    created_at: str
    root: str
    tables: list[TableSnapshot]
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        record = json.loads(text)
        return cls(record["created_at"], record["root"], [TableSnapshot(**t) for t in record["tables"]],
                   record["files"])


def backup(layout: Layout, destination: str, need_ray: Callable[[], None] | None = None) -> Manifest:
    """Copy the current version of every table under the root (data files plus the log up to it), the data
    files of its pinned older versions, and the other files under `_meta` to `destination` (a local folder
    or a URI), then write its manifest last: a backup without a manifest is incomplete. Runs may go on
    meanwhile; each table is copied at the version it had when its turn came.

    A table of more than `TASKS_FROM_BYTES` is copied and hashed by Ray tasks (`backup_tasks`); `need_ray` is
    called first to make sure Ray is there (default: `runtime.ensure_ray`).

    Raises:
        MaintenanceError: `destination` already holds a backup, or a file could not be copied (the backup then has
            no manifest).
    """
    destination = absolute_root(destination)
    target_fs, target = filesystem_of(destination)
    if target_fs.get_file_info(f"{target}/{MANIFEST}").type != pafs.FileType.NotFound:
        raise MaintenanceError(f"`{destination}` already holds a backup; back up to a new folder",
                               path=destination)
    try:
        manifest = _copy_root(layout, destination, need_ray or _ensure_ray)
    except MaintenanceError as err:
        raise MaintenanceError(f"backup `{destination}` is incomplete (it has no {MANIFEST}): {err}; fix the cause, "
                               "delete the folder and back up again", path=destination) from err
    with target_fs.open_output_stream(f"{target}/{MANIFEST}.partial") as sink:
        sink.write(manifest.to_json().encode())
    target_fs.move(f"{target}/{MANIFEST}.partial", f"{target}/{MANIFEST}")
    return manifest


def _copy_root(layout: Layout, destination: str, need_ray: Callable[[], None]) -> Manifest:
    """Copy the tables and `_meta` files of the root under `destination`; the manifest describing the copy."""
    tables, meta_files = _contents(layout)
    now = datetime.now(UTC)
    snapshots = []
    for uri in tables:
        relative = uri.removeprefix(layout.root + "/")
        current = open_table(uri, relative)
        version = current.version()
        pinned = sorted({p.version for p in list_pins(layout, relative.replace("/", "."), active_at=now)
                         if p.version < version})
        versions = [open_table(uri, relative, v) for v in pinned] + [current]
        data = sorted({path.removeprefix(uri + "/") for table in versions for path in table.file_uris()})
        files = [(f"{uri}/{name}", f"{destination}/{relative}/{name}") for name in [*data, *_log_entries(uri, version)]]
        size = sum(entry.size_bytes for entry in data_files(uri, current))
        if size > TASKS_FROM_BYTES:
            copy_in_tasks(files, size, need_ray)
        else:
            for source, target in files:
                _copy(source, target)
        rows, digest = content_hash(uri, relative, version, need_ray)
        snapshots.append(TableSnapshot(relative, version, rows, digest, len(data), pinned))
    target_fs, target = filesystem_of(destination)
    hashes = {}
    for relative in meta_files:
        _copy(f"{layout.root}/{relative}", f"{destination}/{relative}")
        hashes[relative] = _file_hash(target_fs, f"{target}/{relative}")
    return Manifest(datetime.now(UTC).isoformat(), layout.root, snapshots, hashes)


def _ensure_ray() -> None:
    from engine.runtime import ensure_ray

    ensure_ray()


def read_manifest(source: str) -> Manifest:
    """The manifest of the backup at `source`.

    Raises:
        MaintenanceError: there is none (not a backup, or an incomplete one).
    """
    filesystem, folder = filesystem_of(absolute_root(source))
    try:
        with filesystem.open_input_stream(f"{folder}/{MANIFEST}") as stream:
            text = stream.read().decode()
    except FileNotFoundError:
        raise MaintenanceError(f"backup `{source}` is incomplete: it holds no {MANIFEST} (a backup writes it last, so "
                               "it was interrupted, or the folder is no backup); take a new backup",
                               path=source) from None
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as err:
        raise MaintenanceError(f"backup `{source}` has an unreadable {MANIFEST} ({err!r}); take a new backup",
                               path=source) from None


def restore_backup(source: str, root: str) -> Manifest:
    """Copy the backup at `source` into the storage root `root`, which must hold no table yet.

    Raises:
        MaintenanceError: `source` is no complete backup, or `root` already holds tables.
    """
    manifest = read_manifest(source)
    layout = Layout.at(root)
    present = tables_under(layout) if exists(layout.root) else []
    if present:
        raise MaintenanceError(f"`{layout.root}` already holds {len(present)} table(s); restore a backup into an "
                               "empty root, then point the engine at it", path=layout.root)
    filesystem, folder = filesystem_of(absolute_root(source))
    selector = pafs.FileSelector(folder, recursive=True)
    for info in filesystem.get_file_info(selector):
        relative = info.path.removeprefix(folder).lstrip("/")
        if info.type == pafs.FileType.File and relative != MANIFEST:
            target_fs, target = filesystem_of(f"{layout.root}/{relative}")
            try:
                target_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
                pafs.copy_files(info.path, target, source_filesystem=filesystem, destination_filesystem=target_fs)
            except (OSError, pa.ArrowException) as err:
                raise MaintenanceError(f"restoring backup `{source}` stopped at `{relative}` ({err}); `{layout.root}` "
                                       "is partly restored: empty it and restore again", path=layout.root) from err
    return manifest


def verify_backup(source: str, scratch: str | None = None, need_ray: Callable[[], None] | None = None) -> list[str]:
    """Restore the backup at `source` into `scratch` (a new temporary folder when None, removed after) and
    compare every table's rows and content hash, and every metadata file's hash, with the manifest; returns
    the differences found (none: the backup is sound).

    Raises:
        MaintenanceError: `source` is no complete backup.
    """
    if scratch is None:
        with tempfile.TemporaryDirectory(prefix="medallion-verify-") as folder:
            return verify_backup(source, folder, need_ray)
    manifest = restore_backup(source, scratch)
    root = Layout.at(scratch).root
    problems = []
    for expected in manifest.tables:
        try:
            rows, digest = content_hash(f"{root}/{expected.path}", expected.path, expected.version,
                                        need_ray or _ensure_ray)
        except (EngineError, OSError, pa.ArrowException) as err:
            problems.append(f"`{expected.path}` v{expected.version} cannot be read: {err}")
            continue
        if rows != expected.rows:
            problems.append(f"`{expected.path}` v{expected.version} has {rows} rows, the manifest says {expected.rows}")
        elif digest != expected.content_hash:
            problems.append(f"`{expected.path}` v{expected.version}: its rows differ from the backed-up ones "
                            f"(content hash {digest} != {expected.content_hash})")
    local = pafs.LocalFileSystem()
    for relative, expected_hash in manifest.files.items():
        if local.get_file_info(f"{root}/{relative}").type == pafs.FileType.NotFound:
            problems.append(f"`{relative}` is missing")
        elif _file_hash(local, f"{root}/{relative}") != expected_hash:
            problems.append(f"`{relative}` differs from the backed-up file")
    return problems


def content_hash(uri: str, table: str, version: int, need_ray: Callable[[], None] | None = None) -> tuple[int, str]:
    """The rows of the table at `version` and a hash of them that ignores row order: the sum (modulo 2**64)
    of a stable 64-bit hash of every row's columns, in column-name order. Columns of nested types are left
    out of the hash. A table whose files hold its rows as they are is hashed by Ray tasks when `need_ray` is given
    (it is called first), whatever its size: Parquet's compression makes a file's size no bound on its rows'."""
    opened = open_table(uri, table, version)
    if need_ray is not None and readable_by_files(opened):
        files = data_files(uri, opened)
        if files:
            schema = pa.schema(opened.schema().to_arrow())
            columns = sorted(f.name for f in schema if not pa.types.is_nested(f.type))
            size = sum(f.size_bytes for f in files)
            rows, total = hash_in_tasks([f.uri for f in files], size, schema, columns, need_ray)
            return rows, f"{total:016x}"
    dataset = rows_dataset(uri, table, opened=opened)
    columns = sorted(f.name for f in dataset.schema if not pa.types.is_nested(f.type))
    rows, total = 0, np.uint64(0)
    for batch in dataset.to_batches(columns=columns):
        rows += batch.num_rows
        if batch.num_rows:
            with np.errstate(over="ignore"):
                total += key_hash(pa.Table.from_batches([batch]), columns).sum(dtype=np.uint64)
    return rows, f"{int(total):016x}"


def _contents(layout: Layout) -> tuple[list[str], list[str]]:
    """The Delta tables under the root (data, quarantine, change logs, and `_meta` tables such as the run
    records), and the other files under `_meta` but the run leases (which belong to the processes running
    now, not to the data), relative to the root."""
    meta = layout.meta()
    meta_tables = delta_tables_under(meta)
    skipped = (*(t.removeprefix(meta + "/") + "/" for t in meta_tables), LEASES)
    files = [f"{META}/{name}" for name in files_under(meta) if not name.startswith(skipped)]
    return sorted(tables_under(layout) + meta_tables), sorted(files)


def _log_entries(uri: str, version: int) -> list[str]:
    """The log files a reader needs for versions up to `version`: commits and checkpoints, not later ones."""
    filesystem, folder = filesystem_of(f"{uri}/{LOG}")
    entries = []
    for info in filesystem.get_file_info(pafs.FileSelector(folder)):
        number = info.base_name.split(".", 1)[0]
        if info.type == pafs.FileType.File and number.isdigit() and int(number) <= version:
            entries.append(f"{LOG}/{info.base_name}")
    return entries


def _copy(source: str, target: str) -> None:
    """Copy one file (local paths or URIs); a SQLite database (by its header, whatever its name) through SQLite's
    backup API, so that the copy is consistent, any other file byte for byte.

    Raises:
        MaintenanceError: the file cannot be read or written, naming it.
    """
    source_fs, path = filesystem_of(source)
    target_fs, target_path = filesystem_of(target)
    if not (isinstance(source_fs, pafs.LocalFileSystem) and isinstance(target_fs, pafs.LocalFileSystem)):
        copy_bytes(source, target)
        return
    try:
        if _is_sqlite(source_fs, path):
            target_fs.create_dir(target_path.rsplit("/", 1)[0], recursive=True)
            with closing(sqlite3.connect(path)) as origin, closing(sqlite3.connect(target_path)) as copy:
                origin.backup(copy)
            return
    except (OSError, sqlite3.Error) as err:
        raise MaintenanceError(f"cannot copy `{source}`: {err}", path=source) from err
    copy_bytes(source, target)


def _is_sqlite(filesystem: pafs.FileSystem, path: str) -> bool:
    """Whether the file at `path` starts with SQLite's header (Feast's `registry.db`, for one, does not)."""
    with filesystem.open_input_stream(path) as stream:
        return stream.read(len(SQLITE_HEADER)) == SQLITE_HEADER


def _file_hash(filesystem: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with filesystem.open_input_stream(path) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
