"""`medallion sources`: where each ingested table stands against its source."""

from __future__ import annotations

import click
from rich.table import Table

from engine.cli.common import console, reported, settings_of


@click.command()
@click.argument("pipeline")
@click.option("--check", is_flag=True, help="Exit with status 1 when a source needs a fix (for cron and alerting).")
@click.pass_context
@reported
def sources(ctx: click.Context, pipeline: str, check: bool) -> None:
    """List PIPELINE's ingested tables with their sources: what each took in, what waits, and the fix when a
    replication slot no longer holds what the table needs."""
    from engine.entrypoints import load_pipeline
    from engine.run.sources import source_states

    states = source_states(load_pipeline(pipeline), settings_of(ctx))
    table = Table("table", "kind", "source", "position", "waiting", "state", "fix")
    for state in states:
        table.add_row(state.table, state.kind, state.source, state.position, state.waiting, state.state, state.fix)
    console.print(table)
    if check and any(state.fix for state in states):
        ctx.exit(1)
