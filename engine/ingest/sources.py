"""Declarations of landing sources, and the landing files found for them (`engine.ingest.discovery`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import pyarrow as pa

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
    """Files landing in `<root>/landing/<directory>/`, read as strings exactly as they arrive, except the
    columns whose types the source declares.

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
        types: Arrow types of columns bronze stores typed, by column name (a `pyarrow.DataType`, or an alias
            such as `"int64"`, `"float64"`, `"date32"`, `"bool"`, `"timestamp[us]"`); `is_declarable` says
            which. A value that does not parse as its column's type is null in that column and kept, as it
            arrived, in the row's `_rescued_data` (`engine.ingest.typed`); the other columns stay strings.
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
    types: Mapping[str, str | pa.DataType] | tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "types", tuple(
            (str(name), str(_declarable(self.directory, name, kind))) for name, kind in dict(self.types).items()))
        for setting, choices in (("growth", Growth), ("on_change", ChangePolicy),
                                 ("on_unreadable", UnreadablePolicy)):
            if getattr(self, setting) not in get_args(choices):
                raise PipelineDefinitionError(
                    f"source `{self.directory}`: unknown {setting} `{getattr(self, setting)}`; choose one of "
                    f"{', '.join(get_args(choices))}", path=self.directory)


    @property
    def column_types(self) -> dict[str, pa.DataType]:
        """The declared Arrow type of each typed column, by column name."""
        return {name: _arrow_type(kind) for name, kind in self.types}


def is_declarable(kind: pa.DataType) -> bool:
    """Whether bronze can store a column of type `kind` typed: integers, floats, decimals, booleans, dates,
    timestamps and strings."""
    return (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
            or pa.types.is_boolean(kind) or kind == pa.date32() or pa.types.is_timestamp(kind)
            or kind == pa.string())


def _declarable(directory: str, name: object, kind: str | pa.DataType) -> pa.DataType:
    """`kind` as an Arrow type a source may declare for column `name`.

    Raises:
        PipelineDefinitionError: `kind` names no Arrow type, or one bronze cannot store typed.
    """
    try:
        arrow = kind if isinstance(kind, pa.DataType) else _arrow_type(str(kind))
    except (ValueError, KeyError, TypeError):
        arrow = None
    if arrow is None or not is_declarable(arrow) or not str(name) or str(name).startswith("_"):
        raise PipelineDefinitionError(
            f"source `{directory}`: cannot declare column `{name}` as `{kind}`; declare a column that does not "
            "start with `_` as an integer, float, decimal, bool, date32, timestamp or string type (e.g. "
            "\"int64\", \"float64\", \"date32\", \"timestamp[us, tz=UTC]\", pyarrow.decimal128(12, 2))",
            path=directory)
    return arrow


def _arrow_type(text: str) -> pa.DataType:
    """The Arrow type `str()` of it gives `text`: an alias such as `int64`, a timestamp with unit and zone, or
    a decimal with precision and scale.

    Raises:
        ValueError: no such type.
    """
    compact = text.replace(" ", "")
    if compact.startswith("decimal128(") and compact.endswith(")"):
        precision, scale = compact.removeprefix("decimal128(").removesuffix(")").split(",")
        return pa.decimal128(int(precision), int(scale))
    if compact.startswith("timestamp[") and compact.endswith("]"):
        unit, _, zone = compact.removeprefix("timestamp[").removesuffix("]").partition(",tz=")
        return pa.timestamp(unit, tz=zone or None)
    return pa.type_for_alias(compact)


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
