"""Writing Parquet data files and describing them as Delta add actions."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.config import StorageSettings
from engine.storage import filesystem_of

_STATS_TYPES = (pa.types.is_integer, pa.types.is_date)


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
    """Delta statistics accumulated over the tables written to one file."""

    num_rows: int = 0
    null_count: dict[str, int] = field(default_factory=dict)
    min_values: dict[str, object] = field(default_factory=dict)
    max_values: dict[str, object] = field(default_factory=dict)

    def add(self, table: pa.Table) -> None:
        self.num_rows += table.num_rows
        for name, column in zip(table.column_names, table.columns):
            self.null_count[name] = self.null_count.get(name, 0) + column.null_count
            if column.null_count == len(column) or not any(is_type(column.type) for is_type in _STATS_TYPES):
                continue
            extremes = pc.min_max(column)
            low, high = extremes["min"].as_py(), extremes["max"].as_py()
            self.min_values[name] = min(self.min_values.get(name, low), low)
            self.max_values[name] = max(self.max_values.get(name, high), high)

    def to_json(self) -> str:
        def plain(value: object) -> object:
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
    """

    folder: str
    storage: StorageSettings
    prefix: str
    written: list[DataFile] = field(default_factory=list)
    _writer: pq.ParquetWriter | None = None
    _sink: pa.NativeFile | None = None
    _name: str = ""
    _stats: _FileStats = field(default_factory=_FileStats)

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
        self._stats = _FileStats()
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
