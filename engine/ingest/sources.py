"""Declarations of landing sources and discovery of the files to ingest."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

import pyarrow.fs as pafs

from engine.errors import IngestError
from engine.storage import filesystem_of

FileFormat = Literal["jsonl", "csv"]
DriftPolicy = Literal["evolve", "rescue", "fail"]
"""What a landing file with other columns than expected does: `evolve` keeps its columns (the table
widens), `rescue` moves unexpected columns into `_rescued_data`, `fail` stops the table's ingestion."""


@dataclass(frozen=True)
class FileSource:
    """Files landing in `<root>/landing/<directory>/`, read as strings exactly as they arrive.

    Attributes:
        directory: folder under the landing root.
        format: `jsonl` (one JSON object per line) or `csv` (with a header line).
        pattern: glob that file names must match.
        delimiter: field separator of CSV files.
        columns: the columns files should have; when None, the columns already in the table (or those of
            the first file ever ingested) are expected.
        on_drift: what to do with a file whose columns or JSON value types differ from the expected ones.
    """

    directory: str
    format: FileFormat
    pattern: str = "*"
    delimiter: str = ","
    columns: tuple[str, ...] | None = None
    on_drift: DriftPolicy = "evolve"


@dataclass(frozen=True, order=True)
class LandingFile:
    """One landing file.

    Attributes:
        name: path relative to the source folder (the `_source_file` value).
        uri: absolute path or URI.
        size: bytes.
        mtime_ns: last modification time in nanoseconds.
    """

    name: str
    uri: str
    size: int
    mtime_ns: int

    def fingerprint(self) -> list[object]:
        """What the ingestion checkpoint records of the file."""
        return [self.name, self.size, self.mtime_ns]


def discover(folder: str, source: FileSource) -> list[LandingFile]:
    """The files of `source` under `folder`, sorted by name. A missing folder has no files.

    Files and folders whose name starts with `.` or `_` (markers, temporary uploads) are left out.
    """
    folder = folder.rstrip("/")
    filesystem, base = filesystem_of(folder)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as err:
        raise IngestError(f"cannot list landing folder `{folder}`: {err}", path=folder) from err
    files = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(base):].lstrip("/")
        hidden = any(part.startswith((".", "_")) for part in relative.split("/"))
        if hidden or not fnmatch.fnmatch(relative.rsplit("/", 1)[-1], source.pattern):
            continue
        files.append(LandingFile(relative, f"{folder}/{relative}", info.size, info.mtime_ns or 0))
    return sorted(files)
