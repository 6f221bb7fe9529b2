"""Historical retrieval is a point-in-time join of exactly the tables' current (or pinned) Delta versions,
checked row by row against DuckDB ASOF joins on randomised data, before and after each of an overwrite, a
merge and a delete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from engine.errors import FeatureStoreError
from engine.features.lineage import read_lineage
from engine.features.snapshot import at_versions
from tests.features.conftest import store_over, table_path, write_table
from tests.features.synthetic import (
    BASE,
    SLOT,
    customer,
    customer_rows,
    customer_view,
    entity_rows,
    product,
    product_rows,
    product_view,
    reference_join,
)

FEATURES = ["customer_stats:spend", "customer_stats:visits", "product_stats:price"]


def _training_set(store, entities: pd.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    job = store.get_historical_features(entity_df=entities, features=FEATURES)
    frame = pl.from_pandas(job.to_df())
    return frame.select("row_id", "spend", "visits", "price"), job.table_versions


def _current(root: Path, table: str) -> pa.Table:
    return DeltaTable(table_path(root, table)).to_pyarrow_table()


def _assert_matches(actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    assert actual["row_id"].to_list() == expected["row_id"].to_list()
    assert_frame_equal(actual, expected, check_dtypes=False, check_exact=True)


@pytest.mark.parametrize("seed", [7, 2024])
def test_point_in_time_join_matches_duckdb_asof_after_each_overwrite_merge_and_delete(
        ray_local: None, tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    customers, products = customer_rows(rng), product_rows(rng)
    first = write_table(tmp_path, "gold.customer_stats", customers)
    write_table(tmp_path, "gold.product_stats", products)
    entities = entity_rows(rng, customers)
    store = store_over(tmp_path, [customer, product, customer_view(), product_view()], project="pit")
    path = table_path(tmp_path, "gold.customer_stats")

    def check(previous: pa.Table) -> int:
        """The training set matches the as-of join on the table's current version, not on `previous`."""
        expected = reference_join(entities, _current(tmp_path, "gold.customer_stats"), products)
        assert not expected.equals(reference_join(entities, previous, products)), "the change must show"
        actual, versions = _training_set(store, entities)
        _assert_matches(actual, expected)
        assert versions == {"gold.customer_stats": DeltaTable(path).version(), "gold.product_stats": 0}
        return versions["gold.customer_stats"]

    actual, versions = _training_set(store, entities)
    expected = reference_join(entities, customers, products)
    assert expected["spend"].is_not_null().sum() > 50 and expected["spend"].is_null().sum() > 20
    _assert_matches(actual, expected)
    assert versions == {"gold.customer_stats": first, "gold.product_stats": 0}

    changed = pl.from_arrow(customers).with_columns(pl.col("spend") * 2 + 1)
    write_table(tmp_path, "gold.customer_stats", changed.filter(pl.col("customer_id") % 5 != 0).to_arrow(),
                mode="overwrite")
    overwritten = check(customers)

    before = _current(tmp_path, "gold.customer_stats")
    DeltaTable(path).merge(
        changed.filter(pl.col("customer_id") % 7 == 0).with_columns(pl.col("visits") + 1000).to_arrow(),
        predicate="t.customer_id = s.customer_id AND t.ts = s.ts AND t.created = s.created",
        source_alias="s", target_alias="t").when_matched_update_all().when_not_matched_insert_all().execute()
    merged = check(before)

    before = _current(tmp_path, "gold.customer_stats")
    DeltaTable(path).delete("customer_id IN (3, 4, 8) OR visits < 5")
    latest = check(before)
    assert (overwritten, merged, latest) == (first + 1, first + 2, first + 3)

    referenced = {Path(p).name for p in DeltaTable(path).file_uris()}
    on_disk = {p.name for p in Path(path).glob("*.parquet")}
    assert on_disk - referenced, "the folder must still hold files the log removed (what a glob would read)"

    with at_versions({"gold.customer_stats": first}):
        pinned, versions = _training_set(store, entities)
    _assert_matches(pinned, reference_join(entities, customers, products))
    assert versions["gold.customer_stats"] == first

    used = read_lineage(str(tmp_path)).filter(pl.col("table") == "gold.customer_stats")["version"].to_list()
    assert used == [first, overwritten, merged, latest, first]


def test_version_pinned_in_the_source_reads_that_version(ray_local: None, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    customers, products = customer_rows(rng), product_rows(rng)
    write_table(tmp_path, "gold.customer_stats", customers)
    write_table(tmp_path, "gold.customer_stats",
                pl.from_arrow(customers).with_columns(pl.col("spend") + 1).to_arrow(), mode="overwrite")
    write_table(tmp_path, "gold.product_stats", products)
    entities = entity_rows(rng, customers, rows=60)
    store = store_over(tmp_path, [customer, product, customer_view(version=0), product_view()], project="pinned")

    actual, versions = _training_set(store, entities)

    assert versions == {"gold.customer_stats": 0, "gold.product_stats": 0}
    _assert_matches(actual, reference_join(entities, customers, products))


def test_missing_keys_unconvertible_keys_unknown_and_vacuumed_versions_are_refused(ray_local: None,
                                                                               tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    write_table(tmp_path, "gold.customer_stats", customer_rows(rng))
    write_table(tmp_path, "gold.product_stats", product_rows(rng))
    store = store_over(tmp_path, [customer, product, customer_view(), product_view()], project="refused")
    times = pd.to_datetime(["2026-03-01T01:00:00Z"])

    with pytest.raises(FeatureStoreError, match="no column `product_id`"):
        store.get_historical_features(entity_df=pd.DataFrame({"customer_id": [1], "event_timestamp": times}),
                                      features=FEATURES)
    with pytest.raises(FeatureStoreError, match="entity column `customer_id`.*int64"):
        store.get_historical_features(entity_df=pd.DataFrame({"customer_id": ["one"], "product_id": ["p01"],
                                                              "event_timestamp": times}), features=FEATURES)
    rows = pd.DataFrame({"customer_id": [1], "product_id": ["p01"], "event_timestamp": times})
    with pytest.raises(FeatureStoreError, match="version 9"):
        with at_versions({"gold.customer_stats": 9}):
            store.get_historical_features(entity_df=rows, features=FEATURES)

    write_table(tmp_path, "gold.customer_stats", customer_rows(rng), mode="overwrite")
    DeltaTable(table_path(tmp_path, "gold.customer_stats")).vacuum(retention_hours=0, dry_run=False,
                                                                   enforce_retention_duration=False)
    with at_versions({"gold.customer_stats": 0}):
        job = store.get_historical_features(entity_df=rows, features=FEATURES)
    with pytest.raises(FeatureStoreError, match="`gold.customer_stats` version 0.*FileNotFoundError.*vacuumed"):
        job.to_df()


def test_pull_latest_and_pull_all_read_the_current_version(ray_local: None, tmp_path: Path) -> None:
    from engine.features.offline import DeltaOfflineStore

    rng = np.random.default_rng(9)
    customers = customer_rows(rng)
    write_table(tmp_path, "gold.customer_stats", customers)
    DeltaTable(table_path(tmp_path, "gold.customer_stats")).delete("customer_id <= 10")
    store = store_over(tmp_path, [customer, customer_view()], project="pulls")
    source = store.get_feature_view("customer_stats").batch_source
    start, end = BASE, BASE + 30 * SLOT
    live = pl.from_arrow(_current(tmp_path, "gold.customer_stats")).filter(pl.col("ts").is_between(start, end))
    args = (store.config, source, ["customer_id"], ["spend", "visits"], "ts", "created", start, end)

    latest = pl.from_arrow(DeltaOfflineStore.pull_latest_from_table_or_query(*args).to_arrow())
    every = pl.from_arrow(DeltaOfflineStore.pull_all_from_table_or_query(*args).to_arrow())

    expected = live.sort(["ts", "created"]).group_by("customer_id").last().sort("customer_id")
    assert_frame_equal(latest.sort("customer_id").select(expected.columns), expected)
    assert_frame_equal(every.sort(["customer_id", "ts", "created"]).select(live.columns),
                       live.sort(["customer_id", "ts", "created"]))
    assert latest["customer_id"].min() > 10
    pulls = read_lineage(str(tmp_path)).select("kind", "table", "version", "rows", "views").rows()
    version = DeltaTable(table_path(tmp_path, "gold.customer_stats")).version()
    assert pulls == [("pull_latest", "gold.customer_stats", version, latest.height, []),
                     ("pull_all", "gold.customer_stats", version, every.height, [])]
