"""`medallion plan PIPELINE`: what the next run will do to each table and why, before it runs; `medallion diff
TABLE`: what changed between two of its versions."""

from __future__ import annotations

import click
from rich.markup import escape

from engine.changes.options import ChangeKindOption, change_kind_option
from engine.cli.common import address_option, console, reported, settings_of
from engine.errors import EngineError
from engine.layout import Layout


@click.command()
@click.argument("pipeline")
@click.option("--select", "selection", default=None, help="Tables to plan, e.g. 'silver.orders+' or '+gold.*'.")
@click.option("--full-refresh", is_flag=True, help="Plan a run with --full-refresh.")
@change_kind_option
@click.pass_context
@reported
def plan(ctx: click.Context, pipeline: str, selection: str | None, full_refresh: bool,
         change_kind: ChangeKindOption) -> None:
    """What the next run of PIPELINE will do to each table and why: new landing files, inputs moved, changed
    definitions (breaking or not, with a diff), and the rows it will read; reads only logs, writes nothing."""
    from engine.changes.plan import plan as plan_run
    from engine.changes.render import print_plan
    from engine.entrypoints import load_pipeline

    loaded = load_pipeline(pipeline)
    print_plan(console, loaded.name, plan_run(loaded, settings_of(ctx), selection, full_refresh=full_refresh,
                                              change_kind=change_kind))


@click.command("diff")
@click.argument("table")
@click.option("--from", "start", type=int, required=True, help="The earlier version.")
@click.option("--to", "end", type=int, default=None, help="The later version (default: the latest).")
@click.option("--key", "keys", multiple=True,
              help="Key column to compare rows by (repeatable; default: the keys the table's pipeline declares).")
@address_option
@click.pass_context
@reported
def diff(ctx: click.Context, table: str, start: int, end: int | None, keys: tuple[str, ...]) -> None:
    """Schema and row-count changes of TABLE between two versions, and for a keyed table how many keys were
    added, removed and changed."""
    from engine.changes.diff import diff_versions
    from engine.governance.access import authorize
    from engine.runtime import ray_session
    from engine.status import table_location
    from engine.tables.formats import TableFormats

    settings = settings_of(ctx)
    authorize(settings.access, "read", [table], "`medallion diff`")
    uri = table_location(Layout.at(settings.storage.root), table)
    store = TableFormats(settings).at(uri)
    end = store.latest_version(uri) if end is None else end
    keys = keys or _declared_keys(store.last_commit_value(uri, table, "pipeline"), table)
    with ray_session(settings.ray):
        found = diff_versions(store, uri, table, start, end or 0, keys)
    console.print(f"{escape(table)} v{found.start} -> v{found.end}: rows {found.rows_before:,} -> "
                  f"{found.rows_after:,} ({found.rows_after - found.rows_before:+,})")
    for label, names in (("columns added", found.added), ("columns removed", found.removed)):
        if names:
            console.print(f"{label}: {escape(', '.join(names))}")
    for column, before, after in found.retyped:
        console.print(f"column {escape(column)}: {escape(before)} -> {escape(after)}")
    if not found.keys:
        console.print("rows not compared by key: no keys are declared for the table; give --key COLUMN")
    else:
        console.print(f"by key ({escape(', '.join(found.keys))}): {found.keys_added:,} added, "
                      f"{found.keys_removed:,} removed, {found.keys_changed:,} changed")


def _declared_keys(pipeline_name: str | None, table: str) -> tuple[str, ...]:
    """The keys the table's write kind declares in the pipeline that last wrote it, none when it has none."""
    from engine.entrypoints import load_pipeline

    if not pipeline_name:
        return ()
    try:
        definition = load_pipeline(pipeline_name).tables.get(table)
    except EngineError:
        return ()
    return tuple(getattr(definition.kind, "keys", ()) or ()) if definition is not None else ()
