"""`medallion catalog [--search TEXT] [--pipeline NAME] [--json]`: what tables there are and what they hold."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from engine.cli.common import console, loaded_pipelines, pipelines_option, reported, settings_of
from engine.layout import Layout

if TYPE_CHECKING:
    from engine.catalog import CatalogEntry


@click.command()
@click.option("--search", "text", default=None,
              help="Only tables where TEXT occurs (any case) in the name, description, tags, owner, column "
                   "names or column docs.")
@pipelines_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of tables.")
@click.pass_context
@reported
def catalog(ctx: click.Context, text: str | None, pipeline_names: tuple[str, ...], as_json: bool) -> None:
    """Tables with description, owner, tags, schema and column docs, freshness, size and lineage."""
    from engine.catalog import build_catalog, search
    from engine.tables.formats import TableFormats

    settings = settings_of(ctx)
    layout = Layout.at(settings.storage.root)
    pipelines = loaded_pipelines(pipeline_names)
    entries = build_catalog(layout, pipelines, only_pipelines=bool(pipelines), formats=TableFormats(settings))
    if text is not None:
        entries = search(entries, text)
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2, default=str))
        return
    if not entries:
        console.print(f"no table under {escape(layout.root)}" + (f" matches `{escape(text)}`" if text else ""))
        return
    for entry in entries:
        _print_entry(entry)
    problems = sum(len(e.problems) for e in entries)
    console.print(f"{len(entries)} table(s)" + (f", {problems} declaration problem(s)" if problems else ""))


def _print_entry(entry: CatalogEntry) -> None:
    from engine.staleness import LATE, NEVER_BUILT, UNKNOWN

    size = "not built" if entry.version is None else f"v{entry.version}, {entry.rows:,} rows"
    pipeline = f", pipeline {escape(entry.pipeline)})" if entry.pipeline else ")"
    console.print(f"[bold]{escape(entry.table)}[/bold]  ({size}{pipeline}")
    if entry.description:
        console.print(f"  {escape(entry.description)}", soft_wrap=True)
    lines = [("owner", escape(entry.owner or "")), ("tags", escape(", ".join(entry.tags))),
             ("upstream", escape(", ".join(entry.upstream))), ("downstream", escape(", ".join(entry.downstream)))]
    if entry.freshness is not None and entry.freshness.state != "untracked":
        colour = {LATE: "red", UNKNOWN: "yellow"}.get(entry.freshness.state, "green")
        target = escape(entry.freshness.target.describe()) if entry.freshness.target else ""
        shown = escape(entry.freshness.summary())
        said = entry.freshness.reasons in ((), (NEVER_BUILT,))  # none, or in the summary already
        detail = "" if said else f" ({escape(entry.freshness.reason)})"
        lines.append(("freshness", f"[{colour}]{shown}[/{colour}], target {target}{detail}"))
    elif entry.freshness is not None and entry.freshness.age is not None:
        lines.append(("freshness", f"{escape(entry.freshness.summary())}, no target"))
    if entry.matches:
        lines.append(("matched", escape(", ".join(entry.matches))))
    for label, value in lines:
        if value:
            console.print(f"  {label:<10} {value}", soft_wrap=True)
    for problem in entry.problems:
        console.print(f"  problem    {escape(problem)}", style="yellow", soft_wrap=True)
    if entry.columns:
        view = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 2, 0, 4))
        for heading in ("column", "type", "doc"):
            view.add_column(heading)
        for column in entry.columns:
            view.add_row(escape(column.name), escape(column.type or "?"), escape(column.doc))
        console.print(view)
    console.print()
