"""`medallion status`, `history`, `show`, `quality` and `restore`: the commands that read or restore tables."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from engine.cli.common import console, loaded_pipelines, reported, settings_of
from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.config import Settings
    from engine.pipeline import Pipeline
    from engine.staleness import TableFreshness


@click.command()
@click.argument("table", required=False)
@click.option("--version", "version", type=int, default=None, help="Version of TABLE to return to.")
@click.option("--timestamp", "timestamp", default=None,
              help="ISO-8601 time (UTC without a zone) whose state TABLE returns to.")
@click.option("--before-run", "run_id", default=None, help="Undo this run and every later one, on every table.")
@click.option("--reason", default="manual restore", show_default=True, help="Recorded in each restore commit.")
@click.pass_context
@reported
def restore(ctx: click.Context, table: str | None, version: int | None, timestamp: str | None, run_id: str | None,
            reason: str) -> None:
    """Return TABLE to --version or --timestamp, or every table to its state before --before-run, as new commits."""
    from engine.governance.access import authorize
    from engine.layout import Layout
    from engine.recovery import restore_before_run, restore_table
    from engine.status import list_tables, table_location
    from engine.tables.delta import open_table
    from engine.tables.timetravel import parse_as_of, version_as_of

    settings = settings_of(ctx)
    layout = Layout.at(settings.storage.root)
    if (table is None) == (run_id is None) or (table is not None and (version is None) == (timestamp is None)):
        raise EngineError("give either TABLE --version N, or --before-run RUN_ID, or TABLE --timestamp ISO-TIME")
    authorize(settings.access, "manage", [table] if table else list_tables(layout), "a restore")
    if run_id is not None:
        restored = restore_before_run(layout, run_id, reason=reason)
    else:
        uri = table_location(layout, table)
        if timestamp is not None:
            moment = parse_as_of(timestamp)
            if isinstance(moment, int):
                raise EngineError(f"--timestamp takes an ISO-8601 time, not `{timestamp}`; use --version N")
            version = version_as_of(uri, table, moment)
            if version == open_table(uri, table).version():
                raise EngineError(f"table `{table}` has not changed since {moment.isoformat()} (it is at version "
                                  f"{version}); nothing to restore", table=table)
        restored = [restore_table(uri, version, reason=reason)]
    for item in restored:
        state = "emptied" if item.restored_to == -1 else f"back to version {item.restored_to}"
        console.print(f"{escape(item.path.removeprefix(layout.root + '/'))}: {state} (v{item.version})")
    console.print("run the pipeline again to rebuild from the restored state")




@click.command()
@click.option("--as-of", "as_of", default=None, help="ISO-8601 time: every table's state and last run then.")
@click.option("--pipeline", "pipeline_names", multiple=True,
              help="Take freshness targets (and tables not built yet) from this pipeline (repeatable); by "
                   "default from what the last run of the pipeline named in each table's last commit declared.")
@click.option("--late", is_flag=True, help="Exit with status 1 when a table is late (for cron and alerting).")
@click.option("--details", is_flag=True, help="Add a column with the measured ages and their targets.")
@click.pass_context
@reported
def status(ctx: click.Context, as_of: str | None, pipeline_names: tuple[str, ...], late: bool,
           details: bool) -> None:
    """Tables, latest versions, row counts, freshness and the last run of each."""
    from engine.tables.timetravel import parse_as_of

    moment = parse_as_of(as_of) if as_of is not None else None
    if isinstance(moment, int):
        raise EngineError(f"status --as-of takes an ISO-8601 time, not `{as_of}` (versions differ per table)")
    pipelines = loaded_pipelines(pipeline_names)
    overdue = print_status(settings_of(ctx), moment, pipelines, details)
    if late and overdue:
        sys.exit(1)


def print_status(settings: Settings, as_of: datetime | None = None, pipelines: Sequence[Pipeline] = (),
                  details: bool = False) -> list[TableFreshness]:
    """Print every table's state and freshness (with the ages against their targets if `details`); returns the
    late tables."""
    from engine.declarations import declarations_under
    from engine.layout import Layout
    from engine.staleness import LATE, UNKNOWN, table_freshness
    from engine.status import list_tables, table_statuses
    from engine.tables.formats import TableFormats

    layout = Layout.at(settings.storage.root)
    formats = TableFormats(settings)
    statuses = table_statuses(layout, as_of, formats)
    declared = declarations_under(layout, list_tables(layout), pipelines)
    targets = {name: table.freshness for name, (_, table) in declared.items()}
    shown = {s.table for s in statuses}
    never_built = [name for name, target in targets.items() if target is not None and name not in shown]
    if not statuses and not never_built:
        console.print(f"no tables under {escape(layout.root)}; run `medallion demo` or `medallion run PIPELINE`")
        return []
    now = as_of or datetime.now(UTC)
    view = Table(title=f"tables under {escape(layout.root)}" + (f" as of {as_of.isoformat()}" if as_of else ""))
    for column in ("table", "version", "rows", "last run", "status", "finished (UTC)", "freshness",
                   *(("ages",) if details else ())):
        view.add_column(column, justify="right" if column in ("version", "rows") else "left")
    freshness: list[TableFreshness] = []
    for item in statuses:
        finished = item.last_finished_at.strftime("%Y-%m-%d %H:%M:%S") if item.last_finished_at else ""
        fresh = None
        if not item.table.startswith("quarantine."):
            fresh = table_freshness(formats.for_table(item.table), layout.table(item.table), item.table,
                                    targets.get(item.table), now=now, version=item.version)
            freshness.append(fresh)
        view.add_row(escape(item.table), str(item.version), f"{item.rows:,}", escape(item.last_run_id or ""),
                     escape(item.last_status or ""), finished, *_freshness_cells(fresh, details))
    for name in never_built:
        fresh = table_freshness(formats.for_table(name), layout.table(name), name, targets[name], now=now)
        freshness.append(fresh)
        view.add_row(escape(name), "-", "-", "", "", "", *_freshness_cells(fresh, details))
    console.print(view)
    late = [f for f in freshness if f.state == LATE]
    for overdue in late:
        console.print(f"late: {escape(overdue.table)}: {escape(overdue.reason)}", style="red", soft_wrap=True)
    for measured in freshness:
        if measured.state == UNKNOWN:
            console.print(f"freshness unknown: {escape(measured.table)}: {escape(measured.reason)}", style="yellow",
                          soft_wrap=True)
    return late


def _freshness_cells(fresh: TableFreshness | None, details: bool) -> list[str]:
    """The freshness cell in words, and the ages cell if `details`."""
    from engine.staleness import FRESH, LATE, UNKNOWN

    if fresh is None:
        return ["", ""][: 1 + details]
    colour = {LATE: "red", UNKNOWN: "yellow", FRESH: "green"}.get(fresh.state)
    cell = f"[{colour}]{escape(fresh.summary())}[/{colour}]" if colour else escape(fresh.summary())
    return [cell, escape(fresh.details())][: 1 + details]


@click.command()
@click.argument("table")
@click.option("--limit", type=int, default=20, show_default=True, help="Newest versions to show.")
@click.option("--as-of", "as_of", default=None, help="Show only versions up to this version or ISO time.")
@click.pass_context
@reported
def history(ctx: click.Context, table: str, limit: int, as_of: str | None) -> None:
    """Versions of TABLE with the run that wrote each, the operation and the row count."""
    from engine.governance.access import authorize
    from engine.layout import Layout
    from engine.status import table_history, table_location
    from engine.tables.formats import TableFormats
    from engine.tables.timetravel import version_as_of

    settings = settings_of(ctx)
    authorize(settings.access, "read", [table], "`medallion history`")
    layout, formats = Layout.at(settings.storage.root), TableFormats(settings)
    uri = table_location(layout, table)
    store = formats.at(uri)
    newest = version_as_of(uri, table, as_of, store)
    view = Table(title=f"history of {escape(table)}" + (f" as of {escape(as_of)}" if as_of else ""))
    for column in ("version", "committed (UTC)", "operation", "run", "rows"):
        view.add_column(column, justify="right" if column in ("version", "rows") else "left")
    skipped = store.version(uri, table) - newest
    for item in [i for i in table_history(layout, table, skipped + limit, formats) if i.version <= newest][:limit]:
        view.add_row(str(item.version), item.timestamp.strftime("%Y-%m-%d %H:%M:%S"), escape(item.operation),
                     escape(item.run_id or ""), f"{item.rows:,}")
    console.print(view)


@click.command()
@click.argument("table")
@click.option("--as-of", "as_of", default=None, help="Version number or ISO-8601 time to read TABLE as of.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="Rows to print.")
@click.option("--decrypt", is_flag=True, help="Decrypt encrypted columns with the column-encryption keys.")
@click.pass_context
@reported
def show(ctx: click.Context, table: str, as_of: str | None, limit: int, decrypt: bool) -> None:
    """Print rows of TABLE (a layer table or `quarantine.<layer>.<name>`), as of a version or time; encrypted
    columns show as bytes, or as text with --decrypt."""
    from engine.governance.access import authorize
    from engine.governance.encryption import decrypt_columns, encrypted_columns, row_key_columns
    from engine.governance.secrets import column_keys
    from engine.layout import Layout
    from engine.status import table_location
    from engine.tables.formats import TableFormats
    from engine.tables.timetravel import version_as_of

    settings = settings_of(ctx)
    authorize(settings.access, "read", [table], "`medallion show`")
    uri = table_location(Layout.at(settings.storage.root), table)
    store = TableFormats(settings).at(uri)
    version = version_as_of(uri, table, as_of, store)
    rows = store.head(uri, table, version, limit)
    properties = store.table_properties(uri, table, version) if decrypt else {}
    encrypted = encrypted_columns(properties)
    if encrypted:
        keys = column_keys(settings.encryption, f"`medallion show {table} --decrypt`")
        rows = decrypt_columns(rows, encrypted, keys, table, row_key_columns(properties) or ())
    view = Table()
    for name in rows.column_names:
        view.add_column(escape(name))
    for row in rows.to_pylist():
        view.add_row(*("" if value is None else escape(str(value)) for value in row.values()))
    console.print(f"{escape(table)} v{version}, first {rows.num_rows} rows")
    console.print(view)


@click.command()
@click.argument("table", required=False)
@click.option("--run", "run_id", default=None, help="Run to show (default: the latest with checks).")
@click.option("--trend", "trend_runs", type=int, default=5, show_default=True, help="Runs in each trend.")
@click.option("--failing", is_flag=True, help="Only checks that failed rows in that run.")
@click.pass_context
@reported
def quality(ctx: click.Context, table: str | None, run_id: str | None, trend_runs: int, failing: bool) -> None:
    """Check results of a run (every table, or TABLE) with each check's failure-rate trend."""
    from engine.layout import Layout
    from engine.quality.metrics import read_metrics
    from engine.quality.report import summarize

    layout = Layout.at(settings_of(ctx).storage.root)
    chosen, summaries = summarize(read_metrics(layout.quality()), table, run_id, trend_runs)
    if chosen is None:
        console.print(f"no check results under {escape(layout.root)}; run a pipeline whose tables declare checks")
        return
    shown = [s for s in summaries if s.rows_failed or not failing]
    view = Table(title=f"quality of run {escape(chosen)}" + (f", table {escape(table)}" if table else ""))
    for column in ("table", "check", "action", "checked", "failed", "rate", f"trend (last {trend_runs} runs)"):
        view.add_column(column, justify="right" if column in ("checked", "failed", "rate") else "left")
    for item in shown:
        style = "red" if item.rows_failed and item.action == "fail" else "yellow" if item.rows_failed else ""
        trend = " → ".join(f"{rate:.2%}" for rate in item.trend)
        view.add_row(escape(item.table), escape(item.check), item.action, f"{item.rows_checked:,}",
                     f"{item.rows_failed:,}",
                     f"{item.failure_rate:.2%}", trend, style=style)
    console.print(view)
    failed = sum(1 for s in summaries if s.rows_failed)
    console.print(f"{len(summaries)} checks, {failed} with failing rows")
