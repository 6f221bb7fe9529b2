"""The `medallion` command."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from functools import wraps
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.status import Status
from rich.table import Table

from engine import logs, metrics
from engine.capacity import reserved_capacity
from engine.changes.options import ChangeKindOption, change_kind_option
from engine.changes.plan import plan as plan_run
from engine.changes.render import print_plan
from engine.config import Settings, load_settings
from engine.entrypoints import load_generator, load_pipeline
from engine.errors import EngineError, LandingFileExists, RunFailed
from engine.freshness import FRESH, LATE, UNKNOWN, TableFreshness, definitions_under, table_freshness
from engine.governance.access import authorize
from engine.governance.encryption import decrypt_columns, encrypted_columns, row_key_columns
from engine.governance.secrets import column_keys
from engine.maintenance.due import Done, run_due_maintenance
from engine.pipeline import Pipeline
from engine.preflight import require_landing
from engine.quality.metrics import read_metrics
from engine.quality.report import summarize
from engine.recovery import restore_before_run, restore_table
from engine.redact import redact_text
from engine.runlog import RunRecord
from engine.runner import Runner, RunResult, new_run_id
from engine.runtime import ADDRESS_ENV, ray_session
from engine.status import list_tables, table_history, table_location, table_statuses
from engine.storage import check_root, exists, files_under, is_local, upload
from engine.tables.delta import open_table
from engine.tables.formats import TableFormats
from engine.tables.layout import Layout
from engine.tables.timetravel import parse_as_of, version_as_of

WIDE = 160
console = Console(highlight=False, width=None if sys.stdout.isatty() else WIDE)
errors = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else WIDE)

DEMO_PIPELINE = "retail"
log = logging.getLogger(__name__)


_ADDRESS_KEY = "medallion.address"


def _remember_address(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    """Keep a given `--address` for the whole command: one given after the command replaces the group's."""
    if value is not None:
        ctx.meta[_ADDRESS_KEY] = value


address_option = click.option(
    "--address", default=None, metavar="HOST:PORT", expose_value=False, callback=_remember_address,
    help="Ray cluster address (default: a private local instance).")
"""`--address`, on `medallion` itself and on the commands that run on a cluster (after the command, it wins)."""


def _settings(ctx: click.Context) -> Settings:
    options = ctx.find_root().params
    if _ADDRESS_KEY in ctx.meta:  # the command line beats RAY_ADDRESS, as it beats the configuration
        os.environ[ADDRESS_ENV] = ctx.meta[_ADDRESS_KEY]
    settings = load_settings(
        options.get("config"),
        overrides={
            "storage": {"root": options.get("root")},
            "ray": {"address": ctx.meta.get(_ADDRESS_KEY), "verbose": options.get("verbose") or None},
        },
    )
    log.debug("settings: %s", settings.model_dump_json())
    check_root(settings.storage.root, allow_unsafe_writes=settings.storage.allow_unsafe_writes)
    return settings


def _reported(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn engine errors into a one-line reason on stderr (hidden values and URL credentials redacted) and exit
    status 1; any other exception likewise, named by its type, with the traceback only under --verbose."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EngineError as err:
            _fail(str(err))
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as err:
            if click.get_current_context().find_root().params.get("verbose"):
                raise
            _fail(f"unexpected {type(err).__name__}: {err}; run with `medallion --verbose ...` for the traceback")

    return run


def _fail(message: str) -> NoReturn:
    """Print `message` as one `error:` line on stderr (secrets redacted, markup escaped) and exit with status 1."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    errors.print(f"[red]error:[/red] {escape(redact_text(line))}", soft_wrap=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", envvar="MEDALLION__STORAGE__ROOT", default=None,
              help="Storage root (default ./lakehouse).")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="YAML settings file (default ./medallion.yaml when present).")
@address_option
@click.option("-v", "--verbose", is_flag=True,
              help="Also show the libraries' output: Ray's, Feast's and MLflow's logs and warnings, Ray Data's "
                   "progress bars, Tune's progress, the Ray workers' output.")
@click.option("--log-format", type=click.Choice(logs.FORMATS), envvar="MEDALLION_LOG_FORMAT", default=logs.HUMAN,
              show_default=True, help="Log records on stderr as text, or one JSON object per line.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              envvar="MEDALLION_LOG_LEVEL", default=None, help="Lowest level logged (default WARNING, INFO with -v).")
def main(root: str | None, config: str | None, verbose: bool, log_format: str, log_level: str | None) -> None:
    """Medallion lakehouse pipelines on Ray."""
    logs.configure(log_format, log_level.upper() if log_level else logging.INFO if verbose else logging.WARNING,
                   libraries=verbose)


as_of_date_option = click.option(
    "--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), default=None, metavar="DATE",
    help="Last day of the data (UTC); the same scale, seed and date give the same files (default: today).")
"""`--as-of DATE` of the commands that generate landing data."""


@main.command()
@click.argument("generator", default=DEMO_PIPELINE)
@click.option("--scale", type=float, default=1.0, show_default=True, help="Size of the data (1 = ~12k orders).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--batch", type=int, default=None, help="Write only the K-th delivery of the feed (1, 2, ...).")
@as_of_date_option
@click.pass_context
@_reported
def generate(ctx: click.Context, generator: str, scale: float, seed: int, batch: int | None,
             as_of: datetime | None) -> None:
    """Write deterministic landing data under <root>/landing; an existing landing file is never replaced."""
    _generate(_settings(ctx), generator, scale, seed, as_of, batch)


def _generate(settings: Settings, generator: str, scale: float, seed: int, as_of: datetime | None,
              batch: int | None = None) -> None:
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


@main.command()
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
@_reported
def run(ctx: click.Context, pipeline: str, selection: str | None, force: bool, full_refresh: bool,
        watch_interval: float | None, reason: str | None, quiet: bool, metrics_port: int | None,
        metrics_host: str, metrics_file: str | None, take_over: bool, change_kind: ChangeKindOption,
        dry_run: bool, yes: bool) -> None:
    """Run PIPELINE on whatever is in <root>/landing."""
    settings = _settings(ctx)
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
    try:
        metrics.write_textfile(path)
    except OSError as err:
        raise EngineError(f"cannot write metrics to `{path}`: {err.strerror or err}") from None


def _run(settings: Settings, pipeline_name: str, selection: str | None, force: bool = False,
         full_refresh: bool = False, watch_interval: float | None = None, reason: str | None = None, *,
         quiet: bool = False, metrics_file: str | None = None, take_over: bool = False,
         change_kind: ChangeKindOption = None) -> RunResult:
    pipeline = load_pipeline(pipeline_name)
    tables = pipeline.select(selection)
    require_landing(pipeline, Layout.at(settings.storage.root))
    console.print(f"run of `{escape(pipeline.name)}`: {len(tables)} tables, root "
                  f"{escape(Layout.at(settings.storage.root).root)}")
    runner, run_id = Runner(pipeline, settings, reason=reason), new_run_id()
    with runner.holding_lease(run_id, take_over=take_over), ray_session(settings.ray):
        if watch_interval is None:
            with reserved_capacity(pipeline, settings, selection) as reservation, \
                    _display(len(tables), quiet) as status:
                if reservation:
                    console.print(escape(reservation.describe()), soft_wrap=True)
                runner.on_record = _progress(len(tables), status, quiet)
                return _run_once(runner, selection, force=force, full_refresh=full_refresh, quiet=quiet,
                                 run_id=run_id, change_kind=change_kind)
        return _watch(runner, len(tables), selection, watch_interval, force=force, full_refresh=full_refresh,
                      metrics_file=metrics_file, change_kind=change_kind)


class _Bar:
    """A rich progress bar of tables (or views) done out of a total, on stderr."""

    def __init__(self, progress: Progress, total: int, description: str) -> None:
        self.progress = progress
        self.task = progress.add_task(description, total=total)

    def update(self, text: str, done: int | None = None) -> None:
        self.progress.update(self.task, description=text, **({"completed": done} if done is not None else {}))


@contextlib.contextmanager
def _display(total: int, quiet: bool = False, description: str = "starting Ray") -> Iterator[Status | _Bar | None]:
    """What shows a run's progress: a progress bar on stderr when it is a terminal, else the status line
    (shown only on a terminal); nothing when `quiet`."""
    if quiet:
        yield None
    elif errors.is_terminal:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=errors, transient=True,
                      redirect_stdout=console.is_terminal, redirect_stderr=True) as progress:
            yield _Bar(progress, total, description)
    else:
        with console.status(description) as status:
            yield status


def _progress(total: int, status: Status | _Bar | None = None, quiet: bool = False) -> Callable[[RunRecord], None]:
    """Prints each table's record as it comes (`quiet`: only those that did something)."""
    done = 0
    if status is not None:
        status.update(f"0/{total} tables done")

    def report(record: RunRecord) -> None:
        nonlocal done
        done += 1
        if not quiet or record.status != "unchanged":
            _print_record(record, done, total)
        if isinstance(status, _Bar):
            status.update(f"{record.table} {record.status}", done)
        elif status is not None:
            status.update(f"{done}/{total} tables done")

    return report


def _run_once(runner: Runner, selection: str | None, *, force: bool = False, full_refresh: bool = False,
              stop: Callable[[], bool] | None = None, quiet: bool = False, run_id: str | None = None,
              change_kind: ChangeKindOption = None) -> RunResult:
    started = time.monotonic()
    result = runner.run(selection, run_id=run_id, force=force, full_refresh=full_refresh, stop=stop,
                        change_kind=change_kind)
    changed = sum(1 for r in result.records if r.status == "succeeded")
    summary = f"{changed} table(s) committed" if changed else "nothing new: no table committed"
    if changed or not quiet:
        console.print(f"run {result.run_id} finished in {time.monotonic() - started:.1f}s; {summary}")
    if not result.succeeded:
        failed = result.failures()
        skipped = [r.table for r in result.records if r.status == "skipped"]
        for record in failed:
            errors.print(f"[red]failed:[/red] {escape(record.error or record.table)}", soft_wrap=True)
        built = sum(1 for r in result.records if r.status in ("succeeded", "unchanged"))
        raise RunFailed(f"run {result.run_id}: {len(failed)} table(s) failed ({', '.join(r.table for r in failed)})"
                        + (f", {len(skipped)} skipped as they depend on them" if skipped else "")
                        + f", {built} built or unchanged", table=(failed or result.records)[0].table,
                        run_id=result.run_id)
    committed = [r.table for r in result.records if r.status == "succeeded"]
    if runner.settings.maintenance.after_runs:
        for done in run_due_maintenance(runner.pipeline, runner.settings, committed):
            _print_maintenance(done)
    if runner.settings.features.materialize_after_runs and committed:
        from engine.features.cli import materialize_after_run

        materialize_after_run(runner.settings, committed)
    return result


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
    try:
        while True:
            runner.on_record = _progress(tables, quiet=True)
            try:
                result = _run_once(runner, selection, force=force, full_refresh=full_refresh, stop=stop.is_set,
                                   quiet=True, change_kind=change_kind)
            finally:
                if metrics_file is not None:
                    _write_metrics(metrics_file)
            batches += 1
            force = full_refresh = False
            change_kind = None
            if stop.wait(interval):
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print(f"stopped after {batches} micro-batch(es)" + (", the last one cut short" if result.stopped else ""))
    return result


@main.command()
@click.argument("table")
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), required=True, help="First day (YYYY-MM-DD).")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), required=True, help="Last day, included.")
@click.option("--pipeline", "pipeline_name", default=None,
              help="Pipeline that builds TABLE (default: the one named in the table's last commit).")
@click.pass_context
@_reported
def backfill(ctx: click.Context, table: str, start: datetime, end: datetime, pipeline_name: str | None) -> None:
    """Recompute TABLE's rows dated --from to --to from its inputs, and replace those rows alone."""
    settings = _settings(ctx)
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


@main.command()
@click.argument("table", required=False)
@click.option("--version", "version", type=int, default=None, help="Version of TABLE to return to.")
@click.option("--timestamp", "timestamp", default=None,
              help="ISO-8601 time (UTC without a zone) whose state TABLE returns to.")
@click.option("--before-run", "run_id", default=None, help="Undo this run and every later one, on every table.")
@click.option("--reason", default="manual restore", show_default=True, help="Recorded in each restore commit.")
@click.pass_context
@_reported
def restore(ctx: click.Context, table: str | None, version: int | None, timestamp: str | None, run_id: str | None,
            reason: str) -> None:
    """Return TABLE to --version or --timestamp, or every table to its state before --before-run, as new commits."""
    settings = _settings(ctx)
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


@main.command()
@click.option("--scale", type=float, default=1.0, show_default=True, help="Size of the generated data.")
@click.option("--seed", type=int, default=42, show_default=True)
@as_of_date_option
@click.pass_context
@_reported
def demo(ctx: click.Context, scale: float, seed: int, as_of: datetime | None) -> None:
    """Generate retail landing data under a new root, run the whole retail pipeline, and summarise the tables."""
    settings = _settings(ctx)
    layout = Layout.at(settings.storage.root)
    if next(files_under(layout.landing()), None) is not None or list_tables(layout):
        raise EngineError(f"{layout.root} already holds a lakehouse; use --root with a new folder, or run "
                          f"`medallion run {DEMO_PIPELINE}` to process new files")
    _generate(settings, DEMO_PIPELINE, scale, seed, as_of)
    _run(settings, DEMO_PIPELINE, None)
    _print_status(settings)


@main.command()
@click.option("--as-of", "as_of", default=None, help="ISO-8601 time: every table's state and last run then.")
@click.option("--pipeline", "pipeline_names", multiple=True,
              help="Take freshness targets (and tables not built yet) from this pipeline (repeatable); by "
                   "default from the pipeline named in each table's last commit.")
@click.option("--late", is_flag=True, help="Exit with status 1 when a table is late (for cron and alerting).")
@click.option("--details", is_flag=True, help="Add a column with the measured ages and their targets.")
@click.pass_context
@_reported
def status(ctx: click.Context, as_of: str | None, pipeline_names: tuple[str, ...], late: bool,
           details: bool) -> None:
    """Tables, latest versions, row counts, freshness and the last run of each."""
    moment = parse_as_of(as_of) if as_of is not None else None
    if isinstance(moment, int):
        raise EngineError(f"status --as-of takes an ISO-8601 time, not `{as_of}` (versions differ per table)")
    pipelines = [load_pipeline(name) for name in pipeline_names]
    overdue = _print_status(_settings(ctx), moment, pipelines, details)
    if late and overdue:
        sys.exit(1)


def _print_status(settings: Settings, as_of: datetime | None = None, pipelines: Sequence[Pipeline] = (),
                  details: bool = False) -> list[TableFreshness]:
    """Print every table's state and freshness (with the ages against their targets if `details`); returns the
    late tables."""
    layout = Layout.at(settings.storage.root)
    statuses = table_statuses(layout, as_of, TableFormats(settings))
    definitions = definitions_under(list_tables(layout), pipelines)
    targets = {name: definition.freshness for name, (_, definition) in definitions.items()}
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
            fresh = table_freshness(layout.table(item.table), item.table, targets.get(item.table), now=now,
                                    version=item.version)
            freshness.append(fresh)
        view.add_row(escape(item.table), str(item.version), f"{item.rows:,}", escape(item.last_run_id or ""),
                     escape(item.last_status or ""), finished, *_freshness_cells(fresh, details))
    for name in never_built:
        fresh = table_freshness(layout.table(name), name, targets[name], now=now)
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
    if fresh is None:
        return ["", ""][: 1 + details]
    colour = {LATE: "red", UNKNOWN: "yellow", FRESH: "green"}.get(fresh.state)
    cell = f"[{colour}]{escape(fresh.summary())}[/{colour}]" if colour else escape(fresh.summary())
    return [cell, escape(fresh.details())][: 1 + details]


@main.command()
@click.argument("table")
@click.option("--limit", type=int, default=20, show_default=True, help="Newest versions to show.")
@click.option("--as-of", "as_of", default=None, help="Show only versions up to this version or ISO time.")
@click.pass_context
@_reported
def history(ctx: click.Context, table: str, limit: int, as_of: str | None) -> None:
    """Versions of TABLE with the run that wrote each, the operation and the row count."""
    settings = _settings(ctx)
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


@main.command()
@click.argument("table")
@click.option("--as-of", "as_of", default=None, help="Version number or ISO-8601 time to read TABLE as of.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="Rows to print.")
@click.option("--decrypt", is_flag=True, help="Decrypt encrypted columns with the column-encryption keys.")
@click.pass_context
@_reported
def show(ctx: click.Context, table: str, as_of: str | None, limit: int, decrypt: bool) -> None:
    """Print rows of TABLE (a layer table or `quarantine.<layer>.<name>`), as of a version or time; encrypted
    columns show as bytes, or as text with --decrypt."""
    settings = _settings(ctx)
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


@main.command()
@click.argument("table", required=False)
@click.option("--run", "run_id", default=None, help="Run to show (default: the latest with checks).")
@click.option("--trend", "trend_runs", type=int, default=5, show_default=True, help="Runs in each trend.")
@click.option("--failing", is_flag=True, help="Only checks that failed rows in that run.")
@click.pass_context
@_reported
def quality(ctx: click.Context, table: str | None, run_id: str | None, trend_runs: int, failing: bool) -> None:
    """Check results of a run (every table, or TABLE) with each check's failure-rate trend."""
    layout = Layout.at(_settings(ctx).storage.root)
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


from engine.catalog_cli import catalog  # noqa: E402
from engine.changes.cli import diff, plan  # noqa: E402
from engine.cluster_cli import cluster  # noqa: E402
from engine.features.cli import features  # noqa: E402
from engine.governance.access_cli import access  # noqa: E402
from engine.governance.cli import audit, erase  # noqa: E402
from engine.lineage.cli import lineage  # noqa: E402
from engine.maintenance.cli import backup, maintain  # noqa: E402
from engine.report.cli import report  # noqa: E402
from engine.training.cli import score, train  # noqa: E402

main.add_command(catalog)
main.add_command(plan)
main.add_command(diff)
main.add_command(cluster)
main.add_command(features)
main.add_command(train)
main.add_command(score)
main.add_command(maintain)
main.add_command(backup)
main.add_command(erase)
main.add_command(audit)
main.add_command(access)
main.add_command(lineage)
main.add_command(report)


if __name__ == "__main__":
    main()
