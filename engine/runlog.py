"""Run records: one row per table per run in the Delta table `<root>/_meta/runs`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa

from engine.governance.actor import audit_fields
from engine.quality.results import CheckResult
from engine.tables.delta import AppendLog, read_rows, table_exists

RUN_RECORD_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("pipeline", pa.string()),
    ("table", pa.string()),
    ("status", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")),
    ("duration_s", pa.float64()),
    ("input_versions", pa.string()),
    ("output_version", pa.int64()),
    ("rows_in", pa.int64()),
    ("rows_written", pa.int64()),
    ("rows_quarantined", pa.int64()),
    ("rows_duplicate", pa.int64()),
    ("error", pa.string()),
    ("details", pa.string()),
    ("operation", pa.string()),
    ("actor", pa.string()),
    ("reason", pa.string()),
])


@dataclass
class RunRecord:
    """What one run did to one table.

    Attributes:
        status: `succeeded`, `failed`, `skipped` (an upstream table failed), `unchanged` (nothing new) or
            `interrupted` (a signal stopped the run before the table started).
        input_versions: version read of every upstream table.
        output_version: version committed, None when nothing was committed.
        rows_in: rows read from the inputs (landing records for an ingested table).
        rows_written: rows applied to the table.
        rows_quarantined: rows sent to the table's quarantine.
        rows_duplicate: incoming rows dropped as older changes of a key seen in the same run.
        details: anything else worth keeping (merge metrics, files ingested, ...).
        checks: quality check results (also kept in the quality metrics table).
        operation: `run`, `backfill`, `erase`, ... (audit).
        actor: who ran it; `$MEDALLION_ACTOR` or the OS user when None.
        reason: why; the operation's default reason when None.
    """

    run_id: str
    pipeline: str
    table: str
    status: str
    started_at: datetime
    finished_at: datetime
    input_versions: dict[str, int | None] = field(default_factory=dict)
    output_version: int | None = None
    rows_in: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    operation: str = "run"
    actor: str | None = None
    reason: str | None = None

    @property
    def duration_s(self) -> float:
        """Seconds between start and finish."""
        return (self.finished_at - self.started_at).total_seconds()


def append_records(target: str | AppendLog, records: list[RunRecord]) -> None:
    """Append `records` to the run records table (its URI, or the `AppendLog` a run keeps of it), creating it when
    needed."""
    if not records:
        return
    rows = []
    for record in records:
        row = asdict(record)
        row.pop("checks")
        row |= audit_fields(record.operation, record.reason) | ({"actor": record.actor} if record.actor else {})
        row["duration_s"] = record.duration_s
        row["input_versions"] = json.dumps(record.input_versions, sort_keys=True)
        checks = {c.check: {"action": c.action, "rows_checked": c.rows_checked, "rows_failed": c.rows_failed}
                  for c in record.checks}
        row["details"] = json.dumps(record.details | ({"checks": checks} if checks else {}),
                                    sort_keys=True, default=str)
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=RUN_RECORD_SCHEMA)
    (target if isinstance(target, AppendLog) else AppendLog(target)).append(table, schema_mode="merge")


def read_records(uri: str) -> pl.DataFrame:
    """Every run record, oldest first; an empty frame when no run was recorded."""
    if not table_exists(uri):
        return pl.from_arrow(pa.Table.from_batches([], RUN_RECORD_SCHEMA))  # type: ignore[return-value]
    frame = pl.from_arrow(read_rows(uri, uri))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("started_at", "table")


RUN_STATUSES = ("failed", "interrupted", "skipped", "succeeded")
"""Record statuses that decide a run's status, first found first; a run with none of them is `unchanged`."""


def run_status(statuses: Iterable[str]) -> str:
    """The status of a run from its tables' record statuses: `failed` when a table failed, `interrupted` when a
    signal stopped it before some tables started, `succeeded` when it committed, else `unchanged`."""
    present = set(statuses)
    return next((status for status in RUN_STATUSES if status in present), "unchanged")


@dataclass(frozen=True)
class RunSummary:
    """One run, from its tables' records."""

    run_id: str
    pipeline: str
    started_at: datetime
    finished_at: datetime
    status: str
    committed: int
    failed: int
    not_run: int
    rows_written: int
    operation: str | None
    actor: str | None

    @property
    def duration_s(self) -> float:
        """Seconds from the first table's start to the last one's finish."""
        return (self.finished_at - self.started_at).total_seconds()


def summarize_runs(records: pl.DataFrame, limit: int | None = None, pipeline: str | None = None) -> list[RunSummary]:
    """One summary per run in `records` (of `pipeline` alone when given), newest first, at most `limit`."""
    if pipeline is not None:
        records = records.filter(pl.col("pipeline") == pipeline)
    summaries = []
    for (run_id,), rows in records.group_by("run_id"):
        statuses = rows["status"].to_list()
        summaries.append(RunSummary(
            run_id=str(run_id), pipeline=rows["pipeline"][0], started_at=rows["started_at"].min(),  # type: ignore[arg-type]
            finished_at=rows["finished_at"].max(), status=run_status(statuses),  # type: ignore[arg-type]
            committed=rows.filter(pl.col("output_version").is_not_null()).height,
            failed=statuses.count("failed"), not_run=statuses.count("skipped") + statuses.count("interrupted"),
            rows_written=int(rows["rows_written"].fill_null(0).sum()),
            operation=_one_of(rows["operation"]), actor=_one_of(rows["actor"])))
    summaries.sort(key=lambda s: (s.started_at, s.run_id), reverse=True)
    return summaries[:limit]


def _one_of(values: pl.Series) -> str | None:
    """The distinct non-null values, comma-separated; None when there is none."""
    distinct = sorted(set(values.drop_nulls().to_list()))
    return ", ".join(distinct) or None
