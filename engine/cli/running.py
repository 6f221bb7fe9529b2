"""`medallion generate`, `run`, `backfill` and `demo`: the commands that write landing data or run a pipeline."""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.status import Status

from engine.changes.options import ChangeKindOption, change_kind_option
from engine.cli.common import (
    Bar,
    address_option,
    as_of_date_option,
    console,
    display,
    errors,
    log,
    reported,
    settings_of,
)
from engine.errors import EngineError, LandingFileExists, RunFailed

if TYPE_CHECKING:
    from engine.config import Settings
    from engine.maintenance.due import Done
    from engine.run.outcome import RunResult
    from engine.runlog import RunRecord
    from engine.runner import Runner

DEMO_PIPELINE = "retail"
"""The pipeline `medallion demo` generates data for and runs."""


@click.command()
@click.argument("generator", default=DEMO_PIPELINE)
@click.option("--scale", type=float, default=1.0, show_default=True, help="Size of the data (1 = ~12k orders).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--batch", type=int, default=None, help="Write only the K-th delivery of the feed (1, 2, ...).")
@as_of_date_option
@click.pass_context
@reported
def generate(ctx: click.Context, generator: str, scale: float, seed: int, batch: int | None,
             as_of: datetime | None) -> None:
    """Write deterministic landing data under <root>/landing; an existing landing file is never replaced."""
    _generate(settings_of(ctx), generator, scale, seed, as_of, batch)


def _generate(settings: Settings, generator: str, scale: float, seed: int, as_of: datetime | None,
              batch: int | None = None) -> None:
    from engine.entrypoints import load_generator
    from engine.layout import Layout
    from engine.storage import exists, is_local, upload

    landing = Layout.at(settings.storage.root).landing()
    options = {"scale": scale, "seed": seed, "as_of": (as_of or datetime.now(UTC)).date()} | (
        {"batch": batch} if batch is not None else {})
    try:
        if is_local(landing):
            written = load_generator(generator)(landing, **options)
        else:  # generators write local files: generate into a scratch folder, then upload it
            with tempfile.TemporaryDirectory(prefix="medallion-landing-") as scratch:
                written = load_generator(generator)(scratch, **options)
                for source, generated in written.items():
                    for name in generated.files:
                        if exists(f"{landing}/{source}/{name}"):
                            raise LandingFileExists(f"landing file {landing}/{source}/{name} already exists and "
                                                    "is never replaced; generate under a new --root, or the next "
                                                    "delivery with another --batch")
                upload(scratch, landing)
    except ValueError as err:
        raise EngineError(f"cannot generate `{generator}` data: {err}") from None
    total = sum(source.records for source in written.values())
    files = sum(len(s.files) for s in written.values())
    console.print(f"generated {total:,} records in {files} files under {escape(landing)}")


@click.command()
@click.argument("pipeline")
@click.option("--select", "selection", default=None, help="Tables to run, e.g. 'silver.orders+' or '+gold.*'.")
@click.option("--force", is_flag=True, help="Rebuild tables whose inputs did not change, reading inputs in full.")
@click.option("--full-refresh", is_flag=True,
              help="Empty the selected derived tables and rebuild them from their inputs (bronze is kept).")
@click.option("--watch", "watch_interval", type=float, default=None, metavar="SECONDS",
              help="Keep processing newly landed files every SECONDS until SIGTERM or Ctrl-C.")
@click.option("--reason", default=None, help="Why, recorded in every commit and run record (default: pipeline run).")
@click.option("-q", "--quiet", is_flag=True, help="No progress display; print only tables that did something.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Serve Prometheus metrics on http://HOST:PORT/metrics while running (for --watch).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address the metrics endpoint binds.")
@click.option("--metrics-file", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write Prometheus metrics to this file when the run ends (node-exporter textfile collector).")
@click.option("--take-over", is_flag=True,
              help="Take the pipeline's run lease from the run holding it (only when that run is gone).")
@change_kind_option
@click.option("--dry-run", is_flag=True, help="Print the plan (what each table would do and why) and exit.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before a large rebuild.")
@address_option
@click.pass_context
@reported
def run(ctx: click.Context, pipeline: str, selection: str | None, force: bool, full_refresh: bool,
        watch_interval: float | None, reason: str | None, quiet: bool, metrics_port: int | None,
        metrics_host: str, metrics_file: str | None, take_over: bool, change_kind: ChangeKindOption,
        dry_run: bool, yes: bool) -> None:
    """Run PIPELINE on whatever is in <root>/landing. Ctrl-C or SIGTERM stops the run once the running tables have
    committed (exit status 130 or 143); running again continues with the tables not built."""
    from engine import metrics
    from engine.changes.plan import plan as plan_run
    from engine.changes.render import print_plan
    from engine.entrypoints import load_pipeline

    settings = settings_of(ctx)
    if watch_interval is not None and watch_interval <= 0:
        raise EngineError(f"--watch takes a positive number of seconds, not {watch_interval}")
    if dry_run or (not yes and sys.stdin.isatty() and console.is_terminal):
        loaded = load_pipeline(pipeline)
        plans = plan_run(loaded, settings, selection, full_refresh=full_refresh, change_kind=change_kind)
        if dry_run:
            print_plan(console, loaded.name, plans)
            return
        large = [p for p in plans if p.action == "rebuild" and (p.rows_to_read or 0) > settings.run.confirm_rebuild_rows]
        if large:
            print_plan(console, loaded.name, plans)
            if not click.confirm(f"rebuild {', '.join(p.table for p in large)}, reading "
                                 f"{sum(p.rows_to_read or 0 for p in large):,} rows?", default=False):
                raise EngineError("run cancelled; nothing was written")
    server = None
    if metrics_port is not None:
        try:
            server = metrics.serve(metrics_port, metrics_host)
        except OSError as err:
            raise EngineError(f"cannot serve metrics on {metrics_host}:{metrics_port}: {err.strerror or err}") from None
        console.print(f"metrics on http://{escape(metrics_host)}:{server.server_port}/metrics")
    try:
        _run(settings, pipeline, selection, force, full_refresh, watch_interval, reason, quiet=quiet,
             metrics_file=metrics_file, take_over=take_over, change_kind=change_kind)
    except BaseException:
        if metrics_file is not None:
            try:
                _write_metrics(metrics_file)
            except EngineError as err:
                log.warning("%s", err)
        raise
    else:
        if metrics_file is not None:
            _write_metrics(metrics_file)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


def _write_metrics(path: str) -> None:
    from engine import metrics

    try:
        metrics.write_textfile(path)
    except OSError as err:
        raise EngineError(f"cannot write metrics to `{path}`: {err.strerror or err}") from None


def _run(settings: Settings, pipeline_name: str, selection: str | None, force: bool = False,
         full_refresh: bool = False, watch_interval: float | None = None, reason: str | None = None, *,
         quiet: bool = False, metrics_file: str | None = None, take_over: bool = False,
         change_kind: ChangeKindOption = None) -> RunResult:
    from engine.entrypoints import load_pipeline
    from engine.layout import Layout
    from engine.preflight import require_landing
    from engine.run.idle import idle_plan
    from engine.run.outcome import RunResult, new_run_id

    pipeline = load_pipeline(pipeline_name)
    tables = pipeline.select(selection)
    require_landing(pipeline, Layout.at(settings.storage.root))
    console.print(f"run of `{escape(pipeline.name)}`: {len(tables)} tables, root "
                  f"{escape(Layout.at(settings.storage.root).root)}")
    run_id = new_run_id()
    # A run with nothing to do is answered from the logs, without starting Ray (unless a metrics file wants the
    # counts of a real run, whose unchanged tables set their last-success time).
    idle = None if watch_interval is not None or force or full_refresh or change_kind or metrics_file \
        else idle_plan(pipeline, settings, selection)
    if idle is not None:
        for done, table in enumerate(idle, start=1):
            if not quiet:
                console.print(f"[{done:>2}/{len(idle)}] [cyan]{'unchanged':<9}[/cyan] {escape(table.table.ljust(28))} "
                              f"{escape('; '.join(table.reasons))}")
        console.print("nothing new: no table committed (the tables' logs say so; Ray was not started)")
        return RunResult(run_id, pipeline.name)
    from engine.capacity import reserved_capacity
    from engine.runner import Runner
    from engine.runtime import ray_session

    runner = Runner(pipeline, settings, reason=reason)
    if watch_interval is not None:
        with runner.holding_lease(run_id, take_over=take_over), ray_session(settings.ray):
            return _watch(runner, len(tables), selection, watch_interval, force=force, full_refresh=full_refresh,
                          metrics_file=metrics_file, change_kind=change_kind)
    with runner.holding_lease(run_id, take_over=take_over), ray_session(settings.ray), \
            _Interruption() as interruption:  # after Ray's start, which sets its own SIGTERM handler
        with reserved_capacity(pipeline, settings, selection) as reservation, display(len(tables), quiet) as status:
            if reservation:
                console.print(escape(reservation.describe()), soft_wrap=True)
            runner.on_record = _progress(len(tables), status, quiet)
            result = _run_once(runner, selection, force=force, full_refresh=full_refresh, quiet=quiet,
                               run_id=run_id, change_kind=change_kind, stop=interruption.is_set)
        if interruption.signal is not None:
            errors.print(f"run {result.run_id} interrupted after {len(result.records)} of {len(tables)} tables; "
                         "run again to continue", soft_wrap=True)
            sys.exit(128 + interruption.signal)
        return result


class _Interruption:
    """SIGINT and SIGTERM while a run goes on: the first asks the run to stop after the running table and puts the
    previous handlers back, so that a second one acts at once as it would have."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Callable[..., object] | int | None] = {}

    def __enter__(self) -> _Interruption:
        self._previous = {sig: signal.signal(sig, self._caught) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *_: object) -> None:
        self._restore()

    def _caught(self, signum: int, _frame: object) -> None:
        self.signal = signum
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def is_set(self) -> bool:
        """Whether a signal asked the run to stop."""
        return self.signal is not None


def _progress(total: int, status: Status | Bar | None = None, quiet: bool = False) -> Callable[[RunRecord], None]:
    """Prints each table's record as it comes (`quiet`: only those that did something)."""
    done = 0
    if status is not None:
        status.update(f"0/{total} tables done")

    def report(record: RunRecord) -> None:
        nonlocal done
        done += 1
        if not quiet or record.status != "unchanged":
            _print_record(record, done, total)
        if isinstance(status, Bar):
            status.update(f"{record.table} {record.status}", done)
        elif status is not None:
            status.update(f"{done}/{total} tables done")

    return report


def _run_once(runner: Runner, selection: str | None, *, force: bool = False, full_refresh: bool = False,
              stop: Callable[[], bool] | None = None, quiet: bool = False, run_id: str | None = None,
              change_kind: ChangeKindOption = None) -> RunResult:
    result = runner.run(selection, run_id=run_id, force=force, full_refresh=full_refresh, stop=stop,
                        change_kind=change_kind)
    _report_run(result, quiet=quiet)
    return result


def _report_run(result: RunResult, *, quiet: bool = False) -> None:
    """One line for the run (`quiet`: only when it committed something), the failed tables and a one-line error
    when any failed, and what the hooks after it did."""
    changed = sum(1 for r in result.records if r.status == "succeeded")
    summary = f"{changed} table(s) committed" if changed else "nothing new: no table committed"
    if not result.stopped and (changed or not quiet):
        console.print(f"run {result.run_id} finished in {result.seconds:.1f}s; {summary}")
    if not result.succeeded:
        failed = sorted(result.failures(), key=lambda r: r.table)
        skipped = [r.table for r in result.records if r.status == "skipped"]
        for record in failed:
            errors.print(f"[red]failed:[/red] {escape(record.error or record.table)}", soft_wrap=True)
        built = sum(1 for r in result.records if r.status in ("succeeded", "unchanged"))
        raise RunFailed(f"run {result.run_id}: {len(failed)} table(s) failed ({', '.join(r.table for r in failed)})"
                        + (f", {len(skipped)} skipped as they depend on them" if skipped else "")
                        + f", {built} built or unchanged", table=(failed or result.records)[0].table,
                        run_id=result.run_id)
    for done in result.maintenance:
        _print_maintenance(done)
    if result.materialized:
        from engine.cli.features import print_reports

        print_reports(result.materialized, incremental=True)


def _print_maintenance(done: Done) -> None:
    if done.error is not None:
        console.print(f"maintenance: {done.operation} of {escape(done.table)} failed: {escape(str(done.error))}",
                      style="yellow",
                      soft_wrap=True)
    elif done.result is not None and done.result.version is not None:
        console.print(f"maintenance: {done.operation} of {escape(done.table)} ({escape(done.reason)}): "
                      f"v{done.result.version}")


def _watch(runner: Runner, tables: int, selection: str | None, interval: float, *, force: bool,
           full_refresh: bool, metrics_file: str | None = None, change_kind: ChangeKindOption = None) -> RunResult:
    """Micro-batches until SIGTERM or SIGINT: a signal lets the running table commit, then stops. Only
    micro-batches that commit something are reported; `metrics_file` is rewritten after each."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    console.print(f"watching for new landing files every {interval:g}s; stop with SIGTERM or Ctrl-C")
    batches = 0

    def report(result: RunResult) -> None:
        nonlocal batches
        batches += 1
        try:
            _report_run(result, quiet=True)
        finally:
            runner.on_record = _progress(tables, quiet=True)
            if metrics_file is not None:
                _write_metrics(metrics_file)

    runner.on_record = _progress(tables, quiet=True)
    try:
        result = runner.watch(interval, stop, selection, force=force, full_refresh=full_refresh,
                              change_kind=change_kind, after=report)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print(f"stopped after {batches} micro-batch(es)" + (", the last one cut short" if result.stopped else ""))
    return result


@click.command()
@click.argument("table")
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), required=True, help="First day (YYYY-MM-DD).")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), required=True, help="Last day, included.")
@click.option("--pipeline", "pipeline_name", default=None,
              help="Pipeline that builds TABLE (default: the one named in the table's last commit).")
@click.pass_context
@reported
def backfill(ctx: click.Context, table: str, start: datetime, end: datetime, pipeline_name: str | None) -> None:
    """Recompute TABLE's rows dated --from to --to from its inputs, and replace those rows alone."""
    from engine.entrypoints import load_pipeline
    from engine.layout import Layout
    from engine.runner import Runner
    from engine.runtime import ray_session
    from engine.status import table_location
    from engine.tables.formats import TableFormats

    settings = settings_of(ctx)
    layout = Layout.at(settings.storage.root)
    uri = layout.table(table) if pipeline_name else table_location(layout, table)
    name = pipeline_name or TableFormats(settings).at(uri).last_commit_value(uri, table, "pipeline")
    if name is None:
        raise EngineError(f"table `{table}` has no commit naming its pipeline under {layout.root}; "
                          "pass --pipeline")
    pipeline = load_pipeline(name)
    console.print(f"backfill of `{escape(table)}` from {start:%Y-%m-%d} to {end:%Y-%m-%d}, pipeline "
                  f"`{escape(pipeline.name)}`")
    with ray_session(settings.ray):
        result = Runner(pipeline, settings, on_record=_progress(1)).backfill(table, start.date(), end.date())
    if not result.succeeded:
        record = result.records[0]
        raise RunFailed(f"backfill of `{table}` failed: {record.error}", table=table, run_id=result.run_id)


def _print_record(record: RunRecord, done: int, total: int) -> None:
    colour = {"succeeded": "green", "unchanged": "cyan", "failed": "red", "skipped": "yellow"}[record.status]
    version = "-" if record.output_version is None else f"v{record.output_version}"
    counts = f"{record.rows_in:,} in, {record.rows_written:,} written"
    if record.rows_quarantined:
        counts += f", {record.rows_quarantined:,} quarantined"
    if record.rows_duplicate:
        counts += f", {record.rows_duplicate:,} duplicates"
    console.print(f"[{done:>2}/{total}] [{colour}]{record.status:<9}[/{colour}] {escape(record.table.ljust(28))} "
                  f"{version:>5}  "
                  f"{counts}  ({record.duration_s:.1f}s)")
    if record.error:
        console.print(f"        {escape(record.error)}", style="red", soft_wrap=True)


@click.command()
@click.option("--scale", type=float, default=1.0, show_default=True, help="Size of the generated data.")
@click.option("--seed", type=int, default=42, show_default=True)
@as_of_date_option
@click.pass_context
@reported
def demo(ctx: click.Context, scale: float, seed: int, as_of: datetime | None) -> None:
    """Generate retail landing data under a new root, run the whole retail pipeline, and summarise the tables."""
    from engine.cli.tables import print_status
    from engine.layout import Layout
    from engine.status import list_tables
    from engine.storage import files_under

    settings = settings_of(ctx)
    layout = Layout.at(settings.storage.root)
    if next(files_under(layout.landing()), None) is not None or list_tables(layout):
        raise EngineError(f"{layout.root} already holds a lakehouse; use --root with a new folder, or run "
                          f"`medallion run {DEMO_PIPELINE}` to process new files")
    _generate(settings, DEMO_PIPELINE, scale, seed, as_of)
    _run(settings, DEMO_PIPELINE, None)
    print_status(settings)


