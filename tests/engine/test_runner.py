"""The runner on a small pipeline: commits, run records, quarantine, failures and reruns."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
import ray.data
from deltalake import DeltaTable

from engine import FileSource, Merge, Overwrite, Pipeline, Runner, TableContext, load_settings, table_context
from engine.columns import REJECTED_REASON, RUN_ID, SOURCE_FILE
from engine.errors import PipelineDefinitionError
from engine.layout import Layout
from engine.runlog import read_records
from tests.conftest import settings_at

pytestmark = pytest.mark.usefixtures("ray_local")


def write_orders(root: Path, name: str, lines: list[dict[str, object]]) -> None:
    folder = root / "landing" / "orders"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(line) + "\n" for line in lines))


def parse_orders(batch: pa.Table) -> pa.Table:
    frame = pl.from_arrow(batch)
    order_id = pl.col("order_id").cast(pl.Int64, strict=False)
    return frame.select(
        order_id.alias("order_id"),
        pl.col("status"),
        pl.col("updated_at").str.to_datetime(time_zone="UTC", time_unit="us"),
        pl.when(order_id.is_null()).then(pl.lit("order_id: not an integer")).otherwise(None).alias(REJECTED_REASON),
    ).to_arrow()


def build_pipeline(fail_gold: bool = False) -> Pipeline:
    pipeline = Pipeline("shop")
    pipeline.ingest("bronze.orders", FileSource("orders", "jsonl"))

    @pipeline.table("silver.orders", kind=Merge(keys=["order_id"], sequence_by="updated_at"), incremental=True)
    def orders(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
        return bronze_orders.map_batches(parse_orders, batch_format="pyarrow")

    @pipeline.table("gold.status_counts", kind=Overwrite())
    def status_counts(silver_orders: ray.data.Dataset) -> ray.data.Dataset:
        if fail_gold:
            raise ValueError("boom")
        return silver_orders.map_batches(
            lambda t: pl.from_arrow(t).group_by("status").len().to_arrow(), batch_format="pyarrow", batch_size=None
        )

    @pipeline.table("gold.after_counts", kind=Overwrite())
    def after_counts(gold_status_counts: ray.data.Dataset) -> ray.data.Dataset:
        return gold_status_counts

    return pipeline


def land_orders(root: Path) -> None:
    """Two landing files of orders: a bad id, a key changed twice and a late older change."""
    write_orders(root, "orders-1.jsonl", [
        {"order_id": 1, "status": "placed", "updated_at": "2026-01-01T00:00:00Z"},
        {"order_id": "2", "status": "placed", "updated_at": "2026-01-01T00:00:00Z"},
        {"order_id": "x", "status": "placed", "updated_at": "2026-01-01T00:00:00Z"},
    ])
    write_orders(root, "orders-2.jsonl", [
        {"order_id": 1, "status": "paid", "updated_at": "2026-01-02T00:00:00Z"},
        {"order_id": 1, "status": "placed", "updated_at": "2026-01-01T00:00:00Z"},
    ])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    land_orders(tmp_path)
    return tmp_path


def table(root: Path, name: str) -> pa.Table:
    return DeltaTable(Layout.at(str(root)).table(name)).to_pyarrow_table()


def test_run_commits_each_table_once_with_the_run_id(root: Path) -> None:
    result = Runner(build_pipeline(), settings_at(root)).run()
    assert result.succeeded
    for name in ("bronze.orders", "silver.orders", "gold.status_counts"):
        history = DeltaTable(Layout.at(str(root)).table(name)).history()
        assert [h["version"] for h in history] == [0]
        assert history[0]["medallion.run_id"] == result.run_id
    silver = pl.from_arrow(table(root, "silver.orders")).sort("order_id")
    assert silver["order_id"].to_list() == [1, 2]
    assert silver["status"].to_list() == ["paid", "placed"]
    counts = dict(pl.from_arrow(table(root, "gold.status_counts")).iter_rows())
    assert counts == {"paid": 1, "placed": 1}


def test_rejected_rows_go_to_quarantine_with_reason_and_run_id(root: Path) -> None:
    result = Runner(build_pipeline(), settings_at(root)).run()
    quarantine = DeltaTable(Layout.at(str(root)).quarantine("silver.orders")).to_pyarrow_table()
    assert quarantine.column(REJECTED_REASON).to_pylist() == ["order_id: not an integer"]
    assert quarantine.column(RUN_ID).to_pylist() == [result.run_id]
    record = next(r for r in result.records if r.table == "silver.orders")
    assert (record.rows_in, record.rows_written, record.rows_quarantined, record.rows_duplicate) == (5, 2, 1, 2)


def test_run_records_describe_every_table(root: Path) -> None:
    result = Runner(build_pipeline(), settings_at(root)).run()
    records = read_records(Layout.at(str(root)).runs())
    assert records["run_id"].unique().to_list() == [result.run_id]
    bronze = records.filter(pl.col("table") == "bronze.orders").row(0, named=True)
    assert (bronze["status"], bronze["output_version"], bronze["rows_in"], bronze["rows_written"]) == (
        "succeeded", 0, 5, 5)
    gold = records.filter(pl.col("table") == "gold.status_counts").row(0, named=True)
    assert json.loads(gold["input_versions"]) == {"silver.orders": 0}
    assert gold["pipeline"] == "shop" and gold["error"] is None and gold["finished_at"] >= gold["started_at"]


def versions(root: Path, *names: str) -> list[int]:
    return [DeltaTable(Layout.at(str(root)).table(name)).version() for name in names]


TABLES = ("bronze.orders", "silver.orders", "gold.status_counts", "gold.after_counts")


def test_a_run_with_nothing_new_commits_nothing(root: Path) -> None:
    settings = settings_at(root)
    Runner(build_pipeline(), settings).run()
    second = Runner(build_pipeline(), settings).run()
    assert second.succeeded
    assert {r.table: r.status for r in second.records} == dict.fromkeys(TABLES, "unchanged")
    assert versions(root, *TABLES) == [0, 0, 0, 0]
    forced = Runner(build_pipeline(), settings).run(select="silver.orders+", force=True)
    assert [r.status for r in forced.records] == ["succeeded"] * 3
    assert versions(root, *TABLES[1:]) == [1, 1, 1]
    assert next(r for r in forced.records if r.table == "silver.orders").rows_in == 5


def test_only_new_landing_files_are_ingested_and_only_new_rows_reach_silver(root: Path) -> None:
    settings = settings_at(root)
    Runner(build_pipeline(), settings).run()
    write_orders(root, "orders-3.jsonl", [{"order_id": 3, "status": "placed", "updated_at": "2026-01-03T00:00:00Z"}])
    third = Runner(build_pipeline(), settings).run()
    records = {r.table: r for r in third.records}
    bronze = table(root, "bronze.orders")
    assert bronze.num_rows == 6
    assert sorted(set(bronze.column(SOURCE_FILE).to_pylist())) == ["orders-1.jsonl", "orders-2.jsonl", "orders-3.jsonl"]
    assert records["bronze.orders"].rows_written == 1
    assert (records["silver.orders"].rows_in, records["silver.orders"].rows_quarantined) == (1, 0)
    assert sorted(table(root, "silver.orders").column("order_id").to_pylist()) == [1, 2, 3]
    quarantine = DeltaTable(Layout.at(str(root)).quarantine("silver.orders")).to_pyarrow_table()
    assert quarantine.num_rows == 1


def test_a_landing_file_changed_after_ingestion_is_reported_not_ingested_again(root: Path) -> None:
    settings = settings_at(root)
    Runner(build_pipeline(), settings).run()
    changed = root / "landing" / "orders" / "orders-2.jsonl"
    changed.write_text(changed.read_text() + json.dumps({"order_id": 9, "status": "x", "updated_at": "x"}) + "\n")
    os.utime(changed, ns=(1, 1))
    result = Runner(build_pipeline(), settings).run(select="bronze.orders")
    record = result.records[0]
    assert record.status == "unchanged"
    assert record.details["files_changed_after_ingestion"] == ["orders-2.jsonl"]
    assert table(root, "bronze.orders").num_rows == 5


def test_a_failing_table_keeps_its_version_and_skips_its_downstream(root: Path) -> None:
    settings = settings_at(root)
    Runner(build_pipeline(), settings).run()
    write_orders(root, "orders-3.jsonl", [{"order_id": 3, "status": "placed", "updated_at": "2026-01-03T00:00:00Z"}])
    result = Runner(build_pipeline(fail_gold=True), settings).run()
    assert not result.succeeded
    statuses = {r.table: r for r in result.records}
    failed = statuses["gold.status_counts"]
    assert failed.status == "failed"
    assert "`gold.status_counts`" in failed.error and "ValueError: boom" in failed.error
    assert "status_counts" in failed.error and "previous version" in failed.error
    assert statuses["gold.after_counts"].status == "skipped"
    assert "`gold.status_counts`" in statuses["gold.after_counts"].error
    assert statuses["silver.orders"].status == "succeeded"
    assert DeltaTable(Layout.at(str(root)).table("gold.status_counts")).version() == 0
    assert DeltaTable(Layout.at(str(root)).table("gold.after_counts")).version() == 0


def test_a_failure_inside_ray_tasks_is_reported_with_the_table(root: Path) -> None:
    pipeline = build_pipeline()

    def explode(batch: pa.Table) -> pa.Table:
        raise RuntimeError("bad batch")

    @pipeline.table("gold.broken")
    def broken(silver_orders: ray.data.Dataset) -> ray.data.Dataset:
        return silver_orders.map_batches(explode, batch_format="pyarrow")

    result = Runner(pipeline, settings_at(root)).run()
    record = next(r for r in result.records if r.table == "gold.broken")
    assert record.status == "failed"
    assert "`gold.broken`" in record.error and "bad batch" in record.error
    assert not Path(Layout.at(str(root)).table("gold.broken"), "_delta_log").exists()


def test_a_function_that_returns_no_dataset_fails_clearly(root: Path) -> None:
    pipeline = build_pipeline()

    @pipeline.table("gold.wrong")
    def wrong(silver_orders: ray.data.Dataset) -> list[int]:
        return [1, 2]

    record = next(r for r in Runner(pipeline, settings_at(root)).run().records if r.table == "gold.wrong")
    assert record.status == "failed"
    assert "returned list" in record.error and "ray.data.Dataset" in record.error


def test_selection_runs_only_the_selected_tables(root: Path) -> None:
    settings = settings_at(root)
    result = Runner(build_pipeline(), settings).run(select="+silver.orders")
    assert [r.table for r in result.records] == ["bronze.orders", "silver.orders"]
    assert not Path(Layout.at(str(root)).table("gold.status_counts")).exists()
    downstream = Runner(build_pipeline(), settings).run(select="silver.orders+")
    assert [r.table for r in downstream.records] == ["silver.orders", "gold.status_counts", "gold.after_counts"]


def test_a_table_function_sees_its_run_and_input_versions_in_the_table_context(root: Path) -> None:
    pipeline = build_pipeline()
    seen: list[TableContext] = []

    @pipeline.table("gold.context")
    def context(silver_orders: ray.data.Dataset) -> ray.data.Dataset:
        seen.append(table_context())
        return silver_orders

    settings = settings_at(root)
    result = Runner(pipeline, settings).run()
    assert [(c.run_id, c.table, dict(c.input_versions), c.settings) for c in seen] == [
        (result.run_id, "gold.context", {"silver.orders": 0}, settings)]
    with pytest.raises(PipelineDefinitionError, match="only available inside a table function"):
        table_context()


def test_reading_a_table_that_was_never_built_fails_with_advice(root: Path) -> None:
    result = Runner(build_pipeline(), settings_at(root)).run(select="gold.status_counts")
    record = result.records[0]
    assert record.status == "failed"
    assert "`silver.orders`" in record.error and "run the pipeline" in record.error


def drift_pipeline(policy: str) -> Pipeline:
    pipeline = Pipeline("drift")
    pipeline.ingest("bronze.orders", FileSource("orders", "jsonl", columns=("order_id", "status", "updated_at"),
                                                on_drift=policy))  # type: ignore[arg-type]

    @pipeline.table("silver.orders", kind=Merge(keys=["order_id"], sequence_by="updated_at"))
    def orders(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
        return bronze_orders.map_batches(parse_orders, batch_format="pyarrow")

    return pipeline


def add_coupon_file(root: Path) -> None:
    write_orders(root, "orders-3.jsonl", [
        {"order_id": 3, "status": "placed", "updated_at": "2026-01-03T00:00:00Z", "coupon": "SAVE10"}])


def test_schema_drift_rescue_moves_unexpected_columns_into_rescued_data(root: Path) -> None:
    add_coupon_file(root)
    result = Runner(drift_pipeline("rescue"), settings_at(root)).run()
    assert result.succeeded
    record = result.records[0]
    assert record.details["schema_drift"] == ["orders-3.jsonl: new column `coupon`"]
    bronze = pl.from_arrow(table(root, "bronze.orders"))
    assert "coupon" not in bronze.columns
    rescued = bronze.filter(pl.col(SOURCE_FILE) == "orders-3.jsonl")["_rescued_data"].to_list()
    assert [json.loads(value) for value in rescued] == [{"coupon": "SAVE10"}]
    assert sorted(table(root, "silver.orders").column("order_id").to_pylist()) == [1, 2, 3]


def test_schema_drift_fail_stops_ingestion_and_names_the_file_and_column(root: Path) -> None:
    add_coupon_file(root)
    result = Runner(drift_pipeline("fail"), settings_at(root)).run()
    bronze, silver = result.records
    assert bronze.status == "failed" and silver.status == "skipped"
    assert "orders-3.jsonl" in bronze.error and "new column `coupon`" in bronze.error
    assert "`evolve`" in bronze.error and "`rescue`" in bronze.error
    assert not Path(Layout.at(str(root)).table("bronze.orders"), "_delta_log").exists()


def test_a_run_that_died_after_quarantining_does_not_quarantine_twice(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.tables.formats import DeltaStore

    settings = settings_at(root)

    def die(*args: object, **kwargs: object) -> None:
        raise RuntimeError("process killed")

    monkeypatch.setattr(DeltaStore, "merge", staticmethod(die))
    crashed = Runner(build_pipeline(), settings).run(select="+silver.orders")
    assert [r.status for r in crashed.records] == ["succeeded", "failed"]
    quarantine_uri = Layout.at(str(root)).quarantine("silver.orders")
    assert DeltaTable(quarantine_uri).to_pyarrow_table().num_rows == 1
    monkeypatch.undo()
    resumed = Runner(build_pipeline(), settings).run(select="+silver.orders")
    assert [r.status for r in resumed.records] == ["unchanged", "succeeded"]
    assert DeltaTable(quarantine_uri).to_pyarrow_table().num_rows == 1
    assert sorted(table(root, "silver.orders").column("order_id").to_pylist()) == [1, 2]


@pytest.mark.parametrize("after_runs", [True, False])
def test_a_library_run_compacts_due_tables_as_the_command_does(root: Path, after_runs: bool) -> None:
    """Attacks: "the settings' hooks after a run hold for every `Runner` caller", not only `medallion run`."""
    settings = load_settings(overrides={"storage": {"root": str(root)}, "maintenance": {
        "optimize_after_commits": 2, "after_runs": after_runs}})
    first = Runner(build_pipeline(), settings).run()
    assert first.succeeded and first.maintenance == []
    files_before = len(DeltaTable(Layout.at(str(root)).table("bronze.orders")).file_uris())
    write_orders(root, "orders-3.jsonl", [{"order_id": 3, "status": "placed", "updated_at": "2026-01-03T00:00:00Z"}])
    second = Runner(build_pipeline(), settings).run()
    assert second.succeeded
    compacted = {done.table for done in second.maintenance if done.operation == "optimize" and done.error is None}
    bronze = DeltaTable(Layout.at(str(root)).table("bronze.orders"))
    if after_runs:
        assert "bronze.orders" in compacted
        assert bronze.history(1)[0]["medallion.operation"] == "optimize" and len(bronze.file_uris()) == 1
    else:
        assert second.maintenance == [] and len(bronze.file_uris()) == files_before + 1
    assert table(root, "bronze.orders").num_rows == 6


def test_a_merge_tables_bucket_count_lays_out_its_files_and_a_new_count_re_buckets_without_a_rebuild(
        root: Path) -> None:
    from engine.tables.distributed_merge import BUCKET_FILE

    def run_with(buckets: int) -> None:
        pipeline = Pipeline("shop")
        pipeline.ingest("bronze.orders", FileSource("orders", "jsonl"))

        @pipeline.table("silver.orders", kind=Merge(keys=["order_id"], sequence_by="updated_at", buckets=buckets),
                        incremental=True)
        def orders(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
            return bronze_orders.map_batches(parse_orders, batch_format="pyarrow")

        result = Runner(pipeline, settings_at(root)).run()
        assert result.succeeded, [r.error for r in result.records]

    def counts() -> set[int]:
        files = DeltaTable(str(root / "silver" / "orders")).get_add_actions(flatten=True).column("path").to_pylist()
        return {int(m[2]) for m in map(BUCKET_FILE.match, files) if m}

    run_with(3)
    assert counts() == {3}
    write_orders(root, "orders-3.jsonl", [{"order_id": 7, "status": "placed", "updated_at": "2026-01-03T00:00:00Z"}])
    run_with(5)
    assert counts() == {5}
    records = read_records(Layout.at(str(root)).runs()).filter(pl.col("table") == "silver.orders")
    assert records.height == 2 and not any("rebuilt" in (details or "") for details in records["details"])
    assert sorted(table(root, "silver.orders").column("order_id").to_pylist()) == [1, 2, 7]
