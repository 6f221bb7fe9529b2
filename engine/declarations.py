"""What a pipeline declares about its tables for readers of a root: description, owner, tags, column docs,
freshness target, inputs and landing folder; and the copy every run records in
`<root>/_meta/declarations/<pipeline>.json`.

`medallion status`, `catalog` and `report` take the declarations of the pipeline that built each table from
that copy, as dbt's documentation reads its manifest: they answer from the root alone, without importing the
pipeline's code and the libraries it loads. The copy is what the last run of the pipeline declared; with
`--pipeline NAME` they load the pipeline and use its current code instead. A root whose pipeline never ran
since declarations were recorded falls back to loading the pipeline named in each table's last commit.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError
from engine.freshness import Freshness
from engine.ingest.sources import FileSource
from engine.layout import Layout
from engine.storage import read_bytes, write_bytes
from engine.tables import delta

if TYPE_CHECKING:
    from engine.pipeline import Pipeline, TableDefinition

FORMAT = 1
"""Version of the recorded file's layout."""


@dataclass(frozen=True)
class DeclaredTable:
    """One table as its pipeline declares it, for the catalog, status and report (`columns`: the documented
    columns and their docs, in declaration order)."""

    name: str
    inputs: tuple[str, ...] = ()
    landing: str | None = None
    description: str = ""
    owner: str = ""
    tags: tuple[str, ...] = ()
    columns: tuple[tuple[str, str], ...] = ()
    freshness: Freshness | None = None

    @classmethod
    def of(cls, definition: TableDefinition) -> DeclaredTable:
        """The declarations of a loaded table definition."""
        return cls(definition.name, tuple(definition.inputs),
                   definition.source.directory if isinstance(definition.source, FileSource) else None,
                   definition.description, definition.owner, tuple(definition.tags), tuple(definition.columns.items()),
                   definition.freshness)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary (durations in seconds)."""
        target = self.freshness
        return {
            "name": self.name, "inputs": list(self.inputs), "landing": self.landing,
            "description": self.description, "owner": self.owner, "tags": list(self.tags),
            "columns": dict(self.columns),
            "freshness": None if target is None else {
                "max_age_s": _seconds(target.max_age), "time_column": target.time_column,
                "partition_column": target.partition_column,
                "partition_max_age_s": _seconds(target.partition_max_age)},
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> DeclaredTable:
        """The inverse of `to_json`."""
        target = value.get("freshness")
        return cls(
            str(value["name"]), tuple(value.get("inputs") or ()), value.get("landing"),
            str(value.get("description") or ""), str(value.get("owner") or ""), tuple(value.get("tags") or ()),
            tuple((str(k), str(v)) for k, v in (value.get("columns") or {}).items()),
            None if target is None else Freshness(
                _duration(target.get("max_age_s")), target.get("time_column"), target.get("partition_column"),
                _duration(target.get("partition_max_age_s"))))


@dataclass(frozen=True)
class DeclaredPipeline:
    """A pipeline's name and its tables' declarations, in the order a run builds them."""

    name: str
    tables: tuple[DeclaredTable, ...]

    @classmethod
    def of(cls, pipeline: Pipeline) -> DeclaredPipeline:
        """The declarations of a loaded pipeline."""
        definitions = pipeline.resolve()
        return cls(pipeline.name, tuple(DeclaredTable.of(definitions[name]) for name in pipeline.order()))

    def order(self) -> list[str]:
        """Table names, upstream before downstream."""
        return [table.name for table in self.tables]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {"format": FORMAT, "pipeline": self.name, "tables": [t.to_json() for t in self.tables]}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> DeclaredPipeline:
        """The inverse of `to_json`."""
        return cls(str(value["pipeline"]), tuple(DeclaredTable.from_json(t) for t in value["tables"]))


Declarations = dict[str, tuple[DeclaredPipeline, DeclaredTable]]
"""Table name -> the pipeline declaring it and its declarations."""


def record_declarations(layout: Layout, pipeline: Pipeline) -> None:
    """Record what `pipeline` declares under the root (rewritten only when it changed)."""
    path = layout.declarations(pipeline.name)
    data = json.dumps(DeclaredPipeline.of(pipeline).to_json(), indent=1).encode()
    if read_bytes(path) != data:
        write_bytes(path, data)


def recorded_declarations(layout: Layout, pipeline: str) -> DeclaredPipeline | None:
    """What the last run of `pipeline` under the root declared; None when no run recorded it (or the record is
    of a format this version does not read)."""
    data = read_bytes(layout.declarations(pipeline))
    if data is None:
        return None
    try:
        value = json.loads(data)
        return DeclaredPipeline.from_json(value) if value.get("format") == FORMAT else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def declarations_under(layout: Layout, root_tables: Mapping[str, str],
                       pipelines: Iterable[Pipeline] = ()) -> Declarations:
    """Declarations by table: those of `pipelines` (loaded, current code), then of the pipeline named by the last
    commit of each table in `root_tables` (name -> location) not declared yet, as its last run recorded them
    (else loaded; pipelines that cannot be loaded are skipped)."""
    declared: Declarations = {}
    seen: set[str] = set()

    def add(pipeline: DeclaredPipeline | None) -> None:
        for table in pipeline.tables if pipeline is not None else ():
            declared.setdefault(table.name, (pipeline, table))

    for pipeline in pipelines:
        seen.add(pipeline.name)
        add(DeclaredPipeline.of(pipeline))
    for name, uri in root_tables.items():
        if name in declared or name.startswith("quarantine."):
            continue
        pipeline_name = delta.last_commit_value(uri, name, "pipeline")
        if not pipeline_name or pipeline_name in seen:
            continue
        seen.add(pipeline_name)
        add(recorded_declarations(layout, pipeline_name) or _loaded(pipeline_name))
    return declared


def _loaded(name: str) -> DeclaredPipeline | None:
    from engine.entrypoints import load_pipeline

    try:
        return DeclaredPipeline.of(load_pipeline(name))
    except EngineError:
        return None


def _seconds(value: dt.timedelta | str | None) -> float | None:
    return value.total_seconds() if isinstance(value, dt.timedelta) else None


def _duration(seconds: float | None) -> dt.timedelta | None:
    return None if seconds is None else dt.timedelta(seconds=seconds)
