"""Quality metrics: one row per check per table per run, in a Delta table, to follow failure rates over runs."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from engine.quality.results import CheckResult
from engine.tables.delta import AppendLog, open_table, read_data_file, read_rows, table_exists
from engine.tables.delta_files import add_actions, readable_by_files

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


def append_metrics(target: str | AppendLog, pipeline: str, run_id: str, results: list[CheckResult]) -> None:
    """Append the outcome of every check of one run to the metrics table (its URI, or the `AppendLog` a run keeps
    of it), creating it when needed.

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
    (target if isinstance(target, AppendLog) else AppendLog(target)).append(
        pa.Table.from_pylist(rows, schema=QUALITY_METRICS_SCHEMA))


def read_metrics(uri: str) -> pl.DataFrame:
    """Every recorded metric, oldest first; an empty frame with the metrics schema when none was recorded."""
    if not table_exists(uri):
        return _frame(pa.Table.from_batches([], QUALITY_METRICS_SCHEMA))
    return _frame(read_rows(uri, uri))


def read_recent_metrics(uri: str, table: str, runs: int, *, excluding_run: str | None = None) -> pl.DataFrame:
    """The metrics of `table`'s newest `runs` runs (not counting `excluding_run`), oldest first.

    The metrics table grows by a file per table per run, for ever; this reads its log and only the files that
    may hold those runs: the files whose statistics say they hold rows of `table`, newest first, until the
    next one is older than the runs found (a file without statistics is read).
    """
    if runs <= 0 or not table_exists(uri):
        return _frame(pa.Table.from_batches([], QUALITY_METRICS_SCHEMA))
    opened = open_table(uri, uri)
    if not readable_by_files(opened):
        return _newest_runs(read_metrics(uri).filter(pl.col("table") == table), runs, excluding_run)
    schema = pa.schema(opened.schema().to_arrow())
    files = _files_that_may_hold(add_actions(opened), table)
    parts: list[pa.Table] = []
    newest: dict[str, datetime] = {}
    for path, newest_in_file in files:
        found = sorted(newest.values(), reverse=True)
        if newest_in_file is not None and len(found) >= runs and newest_in_file < found[runs - 1]:
            break
        rows = read_data_file(f"{uri}/{path}", schema).filter(pc.field("table") == table)
        parts.append(rows)
        for run_id, recorded_at in zip(rows["run_id"].to_pylist(), rows["recorded_at"].to_pylist(), strict=True):
            if run_id != excluding_run and recorded_at is not None:
                newest[run_id] = max(recorded_at, newest.get(run_id, recorded_at))
    rows = pa.concat_tables(parts) if parts else pa.Table.from_batches([], schema)
    return _newest_runs(_frame(rows), runs, excluding_run)


def _files_that_may_hold(actions: pa.Table, table: str) -> list[tuple[str, datetime | None]]:
    """Paths of the data files whose statistics admit rows of `table`, with their newest `recorded_at`: the files
    without statistics first, then newest first."""
    names = set(actions.column_names)
    if not {"min.table", "max.table", "max.recorded_at"} <= names:
        return [(path, None) for path in actions["path"].to_pylist()]
    lowest, highest = actions["min.table"].to_pylist(), actions["max.table"].to_pylist()
    newest = actions["max.recorded_at"].to_pylist()
    files = [(path, recorded) for path, low, high, recorded in zip(actions["path"].to_pylist(), lowest, highest,
                                                                  newest, strict=True)
             if low is None or high is None or low <= table <= high]
    dated = sorted((f for f in files if f[1] is not None), key=lambda f: f[1], reverse=True)
    return [f for f in files if f[1] is None] + dated


def _newest_runs(frame: pl.DataFrame, runs: int, excluding_run: str | None) -> pl.DataFrame:
    """The rows of the newest `runs` runs in `frame` other than `excluding_run`."""
    if excluding_run is not None:
        frame = frame.filter(pl.col("run_id") != excluding_run)
    newest = frame.group_by("run_id").agg(pl.col("recorded_at").max()).sort("recorded_at").tail(runs)
    return frame.filter(pl.col("run_id").is_in(newest["run_id"].implode()))


def _frame(rows: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(rows)
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("recorded_at", "table", "check")
