"""What a run leaves behind besides its tables: logs, metrics, quality history and alerts, lineage events."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping

from engine import metrics
from engine.alerts import AlertSink, degradations, send_alerts
from engine.config import Settings
from engine.ingest.checkpoint import files_ingested_by
from engine.ingest.sources import FileSource
from engine.pipeline import TableDefinition
from engine.quality.metrics import append_metrics, read_recent_metrics
from engine.run.outcome import RunResult
from engine.runlog import RunRecord
from engine.tables.delta import AppendLog
from engine.tables.formats import TableFormats

log = logging.getLogger("engine.runner")


def observe(record: RunRecord, on_record: Callable[[RunRecord], None]) -> None:
    """Log a table's record, count it in the metrics, and hand it to `on_record`."""
    log.info("table `%s` %s: %d in, %d written, %d quarantined (%.1fs)", record.table, record.status,
             record.rows_in, record.rows_written, record.rows_quarantined, record.duration_s,
             extra={"status": record.status, "output_version": record.output_version,
                    "rows_in": record.rows_in, "rows_written": record.rows_written,
                    "rows_quarantined": record.rows_quarantined, "duration_s": round(record.duration_s, 3)})
    pipeline, table = record.pipeline, record.table
    for kind, value in zip(metrics.ROW_KINDS, (record.rows_in, record.rows_written, record.rows_quarantined,
                                               record.rows_duplicate)):
        metrics.rows_processed.labels(pipeline, table, kind).inc(max(value or 0, 0))
    for check in record.checks:
        metrics.quality_failures.labels(pipeline, table, check.check).inc(max(check.rows_failed, 0))
    metrics.table_runs.labels(pipeline, table, record.status).inc()
    metrics.table_seconds.labels(pipeline, table, record.status).observe(max(record.duration_s, 0.0))
    if record.status in ("succeeded", "unchanged"):
        metrics.table_last_success.labels(pipeline, table).set(record.finished_at.timestamp())
    on_record(record)


def observe_run(result: RunResult, seconds: float) -> None:
    """Count one run of a pipeline that took `seconds`."""
    metrics.run_seconds.labels(result.pipeline, result.status).observe(max(seconds, 0.0))


def report_quality(settings: Settings, quality: AppendLog, sinks: list[AlertSink], pipeline: str, run_id: str,
                   record: RunRecord) -> None:
    """Keep the table's check results in the quality metrics table and alert on degradations against earlier
    runs."""
    if not record.checks:
        return
    history = read_recent_metrics(quality.uri, record.table, settings.alerts.rising_runs - 1, excluding_run=run_id)
    append_metrics(quality, pipeline, run_id, record.checks)
    alerts = degradations(pipeline, run_id, record.checks, history, rising_runs=settings.alerts.rising_runs)
    send_alerts(alerts, sinks)


def send_lineage(settings: Settings, formats: TableFormats, definitions: Mapping[str, TableDefinition],
                 records: list[RunRecord]) -> None:
    """OpenLineage events of the tables built, with the landing files each ingested table took in."""
    if settings.lineage.transport == "none":
        return
    from engine.lineage import events as lineage_events  # the OpenLineage client takes a second to import

    layout = formats.layout
    landing = {r.table: [f"landing/{definitions[r.table].source.directory}/{name}"  # type: ignore[union-attr]
                         for name in files_ingested_by(layout.table(r.table), r.table, r.run_id,
                                                       formats.for_table(r.table))]
               for r in records if isinstance(definitions[r.table].source, FileSource) and r.output_version is not None}
    lineage_events.emit(settings.lineage, layout, records, landing)


def did_something(record: RunRecord) -> bool:
    """Whether a table's record says anything happened: a commit, a failure, a skip, an interruption."""
    return record.status != "unchanged" or record.output_version is not None


def remove_empty_folders(folder: str) -> None:
    """Remove `folder`, the folders below it and its parent when they hold no file (local storage only)."""
    if "://" in folder or not os.path.isdir(folder):
        return
    for current, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(current)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(folder))
