"""Progress survives Delta log cleanup: after deltalake checkpoints a table and deletes its old commit files,
no landing file is ingested twice and no input row is consumed twice."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
import ray.data
from deltalake import DeltaTable

from engine import Append, FileSource, Pipeline, Runner
from engine.columns import SOURCE_FILE
from engine.layout import Layout
from engine.recovery import restore_table
from tests.conftest import settings_at
from tests.engine.test_runner import land_orders, parse_orders, write_orders

pytestmark = pytest.mark.usefixtures("ray_local")


def order_pipeline() -> Pipeline:
    pipeline = Pipeline("shop")
    pipeline.ingest("bronze.orders", FileSource("orders", "jsonl", on_drift="evolve"))

    @pipeline.table("silver.order_log", kind=Append(), incremental=True)
    def order_log(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
        return bronze_orders.map_batches(parse_orders, batch_format="pyarrow")

    return pipeline


def clean_up_log(uri: str) -> int:
    """Commit to the table until deltalake writes a checkpoint (every 100 commits), with a log retention of
    zero, so that the commit deletes every older commit file; returns the checkpoint's version."""
    DeltaTable(uri).alter.set_table_properties({"delta.logRetentionDuration": "interval 0 seconds"})
    log = Path(uri, "_delta_log")
    while not (log / "_last_checkpoint").exists():
        table = DeltaTable(uri)
        table.create_write_transaction([], "append", table.schema())
    checkpoint = json.loads((log / "_last_checkpoint").read_text())["version"]
    assert not (log / f"{0:020d}.json").exists()
    assert [c["version"] for c in DeltaTable(uri).history()] == [checkpoint]
    return checkpoint


def rows(root: Path, name: str) -> pl.DataFrame:
    frame = pl.from_arrow(DeltaTable(Layout.at(str(root)).table(name)).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


def test_no_landing_file_is_ingested_twice_after_the_log_is_cleaned_up(tmp_path: Path) -> None:
    land_orders(tmp_path)
    settings, bronze = settings_at(tmp_path), Layout.at(str(tmp_path)).table("bronze.orders")
    assert Runner(order_pipeline(), settings).run(select="bronze.orders").succeeded
    write_orders(tmp_path, "orders-3.jsonl", [
        {"order_id": 3, "status": "placed", "updated_at": "2026-01-03T00:00:00Z", "coupon": "SAVE10"}])
    assert Runner(order_pipeline(), settings).run(select="bronze.orders").succeeded
    add_columns, ingestion = DeltaTable(bronze).history(2)[::-1]
    assert add_columns["operation"] == "ADD COLUMN" and "medallion.files" not in add_columns
    assert [f[0] for f in ingestion["medallion.files"]] == ["orders-3.jsonl"]
    checkpoint = clean_up_log(bronze)

    again = Runner(order_pipeline(), settings).run(select="bronze.orders").records[0]
    assert (again.status, again.details["files_new"]) == ("unchanged", 0)
    changed = tmp_path / "landing" / "orders" / "orders-2.jsonl"
    changed.write_text(changed.read_text() + json.dumps({"order_id": 9, "status": "x", "updated_at": "x"}) + "\n")
    os.utime(changed, ns=(1, 1))
    write_orders(tmp_path, "orders-4.jsonl", [{"order_id": 4, "status": "placed", "updated_at": "2026-01-04T00:00:00Z"}])
    record = Runner(order_pipeline(), settings).run(select="bronze.orders").records[0]
    assert (record.status, record.details["files_new"]) == ("succeeded", 1)
    assert record.details["files_changed_after_ingestion"] == ["orders-2.jsonl"]
    counts = dict(rows(tmp_path, "bronze.orders").group_by(SOURCE_FILE).len().iter_rows())
    assert counts == {"orders-1.jsonl": 3, "orders-2.jsonl": 2, "orders-3.jsonl": 1, "orders-4.jsonl": 1}

    restore_table(bronze, checkpoint, reason="undo orders-4")
    assert Runner(order_pipeline(), settings).run(select="bronze.orders").records[0].details["files_new"] == 1
    counts = dict(rows(tmp_path, "bronze.orders").group_by(SOURCE_FILE).len().iter_rows())
    assert counts == {"orders-1.jsonl": 3, "orders-2.jsonl": 2, "orders-3.jsonl": 1, "orders-4.jsonl": 1}


def test_a_derived_table_consumes_each_input_row_once_after_its_log_is_cleaned_up(tmp_path: Path) -> None:
    land_orders(tmp_path)
    settings = settings_at(tmp_path)
    assert Runner(order_pipeline(), settings).run().succeeded
    clean_up_log(Layout.at(str(tmp_path)).table("silver.order_log"))

    assert [r.status for r in Runner(order_pipeline(), settings).run().records] == ["unchanged", "unchanged"]
    write_orders(tmp_path, "orders-3.jsonl", [{"order_id": 3, "status": "placed", "updated_at": "2026-01-03T00:00:00Z"}])
    result = Runner(order_pipeline(), settings).run()
    assert result.succeeded and result.records[1].rows_in == 1
    log = rows(tmp_path, "silver.order_log").sort("order_id", "updated_at", "status")
    assert log.select("order_id", "status").rows() == [(1, "placed"), (1, "placed"), (1, "paid"), (2, "placed"),
                                                       (3, "placed")]


def test_a_table_whose_consumed_input_version_was_cleaned_up_fails_until_fully_refreshed(tmp_path: Path) -> None:
    land_orders(tmp_path)
    settings = settings_at(tmp_path)
    assert Runner(order_pipeline(), settings).run().succeeded
    clean_up_log(Layout.at(str(tmp_path)).table("bronze.orders"))
    write_orders(tmp_path, "orders-3.jsonl", [{"order_id": 3, "status": "placed", "updated_at": "2026-01-03T00:00:00Z"}])

    lagging = Runner(order_pipeline(), settings).run().records[1]
    assert lagging.status == "failed" and "has no version 0" in lagging.error and "log cleanup" in lagging.error
    assert Runner(order_pipeline(), settings).run(select="silver.order_log", full_refresh=True).succeeded
    log = rows(tmp_path, "silver.order_log").sort("order_id", "updated_at", "status")
    assert log.select("order_id", "status").rows() == [(1, "placed"), (1, "placed"), (1, "paid"), (2, "placed"),
                                                       (3, "placed")]
