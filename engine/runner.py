"""Executes a selection of a pipeline's tables: read inputs, call the function, write, record the run."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import ray.data
import ray.exceptions
from deltalake.transaction import Transaction

from engine import metrics, schema
from engine.alerts import degradations, send_alerts, sinks_from_settings
from engine.arrow import unify
from engine.changes import verify
from engine.changes.assess import Assessment, assess
from engine.changes.classify import ChangeCategory
from engine.changes.recorded import DEFINITION_KEY, save_parts
from engine.columns import REJECTED_REASON
from engine.config import Settings
from engine.context import TableContext, building
from engine.declarations import record_declarations
from engine.errors import (
    CommitConflict,
    EngineError,
    IngestError,
    PipelineDefinitionError,
    QualityFailed,
    SchemaEvolutionError,
)
from engine.governance import access, pii
from engine.governance.actor import audit_fields
from engine.governance.encryption import ColumnKey
from engine.governance.secrets import column_keys, pii_key
from engine.guard import call_table_function, guarded
from engine.ingest.batch import ingest_new_files
from engine.ingest.checkpoint import (
    TYPES_KEY,
    every_ingested_file,
    files_ingested_by,
    files_to_ingest,
    ingestion_checkpoint,
    known_shape,
)
from engine.ingest.sources import FileSource, discover
from engine.kinds import SCD2, Append, ChangeKind, Overwrite, RecomputeKeys, key_columns
from engine.lease import RunLease
from engine.logs import log_context
from engine.pipeline import Pipeline, TableDefinition
from engine.quality import gate
from engine.quality.metrics import append_metrics, read_metrics
from engine.quality.results import CheckResult
from engine.recovery import restore_table
from engine.runlog import RunRecord, append_records
from engine.storage import check_root, delete_tree, parquet_dataset
from engine.tables import changelog, delta, progress, scd2
from engine.tables.built_from import consumed_versions, schema_version_of
from engine.tables.files import DataFile, discard_files
from engine.tables.formats import DELTA, DeltaStore, TableFormats, TableStore
from engine.tables.layout import Layout
from engine.tables.progress import FILES_KEY, INPUTS_KEY, SCHEMA_KEY
from engine.tables.quarantine import unrecorded
from engine.tables.replace import Slice
from engine.tables.staging import StagedFiles, Stager, StagingDatasink

log = logging.getLogger(__name__)

ATTEMPT_KEY = "attempt"


@dataclass
class RunResult:
    """The outcome of one run.

    Attributes:
        run_id: the run's id.
        pipeline: the pipeline's name.
        records: one record per table run, in execution order.
        stopped: the run was asked to stop before every selected table was run.
    """

    run_id: str
    pipeline: str
    records: list[RunRecord] = field(default_factory=list)
    stopped: bool = False

    @property
    def succeeded(self) -> bool:
        """True when no table failed or was skipped."""
        return all(r.status in ("succeeded", "unchanged") for r in self.records)

    def failures(self) -> list[RunRecord]:
        """Records of failed tables."""
        return [r for r in self.records if r.status == "failed"]


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


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
        self.force = False
        self.full_refresh = False
        self.window: tuple[dt.date, dt.date] | None = None
        self.change_kind: ChangeCategory | Mapping[str, ChangeCategory] | None = None
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
        that one is emptied and ingests every landing file again, when none it ingested is gone. When `stop` returns True before a
        table starts, the run ends there (`RunResult.stopped`), recording the tables not started as `interrupted`;
        a table once started is committed whole.
        The run holds the pipeline's run lease on the root throughout (`take_over` takes it from a live holder).
        A derived table whose definition changed since it was built is rebuilt, and so are the tables downstream
        when the change is breaking (`engine.changes`); `change_kind` (for every table, or by table name) says
        whether a change is `breaking` or `non-breaking` instead of the engine.

        Raises:
            LeaseHeld: another live run of the pipeline holds the lease.
            LeaseLost: another run took the lease over while this one ran; the tables built so far stay.
        """
        self.force = force or full_refresh
        self.full_refresh = full_refresh
        self.change_kind = change_kind
        self.reingest = {name for name in self.pipeline.named(select) if self.pipeline.tables[name].source} \
            if full_refresh else set()
        definitions = self.pipeline.resolve()
        selected = self.pipeline.select(select)
        self._authorize([definitions[name] for name in selected])
        result = RunResult(run_id or new_run_id(), self.pipeline.name)
        started, clock = datetime.now(UTC), time.monotonic()
        not_built: set[str] = set()
        pending_records: list[RunRecord] = []  # records of unchanged tables, kept only if the run did something
        with log_context(run_id=result.run_id, pipeline=self.pipeline.name), \
                self.holding_lease(result.run_id, take_over=take_over) as lease:
            log.info("run of `%s` started", self.pipeline.name)
            record_declarations(self.layout, self.pipeline)
            for index, name in enumerate(selected):
                if stop is not None and stop():
                    result.stopped = True
                    pending_records += [self._record(result.run_id, rest, "interrupted", datetime.now(UTC))
                                        for rest in selected[index:]]
                    break
                lease.check()
                with log_context(table=name):
                    definition = definitions[name]
                    blocked = [t for t in definition.dependencies if t in not_built]
                    if blocked:
                        record = self._record(result.run_id, name, "skipped", datetime.now(UTC),
                                              error=f"upstream table `{blocked[0]}` failed or was skipped")
                    else:
                        record = self._run_table(definition, result.run_id, started)
                    if record.status in ("failed", "skipped"):
                        not_built.add(name)
                    pending_records.append(record)
                    if _did_something(record):
                        append_records(self.layout.runs(), pending_records)
                        pending_records.clear()
                    self._report_quality(result.run_id, record)
                    result.records.append(record)
                    self._observe(record)
            if len(pending_records) < len(result.records) or any(_did_something(r) for r in pending_records):
                append_records(self.layout.runs(), pending_records)
            _remove_empty_folders(self.layout.run_staging(result.run_id))
            self._send_lineage(definitions, result.records)
            metrics.observe_run(result, time.monotonic() - clock)
            log.info("run of `%s` %s: %d table(s)", self.pipeline.name,
                     "stopped" if result.stopped else "succeeded" if result.succeeded else "failed",
                     len(result.records), extra={"status": "succeeded" if result.succeeded else "failed",
                                                 "seconds": round(time.monotonic() - clock, 3)})
        return result

    def _observe(self, record: RunRecord) -> None:
        """Log a table's record, count it in the metrics, and hand it to `on_record`."""
        log.info("table `%s` %s: %d in, %d written, %d quarantined (%.1fs)", record.table, record.status,
                 record.rows_in, record.rows_written, record.rows_quarantined, record.duration_s,
                 extra={"status": record.status, "output_version": record.output_version,
                        "rows_in": record.rows_in, "rows_written": record.rows_written,
                        "rows_quarantined": record.rows_quarantined, "duration_s": round(record.duration_s, 3)})
        metrics.observe(record)
        self.on_record(record)

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
        self._time_column(definition)
        self._authorize([definition])
        if start > end:
            raise PipelineDefinitionError(f"backfill of `{table}`: --from {start} is after --to {end}", table=table)
        self.force, self.full_refresh, self.window = True, False, (start, end)
        result = RunResult(run_id or new_run_id(), self.pipeline.name)
        clock = time.monotonic()
        with log_context(run_id=result.run_id, pipeline=self.pipeline.name, table=table), \
                self.holding_lease(result.run_id):
            try:
                record = self._run_table(definition, result.run_id, datetime.now(UTC))
            finally:
                self.window = None
            append_records(self.layout.runs(), [record])
            result.records.append(record)
            self._observe(record)
            self._send_lineage({table: definition}, result.records)
            metrics.observe_run(result, time.monotonic() - clock)
        return result

    def _authorize(self, definitions: list[TableDefinition]) -> None:
        """Refuse the run before anything is read unless the actor may write every table it builds and read
        every table and landing folder those read."""
        purpose = f"a run of pipeline `{self.pipeline.name}`"
        reads = [name for d in definitions for name in d.dependencies]
        reads += [access.landing_of(d.source.directory) for d in definitions if d.source is not None]
        access.authorize(self.settings.access, "write", [d.name for d in definitions], purpose)
        access.authorize(self.settings.access, "read", reads, purpose)

    def _send_lineage(self, definitions: Mapping[str, TableDefinition], records: list[RunRecord]) -> None:
        """OpenLineage events of the tables built, with the landing files each ingested table took in."""
        if self.settings.lineage.transport == "none":
            return
        from engine.lineage import events as lineage_events  # the OpenLineage client takes a second to import

        landing = {r.table: [f"landing/{definitions[r.table].source.directory}/{name}"
                             for name in files_ingested_by(self.layout.table(r.table), r.table, r.run_id,
                                                           self._store(r.table))]
                   for r in records if definitions[r.table].source is not None and r.output_version is not None}
        lineage_events.emit(self.settings.lineage, self.layout, records, landing)

    def _report_quality(self, run_id: str, record: RunRecord) -> None:
        """Keep the table's check results and alert on degradations against earlier runs."""
        if not record.checks:
            return
        uri = self.layout.quality()
        history = read_metrics(uri).filter(pl.col("table") == record.table)
        append_metrics(uri, self.pipeline.name, run_id, record.checks)
        alerts = degradations(self.pipeline.name, run_id, record.checks, history,
                              rising_runs=self.settings.alerts.rising_runs)
        send_alerts(alerts, self.sinks)

    def _record(self, run_id: str, table: str, status: str, started_at: datetime, **values: Any) -> RunRecord:
        return RunRecord(run_id=run_id, pipeline=self.pipeline.name, table=table, status=status,
                         started_at=started_at, finished_at=datetime.now(UTC), operation=self._operation,
                         reason=self.reason, **values)

    def _run_table(self, definition: TableDefinition, run_id: str, run_started: datetime) -> RunRecord:
        started = datetime.now(UTC)
        checks: list[CheckResult] = []
        try:
            if definition.source is not None:
                values = self._ingest(definition, definition.source, run_id, run_started)
            else:
                values = self._transform(definition, run_id, checks)
            if self._keep_pii_out_of_stats(definition, run_id) and values.get("output_version") is not None:
                values["output_version"] = self._store(definition.name).latest_version(
                    self.layout.table(definition.name))
            self._check_column_docs(definition, values)
        except EngineError as err:
            log.error("%s", err)
            return self._record(run_id, definition.name, "failed", started, error=str(err), checks=checks)
        except Exception as err:  # noqa: BLE001 - any failure fails this table only; independent tables still run
            log.debug("table `%s` failed", definition.name, exc_info=True)
            error = f"table `{definition.name}` failed: {type(err).__name__}: {_first_line(err)}"
            log.error("%s", error)
            return self._record(run_id, definition.name, "failed", started, error=error, checks=checks)
        return self._record(run_id, definition.name, values.pop("status", "succeeded"), started,
                            checks=checks, **values)

    def _check_column_docs(self, definition: TableDefinition, values: dict[str, Any]) -> None:
        """Report documented columns the table does not have, in the log and the run record's details."""
        uri, store = self.layout.table(definition.name), self._store(definition.name)
        if not definition.columns or values.get("output_version") is None or not store.table_exists(uri):
            return
        names = store.schema(uri, definition.name).names
        unknown = definition.unknown_documented_columns(names)
        if unknown:
            log.warning("table `%s` documents columns it does not have: %s", definition.name, ", ".join(unknown))
            values["details"] = dict(values.get("details") or {}) | {"unknown_documented_columns": unknown}

    @property
    def _operation(self) -> str:
        return "run" if self.window is None else "backfill"

    def _commit_metadata(self, definition: TableDefinition, run_id: str, **extra: Any) -> dict[str, Any]:
        return ({"run_id": run_id, "pipeline": self.pipeline.name, "table": definition.name}
                | audit_fields(self._operation, self.reason) | extra)

    def _protected(self, definition: TableDefinition, output: ray.data.Dataset) -> ray.data.Dataset:
        """The table's rows with its personal-data columns tokenized, masked or encrypted as declared."""
        if not definition.pii:
            return output
        key = pii_key(self.settings.pii, f"table `{definition.name}` (personal-data columns "
                                         f"{', '.join(f'`{c}`' for c in definition.pii)})", self.layout.root)
        return output.map_batches(pii.protect, fn_kwargs={"columns": dict(definition.pii), "key": key,
                                                          "table": definition.name,
                                                          "column_key": self._column_key(definition),
                                                          "key_columns": key_columns(definition.kind)},
                                  batch_format="pyarrow")

    def _column_key(self, definition: TableDefinition) -> ColumnKey | None:
        """The current column-encryption key, when the table declares a column `encrypt`."""
        encrypted = [column for column, action in definition.pii.items() if action == "encrypt"]
        if not encrypted:
            return None
        return column_keys(self.settings.encryption, f"table `{definition.name}` (encrypted columns "
                                                     f"{', '.join(f'`{c}`' for c in encrypted)})").current

    def _keep_pii_out_of_stats(self, definition: TableDefinition, run_id: str) -> bool:
        """Keep the personal-data columns of the table and its change log out of file statistics; True when that
        committed a new version of the table (its run record then names that commit)."""
        if not definition.pii:
            return False
        metadata = self._commit_metadata(definition, run_id) | audit_fields("protect")
        key = self._column_key(definition)
        encrypted = {c: key.key_id for c, action in definition.pii.items() if action == "encrypt"} if key else {}
        keys = key_columns(definition.kind)
        altered = self._store(definition.name).keep_out_of_stats(self.layout.table(definition.name), definition.name,
                                                                 definition.pii, metadata, encrypted, keys)
        pii.keep_out_of_stats(self.layout.changes(definition.name), definition.pii, metadata, encrypted, keys)
        return altered

    def _store(self, table: str) -> TableStore:
        """The store of a layer table in its declared format (quarantines and change logs are always Delta)."""
        return self.formats.for_table(table)

    def _transaction(self, store: TableStore, uri: str, table: str, suffix: str = "") -> Transaction:
        """The marker of this run's commit to `table` (or to its quarantine, with `suffix`) in `store`: one
        application id per pipeline table, its version counting the table's commits."""
        return store.next_transaction(uri, f"medallion/{self.pipeline.name}/{table}{suffix}")

    def _quarantine_transaction(self, table: str) -> Transaction:
        """The marker of this run's commit to the quarantine of `table`."""
        return self._transaction(DeltaStore(), self.layout.quarantine(table), table, "/quarantine")

    def _ingest(
        self, definition: TableDefinition, source: FileSource, run_id: str, run_started: datetime
    ) -> dict[str, Any]:
        uri, store = self.layout.table(definition.name), self._store(definition.name)
        if definition.name in self.reingest:
            self._empty_ingested(definition, source, run_id)
        # The markers first: the commits of this work are refused if another run committed since they were read.
        transaction = self._transaction(store, uri, definition.name)
        quarantine_transaction = self._quarantine_transaction(definition.name)
        landed = discover(self.layout.landing(source.directory), source)
        checkpoint = ingestion_checkpoint(uri, definition.name, [f.name for f in landed], store)
        new, changed = files_to_ingest(landed, checkpoint, source)
        details: dict[str, Any] = {"files_new": len(new), "files_seen": len(landed)}
        if changed:
            names = ", ".join(f.name for f in changed)
            if source.on_change == "fail":
                raise IngestError(
                    f"table `{definition.name}`: {len(changed)} landing file(s) changed after they were ingested "
                    f"({source.growth} files): {names}. Put the ingested content back and land the new content as "
                    "new files, or declare the source `growth=\"append-only\"` if its files only grow at the end",
                    table=definition.name, path=changed[0].uri if len(changed) == 1 else None)
            details["files_changed_after_ingestion"] = [f.name for f in changed]
            log.warning("table `%s`: %d landing file(s) changed after they were ingested and are not "
                        "ingested again: %s", definition.name, len(changed), names)
        if grown := [f.name for f in new if f.start]:
            details["files_grown"] = grown
        if not new:
            return {"status": "unchanged", "details": details}
        assessment = self._assess(definition, None)
        if assessment.change is not None:
            details["definition"] = assessment.reason
            log.warning("table `%s`: %s", definition.name, assessment.reason)
        known_columns, known_types = known_shape(uri, definition.name, store)
        batch = guarded(definition, lambda: ingest_new_files(
            new, source, self._stager(definition, run_id, uri), ingested_at=run_started,
            known_columns=known_columns, known_types=known_types, ray_options=definition.ray_options))
        if batch.drifts:
            details["schema_drift"] = [drift.describe() for drift in batch.drifts]
            log.warning("table `%s`: schema drift (%s): %s", definition.name, source.on_drift,
                        "; ".join(details["schema_drift"]))
        if batch.quarantined:
            details["files_quarantined"] = list(batch.quarantined)
            log.warning("table `%s`: %d landing file(s) quarantined whole in `%s`: %s", definition.name,
                        len(batch.quarantined), self.layout.quarantine(definition.name), "; ".join(batch.quarantined))
            attempt = _attempt({f.name: progress.file_code(f.fingerprint()) for f in new}, store.latest_version(uri))
            with _discarded_on_conflict(uri, batch.staged.data):
                self._commit_quarantine(definition, batch.staged,
                                        self._commit_metadata(definition, run_id, **{ATTEMPT_KEY: attempt}),
                                        quarantine_transaction)
        staged = batch.staged
        added = [c for c in batch.schema.names if not c.startswith("_") and c not in known_columns]
        schema_version = schema_version_of(uri, definition.name, store) + (
            1 if added or not store.table_exists(uri) else 0)
        metadata = self._commit_metadata(definition, run_id, **{
            FILES_KEY: list(batch.fingerprints), TYPES_KEY: batch.types, SCHEMA_KEY: schema_version,
            DEFINITION_KEY: assessment.commit_value(run_id, None, reingested=definition.name in self.reingest
                                                    ).to_metadata()})
        with _discarded_on_conflict(uri, staged.data):
            version = store.commit_files(uri, staged.data, mode="append", metadata=metadata,
                                         empty_schema=batch.schema, commit_empty=True, transaction=transaction)
        return {
            "output_version": version,
            "rows_in": staged.rows,
            "rows_written": staged.rows,
            "rows_quarantined": staged.quarantined_rows,
            "details": details,
        }

    def _transform(self, definition: TableDefinition, run_id: str, checks: list[CheckResult]) -> dict[str, Any]:
        """Build one table; `checks` receives its quality results, also when the table fails."""
        assert definition.function is not None
        uri, store = self.layout.table(definition.name), self._store(definition.name)
        # The markers first: every commit of this work is refused if another run committed since they were read.
        transaction = self._transaction(store, uri, definition.name)
        quarantine_transaction = self._quarantine_transaction(definition.name)
        versions = {t: self._store(t).latest_version(self.layout.table(t)) for t in definition.dependencies}
        consumed = consumed_versions(uri, definition.name, definition.dependencies, store)
        assessment = self._assess(definition, consumed)
        before = store.latest_version(uri)
        definition_value = assessment.commit_value(run_id, before).to_metadata()
        metadata = self._commit_metadata(definition, run_id, **{INPUTS_KEY: versions, DEFINITION_KEY: definition_value})
        previous = None if self.force or assessment.rebuild else (
            None if consumed is None else {**consumed, **assessment.skipped})
        if versions and previous == versions and self.window is None:
            if consumed == versions:
                return {"status": "unchanged", "input_versions": versions,
                        "details": {"reason": "inputs unchanged since the table was last built"}}
            version = store.commit_files(uri, [], mode="append", metadata=metadata, commit_empty=True,
                                         transaction=transaction)
            return {"status": "unchanged", "input_versions": versions, "output_version": version, "details": {
                "reason": f"passed over the non-breaking rebuild of {', '.join(sorted(assessment.skipped))}"}}
        rebuild = self.full_refresh or assessment.rebuild
        if assessment.rebuild:
            log.warning("table `%s` is rebuilt: %s", definition.name, assessment.reason)
        before_schema = store.schema(uri, definition.name) if assessment.rebuild and before is not None else None
        kind = definition.kind
        whole = guarded(definition, lambda: self._unkeyed_inputs(definition, versions))
        affected = None if self.window or assessment.rebuild else guarded(
            definition, lambda: self._affected_keys(definition, versions, previous, whole))
        if affected is not None and affected.num_rows == 0:
            version = store.commit_files(uri, [], mode="append", metadata=metadata, commit_empty=True,
                                         transaction=transaction)
            return {"status": "unchanged", "input_versions": versions, "output_version": version,
                    "details": {"reason": "no entity's input rows changed"}}
        if affected is not None:
            reads = [self._read_input(definition, t, versions[t], None) if t in whole else
                     _only_keys(self._store(t).read_dataset(self.layout.table(t), t, versions[t],
                                                            definition.ray_options), affected)
                     for t in definition.inputs]
        else:
            reads = [self._read_input(definition, t, versions[t], (previous or {}).get(t)) for t in definition.inputs]
        inputs = [dataset for dataset, _ in reads]
        rows_in = sum(rows for _, rows in reads)
        with building(TableContext(self.settings, run_id, definition.name, versions)):
            output = self._protected(definition, call_table_function(definition, inputs))
        if self.window is not None:
            output = _within(output, self._time_column(definition), *self.window)
        folder = self.layout.staging(run_id, definition.name) if isinstance(kind, ChangeKind) else uri
        keys = guarded(definition, lambda: gate.reference_keys(definition.quality, self.layout, self.formats)
                        if definition.quality else {})
        staged = guarded(definition, lambda: self._stage(definition, output, run_id, folder, keys))
        checks.extend(self._table_checks(definition, staged, folder, rows_in))
        try:
            gate.enforce(definition.name, checks, store.latest_version(uri))
            schema_version = self._evolve_schema(definition, staged, run_id)
        except (QualityFailed, SchemaEvolutionError):
            self._discard_staged(definition, folder, staged)
            discard_files(self.layout.quarantine(definition.name), staged.quarantine)
            raise
        if rebuild:
            self._empty(definition, metadata)
        values: dict[str, Any] = {"input_versions": versions, "rows_in": rows_in,
                                  "rows_quarantined": staged.quarantined_rows}
        metadata |= {SCHEMA_KEY: schema_version}
        if self.window is not None:
            metadata = {k: v for k, v in metadata.items() if k != INPUTS_KEY} | {
                "backfill": [str(day) for day in self.window]}
        if staged.quarantine:
            try:
                self._commit_quarantine(definition, staged, metadata | {
                    ATTEMPT_KEY: _attempt(versions, store.latest_version(uri))}, quarantine_transaction)
            except CommitConflict:
                self._discard_staged(definition, folder, staged)
                raise
        if isinstance(kind, ChangeKind):
            try:
                changes = _read_staged(folder, staged)
                values |= self._commit_progress(definition, output, metadata, transaction, staged) \
                    if changes.num_rows == 0 else guarded(definition, lambda: self._apply_changes(
                        definition.name, kind, changes, metadata, transaction))
            finally:
                delete_tree(folder)
        elif isinstance(kind, RecomputeKeys) and (affected is not None or self.window is not None):
            where = (Slice.of_range(self._time_column(definition), *self.window) if self.window is not None
                     else Slice.of_keys(affected))
            with _discarded_on_conflict(uri, staged.data):
                replaced = store.replace(uri, definition.name, where, staged.data, storage=self.settings.storage,
                                         prefix=run_id, metadata=metadata, transaction=transaction)
            values |= {"output_version": replaced.version, "rows_written": staged.rows, "details": {
                "keys_recomputed": None if affected is None else affected.num_rows,
                "rows_replaced": replaced.rows_removed, "files_rewritten": replaced.files_rewritten,
                "files_skipped": replaced.files_skipped}}
        else:
            mode = "append" if isinstance(kind, Append) and not rebuild else "overwrite"
            with _discarded_on_conflict(uri, staged.data):
                version = store.commit_files(uri, staged.data, mode=mode, metadata=metadata, commit_empty=True,
                                             empty_schema=None if staged.data else _schema_of(output),
                                             transaction=transaction)
            values |= {"output_version": version, "rows_written": staged.rows}
        if assessment.rebuild:
            values["details"] = dict(values.get("details") or {}) | {
                "rebuilt": self._rebuilt(definition, assessment, before, before_schema, run_id)}
        return values

    def _empty_ingested(self, definition: TableDefinition, source: FileSource, run_id: str) -> None:
        """Before a full refresh of an ingested table, empty it and its quarantine, forgetting the files it took in,
        so that it ingests every landing file again with its current definition.

        Raises:
            IngestError: a landing file it ingested is gone (its rows would be lost), or it is no Delta table.
        """
        uri, table, store = self.layout.table(definition.name), definition.name, self._store(definition.name)
        if not store.table_exists(uri):
            return
        if store.name != DELTA:
            raise IngestError(f"table `{table}`: a full refresh of an ingested table needs a Delta table; "
                              "move the table away to ingest its landing files again", table=table)
        landed = {f.name for f in discover(self.layout.landing(source.directory), source)}
        gone = sorted(every_ingested_file(uri, table, store) - landed)
        if gone:
            raise IngestError(
                f"table `{table}` cannot be ingested again in full: {len(gone)} landing file(s) it took in are gone "
                f"from {self.layout.landing(source.directory)} (first: {gone[0]}), and their rows would be lost; "
                "put them back, or run without --full-refresh for this table", table=table)
        log.warning("table `%s`: emptied to ingest its %d landing file(s) again (full refresh)", table, len(landed))
        restore_table(uri, -1, reason="full refresh: every landing file ingested again", run_id=run_id)
        quarantine = self.layout.quarantine(table)
        if delta.table_exists(quarantine):
            delta.commit_files(quarantine, [], mode="overwrite", metadata=self._commit_metadata(
                definition, run_id, full_refresh=True))

    def _assess(self, definition: TableDefinition, consumed: Mapping[str, int | None] | None) -> Assessment:
        """The table's definition against what built it; a definition not seen before is kept under the root, for
        later comparisons, before any commit records it."""
        override = self.change_kind.get(definition.name) if isinstance(self.change_kind, Mapping) \
            else self.change_kind
        assessment = assess(definition, self.layout, self._store, consumed, override)
        if assessment.recorded is None or assessment.recorded.fingerprint != assessment.parts.fingerprint:
            save_parts(self.layout, assessment.parts)
        return assessment

    def _rebuilt(self, definition: TableDefinition, assessment: Assessment, before: int | None,
                 before_schema: pa.Schema | None, run_id: str) -> dict[str, Any]:
        """Settle the change kind of a rebuild: one expected non-breaking holds when the rebuilt table only added
        columns and kept the others' rows (unless the user said so); it is then recorded by a commit of its own,
        which gives the table back its epoch. Returns the run record's `rebuilt` details."""
        details: dict[str, Any] = {"reason": assessment.reason, "change": "breaking"}
        if before is None or before_schema is None or not assessment.expected_non_breaking:
            return details
        uri, table, store = self.layout.table(definition.name), definition.name, self._store(definition.name)
        after = store.latest_version(uri)
        added = verify.added_columns(before_schema, store.schema(uri, table))
        told = assessment.change is not None and assessment.change.overridden
        if after is None or (not told and (added is None or not verify.same_rows(
                store, uri, table, before, after, before_schema.names, dict(definition.ray_options)))):
            log.warning("table `%s`: the rebuild changed the rows of existing columns: a breaking change, so "
                        "the tables downstream are rebuilt too", table)
            return details
        added = added or ()
        store.commit_files(uri, [], mode="append", commit_empty=True, metadata=self._commit_metadata(
            definition, run_id, **{DEFINITION_KEY: assessment.confirmed(before, added).to_metadata()}))
        return details | {"change": "non-breaking", "added": list(added)}

    def _commit_progress(self, definition: TableDefinition, output: ray.data.Dataset, metadata: dict[str, Any],
                         transaction: Transaction, staged: StagedFiles) -> dict[str, Any]:
        """Commit no row but the input versions consumed, for a change-fed table none of whose new input rows
        passed: the rows it rejected are then not read, nor quarantined, again."""
        uri, store = self.layout.table(definition.name), self._store(definition.name)
        schema = _schema_of(output)
        version = store.commit_files(uri, [], mode="append", metadata=metadata, commit_empty=True,
                                     empty_schema=None if schema is None else _stored_schema(definition.kind, schema),
                                     transaction=transaction)
        return {"output_version": version, "status": "succeeded" if staged.quarantined_rows else "unchanged"}

    def _discard_staged(self, definition: TableDefinition, folder: str, staged: StagedFiles) -> None:
        """Delete the data files staged for a commit that will not happen."""
        if isinstance(definition.kind, ChangeKind):
            delete_tree(folder)
        else:
            discard_files(folder, staged.data)

    def _unkeyed_inputs(self, definition: TableDefinition, versions: dict[str, int | None]) -> dict[str, list[str]]:
        """The built inputs of a `RecomputeKeys` table that lack one of its keys (see `RecomputeKeys`), each with
        the columns its changes are found by."""
        kind = definition.kind
        if not isinstance(kind, RecomputeKeys):
            return {}
        schemas = {t: self._store(t).schema(self.layout.table(t), t) for t in definition.inputs
                   if versions[t] is not None}
        unkeyed = kind.unkeyed_inputs(definition.name, {t: schema.names for t, schema in schemas.items()})
        return {t: [f.name for f in schemas[t] if not pa.types.is_nested(f.type)] for t in unkeyed}

    def _affected_keys(
        self, definition: TableDefinition, versions: dict[str, int | None], previous: dict[str, int] | None,
        unkeyed: dict[str, list[str]],
    ) -> pa.Table | None:
        """For a `RecomputeKeys` table already built, the keys whose input rows changed since; None when
        the whole table must be computed (first build, the rows of an `unkeyed` input changed, a table its checks
        reference changed, which may change which rows pass, or an input's changes can no longer be read)."""
        kind = definition.kind
        if not isinstance(kind, RecomputeKeys) or not previous or not self._store(definition.name).table_exists(
                self.layout.table(definition.name)):
            return None
        references = [t for t in definition.dependencies if t not in definition.inputs]
        if any(previous.get(t) != versions[t] for t in references):
            return None
        changed = []
        for table in definition.inputs:
            since, until = previous.get(table), versions[table]
            if until is None or since == until:
                continue
            if since is None or unkeyed.get(table) == []:
                return None
            found = self._store(table).changed_keys(self.layout.table(table), table, since, until,
                                                    unkeyed.get(table, kind.keys))
            if found is None or (table in unkeyed and found.num_rows):
                return None
            if table not in unkeyed:
                changed.append(found)
        if not changed:
            return pa.table({k: pa.array([], pa.int64()) for k in kind.keys})
        frame = pl.concat([pl.from_arrow(keys) for keys in changed], how="vertical_relaxed").unique()
        assert isinstance(frame, pl.DataFrame)
        return frame.to_arrow()

    def _time_column(self, definition: TableDefinition) -> str:
        kind = definition.kind
        if not isinstance(kind, RecomputeKeys) or kind.time_column is None:
            raise PipelineDefinitionError(
                f"table `{definition.name}` has no time partition to backfill; declare it with "
                "`kind=RecomputeKeys(keys=[...], time_column=...)`", table=definition.name)
        return kind.time_column

    def _evolve_schema(self, definition: TableDefinition, staged: StagedFiles, run_id: str) -> int:
        """Check the staged output's schema against the table's under the table's evolution policy; rewrite
        the existing rows first when a declared migration changes them (appended and change-fed tables).
        Returns the schema version of the coming commit: one more than the last when the schema changes.

        Raises:
            SchemaEvolutionError: a change the table does not declare.
        """
        uri, table, store = self.layout.table(definition.name), definition.name, self._store(definition.name)
        version = schema_version_of(uri, table, store)
        if not store.table_exists(uri):
            return version + 1
        if not staged.data:
            return version
        current = store.schema(uri, table)
        incoming = store.as_stored(_stored_schema(definition.kind, unify([f.schema for f in staged.data])))
        changes = schema.changes_between(table, current, incoming, definition.evolution)
        if not changes:
            return version
        log.warning("table `%s`: schema changes: %s", table, "; ".join(c.describe() for c in changes))
        if schema.needs_rewrite(changes) and not isinstance(definition.kind, Overwrite):
            store.rewrite(uri, table, lambda rows: schema.migrate(rows, changes, incoming),
                          metadata=self._commit_metadata(definition, run_id, **{
                              SCHEMA_KEY: version + 1, "migration": [c.describe() for c in changes]}))
        return version + 1

    def _empty(self, definition: TableDefinition, built: dict[str, Any]) -> None:
        """Before a full refresh, empty a table's quarantine and, for a change-fed table, the table and its
        change log. The emptying commit records that the table was built from no input, so a run that dies
        right after still rebuilds it whole, and the definition of the coming build (`built`)."""
        metadata = built | {INPUTS_KEY: dict.fromkeys(definition.dependencies), "full_refresh": True}
        delta_store: TableStore = DeltaStore()
        emptied = [(delta_store, self.layout.quarantine(definition.name))]
        if isinstance(definition.kind, ChangeKind):
            emptied = [(self._store(definition.name), self.layout.table(definition.name)),
                       (delta_store, self.layout.changes(definition.name)), *emptied]
        for store, uri in emptied:
            if store.table_exists(uri):
                store.commit_files(uri, [], mode="overwrite", metadata=metadata)

    def _apply_changes(
        self, table: str, kind: ChangeKind, changes: pa.Table, metadata: dict[str, Any], transaction: Transaction
    ) -> dict[str, Any]:
        """Apply a batch of changes to a `Merge` or `SCD2` table; the values of its run record."""
        uri, log_uri = self.layout.table(table), self.layout.changes(table)
        if isinstance(kind, SCD2):
            history = scd2.apply_changes(uri, log_uri, table, changes, kind, store=self._store(table),
                                         metadata=metadata, transaction=transaction)
            return {"output_version": history.version, "rows_written": history.rows_upserted,
                    "rows_duplicate": changes.num_rows - history.changes_logged,
                    "status": "succeeded" if history.version is not None else "unchanged",
                    "details": {"history": {"changes_logged": history.changes_logged,
                                            "rows_removed": history.rows_removed}}}
        received = changes.num_rows
        if kind.delete_when and kind.sequence_by:
            changes = changelog.flag_deletes(changes, kind.delete_when)
            deletes = changes.filter(changes.column(changelog.DELETED)).select([*kind.keys, kind.sequence_by])
            changelog.record(log_uri, table, deletes, [*kind.keys, kind.sequence_by], metadata=metadata)
            tombstones = changelog.read_for_keys(log_uri, table, changes.select(kind.keys))
            changes = changelog.drop_superseded(changes, tombstones, kind.keys, kind.sequence_by)
            changes = changes.drop_columns([changelog.DELETED])
        outcome = self._store(table).merge(uri, table, changes, kind, metadata=metadata, transaction=transaction,
                                           storage=self.settings.storage)
        superseded = received - changes.num_rows + outcome.duplicates
        return {"output_version": outcome.version, "rows_written": received - superseded,
                "rows_duplicate": superseded, "details": {"merge": outcome.metrics}}

    def _commit_quarantine(self, definition: TableDefinition, staged: StagedFiles, metadata: dict[str, Any],
                           transaction: Transaction) -> None:
        """Append the rejected rows the quarantine does not record yet, unless an earlier attempt at the same work
        (same input versions, same table version) already did and then died before committing the table. The
        commit carries `transaction`, read before the work began, so a concurrent run's quarantining of the same
        rows wins or loses whole."""
        uri = self.layout.quarantine(definition.name)
        if delta.last_commit_value(uri, definition.name, ATTEMPT_KEY) == metadata[ATTEMPT_KEY]:
            log.info("table `%s`: rejected rows of this work were already quarantined", definition.name)
            discard_files(uri, staged.quarantine)
            return
        rejected = unrecorded(uri, staged.quarantine, self.settings.storage, metadata["run_id"], frozenset(definition.pii))
        with _discarded_on_conflict(uri, rejected):
            delta.commit_files(uri, rejected, mode="append", metadata=metadata, transaction=transaction)

    def _read_input(
        self, definition: TableDefinition, table: str, version: int | None, built_from: int | None
    ) -> tuple[ray.data.Dataset, int]:
        """An input at `version` and its row count: only the rows added since `built_from` when the table
        is incremental and the input only grew since, else all of it."""
        uri, store = self.layout.table(table), self._store(table)
        if definition.incremental and built_from is not None and version is not None:
            added = store.read_added_files(uri, table, built_from, version, definition.ray_options)
            if added is not None:
                return added
        return store.read_dataset(uri, table, version, definition.ray_options), store.row_count(uri, table, version)

    def _table_checks(
        self, definition: TableDefinition, staged: StagedFiles, folder: str, rows_in: int
    ) -> list[CheckResult]:
        """Row-level results from the write tasks plus the table-level checks over the staged files."""
        quality = definition.quality
        if quality is None:
            return list(staged.checks)
        unique = [] if isinstance(definition.kind, ChangeKind) else gate.unique_check(
            definition.name, quality, folder, staged.data)
        conservation = gate.conservation_check(definition.name, quality, rows_in, staged.rows,
                                               staged.quarantined_rows)
        return [*staged.checks, *unique, *conservation]

    def _stage(
        self,
        definition: TableDefinition,
        dataset: ray.data.Dataset,
        run_id: str,
        folder: str,
        reference_keys: dict[str, pa.Array] | None = None,
    ) -> StagedFiles:
        sink = StagingDatasink(self._stager(definition, run_id, folder, reference_keys))
        dataset.write_datasink(sink, ray_remote_args=dict(definition.ray_options))
        return sink.result

    def _stager(self, definition: TableDefinition, run_id: str, folder: str,
                reference_keys: dict[str, pa.Array] | None = None) -> Stager:
        return Stager(folder, self.layout.quarantine(definition.name), self.settings.storage, run_id,
                      definition.name, definition.quality, reference_keys or {}, frozenset(definition.pii))


def _only_keys(dataset: ray.data.Dataset, keys: pa.Table) -> tuple[ray.data.Dataset, int]:
    """The rows of `dataset` whose key columns match a row of `keys`, materialized, and their count."""
    selected = dataset.map_batches(_semi_join, fn_kwargs={"keys": keys}, batch_format="pyarrow").materialize()
    return selected, selected.count()


def _semi_join(batch: pa.Table, keys: pa.Table) -> pa.Table:
    frame, wanted = pl.from_arrow(batch), pl.from_arrow(keys)
    assert isinstance(frame, pl.DataFrame) and isinstance(wanted, pl.DataFrame)
    wanted = wanted.cast(dict(frame.select(keys.column_names).schema))
    return frame.join(wanted, on=keys.column_names, how="semi", nulls_equal=True).to_arrow()


def _within(dataset: ray.data.Dataset, column: str, start: dt.date, end: dt.date) -> ray.data.Dataset:
    """The rows of `dataset` whose `column` lies in [`start`, `end`]."""
    return dataset.map_batches(_in_range, fn_kwargs={"column": column, "start": start, "end": end},
                               batch_format="pyarrow")


def _in_range(batch: pa.Table, column: str, start: dt.date, end: dt.date) -> pa.Table:
    values = batch.column(column)
    if pa.types.is_timestamp(values.type):
        values = pc.cast(values, pa.date32())
    return batch.filter(pc.and_(pc.greater_equal(values, pa.scalar(start)), pc.less_equal(values, pa.scalar(end))))


def _stored_schema(kind: Append | Overwrite | ChangeKind, output: pa.Schema) -> pa.Schema:
    """The table schema a function output makes: steering columns of a change feed are not stored, and an
    SCD2 table adds its history columns."""
    if not isinstance(kind, ChangeKind):
        return output
    stored = pa.schema([f for f in output if f.name not in kind.except_columns])
    if isinstance(kind, SCD2):
        sequence = stored.field(kind.sequence_by).type
        stored = pa.schema([*stored, pa.field("valid_from", sequence), pa.field("valid_to", sequence),
                            pa.field("is_current", pa.bool_())])
    return stored


def _schema_of(dataset: ray.data.Dataset) -> pa.Schema | None:
    """The Arrow schema of a dataset's accepted rows, None when it cannot be known."""
    schema = dataset.schema()
    base = getattr(schema, "base_schema", None)
    if not isinstance(base, pa.Schema):
        return None
    return base.remove(base.get_field_index(REJECTED_REASON)) if REJECTED_REASON in base.names else base


def _attempt(input_versions: dict[str, int | None], table_version: int | None) -> str:
    """Identifies one piece of work on a table: its input versions and the table version it starts from."""
    work = {"inputs": input_versions, "table_version": table_version}
    return hashlib.sha256(json.dumps(work, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _discarded_on_conflict(folder: str, files: Iterable[DataFile]) -> Iterator[None]:
    """Delete the staged `files` when their commit loses to another writer's."""
    try:
        yield
    except CommitConflict:
        discard_files(folder, files)
        raise


def _did_something(record: RunRecord) -> bool:
    """Whether a table's record says anything happened: a commit, a failure, a skip, an interruption."""
    return record.status != "unchanged" or record.output_version is not None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def _remove_empty_folders(folder: str) -> None:
    """Remove `folder`, the folders below it and its parent when they hold no file (local storage only)."""
    if "://" in folder or not os.path.isdir(folder):
        return
    for current, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(current)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(folder))


def _read_staged(folder: str, staged: StagedFiles) -> pa.Table:
    if not staged.data:
        return pa.table({})
    schema = unify([f.schema for f in staged.data])
    return parquet_dataset([f"{folder}/{f.path}" for f in staged.data], schema=schema, format="parquet").to_table()

