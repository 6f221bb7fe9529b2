"""Randomised feature tables with ties, gaps and TTL edges, and an independent as-of join in DuckDB."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
from feast import Entity, FeatureView, Field, ValueType
from feast.types import Float64, Int64, String

from engine.features.source import DeltaSource

BASE = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SLOT = timedelta(minutes=5)
TTL = timedelta(minutes=30)
US = pa.timestamp("us", tz="UTC")
ONE_US = timedelta(microseconds=1)

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
product = Entity(name="product", join_keys=["product_id"], value_type=ValueType.STRING)


def customer_view(version: int | None = None) -> FeatureView:
    """Spend and visits per customer, TTL 30 minutes, ties of equal event times broken by `created`."""
    return FeatureView(
        name="customer_stats", entities=[customer], ttl=TTL,
        schema=[Field(name="customer_id", dtype=Int64), Field(name="spend", dtype=Float64),
                Field(name="visits", dtype=Int64)],
        source=DeltaSource(table="gold.customer_stats", timestamp_field="ts", created_timestamp_column="created",
                           version=version),
    )


def product_view() -> FeatureView:
    """Price per product (string keys), no TTL."""
    return FeatureView(
        name="product_stats", entities=[product], ttl=timedelta(0),
        schema=[Field(name="product_id", dtype=String), Field(name="price", dtype=Float64)],
        source=DeltaSource(table="gold.product_stats", timestamp_field="updated_at"),
    )


def customer_rows(rng: np.random.Generator, customers: int = 40, slots: int = 48) -> pa.Table:
    """0-8 rows per customer on a 5-minute grid (gaps), some with a second row at the same time and a later
    `created` (ties), some values null."""
    ids, slot, created = [], [], []
    for cid in range(1, customers + 1):
        chosen = np.sort(rng.choice(slots, size=int(rng.integers(0, 9)), replace=False))
        ids += [cid] * len(chosen)
        slot += chosen.tolist()
        created += [0] * len(chosen)
        ties = chosen[rng.random(len(chosen)) < 0.2]
        ids += [cid] * len(ties)
        slot += ties.tolist()
        created += [1] * len(ties)
    n = len(ids)
    spend = rng.normal(100, 30, n).round(2)
    return pa.table({
        "customer_id": pa.array(ids, pa.int64()),
        "ts": pa.array([BASE + s * SLOT for s in slot], US),
        "created": pa.array([BASE + s * SLOT + (c + 1) * timedelta(seconds=7) for s, c in zip(slot, created)], US),
        "spend": pa.array(np.where(rng.random(n) < 0.1, np.nan, spend), pa.float64(), from_pandas=True),
        "visits": pa.array(rng.integers(0, 50, n), pa.int64()),
    })


def product_rows(rng: np.random.Generator, products: int = 15, slots: int = 48) -> pa.Table:
    """1-4 price changes per product (string keys), at distinct times."""
    ids, slot = [], []
    for pid in range(products):
        chosen = np.sort(rng.choice(slots, size=int(rng.integers(1, 5)), replace=False))
        ids += [f"p{pid:02d}"] * len(chosen)
        slot += chosen.tolist()
    return pa.table({
        "product_id": pa.array(ids, pa.string()),
        "updated_at": pa.array([BASE + s * SLOT + timedelta(seconds=30) for s in slot], US),
        "price": pa.array(rng.uniform(1, 500, len(ids)).round(2), pa.float64()),
    })


def entity_rows(rng: np.random.Generator, customers: pa.Table, rows: int = 300) -> pd.DataFrame:
    """Entity rows: random grid times, exact feature times (ties), TTL edges (exactly TTL after a feature
    row, and 1 microsecond more), times before any data, unknown keys, and repeated rows."""
    times = customers.column("ts").to_pylist()
    keys = customers.column("customer_id").to_pylist()
    n_known = rows // 2
    picks = rng.integers(0, len(times), n_known)
    shift = rng.choice([timedelta(0), TTL, TTL + ONE_US, SLOT, -ONE_US], size=n_known)
    cids = [keys[i] for i in picks] + rng.integers(1, 46, rows - n_known).tolist()
    stamps = [times[i] + s for i, s in zip(picks, shift)] + [
        BASE + int(rng.integers(-3, 52)) * SLOT + timedelta(seconds=int(rng.choice([0, 30, 31])))
        for _ in range(rows - n_known)]
    frame = pd.DataFrame({
        "customer_id": cids,
        "product_id": [f"p{int(p):02d}" for p in rng.integers(0, 18, rows)],
        "event_timestamp": pd.to_datetime(stamps, utc=True),
    })
    frame = pd.concat([frame, frame.sample(20, random_state=int(rng.integers(0, 1000)))], ignore_index=True)
    frame.insert(0, "row_id", np.arange(len(frame)))
    return frame


def reference_join(entities: pd.DataFrame, customers: pa.Table, products: pa.Table) -> pl.DataFrame:
    """The expected training set, by DuckDB ASOF joins: per entity row the latest customer row at or before
    its time (latest `created` among equal times) unless older than the TTL, and the latest product row."""
    ttl_us = int(TTL.total_seconds() * 1_000_000)
    connection = duckdb.connect()
    connection.register("entities", entities)
    connection.register("customers", customers)
    connection.register("products", products)
    spend = pl.from_arrow(connection.sql(f"""
        WITH c AS (SELECT * FROM customers
                   QUALIFY row_number() OVER (PARTITION BY customer_id, ts ORDER BY created DESC) = 1)
        SELECT e.row_id,
               CASE WHEN c.ts >= e.event_timestamp - INTERVAL {ttl_us} MICROSECOND THEN c.spend END AS spend,
               CASE WHEN c.ts >= e.event_timestamp - INTERVAL {ttl_us} MICROSECOND THEN c.visits END AS visits
        FROM entities e ASOF LEFT JOIN c ON e.customer_id = c.customer_id AND e.event_timestamp >= c.ts
    """).to_arrow_table())
    price = pl.from_arrow(connection.sql("""
        SELECT e.row_id, p.price
        FROM entities e ASOF LEFT JOIN products p ON e.product_id = p.product_id AND e.event_timestamp >= p.updated_at
    """).to_arrow_table())
    return spend.join(price, on="row_id").sort("row_id")


def latest_online(customers: pa.Table, end: dt.datetime) -> pl.DataFrame:
    """What the online store must hold at `end`: per customer the latest row at or before `end` (latest
    `created` among equal times), unless older than the TTL."""
    frame = pl.from_arrow(customers)
    assert isinstance(frame, pl.DataFrame)
    return (frame.filter((pl.col("ts") <= end) & (pl.col("ts") >= end - TTL))
            .sort(["ts", "created"]).group_by("customer_id").last()
            .select("customer_id", "ts", "created", "spend", "visits").sort("customer_id"))
