"""The bytes of a large table's backup moved by Ray tasks: its files copied and its rows hashed a group of files per
task, so that they pass through the cluster's workers, not through the process taking the backup, which handles
only the lists of files. A small table is copied and hashed in that process, where starting tasks would cost more
than the work."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from engine.errors import MaintenanceError
from engine.keyhash import key_hash
from engine.storage import filesystem_of
from engine.tables.delta import read_data_file
from engine.tables.files import groups_of_bytes

TASKS_FROM_BYTES = 64 * 2**20
"""A table whose data files hold more bytes than this is copied and hashed by Ray tasks."""
BYTES_PER_TASK = 256 * 2**20
"""About how many bytes of files one task copies or hashes."""


def copy_bytes(source: str, target: str) -> None:
    """Copy the file at `source` to `target` (local paths or URIs) byte for byte, creating its folder.

    Raises:
        MaintenanceError: the file cannot be read or written, naming it.
    """
    try:
        source_fs, source_path = filesystem_of(source)
        target_fs, target_path = filesystem_of(target)
        target_fs.create_dir(target_path.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(source_path, target_path, source_filesystem=source_fs, destination_filesystem=target_fs)
    except (OSError, pa.ArrowException) as err:
        raise MaintenanceError(f"cannot copy `{source}`: {err}", path=source) from err


def copy_in_tasks(files: Sequence[tuple[str, str]], size: int, need_ray: Callable[[], None]) -> None:
    """Copy each (source, target) file in Ray tasks, a group of files per task; `size`: their bytes in all.

    Raises:
        MaintenanceError: a file could not be copied, naming it.
    """
    import ray

    need_ray()
    copy_group = ray.remote(_copy_group)
    for failures in ray.get([copy_group.remote(group) for group in groups_of_bytes(files, size, BYTES_PER_TASK)]):
        if failures:
            raise MaintenanceError(failures[0])


def hash_in_tasks(files: Sequence[str], size: int, schema: pa.Schema, columns: Sequence[str],
                  need_ray: Callable[[], None]) -> tuple[int, int]:
    """The rows of the data files, read in the table's `schema`, and the sum modulo 2**64 of the hash of their
    `columns`, computed by Ray tasks, a group of files per task (`size`: their bytes in all): the same as
    `backup.content_hash` reading them in this process.

    Raises:
        MaintenanceError: a file could not be read, naming it.
    """
    import ray

    need_ray()
    hash_group = ray.remote(_hash_group)
    parts = ray.get([hash_group.remote(group, schema, list(columns)) for group in groups_of_bytes(files, size, BYTES_PER_TASK)])
    if failures := [failure for _, _, failure in parts if failure]:
        raise MaintenanceError(failures[0])
    return sum(rows for rows, _, _ in parts), sum(total for _, total, _ in parts) % 2**64


def _copy_group(files: Sequence[tuple[str, str]]) -> list[str]:
    """Copy the files; the messages of those that could not be (a task reports them instead of raising, so the
    driver's error stays one line)."""
    failures = []
    for source, target in files:
        try:
            copy_bytes(source, target)
        except MaintenanceError as err:
            failures.append(str(err))
    return failures


def _hash_group(uris: Sequence[str], schema: pa.Schema, columns: Sequence[str]) -> tuple[int, int, str | None]:
    """Rows, hash sum and the message of the first file that could not be read (reported, not raised, so that
    the driver's error stays one line)."""
    rows, total = 0, np.uint64(0)
    for uri in uris:
        try:
            table = read_data_file(uri, schema).select(list(columns))
        except (OSError, pa.ArrowException) as err:
            return rows, int(total), f"cannot read `{uri}`: {err}"
        rows += table.num_rows
        if table.num_rows:
            with np.errstate(over="ignore"):
                total += key_hash(table, list(columns)).sum(dtype=np.uint64)
    return rows, int(total), None
