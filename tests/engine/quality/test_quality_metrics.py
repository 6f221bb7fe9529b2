"""Tests of engine.quality.metrics: the Delta table of check outcomes per run, and its use as alert history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
from deltalake import DeltaTable

from engine.alerts import degradations
from engine.quality.metrics import QUALITY_METRICS_SCHEMA, append_metrics, read_metrics
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
