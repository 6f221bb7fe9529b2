"""Tests of engine.quality.metrics: the Delta table of check outcomes per run, and its use as alert history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from engine.alerts import degradations
from engine.quality.metrics import QUALITY_METRICS_SCHEMA, append_metrics, read_metrics, read_recent_metrics
from engine.quality.results import CheckResult

METRICS_SCHEMA = pl.from_arrow(QUALITY_METRICS_SCHEMA.empty_table()).schema  # type: ignore[union-attr]


def check(rows_failed: int, rows_checked: int = 1000) -> CheckResult:
    """A `warn` check of `silver.order_items` with a 5% threshold."""
    return CheckResult("silver.order_items", "quantity:greater_than(0)", "warn", rows_checked, rows_failed, 0.05,
                       example='{"quantity": -1}')


def test_read_metrics_without_a_table_is_empty_with_the_schema(tmp_path: Path) -> None:
    frame = read_metrics(str(tmp_path / "metrics"))
    assert frame.is_empty()
    assert frame.schema == METRICS_SCHEMA


def test_append_without_results_creates_nothing(tmp_path: Path) -> None:
    uri = str(tmp_path / "metrics")
    append_metrics(uri, "retail", "run-1", [])
    assert not DeltaTable.is_deltatable(uri)


def test_append_then_read_roundtrip(tmp_path: Path) -> None:
    uri = str(tmp_path / "metrics")
    before = datetime.now(UTC)
    append_metrics(uri, "retail", "run-1", [
        check(3),
        CheckResult("silver.orders", "known_customer", "fail", 200, 0),
    ])
    append_metrics(uri, "retail", "run-2", [check(7)])

    frame = read_metrics(uri)
    assert frame.schema == METRICS_SCHEMA
    assert DeltaTable(uri).to_pyarrow_table().schema.equals(QUALITY_METRICS_SCHEMA)
    assert frame.drop("recorded_at").to_dicts() == [
        {"run_id": "run-1", "pipeline": "retail", "table": "silver.order_items", "check": "quantity:greater_than(0)",
         "action": "warn", "rows_checked": 1000, "rows_failed": 3, "threshold": 0.05},
        {"run_id": "run-1", "pipeline": "retail", "table": "silver.orders", "check": "known_customer",
         "action": "fail", "rows_checked": 200, "rows_failed": 0, "threshold": None},
        {"run_id": "run-2", "pipeline": "retail", "table": "silver.order_items", "check": "quantity:greater_than(0)",
         "action": "warn", "rows_checked": 1000, "rows_failed": 7, "threshold": 0.05},
    ]
    recorded = frame["recorded_at"].to_list()
    assert recorded[0] == recorded[1] < recorded[2]
    assert before <= recorded[0] <= datetime.now(UTC) + timedelta(seconds=1)


def test_recorded_metrics_feed_the_rising_rule(tmp_path: Path) -> None:
    uri = str(tmp_path / "metrics")
    for run, failed in (("run-1", 5), ("run-2", 10)):
        append_metrics(uri, "retail", run, [check(failed)])

    [alert] = degradations("retail", "run-3", [check(20)], read_metrics(uri))
    assert alert.severity == "warning"
    assert alert.reason == ("check `quantity:greater_than(0)` of `silver.order_items` failed 2% of 1,000 rows, "
                            "up from 0.5% and 1% in the previous 2 runs")
    assert degradations("retail", "run-3", [check(10)], read_metrics(uri)) == []


def other(table: str, failed: int) -> CheckResult:
    return CheckResult(table, "id:not_null", "warn", 100, failed)


def history_of_three_tables(uri: str) -> None:
    """Six runs of three tables, one file per table per run as a run writes them, then one older file holding two
    tables (as a compaction leaves them)."""
    for run in range(1, 7):
        for table, failed in (("silver.orders", run), ("silver.events", 2 * run)):
            append_metrics(uri, "retail", f"run-{run}", [other(table, failed)])
        append_metrics(uri, "retail", f"run-{run}", [check(run)])
    mixed = pl.DataFrame([
        {"run_id": "run-0", "pipeline": "retail", "table": table, "check": "id:not_null", "action": "warn",
         "rows_checked": 100, "rows_failed": 0, "threshold": None,
         "recorded_at": datetime(2020, 1, 1, tzinfo=UTC)} for table in ("silver.events", "silver.orders")],
        schema=METRICS_SCHEMA)
    from deltalake import write_deltalake

    write_deltalake(uri, mixed.to_arrow(), mode="append")


@pytest.mark.parametrize("runs", [1, 2, 3, 6, 7, 20])
@pytest.mark.parametrize("table", ["silver.orders", "silver.events", "silver.order_items", "gold.none"])
def test_recent_metrics_are_the_newest_runs_of_the_table_in_the_whole_history(
        tmp_path: Path, table: str, runs: int) -> None:
    uri = str(tmp_path / "metrics")
    history_of_three_tables(uri)
    whole = read_metrics(uri).filter(pl.col("table") == table)

    for excluding in (None, "run-6", "run-3"):
        kept = whole.filter(pl.col("run_id") != excluding) if excluding else whole
        newest = kept.group_by("run_id").agg(pl.col("recorded_at").max()).sort("recorded_at").tail(runs)
        expected = kept.filter(pl.col("run_id").is_in(newest["run_id"].implode()))
        assert read_recent_metrics(uri, table, runs, excluding_run=excluding).equals(expected), (table, excluding)


def test_recent_metrics_open_only_the_files_of_the_newest_runs(tmp_path: Path) -> None:
    """Files of older runs and of other tables are not read: removed from storage, nothing notices."""
    uri = str(tmp_path / "metrics")
    history_of_three_tables(uri)
    needed = set(read_recent_metrics(uri, "silver.orders", 2)["run_id"].to_list())
    assert needed == {"run-5", "run-6"}
    actions = pa.table(DeltaTable(uri).get_add_actions(flatten=True)).to_pylist()
    orders = sorted((a for a in actions if a["min.table"] == a["max.table"] == "silver.orders"),
                    key=lambda a: a["max.recorded_at"])
    kept = {a["path"] for a in orders[-2:]}
    for action in actions:
        if action["path"] not in kept:
            (tmp_path / "metrics" / action["path"]).unlink()
    assert len(actions) - len(kept) == 17  # 6 runs of 3 tables and the mixed file, but the two newest of one

    recent = read_recent_metrics(uri, "silver.orders", 2)
    assert recent["run_id"].to_list() == ["run-5", "run-6"] and recent["rows_failed"].to_list() == [5, 6]
    [alert] = degradations("retail", "run-7", [other("silver.orders", 9)], recent)
    assert "up from 5% and 6% in the previous 2 runs" in alert.reason
