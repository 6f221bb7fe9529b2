"""`medallion features` on the retail gold tables: after the gold table is overwritten, merged into and
deleted from, historical and online retrieval both return exactly its current version."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable, write_deltalake
from polars.testing import assert_frame_equal

from engine.cli.main import main
from engine.features.lineage import read_lineage
from engine.features.repo import open_store
from tests.conftest import RetailBuild
from tests.features.conftest import REPO, RETAIL_END, RetailFeatures, copy_gold
from tests.features.test_server import expected_online

FEATURES = ["customer_features:revenue_30d", "customer_features:order_count_30d"]


def medallion(root: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["--root", str(root), "features", "--repo", str(REPO), *args])
    assert result.exit_code == 0, result.output
    return result.output


def as_of_reference(entities: pd.DataFrame, features: pl.DataFrame) -> pl.DataFrame:
    """DuckDB: per entity row the latest gold row at or before its time, at most two days old."""
    connection = duckdb.connect()
    connection.register("entities", entities)
    connection.register("features", features.to_arrow())
    return pl.from_arrow(connection.sql("""
        SELECT e.row_id,
               CASE WHEN f.event_timestamp >= e.event_timestamp - INTERVAL 2 DAY THEN f.revenue_30d END revenue_30d,
               CASE WHEN f.event_timestamp >= e.event_timestamp - INTERVAL 2 DAY THEN f.order_count_30d END
                   order_count_30d
        FROM entities e ASOF LEFT JOIN features f
          ON e.customer_id = f.customer_id AND e.event_timestamp >= f.event_timestamp
        ORDER BY e.row_id""").to_arrow_table())


def test_retrieval_returns_the_current_version_after_overwrite_merge_and_delete(
        retail_build: RetailBuild, tmp_path: Path) -> None:
    root = copy_gold(retail_build, tmp_path)
    assert "created feature view: customer_features, customer_profile, product_features" in medallion(root, "apply")
    medallion(root, "materialize", "--end", RETAIL_END.isoformat())

    path = str(root / "gold" / "customer_features")
    gold = pl.read_delta(path)
    customers = sorted(gold["customer_id"].unique().to_list())
    write_deltalake(path, gold.with_columns(pl.col("revenue_30d") * 2).filter(pl.col("customer_id") != customers[0])
                    .to_arrow(), mode="overwrite")
    last_day = gold["event_timestamp"].max()
    changes = (gold.filter((pl.col("event_timestamp") == last_day) & ~pl.col("customer_id").is_in(customers[:2]))
               .head(5)
               .with_columns(pl.col("event_timestamp") + dt.timedelta(days=1), pl.col("revenue_30d") + 1000.0))
    DeltaTable(path).merge(changes.to_arrow(), predicate="t.customer_id = s.customer_id AND "
                           "t.event_timestamp = s.event_timestamp", source_alias="s", target_alias="t",
                           ).when_matched_update_all().when_not_matched_insert_all().execute()
    DeltaTable(path).delete(f"customer_id = {customers[1]}")
    current = pl.read_delta(path)

    out = medallion(root, "materialize", "--end", RETAIL_END.isoformat(), "--incremental")
    assert "customer_features" in out and "materialization (incremental)" in out

    store = open_store(str(root), REPO)
    sample = current.select("customer_id", "event_timestamp").sample(150, seed=3)
    entities = pd.concat([sample.to_pandas(), pd.DataFrame({
        "customer_id": customers[:4], "event_timestamp": [RETAIL_END] * 4})], ignore_index=True)
    entities.insert(0, "row_id", range(len(entities)))
    job = store.get_historical_features(entity_df=entities, features=FEATURES)
    historical = pl.from_pandas(job.to_df()).select("row_id", "revenue_30d", "order_count_30d")
    assert job.table_versions == {"gold.customer_features": DeltaTable(path).version()}
    assert_frame_equal(historical, as_of_reference(entities, current), check_dtypes=False)

    online = store.get_online_features(features=FEATURES,
                                       entity_rows=[{"customer_id": c} for c in customers]).to_dict()
    expected = as_of_reference(pd.DataFrame({"row_id": range(len(customers)), "customer_id": customers,
                                             "event_timestamp": [RETAIL_END] * len(customers)}), current)
    assert online["revenue_30d"] == expected["revenue_30d"].to_list()
    assert online["revenue_30d"][:2] == [None, None]
    boosted = changes["customer_id"].to_list()
    assert all(online["revenue_30d"][customers.index(c)] > 1000 for c in boosted)


def test_a_run_materializes_the_views_over_the_tables_it_committed(retail_build: RetailBuild,
                                                                   tmp_path: Path) -> None:
    root = tmp_path / "lake"
    shutil.copytree(retail_build.root, root)
    medallion(root, "apply")
    after_runs = {"MEDALLION__FEATURES__MATERIALIZE_AFTER_RUNS": "true", "MEDALLION__FEATURES__REPO": str(REPO)}
    path = str(root / "gold" / "dim_product")
    before = DeltaTable(path).version()

    run = CliRunner().invoke(main, ["--root", str(root), "run", "retail", "--select", "gold.dim_product", "--force"],
                             env=after_runs)

    assert run.exit_code == 0, run.output
    assert "materialization (incremental)" in run.output and "product_features" in run.output
    version = DeltaTable(path).version()
    assert version > before
    made = read_lineage(str(root)).filter(pl.col("kind") == "materialize")
    assert made.select("table", "version", "views").rows() == [("gold.dim_product", version, ["product_features"])]
    products = pl.read_delta(path).sort("product_id")
    online = open_store(str(root), REPO).get_online_features(
        features=["product_features:category", "product_features:price"],
        entity_rows=[{"product_id": p} for p in products["product_id"]]).to_dict()
    assert (online["category"], online["price"]) == (products["category"].to_list(), products["price"].to_list())

    again = CliRunner().invoke(main, ["--root", str(root), "run", "retail", "--select", "gold.dim_product"],
                               env=after_runs)
    assert again.exit_code == 0 and "materialization" not in again.output
    assert read_lineage(str(root)).filter(pl.col("kind") == "materialize").height == 1


def test_missing_gold_table_fails_apply_with_a_one_line_reason(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "features", "--repo", str(REPO), "apply"])

    assert result.exit_code == 1
    assert "feature source `gold.customer_features` has no Delta table" in result.output
    assert "run the pipeline that builds it" in result.output


def test_get_prints_the_online_features_of_one_entity_row(retail_features: RetailFeatures) -> None:
    args = ["--root", str(retail_features.root), "features", "--repo", str(REPO), "get"]
    buyers = expected_online(retail_features.root, list(range(1, 60))).drop_nulls("avg_order_value_30d")
    expected = buyers.row(0, named=True)
    customer = expected["customer_id"]

    result = CliRunner().invoke(main, [*args, "--service", "customer_training", "--entity",
                                       f"customer_id={customer}", "--entity", "cart_value=20"])
    unclear = CliRunner().invoke(main, [*args, "--entity", f"customer_id={customer}"])

    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert (row["customer_id"], row["revenue_30d"]) == (customer, expected["revenue_30d"])
    assert row["cart_to_avg_order_value"] == pytest.approx(20 / expected["avg_order_value_30d"])
    assert unclear.exit_code == 1 and "give either --feature (one or more) or --service" in unclear.output
