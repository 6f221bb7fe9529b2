"""Declarations of landing sources, and the landing files found for them (`engine.ingest.discovery`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

from engine.errors import PipelineDefinitionError

FileFormat = Literal["jsonl", "csv"]
DriftPolicy = Literal["evolve", "rescue", "fail"]
"""What a landing file with other columns than expected does: `evolve` keeps its columns (the table
widens), `rescue` moves unexpected columns into `_rescued_data`, `fail` stops the table's ingestion."""
Growth = Literal["immutable", "append-only"]
"""How landing files may change once ingested: `immutable` files never do (a change is reported, never
ingested), `append-only` files only grow at the end (the new complete lines are ingested)."""
ChangePolicy = Literal["warn", "fail"]
"""What an ingested file that changed against its `growth` declaration does: `warn` reports it in the run
record and the log, `fail` fails the table."""
UnreadablePolicy = Literal["quarantine", "fail"]
"""What a file that cannot be read at all (not valid UTF-8, or a CSV header repeating a column name, leaving
one empty or using an engine column's name) does: `quarantine` moves it whole to the table's quarantine and ingests
the other files, `fail` fails the table."""


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
        growth: whether ingested files never change (`immutable`) or may grow at the end (`append-only`: the
            complete lines appended since are ingested; a last line without its line break waits for it).
        on_change: what to do with an ingested file that changed otherwise than `growth` allows.
        on_unreadable: what to do with a file that cannot be read at all (`UnreadablePolicy`).
    """

    directory: str
    format: FileFormat
    pattern: str = "*"
    delimiter: str = ","
    columns: tuple[str, ...] | None = None
    on_drift: DriftPolicy = "evolve"
    growth: Growth = "immutable"
    on_change: ChangePolicy = "warn"
    on_unreadable: UnreadablePolicy = "quarantine"

    def __post_init__(self) -> None:
        for setting, choices in (("growth", Growth), ("on_change", ChangePolicy),
                                 ("on_unreadable", UnreadablePolicy)):
            if getattr(self, setting) not in get_args(choices):
                raise PipelineDefinitionError(
                    f"source `{self.directory}`: unknown {setting} `{getattr(self, setting)}`; choose one of "
                    f"{', '.join(get_args(choices))}", path=self.directory)


@dataclass(frozen=True, order=True)
class LandingFile:
    """One landing file.

    Attributes:
        name: path relative to the source folder (the `_source_file` value).
        uri: absolute path or URI.
        size: bytes.
        mtime_ns: last modification time in nanoseconds.
        start: bytes of it already ingested (those of an `append-only` file before it grew).
    """

    name: str
    uri: str
    size: int
    mtime_ns: int
    start: int = 0

    def resumed_at(self, start: int) -> LandingFile:
        """This file, to be ingested from byte `start` on."""
        return dataclasses.replace(self, start=start)

    def fingerprint(self, end: int | None = None) -> list[object]:
        """What the ingestion checkpoint records of the file once ingested up to byte `end` (its size when
        None): name, size, modification time, end."""
        return [self.name, self.size, self.mtime_ns, self.size if end is None else end]
