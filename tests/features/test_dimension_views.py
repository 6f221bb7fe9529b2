"""Historical retrieval of the retail repository's dimension views, `customer_profile` (over the SCD2 table
`gold.dim_customer`) and `product_features` (over `gold.dim_product`), against independent DuckDB queries
on the gold tables."""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd
import polars as pl
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from tests.features.conftest import RetailFeatures

ONE_US = dt.timedelta(microseconds=1)
UNKNOWN = 10**9


def entity_frame(keys: list[int], times: list[dt.datetime], key: str) -> pd.DataFrame:
    """Entity rows numbered in order, with UTC event timestamps."""
    return pd.DataFrame({"row_id": range(len(keys)), key: keys, "event_timestamp": pd.to_datetime(times, utc=True)})


def retrieve(retail_features: RetailFeatures, entities: pd.DataFrame,
             features: list[str]) -> tuple[pl.DataFrame, dict[str, int]]:
    """The training set in entity row order, and the table versions it read."""
    job = retail_features.store.get_historical_features(entity_df=entities, features=features)
    return pl.from_pandas(job.to_df()).sort("row_id"), job.table_versions


def test_customer_profile_returns_the_scd2_version_valid_at_each_time(retail_features: RetailFeatures) -> None:
    path = str(retail_features.root / "gold" / "dim_customer")
    versions = pl.read_delta(path).sort("customer_id", "valid_from")
    following = versions.with_columns(next_from=pl.col("valid_from").shift(-1).over("customer_id"))
    gaps = following.filter(pl.col("valid_to").is_not_null()
                            & (pl.col("next_from").is_null() | (pl.col("next_from") > pl.col("valid_to"))))
    assert gaps.height, "the history should hold a deleted customer (a closed version with no successor then)"
    keys, times = [], []
    for row in versions.iter_rows(named=True):
        start, end = row["valid_from"], row["valid_to"] or row["valid_from"] + dt.timedelta(days=30)
        for moment in (start - ONE_US, start, start + (end - start) / 2, end - ONE_US, end):
            keys.append(row["customer_id"])
            times.append(moment)
    for row in gaps.iter_rows(named=True):
        reinserted = row["next_from"] or row["valid_to"] + dt.timedelta(days=2)
        keys.append(row["customer_id"])
        times.append(row["valid_to"] + (reinserted - row["valid_to"]) / 2)
    keys.append(UNKNOWN)
    times.append(versions["valid_from"].max())
    entities = entity_frame(keys, times, "customer_id")

    actual, read = retrieve(retail_features, entities, ["customer_profile:country", "customer_profile:segment"])

    connection = duckdb.connect()
    connection.register("entities", entities)
    connection.register("versions", versions.to_arrow())
    expected = pl.from_arrow(connection.sql("""
        WITH valid AS (
            SELECT e.row_id, v.country, v.segment
            FROM entities e JOIN versions v ON v.customer_id = e.customer_id AND v.valid_from <= e.event_timestamp
             AND (v.valid_to IS NULL OR e.event_timestamp < v.valid_to)),
        closed AS (  -- a deleted customer keeps its last version (docs/features.md)
            SELECT e.row_id, v.country, v.segment
            FROM entities e JOIN versions v ON v.customer_id = e.customer_id AND v.valid_to <= e.event_timestamp
            QUALIFY row_number() OVER (PARTITION BY e.row_id ORDER BY v.valid_to DESC) = 1)
        SELECT e.row_id,
               CASE WHEN valid.row_id IS NOT NULL THEN valid.country ELSE closed.country END AS country,
               CASE WHEN valid.row_id IS NOT NULL THEN valid.segment ELSE closed.segment END AS segment
        FROM entities e LEFT JOIN valid USING (row_id) LEFT JOIN closed USING (row_id)
        ORDER BY e.row_id""").to_arrow_table())
    assert isinstance(expected, pl.DataFrame) and expected.height == len(entities)
    assert read == {"gold.dim_customer": DeltaTable(path).version()}
    assert_frame_equal(actual.select("row_id", "country", "segment"), expected, check_dtypes=False)
    assert expected["country"].null_count() == versions["customer_id"].n_unique() + 1
    assert expected["country"].n_unique() > 1 and expected["segment"].n_unique() > 1


def test_product_features_return_the_product_record_once_it_was_updated(retail_features: RetailFeatures) -> None:
    path = str(retail_features.root / "gold" / "dim_product")
    products = pl.read_delta(path)
    keys, times = [], []
    for row in products.iter_rows(named=True):
        for moment in (row["updated_at"] - ONE_US, row["updated_at"], row["updated_at"] + dt.timedelta(days=90)):
            keys.append(row["product_id"])
            times.append(moment)
    keys.append(UNKNOWN)
    times.append(products["updated_at"].max())
    entities = entity_frame(keys, times, "product_id")

    actual, read = retrieve(retail_features, entities, ["product_features:category", "product_features:price"])

    connection = duckdb.connect()
    connection.register("entities", entities)
    connection.register("products", products.to_arrow())
    expected = pl.from_arrow(connection.sql("""
        SELECT e.row_id, p.category, p.price
        FROM entities e ASOF LEFT JOIN products p ON e.product_id = p.product_id AND e.event_timestamp >= p.updated_at
        ORDER BY e.row_id""").to_arrow_table())
    assert read == {"gold.dim_product": DeltaTable(path).version()}
    assert_frame_equal(actual.select("row_id", "category", "price"), expected, check_dtypes=False)
    assert expected["price"].null_count() == products.height + 1
