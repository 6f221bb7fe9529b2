"""Run records: one row per table per run in the Delta table `<root>/_meta/runs`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import write_deltalake

from engine.governance.actor import audit_fields
from engine.quality.results import CheckResult
from engine.tables.delta import read_rows, table_exists

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
        status: `succeeded`, `failed`, `skipped` (an upstream table failed) or `unchanged` (nothing new).
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


def append_records(uri: str, records: list[RunRecord]) -> None:
    """Append `records` to the run records table at `uri`, creating it when needed."""
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
    write_deltalake(uri, table, mode="append", schema_mode="merge")


def read_records(uri: str) -> pl.DataFrame:
    """Every run record, oldest first; an empty frame when no run was recorded."""
    if not table_exists(uri):
        return pl.from_arrow(RUN_RECORD_SCHEMA.empty_table())  # type: ignore[return-value]
    frame = pl.from_arrow(read_rows(uri, uri))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("started_at", "table")
