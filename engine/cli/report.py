"""`medallion report [--out PATH] [--pipeline NAME] [--runs N]`: write the static HTML report of a root."""

from __future__ import annotations

import click
from rich.markup import escape

from engine.cli.common import console, loaded_pipelines, pipelines_option, reported, settings_of
from engine.layout import Layout


@click.command()
@click.option("--out", "out", default=None,
              help="Where to write the page (a local path or a URI under the root's storage); default "
                   "`<root>/_meta/report/index.html`.")
@pipelines_option
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Latest runs to plot and list.")
@click.option("--versions", type=click.IntRange(min=1), default=10, show_default=True,
              help="Newest versions to list per table.")
@click.pass_context
@reported
def report(ctx: click.Context, out: str | None, pipeline_names: tuple[str, ...], runs: int, versions: int) -> None:
    """A static HTML page: the pipeline graph coloured by status; per table its versions, rows, failing checks
    and their trends, quarantined rows by reason (with an example row where the reader may read the
    quarantine), freshness and durations; a section per run. Opens in any browser, no server."""
    from engine.governance.access import allowed
    from engine.report.data import gather  # matplotlib and jinja2 load only for this command
    from engine.report.html import render
    from engine.storage import filesystem_of

    settings = settings_of(ctx)
    layout = Layout.at(settings.storage.root)
    pipelines = loaded_pipelines(pipeline_names)
    page = render(gather(layout, pipelines, runs=runs, versions=versions,
                         may_read=lambda resource: allowed(settings.access, "read", resource)))
    target = out or layout.report()
    filesystem, path = filesystem_of(target)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(page.encode())
    console.print(f"report written to {escape(target)}")
