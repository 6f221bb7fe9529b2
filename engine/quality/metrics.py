"""Quality metrics: one row per check per table per run, in a Delta table, to follow failure rates over runs."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pyarrow as pa
from deltalake import write_deltalake

from engine.quality.results import CheckResult
from engine.tables.delta import read_rows, table_exists

QUALITY_METRICS_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("pipeline", pa.string()),
    ("table", pa.string()),
    ("check", pa.string()),
    ("action", pa.string()),
    ("rows_checked", pa.int64()),
    ("rows_failed", pa.int64()),
    ("threshold", pa.float64()),
    ("recorded_at", pa.timestamp("us", tz="UTC")),
])


def append_metrics(uri: str, pipeline: str, run_id: str, results: list[CheckResult]) -> None:
    """Append the outcome of every check of one run to the metrics table at `uri`, creating it when needed.

    Example rows are not stored: the metrics hold counts only.
    """
    if not results:
        return
    recorded_at = datetime.now(UTC)
    rows = [
        {
            "run_id": run_id,
            "pipeline": pipeline,
            "table": result.table,
            "check": result.check,
            "action": result.action,
            "rows_checked": result.rows_checked,
            "rows_failed": result.rows_failed,
            "threshold": result.threshold,
            "recorded_at": recorded_at,
        }
        for result in results
    ]
    write_deltalake(uri, pa.Table.from_pylist(rows, schema=QUALITY_METRICS_SCHEMA), mode="append")


def read_metrics(uri: str) -> pl.DataFrame:
    """Every recorded metric, oldest first; an empty frame with the metrics schema when none was recorded."""
    if not table_exists(uri):
        return pl.from_arrow(pa.Table.from_batches([], QUALITY_METRICS_SCHEMA))  # type: ignore[return-value]
    frame = pl.from_arrow(read_rows(uri, uri))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("recorded_at", "table", "check")
