"""`medallion runs`: the recent runs of a root, one row each, from its run records."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from engine.cli.common import console, reported, settings_of

STATUS_STYLES = {"succeeded": "green", "unchanged": "cyan", "failed": "red",
                 "interrupted": "yellow"}


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Newest runs to show.")
@click.option("--pipeline", "pipeline_name", default=None, help="Only the runs of this pipeline.")
@click.pass_context
@reported
def runs(ctx: click.Context, limit: int, pipeline_name: str | None) -> None:
    """Recent runs, newest first: status (succeeded, failed, interrupted or unchanged), duration, tables committed,
    failed and not run, rows written, and who ran what."""
    from engine.layout import Layout
    from engine.runlog import read_records, summarize_runs

    layout = Layout.at(settings_of(ctx).storage.root)
    summaries = summarize_runs(read_records(layout.runs()), limit, pipeline_name)
    if not summaries:
        which = f" of pipeline `{escape(pipeline_name)}`" if pipeline_name else ""
        console.print(f"no runs{which} recorded under {escape(layout.root)}")
        return
    view = Table(title=f"runs under {escape(layout.root)}" + (f", pipeline {escape(pipeline_name)}"
                                                              if pipeline_name else ""))
    for column in ("run", "pipeline", "started (UTC)", "duration", "status", "committed", "failed", "not run",
                   "rows written", "operation", "actor"):
        numeric = column in ("duration", "committed", "failed", "not run", "rows written")
        view.add_column(column, justify="right" if numeric else "left")
    for item in summaries:
        style = STATUS_STYLES.get(item.status)
        status = f"[{style}]{escape(item.status)}[/{style}]" if style else escape(item.status)
        view.add_row(escape(item.run_id), escape(item.pipeline), item.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                     f"{item.duration_s:.1f}s", status, str(item.committed), str(item.failed), str(item.not_run),
                     f"{item.rows_written:,}", escape(item.operation or ""), escape(item.actor or ""))
    console.print(view)
