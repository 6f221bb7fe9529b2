"""The catalog: every table of a root's pipelines with its description, owner, tags, schema (from the table's
log or metadata, Delta or Iceberg alike) with column docs, freshness, size and lineage neighbours, and a search
over them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from engine.config import StorageSettings
from engine.declarations import DeclaredPipeline, DeclaredTable, declarations_under
from engine.layout import Layout
from engine.staleness import TableFreshness, table_freshness
from engine.status import list_tables
from engine.tables.formats import TableFormats
from engine.tables.progress import INPUTS_KEY

if TYPE_CHECKING:
    from engine.pipeline import Pipeline


@dataclass(frozen=True)
class ColumnEntry:
    """One column: its name, type in Delta's names (None when the table was never built) and documentation."""

    name: str
    type: str | None
    doc: str = ""


@dataclass(frozen=True)
class CatalogEntry:
    """One table in the catalog.

    Attributes:
        table: `<layer>.<name>`.
        pipeline: the pipeline that declares it, None for a table under the root that no loadable pipeline
            declares.
        description, owner, tags: as declared.
        columns: the columns of the latest version (documented ones the table lacks are left out and
            reported in `problems`); the documented columns when the table was never built.
        version: latest version, None when never built.
        rows: rows at that version (from the log's statistics).
        freshness: against the declared target (`engine.staleness`).
        upstream: tables it reads (and, for an ingested table, `landing/<folder>`); for a table no loadable
            pipeline declares, the inputs its last commit recorded.
        downstream: tables that read it.
        problems: declaration errors found against the built table (documented columns it lacks).
        matches: what a search matched (`table name`, `column customer_id`, ...).
    """

    table: str
    pipeline: str | None
    description: str
    owner: str
    tags: tuple[str, ...]
    columns: tuple[ColumnEntry, ...]
    version: int | None
    rows: int | None
    freshness: TableFreshness | None
    upstream: tuple[str, ...]
    downstream: tuple[str, ...]
    problems: tuple[str, ...] = ()
    matches: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "table": self.table, "pipeline": self.pipeline, "description": self.description, "owner": self.owner,
            "tags": list(self.tags),
            "columns": [{"name": c.name, "type": c.type, "doc": c.doc} for c in self.columns],
            "version": self.version, "rows": self.rows,
            "freshness": self.freshness.to_json() if self.freshness is not None else None,
            "upstream": list(self.upstream), "downstream": list(self.downstream),
            "problems": list(self.problems), "matches": list(self.matches),
        }


_TYPE_NAMES = {pa.int8(): "byte", pa.int16(): "short", pa.int32(): "integer", pa.int64(): "long",
               pa.float32(): "float", pa.float64(): "double", pa.bool_(): "boolean", pa.string(): "string",
               pa.large_string(): "string", pa.binary(): "binary", pa.large_binary(): "binary", pa.date32(): "date"}


def _type_name(arrow_type: pa.DataType) -> str:
    """The Delta name of a stored column type, whatever the table's format: `long`, `string`, `timestamp`,
    `array<string>`, `struct<a: long, ...>`."""
    if pa.types.is_timestamp(arrow_type):
        return "timestamp" if arrow_type.tz else "timestamp_ntz"
    if pa.types.is_decimal(arrow_type):
        return f"decimal({arrow_type.precision},{arrow_type.scale})"
    if pa.types.is_map(arrow_type):
        return f"map<{_type_name(arrow_type.key_type)}, {_type_name(arrow_type.item_type)}>"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"array<{_type_name(arrow_type.value_type)}>"
    if pa.types.is_struct(arrow_type):
        return "struct<" + ", ".join(f"{f.name}: {_type_name(f.type)}" for f in arrow_type) + ">"
    return _TYPE_NAMES.get(arrow_type, str(arrow_type))


def unknown_column_problems(table: str, documented: Iterable[str], names: Sequence[str]) -> list[str]:
    """One line per documented column that table `table` (with columns `names`) does not have."""
    return [f"table `{table}` documents column `{c}`, which it does not have (columns: {', '.join(names)})"
            for c in documented if c not in names]


def build_catalog(layout: Layout, pipelines: Sequence[Pipeline] = (), *, now: dt.datetime | None = None,
                  only_pipelines: bool = False, formats: TableFormats | None = None) -> list[CatalogEntry]:
    """The catalog of the root: the tables of `pipelines`, then of the pipelines named by the last commit of
    the root's tables, then (unless `only_pipelines`) the root's other tables, upstream before downstream
    within each pipeline. `formats` reads each table in its format (the root's own Iceberg catalog when None)."""
    now = now or dt.datetime.now(dt.UTC)
    formats = formats or TableFormats(StorageSettings(root=layout.root))
    present = {name: uri for name, uri in list_tables(layout).items() if not name.startswith("quarantine.")}
    definitions = declarations_under(layout, {} if only_pipelines else present, pipelines)
    downstream: dict[str, list[str]] = {name: [] for name in definitions}
    for name, (_, definition) in definitions.items():
        for parent in definition.inputs:
            downstream.setdefault(parent, []).append(name)
    ordered: list[str] = []
    for pipeline in dict.fromkeys(p for p, _ in definitions.values()):
        ordered.extend(t for t in pipeline.order() if definitions.get(t, (None,))[0] is pipeline)
    entries = [_entry(formats, name, definitions[name][0], definitions[name][1], downstream.get(name, []), now)
               for name in ordered]
    if not only_pipelines:
        entries.extend(_entry(formats, name, None, None, downstream.get(name, []), now)
                       for name in present if name not in definitions)
    return entries


def _entry(formats: TableFormats, name: str, pipeline: DeclaredPipeline | None, definition: DeclaredTable | None,
           children: Sequence[str], now: dt.datetime) -> CatalogEntry:
    uri, store = formats.layout.table(name), formats.for_table(name)
    docs = dict(definition.columns) if definition is not None else {}
    version = rows = None
    problems: list[str] = []
    if store.table_exists(uri):
        version = store.version(uri, name)
        rows = store.row_count(uri, name, version)
        fields = list(store.schema(uri, name))
        columns = tuple(ColumnEntry(f.name, _type_name(f.type), docs.get(f.name, "")) for f in fields)
        problems = unknown_column_problems(name, docs, [f.name for f in fields])
    else:
        columns = tuple(ColumnEntry(c, None, doc) for c, doc in docs.items())
    upstream: tuple[str, ...] = ()
    if definition is not None:
        upstream = definition.inputs
        if definition.landing is not None:
            upstream = (f"landing/{definition.landing}", *upstream)
    elif version is not None:
        upstream = tuple(sorted(store.last_commit_value(uri, name, INPUTS_KEY) or {}))
    target = definition.freshness if definition is not None else None
    return CatalogEntry(
        table=name,
        pipeline=pipeline.name if pipeline is not None else None,
        description=definition.description if definition is not None else "",
        owner=definition.owner if definition is not None else "",
        tags=definition.tags if definition is not None else (),
        columns=columns,
        version=version,
        rows=rows,
        freshness=table_freshness(store, uri, name, target, now=now, version=version),
        upstream=tuple(upstream),
        downstream=tuple(children),
        problems=tuple(problems),
    )


def search(entries: Iterable[CatalogEntry], text: str) -> list[CatalogEntry]:
    """The entries where `text` occurs, case-insensitively, in the table name, description, a tag, the
    owner, a column name or a column's documentation; each with what matched in `matches`."""
    needle = text.casefold().strip()
    found = []
    for entry in entries:
        matches = []
        if needle in entry.table.casefold():
            matches.append("table name")
        if needle in entry.description.casefold():
            matches.append("description")
        matches += [f"tag {t}" for t in entry.tags if needle in t.casefold()]
        if needle in entry.owner.casefold():
            matches.append("owner")
        for column in entry.columns:
            if needle in column.name.casefold():
                matches.append(f"column {column.name}")
            if needle in column.doc.casefold():
                matches.append(f"doc of column {column.name}")
        if matches:
            found.append(replace(entry, matches=tuple(matches)))
    return found
