"""What the next run of a pipeline will do to each table and why, read from the logs and the landing folders
only: no Ray, no data read.

For an ingested table: the new landing files (how many, how big), and a changed definition (which does not
rebuild it). For a derived table: a rebuild (its definition changed, an input changes meaning, or `full_refresh`),
a build (inputs moved since it was built, or move in this run), or nothing; and the rows it will read, as the
logs count them now (rows an input gains in the same run come on top).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from engine.changes.assess import Assessment, assess
from engine.changes.classify import ChangeCategory
from engine.config import Settings
from engine.ingest.checkpoint import every_ingested_file, files_to_ingest, ingestion_checkpoint
from engine.ingest.discovery import discover
from engine.ingest.postgres.source import PostgresSource
from engine.ingest.sources import FileSource
from engine.layout import Layout
from engine.pipeline import Pipeline, TableDefinition
from engine.tables.built_from import consumed_versions
from engine.tables.formats import TableFormats

Action = Literal["ingest", "build", "rebuild", "nothing"]


@dataclass(frozen=True)
class TablePlan:
    """What the next run does to one table.

    Attributes:
        action: `ingest` (new landing files), `build` (new input rows), `rebuild` (emptied and computed in full),
            or `nothing`.
        reasons: why, one short sentence each.
        rows_to_read: input rows it will read as the logs count them now; None for an ingested table.
        more_rows: inputs change earlier in the same run, so it reads their new rows too.
        files: new landing files and their bytes, for an ingested table.
        changed_files: landing files that changed after they were ingested (reported, or refused by the
            source's `on_change="fail"`), for an ingested table.
        change_category: how its definition changed, None when it did not.
        diff: a short diff of its definition as built and now.
    """

    table: str
    action: Action
    reasons: tuple[str, ...] = ()
    rows_to_read: int | None = None
    files: tuple[int, int] | None = None
    more_rows: bool = False
    changed_files: int = 0
    change_category: ChangeCategory | None = None
    diff: tuple[str, ...] = field(default_factory=tuple)


def plan(pipeline: Pipeline, settings: Settings, select: str | None = None, *, full_refresh: bool = False,
         change_kind: ChangeCategory | Mapping[str, ChangeCategory] | None = None) -> list[TablePlan]:
    """The plan of `pipeline`'s selected tables, in the order a run builds them."""
    layout = Layout.at(settings.storage.root)
    formats = TableFormats(settings, {n: d.table_format or settings.storage.table_format
                                      for n, d in pipeline.tables.items()})
    definitions = pipeline.resolve()
    planned: dict[str, TablePlan] = {}
    for name in pipeline.select(select):
        definition = definitions[name]
        override = change_kind.get(name) if isinstance(change_kind, Mapping) else change_kind
        if isinstance(definition.source, PostgresSource):
            planned[name] = _plan_database(definition, definition.source, layout, formats, override,
                                           full_refresh and name in pipeline.named(select))
        elif definition.source is not None:
            planned[name] = _plan_ingest(definition, definition.source, layout, formats, override,
                                         full_refresh and name in pipeline.named(select))
        else:
            planned[name] = _plan_build(definition, layout, formats, planned, full_refresh, override)
    return list(planned.values())


def _plan_ingest(definition: TableDefinition, source: FileSource, layout: Layout, formats: TableFormats,
                 override: ChangeCategory | None, reingest: bool) -> TablePlan:
    uri, store = layout.table(definition.name), formats.for_table(definition.name)
    landed = discover(layout.landing(source.directory), source)
    assessment = assess(definition, layout, formats.for_table, None, override)
    gone = every_ingested_file(uri, definition.name, store) - {f.name for f in landed} \
        if store.table_exists(uri) and (reingest or assessment.change is not None) else set()
    if reingest:
        reasons = [f"full refresh: every landing file ingested again, {len(landed)} file(s), "
                   f"{_size(sum(f.size for f in landed))}"]
        if gone:
            reasons.append(f"refused: {len(gone)} landing file(s) it took in are gone, and their rows would be lost")
        return TablePlan(definition.name, "rebuild", tuple(reasons), files=(len(landed), sum(f.size for f in landed)),
                         **_change(assessment))
    new, changed = files_to_ingest(landed, ingestion_checkpoint(uri, definition.name, [f.name for f in landed],
                                                                store), source)
    reasons = [f"{len(new)} new landing file(s), {_size(sum(f.size - f.start for f in new))}" if new
               else "no new landing files"]
    if changed:
        reasons.append(f"{len(changed)} landing file(s) changed after they were ingested"
                       + (": the run fails the table" if source.on_change == "fail" else ", not ingested again"))
    if assessment.change is not None:
        reasons.append(f"{assessment.reason}; `--full-refresh --select {definition.name}` ingests them all again"
                       + (f", but {len(gone)} it took in are gone from landing" if gone else ""))
    return TablePlan(definition.name, "ingest" if new else "nothing", tuple(reasons),
                     files=(len(new), sum(f.size - f.start for f in new)), changed_files=len(changed),
                     **_change(assessment))


def _plan_database(definition: TableDefinition, source: PostgresSource, layout: Layout, formats: TableFormats,
                   override: ChangeCategory | None, reingest: bool) -> TablePlan:
    """A database source always plans an ingestion: whether its server holds changes is known only by reading its
    slot, which a run does first (and commits nothing when there are none)."""
    assessment = assess(definition, layout, formats.for_table, None, override)
    uri, store = layout.table(definition.name), formats.for_table(definition.name)
    first = reingest or not store.table_exists(uri)
    reasons = [f"{'a new snapshot' if first else 'the changes'} of PostgreSQL table `{source.qualified}` "
               f"(slot `{source.slot_name}`)"]
    if assessment.change is not None:
        reasons.append(assessment.reason)
    return TablePlan(definition.name, "rebuild" if reingest else "ingest", tuple(reasons), **_change(assessment))


def _plan_build(definition: TableDefinition, layout: Layout, formats: TableFormats, planned: Mapping[str, TablePlan],
                full_refresh: bool, override: ChangeCategory | None) -> TablePlan:
    uri, store = layout.table(definition.name), formats.for_table(definition.name)
    consumed = consumed_versions(uri, definition.name, definition.dependencies, store)
    assessment = assess(definition, layout, formats.for_table, consumed, override)
    versions = {t: formats.for_table(t).latest_version(layout.table(t)) for t in definition.dependencies}
    upstream_breaking = next((t for t in definition.dependencies if t in planned and planned[t].action == "rebuild"
                              and planned[t].change_category != "non-breaking"), None)
    reasons: list[str] = []
    if assessment.rebuild:
        reasons.append(assessment.reason)
    elif upstream_breaking is not None:
        reasons.append(f"input `{upstream_breaking}` is rebuilt by a breaking change")
    elif full_refresh:
        reasons.append("full refresh asked for")
    rebuild = bool(reasons)
    if assessment.change is not None and not assessment.rebuild:
        reasons.append(assessment.reason)
    if consumed is None and not rebuild:
        reasons.append("never built")
    moved = [f"`{t}` {_version(consumed.get(t))} -> {_version(versions[t])}" for t in definition.dependencies
             if consumed is not None and consumed.get(t) != versions[t] and assessment.skipped.get(t) != versions[t]]
    if moved:
        reasons.append("inputs moved: " + ", ".join(moved))
    coming = [t for t in definition.dependencies if t in planned and planned[t].action != "nothing"]
    if coming:
        reasons.append(f"changing in this run: {', '.join(f'`{t}`' for t in coming)}")
    passed_over = [t for t in assessment.skipped if consumed is not None and consumed.get(t) != versions[t]]
    if not definition.dependencies:
        reasons.append("reads no table, so every run builds it")
    elif not rebuild and consumed is not None and not moved and not coming:
        if passed_over:
            return TablePlan(definition.name, "build", (
                f"a commit records that it passes over the non-breaking rebuild of "
                f"{', '.join(f'`{t}`' for t in passed_over)}",), 0, **_change(assessment))
        return TablePlan(definition.name, "nothing", tuple(reasons) or (
            "inputs unchanged since the table was last built",), 0, **_change(assessment))
    whole = rebuild or consumed is None or not definition.incremental
    since = {} if whole or consumed is None else consumed
    rows = sum(_rows_to_read(formats, layout, t, version, since.get(t))
               for t in definition.inputs if (version := versions[t]) is not None)
    return TablePlan(definition.name, "rebuild" if rebuild else "build", tuple(reasons), rows,
                     more_rows=bool(coming), **_change(assessment))


def _rows_to_read(formats: TableFormats, layout: Layout, table: str, version: int, since: int | None) -> int:
    store, uri = formats.for_table(table), layout.table(table)
    now = store.row_count(uri, table, version)
    if since is None or since == version:
        return now if since is None else 0
    return max(now - store.row_count(uri, table, since), 0)


def _change(assessment: Assessment) -> dict[str, object]:
    if assessment.change is None:
        return {}
    return {"change_category": assessment.change.kind, "diff": assessment.change.diff}


def _version(version: int | None) -> str:
    return "none" if version is None else f"v{version}"


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
