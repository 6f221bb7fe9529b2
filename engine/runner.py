"""Runs a selection of a pipeline's tables in dependency order: one table at a time, one commit per table, and a
record of each. What happens to one table lives in `engine.run`: ingestion (`run.ingest`), building
(`run.build`) with the write strategy of its kind (`run.writes`), definition changes (`run.rebuilds`), records
(`run.records`) and the hooks after a run (`run.hooks`)."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from queue import SimpleQueue
from typing import Any

from engine.alerts import sinks_from_settings
from engine.changes.classify import ChangeCategory
from engine.changes.plan import TablePlan
from engine.config import Settings
from engine.declarations import record_declarations
from engine.errors import EngineError, PipelineDefinitionError
from engine.governance.actor import audit_fields
from engine.ingest.postgres.source import PostgresSource
from engine.kinds import key_columns
from engine.layout import Layout
from engine.lease import RunLease
from engine.logs import log_context
from engine.pipeline import Pipeline, TableDefinition
from engine.quality.results import CheckResult
from engine.run import hooks
from engine.run.build import build, time_column
from engine.run.idle import authorize_run, idle_plan
from engine.run.ingest import ingest
from engine.run.ingest_database import ingest_database
from engine.run.outcome import RunResult, TableOutcome, new_run_id
from engine.run.records import did_something, observe, observe_run, remove_empty_folders, report_quality, send_lineage
from engine.run.schedule import TableQueue
from engine.run.scope import RunScope
from engine.runlog import RunRecord, append_records
from engine.runtime import cluster_cpus
from engine.storage import check_root
from engine.tables import deltalog, snapshots
from engine.tables.delta import AppendLog
from engine.tables.formats import TableFormats

__all__ = ["RunResult", "Runner", "new_run_id"]

log = logging.getLogger(__name__)

DEFAULT_MOST_TABLES = 8
"""Tables built at once when `run.concurrent_tables` is not set: the cluster's CPUs, but no more than this (each
table's driver work runs in a thread of this process)."""


class Runner:
    """Runs tables of one pipeline against one storage root. Ray must be initialised.

    Args:
        pipeline: the tables.
        settings: storage and run settings.
        on_record: called with each table's record as soon as it is known (progress reporting).
        reason: why the tables are written, recorded in every commit and run record (audit).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        settings: Settings,
        on_record: Callable[[RunRecord], None] | None = None,
        reason: str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.layout = Layout.at(settings.storage.root)
        check_root(self.layout.root, allow_unsafe_writes=settings.storage.allow_unsafe_writes)
        self.formats = TableFormats(settings, {n: d.table_format or settings.storage.table_format
                                               for n, d in pipeline.tables.items()},
                                    {n: list(d.pii) for n, d in pipeline.tables.items() if d.pii})
        self.on_record = on_record or (lambda record: None)
        self.sinks = sinks_from_settings(settings.alerts)
        self.reason = reason
        self._lease: RunLease | None = None

    @contextlib.contextmanager
    def holding_lease(self, run_id: str, *, take_over: bool = False) -> Iterator[RunLease]:
        """Hold the pipeline's run lease on the root for the duration (already held: kept as it is)."""
        if self._lease is not None:
            yield self._lease
            return
        lease = RunLease(self.layout, self.pipeline.name, timeout_s=self.settings.run.lease_timeout_s,
                         heartbeat_s=self.settings.run.lease_heartbeat_s)
        lease.acquire(run_id, take_over=take_over)
        self._lease = lease
        try:
            yield lease
        finally:
            self._lease = None
            lease.release()

    def run(
        self,
        select: str | None = None,
        run_id: str | None = None,
        force: bool = False,
        full_refresh: bool = False,
        stop: Callable[[], bool] | None = None,
        take_over: bool = False,
        change_kind: ChangeCategory | Mapping[str, ChangeCategory] | None = None,
    ) -> RunResult:
        """Build the selected tables (all when None) in dependency order, one commit per table.

        A table whose inputs and referenced tables are at the versions it was last built from is left
        `unchanged`, unless `force` is set; `force` also reads incremental tables' inputs in full.
        `full_refresh` rebuilds the selected derived tables from their inputs alone, emptying them (and
        their change logs) first; ingested tables keep what they hold, unless the selection names one exactly:
        that one is emptied and ingests every landing file again, when none it ingested is gone. When `stop`
        returns True before a table starts, the run ends there (`RunResult.stopped`), recording the tables not
        started as `interrupted`; a table once started is committed whole.
        The run holds the pipeline's run lease on the root throughout (`take_over` takes it from a live holder).
        A derived table whose definition changed since it was built is rebuilt, and so are the tables downstream
        when the change is breaking (`engine.changes`); `change_kind` (for every table, or by table name) says
        whether a change is `breaking` or `non-breaking` instead of the engine.
        After a run that succeeded, the maintenance that is due and the materialization of online feature views
        run when the settings ask for them (`RunResult.maintenance`, `RunResult.materialized`).

        Raises:
            LeaseHeld: another live run of the pipeline holds the lease.
            LeaseLost: another run took the lease over while this one ran; the tables built so far stay.
        """
        reingest = frozenset(name for name in self.pipeline.named(select) if self.pipeline.tables[name].source) \
            if full_refresh else frozenset()
        definitions = self.pipeline.resolve()
        selected = self.pipeline.select(select)
        self._authorize([definitions[name] for name in selected])
        self.pipeline.capture_code(selected)
        scope = self._scope(run_id or new_run_id(), force=force or full_refresh, full_refresh=full_refresh,
                            reingest=reingest, change_kind=change_kind)
        result = RunResult(scope.run_id, self.pipeline.name)
        started, clock = datetime.now(UTC), time.monotonic()
        pending_records: list[RunRecord] = []  # records of unchanged tables, kept only if the run did something
        records, quality = AppendLog(self.layout.runs()), AppendLog(self.layout.quality())
        with snapshots.kept():  # the run's and its maintenance's answers about its tables
            with log_context(run_id=result.run_id, pipeline=self.pipeline.name), \
                    self.holding_lease(result.run_id, take_over=take_over) as lease:
                log.info("run of `%s` started", self.pipeline.name)
                record_declarations(self.layout, self.pipeline)
                queue = TableQueue(selected, {name: definitions[name].dependencies for name in selected},
                                   self.settings.run.concurrent_tables or min(DEFAULT_MOST_TABLES, cluster_cpus()))
                for record in self._run_tables(scope, queue, definitions, started, lease, stop):
                    with log_context(table=record.table):
                        pending_records.append(record)
                        if did_something(record):
                            append_records(records, pending_records)
                            pending_records.clear()
                        report_quality(self.settings, quality, self.sinks, self.pipeline.name, result.run_id, record)
                        result.records.append(record)
                        observe(record, self.on_record)
                if queue.pending:
                    result.stopped = True
                    pending_records += [scope.record(rest, "interrupted", datetime.now(UTC)) for rest in queue.pending]
                if len(pending_records) < len(result.records) or any(did_something(r) for r in pending_records):
                    append_records(records, pending_records)
                remove_empty_folders(self.layout.run_staging(result.run_id))
                send_lineage(self.settings, self.formats, definitions, result.records)
                result.seconds = time.monotonic() - clock
                observe_run(result, result.seconds)
                log.info("run of `%s` %s: %d table(s)", self.pipeline.name,
                         "stopped" if result.stopped else "succeeded" if result.succeeded else "failed",
                         len(result.records), extra={"status": "succeeded" if result.succeeded else "failed",
                                                     "seconds": round(time.monotonic() - clock, 3)})
            if result.succeeded and not result.stopped:
                result.maintenance = hooks.maintain(self.pipeline, self.settings, result.committed)
                result.materialized = hooks.materialize(self.settings, result.committed)
        return result

    def idle_plan(self, select: str | None = None) -> list[TablePlan] | None:
        """The plan of the selection when a run of it now would commit nothing, None when there is work
        (`engine.run.idle.idle_plan`): read from the tables' logs and the landing folders alone, so it needs no
        Ray, and a caller can skip starting Ray for a run with nothing to do.

        Raises:
            AccessDenied: the actor may not run the selection.
        """
        return idle_plan(self.pipeline, self.settings, select)

    def watch(
        self,
        interval: float,
        stop: threading.Event,
        select: str | None = None,
        *,
        force: bool = False,
        full_refresh: bool = False,
        change_kind: ChangeCategory | Mapping[str, ChangeCategory] | None = None,
        after: Callable[[RunResult], None] | None = None,
    ) -> RunResult:
        """Run the selection again every `interval` seconds until `stop` is set (a set `stop` also lets the running
        table commit, then ends the micro-batch). `force`, `full_refresh` and `change_kind` apply to the first
        micro-batch only; `after` gets each micro-batch's result (an exception it raises ends the watch). Each
        micro-batch runs the hooks a run does. Returns the last micro-batch's result."""
        while True:
            result = self.run(select, force=force, full_refresh=full_refresh, stop=stop.is_set,
                              change_kind=change_kind)
            if after is not None:
                after(result)
            force = full_refresh = False
            change_kind = None
            if stop.wait(interval):
                return result

    def backfill(self, table: str, start: dt.date, end: dt.date, run_id: str | None = None) -> RunResult:
        """Recompute the rows of `table` whose time partition lies in [`start`, `end`] from its inputs'
        latest versions, and replace those rows alone in one commit. The table must be `RecomputeKeys`
        with a `time_column`.

        Raises:
            PipelineDefinitionError: the table is unknown, ingested, or has no time partition.
        """
        definition = self.pipeline.resolve().get(table)
        if definition is None or definition.function is None:
            raise PipelineDefinitionError(f"pipeline `{self.pipeline.name}` has no derived table `{table}`",
                                          table=table)
        time_column(definition)
        self._authorize([definition])
        if start > end:
            raise PipelineDefinitionError(f"backfill of `{table}`: --from {start} is after --to {end}", table=table)
        scope = self._scope(run_id or new_run_id(), force=True, window=(start, end))
        result = RunResult(scope.run_id, self.pipeline.name)
        clock = time.monotonic()
        with log_context(run_id=result.run_id, pipeline=self.pipeline.name, table=table), snapshots.kept(), \
                self.holding_lease(result.run_id):
            record = self._run_table(scope, definition, datetime.now(UTC))
            append_records(self.layout.runs(), [record])
            result.records.append(record)
            observe(record, self.on_record)
            send_lineage(self.settings, self.formats, {table: definition}, result.records)
            observe_run(result, time.monotonic() - clock)
        return result

    def _run_tables(self, scope: RunScope, queue: TableQueue, definitions: Mapping[str, TableDefinition],
                    run_started: datetime, lease: RunLease, stop: Callable[[], bool] | None) -> Iterator[RunRecord]:
        """Run the queue's tables, each in a thread of its own once it may start, and yield each one's record as it
        finishes. A table whose dependency failed or was skipped is skipped. Once `stop` returns True no table
        starts; the tables not started stay pending in the queue."""
        finished: SimpleQueue[tuple[str, RunRecord | BaseException]] = SimpleQueue()
        not_built: set[str] = set()

        def start_ready() -> None:
            for name in [] if stop is not None and stop() else queue.ready():
                lease.check()
                queue.start(name)
                definition = definitions[name]
                blocked = [t for t in definition.dependencies if t in not_built]
                if blocked:
                    finished.put((name, scope.record(name, "skipped", datetime.now(UTC),
                                                     error=f"upstream table `{blocked[0]}` failed or was skipped")))
                    continue
                threading.Thread(target=contextvars.copy_context().run,
                                 args=(self._run_in_thread, scope, definition, run_started, finished),
                                 name=f"table-{name}", daemon=True).start()

        try:
            start_ready()
            while queue.running:
                name, outcome = finished.get()
                queue.finish(name)
                if isinstance(outcome, BaseException):
                    raise outcome
                if outcome.status in ("failed", "skipped"):
                    not_built.add(name)
                start_ready()
                yield outcome
        except (GeneratorExit, Exception):  # a lost lease, a failed record: the running tables commit whole first
            for _ in queue.running:
                finished.get()
            raise

    def _run_in_thread(self, scope: RunScope, definition: TableDefinition, run_started: datetime,
                       finished: SimpleQueue[tuple[str, RunRecord | BaseException]]) -> None:
        try:
            with log_context(table=definition.name):
                finished.put((definition.name, self._run_table(scope, definition, run_started)))
        except BaseException as err:  # noqa: BLE001 - handed to the run's thread, which raises it
            finished.put((definition.name, err))

    def _scope(self, run_id: str, **how: Any) -> RunScope:
        return RunScope(self.pipeline, self.settings, self.formats, run_id, reason=self.reason, **how)

    def _authorize(self, definitions: list[TableDefinition]) -> None:
        authorize_run(self.settings, self.pipeline, definitions)

    def _run_table(self, scope: RunScope, definition: TableDefinition, run_started: datetime) -> RunRecord:
        started = datetime.now(UTC)
        checks: list[CheckResult] = []
        try:
            if isinstance(definition.source, PostgresSource):
                outcome = ingest_database(scope, definition, definition.source, run_started)
            elif definition.source is not None:
                outcome = ingest(scope, definition, definition.source, run_started)
            else:
                outcome = build(scope, definition, checks)
            if _keep_pii_out_of_stats(scope, definition) and outcome.output_version is not None:
                outcome = outcome.replace(output_version=scope.handle(definition.name).latest_version())
            outcome = _with_column_docs_checked(scope, definition, outcome)
        except EngineError as err:
            log.error("%s", err)
            return scope.record(definition.name, "failed", started, error=str(err), checks=checks)
        except Exception as err:  # noqa: BLE001 - any failure fails this table only; independent tables still run
            log.debug("table `%s` failed", definition.name, exc_info=True)
            error = f"table `{definition.name}` failed: {type(err).__name__}: {_first_line(err)}"
            log.error("%s", error)
            return scope.record(definition.name, "failed", started, error=error, checks=checks)
        return scope.record(definition.name, outcome.status, started, checks=checks, **outcome.record_values())


def _keep_pii_out_of_stats(scope: RunScope, definition: TableDefinition) -> bool:
    """Keep the personal-data columns of the table and its change log out of file statistics; True when that
    committed a new version of the table (its run record then names that commit)."""
    if not definition.pii:
        return False
    metadata = scope.commit_metadata(definition) | audit_fields("protect")
    key = scope.column_key(definition)
    encrypted = {c: key.key_id for c, action in definition.pii.items() if action == "encrypt"} if key else {}
    keys = key_columns(definition.kind)
    handle = scope.handle(definition.name)
    altered = handle.store.keep_out_of_stats(handle.uri, handle.name, definition.pii, metadata, encrypted, keys)
    deltalog.keep_out_of_stats(handle.changes, definition.pii, metadata, encrypted, keys)
    return altered


def _with_column_docs_checked(scope: RunScope, definition: TableDefinition, outcome: TableOutcome) -> TableOutcome:
    """Report documented columns the table does not have, in the log and the run record's details."""
    handle = scope.handle(definition.name)
    if not definition.columns or outcome.output_version is None or not handle.exists():
        return outcome
    unknown = definition.unknown_documented_columns(handle.schema().names)
    if not unknown:
        return outcome
    log.warning("table `%s` documents columns it does not have: %s", definition.name, ", ".join(unknown))
    return outcome.with_details(unknown_documented_columns=unknown)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]
