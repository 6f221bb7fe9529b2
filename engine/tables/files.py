"""Writing Parquet data files and describing them as Delta add actions."""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.arrow import unify
from engine.config import StorageSettings
from engine.storage import filesystem_of, parquet_dataset

T = TypeVar("T")

STATS_PROPERTY = "delta.dataSkippingStatsColumns"
STRING_BOUND_CHARS = 32
OPEN_MAX = "\U0010ffff"
"""The greatest code point: a string upper bound no text exceeds."""
_BOUNDED = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_date,
            pa.types.is_timestamp, pa.types.is_string, pa.types.is_large_string, pa.types.is_boolean)
_TEXT = (pa.types.is_string, pa.types.is_large_string)


def opaque_columns(configuration: Mapping[str, str], names: Iterable[str]) -> frozenset[str]:
    """The columns a table keeps out of its statistics: those its `delta.dataSkippingStatsColumns` property
    does not list (none when the property is not set)."""
    listed = configuration.get(STATS_PROPERTY)
    if listed is None:
        return frozenset()
    kept = set(listed.split(","))
    return frozenset(name for name in names if name not in kept)


@dataclass(frozen=True)
class DataFile:
    """A Parquet file written under a table folder, not yet committed.

    Attributes:
        path: path relative to the table folder.
        size: bytes.
        num_rows: rows in the file.
        stats: Delta statistics JSON (numRecords, nullCount, min/max of integer and date columns).
        modification_time: milliseconds since the epoch.
        schema: the file's Arrow schema.
    """

    path: str
    size: int
    num_rows: int
    stats: str
    modification_time: int
    schema: pa.Schema


@dataclass
class _FileStats:
    """Delta statistics accumulated over the tables written to one file.

    Every column of a type Delta bounds gets a minimum and a maximum: a reader that prunes files by
    statistics (deltalake's `to_pyarrow_dataset`) treats a missing bound as null and drops the file from any
    filter on that column. Text is bounded by its first 32 characters (the maximum then followed by the
    greatest code point); `opaque` columns (kept out of statistics) get bounds that say nothing.
    """

    opaque: frozenset[str] = frozenset()
    num_rows: int = 0
    null_count: dict[str, int] = field(default_factory=dict)
    min_values: dict[str, object] = field(default_factory=dict)
    max_values: dict[str, object] = field(default_factory=dict)

    def add(self, table: pa.Table) -> None:
        self.num_rows += table.num_rows
        for name, column in zip(table.column_names, table.columns):
            self.null_count[name] = self.null_count.get(name, 0) + column.null_count
            if column.null_count == len(column) or not any(is_type(column.type) for is_type in _BOUNDED):
                continue
            text = any(is_type(column.type) for is_type in _TEXT)
            if name in self.opaque:
                if text:
                    self.min_values[name], self.max_values[name] = "", OPEN_MAX
                continue
            extremes = pc.min_max(column)
            low, high = extremes["min"].as_py(), extremes["max"].as_py()
            if isinstance(low, float) and (math.isnan(low) or math.isnan(high)):
                continue
            if text and len(high) > STRING_BOUND_CHARS:
                high = high[:STRING_BOUND_CHARS] + OPEN_MAX
            low = low[:STRING_BOUND_CHARS] if text else low
            self.min_values[name] = min(self.min_values.get(name, low), low)
            self.max_values[name] = max(self.max_values.get(name, high), high)

    def to_json(self) -> str:
        def plain(value: object) -> object:
            if isinstance(value, Decimal):
                return float(value)
            return value.isoformat() if hasattr(value, "isoformat") else value

        return json.dumps({
            "numRecords": self.num_rows,
            "nullCount": self.null_count,
            "minValues": {name: plain(value) for name, value in self.min_values.items()},
            "maxValues": {name: plain(value) for name, value in self.max_values.items()},
        })


@dataclass
class RollingParquetWriter:
    """Writes tables into Parquet files under `folder`, starting a new file at the target size or on a
    schema change.

    Attributes:
        folder: absolute path or URI of the table folder.
        storage: compression and target file size.
        prefix: start of every file name (e.g. a run id).
        opaque: columns kept out of the statistics (see `opaque_columns`).
    """

    folder: str
    storage: StorageSettings
    prefix: str
    opaque: frozenset[str] = frozenset()
    written: list[DataFile] = field(default_factory=list)
    _writer: pq.ParquetWriter | None = None
    _sink: pa.NativeFile | None = None
    _name: str = ""
    _stats: _FileStats = field(init=False)

    def __post_init__(self) -> None:
        self._stats = _FileStats(self.opaque)

    def write(self, table: pa.Table) -> None:
        """Append `table` (already in storage types) to the current file."""
        if table.num_rows == 0:
            return
        if self._writer is not None and not self._writer.schema.equals(table.schema):
            self.close()
        if self._writer is None:
            self._open(table.schema)
        assert self._writer is not None
        self._writer.write_table(table)
        self._stats.add(table)
        assert self._sink is not None
        if self._sink.tell() >= self.storage.target_file_mb * 2**20:
            self.close()

    def close(self) -> list[DataFile]:
        """Finish the current file; returns every file written so far."""
        if self._writer is None:
            return self.written
        assert self._sink is not None
        schema = self._writer.schema
        self._writer.close()
        size = self._sink.tell()
        self._sink.close()
        self._writer, self._sink = None, None
        self.written.append(
            DataFile(
                path=self._name,
                size=size,
                num_rows=self._stats.num_rows,
                stats=self._stats.to_json(),
                modification_time=int(time.time() * 1000),
                schema=schema,
            )
        )
        self._stats = _FileStats(self.opaque)
        return self.written

    def _open(self, schema: pa.Schema) -> None:
        compression = None if self.storage.compression == "none" else self.storage.compression
        self._name = f"part-{self.prefix}-{uuid.uuid4().hex}.{self.storage.compression}.parquet"
        filesystem, path = filesystem_of(f"{self.folder}/{self._name}")
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        self._sink = filesystem.open_output_stream(path)
        self._writer = pq.ParquetWriter(
            self._sink,
            schema,
            compression=compression,
            compression_level=self.storage.compression_level if compression in ("zstd", "gzip") else None,
        )


@dataclass(frozen=True)
class ChangeFiles:
    """A batch of changes to a table, as the Parquet files a run staged them in, which Ray tasks read; this
    process handles only their names and sizes.

    Attributes:
        folder: the staging folder (path or URI).
        files: the staged files, their paths relative to `folder`.
    """

    folder: str
    files: tuple[DataFile, ...]

    @property
    def rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    @property
    def size(self) -> int:
        """Bytes of the files."""
        return sum(f.size for f in self.files)

    @property
    def schema(self) -> pa.Schema:
        """One schema holding every file's columns."""
        return unify([f.schema for f in self.files])

    def groups(self, per_group: int) -> list[ChangeFiles]:
        """The files in groups of about `per_group` bytes, the work of one Ray task each."""
        return [ChangeFiles(self.folder, tuple(group)) for group in groups_of_bytes(self.files, self.size, per_group)]

    def read(self) -> pa.Table:
        """Every change, in this process: for a task's group, or a batch that is small by contract."""
        return parquet_dataset([f"{self.folder}/{f.path}" for f in self.files], schema=self.schema,
                               format="parquet").to_table()


def discard_files(folder: str, files: Iterable[DataFile]) -> None:
    """Delete files written under `folder` that will never be committed; a file already gone is fine."""
    for file in files:
        filesystem, path = filesystem_of(f"{folder}/{file.path}")
        with contextlib.suppress(FileNotFoundError):
            filesystem.delete_file(path)


def groups_of_bytes(items: Sequence[T], size: int, per_group: int) -> list[list[T]]:
    """`items` (files, say) in order, cut into groups of about `per_group` bytes of the `size` they hold in all:
    the work of one Ray task each."""
    count = max(1, -(-size // per_group))
    step = -(-len(items) // count) or 1
    return [list(items[start:start + step]) for start in range(0, len(items), step)]


def gather_written(uri: str, refs: Sequence[Any]) -> list[DataFile]:
    """The files of the table at `uri` that Ray tasks (`refs`, each returning a list of `DataFile`) wrote, once all
    have ended; when one failed, what the others wrote is deleted and the exception raised in that task raised."""
    results, failure = gathered(refs)
    written = [file for files in results for file in files]
    if failure is not None:
        discard_files(uri, written)
        raise failure
    return written


def gathered(refs: Sequence[Any]) -> tuple[list[Any], Exception | None]:
    """The results of the Ray tasks of `refs` that succeeded, once all have ended, and the exception raised in the
    first that failed (the task's own exception, not Ray's wrapper), None when none did."""
    import ray

    results: list[Any] = []
    failure: Exception | None = None
    for ref in refs:
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayError as err:
            cause = err.cause if isinstance(err, ray.exceptions.RayTaskError) else None
            failure = failure or (cause if isinstance(cause, Exception) else err)
    return results, failure
