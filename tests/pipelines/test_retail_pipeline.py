"""The retail pipeline end to end on generated landing data, checked against independent computations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from engine import Runner, load_settings
from engine.columns import INGESTED_AT, RUN_ID, SOURCE_FILE
from engine.governance.pii import tokenize
from engine.governance.secrets import pii_key
from engine.layout import Layout
from engine.runlog import read_records
from engine.tables.formats import TableFormats, found_format
from pipelines.retail.pipeline import retail
from tests.conftest import RetailBuild, settings_at
from tests.pipelines.reference import (
    assert_tables_equal,
    reference_customer_daily,
    reference_customer_features,
)

pytestmark = pytest.mark.slow

SOURCES = ("customers", "products", "orders", "order_items", "events")
GOLD_KEYS = {
    "gold.dim_customer": ["customer_id", "valid_from"],
    "gold.dim_product": ["product_id"],
    "gold.fct_order_lines": ["order_id", "line_number"],
    "gold.customer_daily": ["customer_id", "date"],
    "gold.customer_features": ["customer_id", "event_timestamp"],
}


def read(build: RetailBuild, table: str) -> pa.Table:
    return DeltaTable(Layout.at(str(build.root)).table(table)).to_pyarrow_table()


def landing_records(build: RetailBuild, source: str) -> int:
    files = sorted((build.root / "landing" / source).iterdir())
    lines = sum(len([line for line in f.read_text().splitlines() if line.strip()]) for f in files)
    return lines - (len(files) if files[0].suffix == ".csv" else 0)


def test_every_layer_is_a_readable_delta_table(retail_build: RetailBuild) -> None:
    for table in retail.select():
        path = Layout.at(str(retail_build.root)).table(table)
        via_deltalake = DeltaTable(path).to_pyarrow_table()
        via_polars = pl.read_delta(path)
        assert via_polars.height == via_deltalake.num_rows > 0, table


def test_bronze_keeps_every_landing_record_with_ingestion_metadata(retail_build: RetailBuild) -> None:
    run_id = retail_build.result.run_id
    for source in SOURCES:
        bronze = read(retail_build, f"bronze.{source}")
        assert bronze.num_rows == landing_records(retail_build, source), source
        files = set(bronze.column(SOURCE_FILE).to_pylist())
        assert files == {f.name for f in (retail_build.root / "landing" / source).iterdir()}
        assert set(bronze.column(RUN_ID).to_pylist()) == {run_id}
        assert bronze.schema.field(INGESTED_AT).type == pa.timestamp("us", tz="UTC")
        assert bronze.column(INGESTED_AT).null_count == 0


def test_schema_drift_in_the_customer_feed_is_detected_and_the_table_evolves(retail_build: RetailBuild) -> None:
    record = next(r for r in retail_build.result.records if r.table == "bronze.customers")
    drift = record.details["schema_drift"]
    assert len(drift) == 1 and "new column `loyalty_tier`" in drift[0]
    bronze = read(retail_build, "bronze.customers")
    assert "loyalty_tier" in bronze.column_names
    assert bronze.column("loyalty_tier").null_count < bronze.num_rows


def test_check_results_are_kept_per_run_and_table(retail_build: RetailBuild) -> None:
    from engine.quality.metrics import read_metrics

    metrics = read_metrics(Layout.at(str(retail_build.root)).quality())
    run = metrics.filter(pl.col("run_id") == retail_build.result.run_id)
    for record in retail_build.result.records:
        rows = run.filter(pl.col("table") == record.table)
        assert rows.height == len(record.checks)
        for check in record.checks:
            row = rows.filter(pl.col("check") == check.check).row(0, named=True)
            assert (row["rows_checked"], row["rows_failed"], row["action"]) == (
                check.rows_checked, check.rows_failed, check.action)
    assert run.height == sum(len(r.checks) for r in retail_build.result.records) > 0
    features = run.filter(pl.col("table") == "gold.customer_features")
    assert set(features["action"].to_list()) == {"fail"} and features["rows_failed"].sum() == 0


def test_silver_is_unique_per_key_and_conserves_rows(retail_build: RetailBuild) -> None:
    keys = {"customers": ["customer_id"], "products": ["product_id"], "orders": ["order_id"],
            "order_items": ["order_id", "line_number"], "events": ["event_id"]}
    records = {r.table: r for r in retail_build.result.records}
    for source, key in keys.items():
        silver = pl.from_arrow(read(retail_build, f"silver.{source}"))
        assert silver.select(key).is_duplicated().sum() == 0, source
        assert silver.select(key).null_count().sum_horizontal().item() == 0, source
        record = records[f"silver.{source}"]
        assert record.rows_in == record.rows_written + record.rows_quarantined + record.rows_duplicate
        quarantine = DeltaTable(Layout.at(str(retail_build.root)).quarantine(f"silver.{source}")).to_pyarrow_table()
        assert quarantine.num_rows == record.rows_quarantined
        assert quarantine.column("_rejected_reason").null_count == 0


def test_silver_applies_cdc_deletes_and_keeps_latest_changes(retail_build: RetailBuild) -> None:
    bronze = read(retail_build, "bronze.customers")
    latest = duckdb.sql("""
        SELECT TRY_CAST(customer_id AS BIGINT) AS customer_id,
               arg_max_null(op, TRY_CAST(updated_at AS TIMESTAMPTZ)) AS op,
               arg_max_null(lower(trim(email)), TRY_CAST(updated_at AS TIMESTAMPTZ)) AS email
        FROM bronze WHERE TRY_CAST(updated_at AS TIMESTAMPTZ) IS NOT NULL
        GROUP BY 1
    """).pl()
    silver = pl.from_arrow(read(retail_build, "silver.customers"))
    assert "d" in bronze.column("op").to_pylist(), "the generated feed deletes customers"
    deleted = set(latest.filter(pl.col("op") == "d")["customer_id"].to_list())
    assert not deleted & set(silver["customer_id"].to_list())
    expected = latest.filter(pl.col("op") != "d").sort("customer_id")
    actual = silver.select("customer_id", "email").sort("customer_id")
    assert actual["customer_id"].to_list() == expected["customer_id"].to_list()
    key = pii_key(retail_build.settings.pii, "the test")
    assert actual["email"].to_list() == tokenize(expected["email"].to_arrow(), key).to_pylist()


def test_silver_orders_hold_the_latest_status_despite_out_of_order_arrival(retail_build: RetailBuild) -> None:
    bronze = read(retail_build, "bronze.orders")  # noqa: F841 - read by DuckDB
    expected = duckdb.sql("""
        SELECT TRY_CAST(order_id AS BIGINT) AS order_id,
               arg_max(status, TRY_CAST(updated_at AS TIMESTAMPTZ)) AS status
        FROM bronze WHERE TRY_CAST(updated_at AS TIMESTAMPTZ) IS NOT NULL AND TRY_CAST(order_id AS BIGINT) IS NOT NULL
        GROUP BY 1 ORDER BY 1
    """).pl()
    silver = pl.from_arrow(read(retail_build, "silver.orders")).select("order_id", "status").sort("order_id")
    joined = expected.join(silver, on="order_id", how="inner", suffix="_silver")
    assert joined.height == silver.height
    assert (joined["status"] == joined["status_silver"]).all()


def sold_items(build: RetailBuild) -> pa.Table:
    """Silver order items whose product is in the product dimension (the others are quarantined from gold)."""
    items, products = read(build, "silver.order_items"), read(build, "gold.dim_product")  # noqa: F841 - read by DuckDB
    return duckdb.sql("SELECT * FROM items WHERE product_id IN (SELECT product_id FROM products)").arrow().read_all()


def test_gold_customer_tables_match_an_independent_computation(retail_build: RetailBuild) -> None:
    orders, events, items = read(retail_build, "silver.orders"), read(retail_build, "silver.events"), sold_items(
        retail_build)
    assert_tables_equal(read(retail_build, "gold.customer_daily"),
                        reference_customer_daily(orders, items, events), ["customer_id", "date"])
    assert_tables_equal(read(retail_build, "gold.customer_features"),
                        reference_customer_features(orders, items, events), ["customer_id", "event_timestamp"])


def test_fct_order_lines_is_the_join_of_items_and_orders(retail_build: RetailBuild) -> None:
    orders, items = read(retail_build, "silver.orders"), sold_items(retail_build)  # noqa: F841 - read by DuckDB
    expected = duckdb.sql("""
        SELECT i.order_id, i.line_number, o.customer_id, i.product_id, o.status, o.order_ts,
               CAST(o.order_ts AT TIME ZONE 'UTC' AS DATE) AS order_date,
               i.quantity, i.unit_price, i.quantity * i.unit_price AS revenue
        FROM items i JOIN orders o USING (order_id)
    """).arrow().read_all()
    assert_tables_equal(read(retail_build, "gold.fct_order_lines"), expected, ["order_id", "line_number"])
    quarantined = read(retail_build, "silver.order_items").num_rows - items.num_rows
    record = next(r for r in retail_build.result.records if r.table == "gold.fct_order_lines")
    assert record.rows_quarantined == quarantined
    assert {c.check: c.rows_failed for c in record.checks}["product_id->gold.dim_product.product_id"] == quarantined


def test_gold_dimensions_are_the_current_silver_rows(retail_build: RetailBuild) -> None:
    products = read(retail_build, "silver.products").drop_columns([SOURCE_FILE, INGESTED_AT])
    assert_tables_equal(read(retail_build, "gold.dim_product"), products, ["product_id"])
    history = pl.from_arrow(read(retail_build, "gold.dim_customer"))
    current = history.filter(pl.col("is_current")).drop(["valid_from", "valid_to", "is_current"])
    customers = read(retail_build, "silver.customers").drop_columns([SOURCE_FILE, INGESTED_AT])
    assert_tables_equal(current.to_arrow(), customers, ["customer_id"])


def test_customer_history_versions_follow_tracked_changes(retail_build: RetailBuild) -> None:
    """Versions of a customer tile time without gaps until a delete, and consecutive versions differ in a
    tracked column unless a delete separates them."""
    history = pl.from_arrow(read(retail_build, "gold.dim_customer")).sort(["customer_id", "valid_from"])
    assert history.group_by("customer_id").agg(pl.col("is_current").sum()).get_column("is_current").max() == 1
    assert history.filter(pl.col("valid_to").is_null() != pl.col("is_current")).height == 0
    tracked = ["country", "segment", "loyalty_tier"]
    pairs = history.with_columns(
        [pl.col(c).shift(-1).over("customer_id").alias(f"next_{c}") for c in [*tracked, "valid_from"]]
    ).filter(pl.col("next_valid_from").is_not_null())
    assert pairs.height > 0
    assert pairs.filter(pl.col("valid_to") > pl.col("next_valid_from")).height == 0
    contiguous = pairs.filter(pl.col("valid_to") == pl.col("next_valid_from"))
    unchanged = contiguous.filter(pl.all_horizontal([pl.col(c).eq_missing(pl.col(f"next_{c}")) for c in tracked]))
    assert contiguous.height > 0 and unchanged.height == 0


def test_every_commit_and_run_record_names_the_run(retail_build: RetailBuild) -> None:
    run_id = retail_build.result.run_id
    layout = Layout.at(str(retail_build.root))
    for table in retail.select():
        commits = DeltaTable(layout.table(table)).history()
        assert all(c.get("medallion.run_id") == run_id for c in commits if c["operation"] != "CREATE TABLE")
    records = read_records(layout.runs()).filter(pl.col("run_id") == run_id)
    assert sorted(records["table"].to_list()) == sorted(retail.select())
    assert set(records["status"].to_list()) == {"succeeded"}
    features = records.filter(pl.col("table") == "gold.customer_features").row(0, named=True)
    assert json.loads(features["input_versions"]) == {"gold.fct_order_lines": 0, "silver.events": 0}
    assert features["output_version"] == 0 and features["rows_written"] > 0 and features["duration_s"] > 0


def test_running_again_on_the_same_landing_data_leaves_gold_unchanged(retail_build: RetailBuild, tmp_path: Path) -> None:
    before = {table: read(retail_build, table) for table in GOLD_KEYS}
    shutil.copytree(retail_build.root, tmp_path / "root")  # the shared build stays as its one run left it
    copy = RetailBuild(tmp_path / "root", settings_at(tmp_path / "root"), retail_build.result)
    again = Runner(retail, copy.settings).run()
    assert again.succeeded
    assert {r.status for r in again.records} == {"unchanged"}
    forced = Runner(retail, copy.settings).run(force=True)
    assert forced.succeeded
    for table, keys in GOLD_KEYS.items():
        after = read(copy, table)
        assert pl.from_arrow(after).select(keys).is_duplicated().sum() == 0, table
        assert_tables_equal(after, before[table], keys)


def test_landing_files_arriving_one_by_one_give_the_same_gold_as_one_run(
    retail_build: RetailBuild, tmp_path: Path
) -> None:
    """Each source's files arrive in order, one per run (late and out-of-order changes included)."""
    landing = retail_build.root / "landing"
    files = {source: sorted((landing / source).iterdir()) for source in SOURCES}
    batches = max(len(paths) for paths in files.values())
    assert batches >= 5
    for batch in range(batches):
        for source, paths in files.items():
            (tmp_path / "landing" / source).mkdir(parents=True, exist_ok=True)
            for path in paths[batch:batch + 1]:
                shutil.copy2(path, tmp_path / "landing" / source / path.name)
        result = Runner(retail, settings_at(tmp_path)).run()
        assert result.succeeded, [r.error for r in result.records if r.error]
    daily = next(r for r in result.records if r.table == "gold.customer_daily")
    customers = pl.from_arrow(read(retail_build, "gold.customer_daily"))["customer_id"].n_unique()
    assert daily.status == "succeeded" and 0 < daily.details["keys_recomputed"] < customers
    assert daily.details["rows_replaced"] < daily.rows_in
    silver = {r.table: r for r in result.records if r.table.startswith("silver.")}
    assert all(r.rows_in < DeltaTable(Layout.at(str(tmp_path)).table(t.replace("silver", "bronze"))).to_pyarrow_table().num_rows
               for t, r in silver.items() if r.status == "succeeded")
    for table, keys in GOLD_KEYS.items():
        incremental = DeltaTable(Layout.at(str(tmp_path)).table(table)).to_pyarrow_table()
        assert_tables_equal(incremental, read(retail_build, table), keys)


def test_every_table_in_iceberg_gives_the_gold_of_the_delta_run(retail_build: RetailBuild, tmp_path: Path) -> None:
    """`storage.table_format: iceberg` stores every table of the pipeline in Iceberg; the landing files arrive in
    two deliveries (the first file of each source, then the rest), so the second run takes the incremental paths
    (merges, keyed recomputes, history rebuilds) on Iceberg tables."""
    landing = retail_build.root / "landing"
    settings = load_settings(overrides={"storage": {"root": str(tmp_path), "table_format": "iceberg"}})
    for delivery in (slice(0, 1), slice(1, None)):
        for source in SOURCES:
            (tmp_path / "landing" / source).mkdir(parents=True, exist_ok=True)
            for path in sorted((landing / source).iterdir())[delivery]:
                shutil.copy2(path, tmp_path / "landing" / source / path.name)
        result = Runner(retail, settings).run()
        assert result.succeeded, [r.error for r in result.records if r.error]
    daily = next(r for r in result.records if r.table == "gold.customer_daily")
    assert daily.status == "succeeded" and daily.details["keys_recomputed"] > 0
    layout, formats = Layout.at(str(tmp_path)), TableFormats(settings)
    assert {found_format(layout.table(table)) for table in retail.select()} == {"iceberg"}
    for table, keys in GOLD_KEYS.items():
        uri, store = layout.table(table), formats.for_table(table)
        assert_tables_equal(store.read_columns(uri, table, store.schema(uri, table).names), read(retail_build, table),
                            keys)
    assert {r.status for r in Runner(retail, settings).run().records} == {"unchanged"}
