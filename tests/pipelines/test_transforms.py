"""Tests of the retail table functions on hand-made batches, checked against the DuckDB reference."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from engine.columns import INGESTED_AT, REJECTED_REASON, RESCUED_DATA, SOURCE_FILE
from pipelines.retail.transforms import (
    ACTIVITY_SCHEMA,
    CUSTOMER_DAILY_SCHEMA,
    CUSTOMER_FEATURES_SCHEMA,
    FCT_ORDER_LINES_SCHEMA,
    clean_customers,
    clean_events,
    clean_order_items,
    clean_orders,
    clean_products,
    customer_daily,
    customer_features,
    order_activity,
    order_line_measures,
    session_activity,
)
from tests.pipelines.reference import (
    assert_tables_equal,
    reference_customer_daily,
    reference_customer_features,
)

UTC_MICROS = pa.timestamp("us", tz="UTC")
INGESTED = dt.datetime(2026, 6, 1, 8, 0, tzinfo=dt.UTC)
LINEAGE = [SOURCE_FILE, INGESTED_AT, RESCUED_DATA, REJECTED_REASON]


def utc(*parts: int) -> dt.datetime:
    """A UTC datetime."""
    return dt.datetime(*parts, tzinfo=dt.UTC)


def bronze(columns: dict[str, list[Any]], source_file: str = "source-0001.json") -> pa.Table:
    """A bronze batch: every given field as large strings, plus the lineage columns."""
    rows = len(next(iter(columns.values())))
    return pa.table(
        {
            **{name: pa.array(values, pa.large_string()) for name, values in columns.items()},
            SOURCE_FILE: [source_file] * rows,
            INGESTED_AT: pa.array([INGESTED] * rows, UTC_MICROS),
            "_run_id": ["run-1"] * rows,
        }
    )


def column(table: pa.Table, name: str) -> list[Any]:
    """Values of one column as Python objects."""
    return table.column(name).to_pylist()


def test_clean_customers_types_tidies_and_explains() -> None:
    batch = bronze(
        {
            "op": ["c", "u", "d", "u", "c", "x", "c"],
            "customer_id": ["42", "two", "7", "8", "9", "10", None],
            "email": [" Alice@Example.COM ", "b@x.io", None, None, "c@x.io", "d@x.io", "e@x.io"],
            "first_name": [" Alice ", "Bob", None, "Cy", "Di", "Ed", "Flo"],
            "last_name": ["Smith", "Jones", None, "Lee", "Ray", "Ito", "Kim"],
            "country": [" de ", "fr", None, "us", "gb", "es", "it"],
            "segment": ["retail", "smb", None, "retail", "smb", "smb", "smb"],
            "signup_date": ["2026-01-02", "2026-01-02", None, "2026-01-05", "2026-13-01", "2026-01-02", None],
            "updated_at": [
                "2026-01-03T10:15:00Z",
                "2026-01-04T00:00:00Z",
                "2026-02-01T00:00:00Z",
                "not-a-date",
                "2026-01-06T00:00:00Z",
                "2026-01-06T00:00:00Z",
                "2026-01-06T00:00:00Z",
            ],
        }
    )
    cleaned = clean_customers(batch)

    assert cleaned.schema.names == [
        "customer_id", "email", "first_name", "last_name", "country", "segment", "signup_date",
        "loyalty_tier", "updated_at", "op", *LINEAGE,
    ]
    assert cleaned.schema.field("signup_date").type == pa.date32()
    assert cleaned.schema.field("updated_at").type == UTC_MICROS
    assert cleaned.schema.field("email").type == pa.string()
    assert column(cleaned, REJECTED_REASON) == [
        None,
        "customer_id: not an integer ('two')",
        None,
        "updated_at: not a timestamp ('not-a-date')",
        "signup_date: not a date ('2026-13-01')",
        "op: unknown value ('x')",
        "customer_id: missing",
    ]
    assert cleaned.slice(0, 1).to_pylist()[0] == {
        "customer_id": 42,
        "email": "alice@example.com",
        "first_name": "Alice",
        "last_name": "Smith",
        "country": "DE",
        "segment": "retail",
        "signup_date": dt.date(2026, 1, 2),
        "loyalty_tier": None,
        "updated_at": utc(2026, 1, 3, 10, 15),
        "op": "c",
        SOURCE_FILE: "source-0001.json",
        INGESTED_AT: INGESTED,
        RESCUED_DATA: None,
        REJECTED_REASON: None,
    }
    assert column(cleaned, "customer_id")[:3] == [42, None, 7]
    assert column(cleaned, "updated_at")[2:4] == [utc(2026, 2, 1), None]
    assert column(cleaned, "email")[2] is None


@pytest.mark.parametrize(
    "loyalty_tier", [pa.array([None, None], pa.null()), pa.array([" gold ", None], pa.string())]
)
def test_clean_customers_accepts_loyalty_tier_null_or_present(loyalty_tier: pa.Array) -> None:
    batch = bronze({"op": ["c", "c"], "customer_id": ["1", "2"], "updated_at": ["2026-03-01T00:00:00Z"] * 2})
    cleaned = clean_customers(batch.append_column("loyalty_tier", loyalty_tier))

    expected = [value.strip() if value else None for value in loyalty_tier.to_pylist()]
    assert column(cleaned, "loyalty_tier") == expected
    assert cleaned.schema.field("loyalty_tier").type == pa.string()
    assert column(cleaned, REJECTED_REASON) == [None, None]


def test_clean_products_parses_prices() -> None:
    batch = bronze(
        {
            "product_id": ["1", "2", "3", "", "5"],
            "name": [" Lamp ", "Desk", "Chair", "Rug", "Mug"],
            "category": ["home", "office", "office", "home", "kitchen"],
            "price": ["19.90", "N/A", "-1", "4", "3"],
            "updated_at": ["2026-01-01T00:00:00Z"] * 4 + ["2026-01-01T00:00:00.250Z"],
        },
        source_file="products-0001.csv",
    )
    cleaned = clean_products(batch)

    assert cleaned.schema.names == ["product_id", "name", "category", "price", "updated_at", *LINEAGE]
    assert column(cleaned, "price") == [19.9, None, -1.0, 4.0, 3.0]
    assert column(cleaned, "name")[0] == "Lamp"
    assert column(cleaned, "updated_at")[4] == utc(2026, 1, 1, 0, 0, 0, 250000)
    assert column(cleaned, REJECTED_REASON) == [
        None,
        "price: not a number ('N/A')",
        "price: negative (-1.0)",
        "product_id: missing",
        None,
    ]


def test_clean_orders_checks_status_and_keys() -> None:
    batch = bronze(
        {
            "order_id": ["42", "43", "abc", "45", "46"],
            "customer_id": ["7", None, "7", "7", "7"],
            "status": ["paid", "placed", "lost", "lost", "shipped"],
            "order_ts": ["2026-01-01T23:30:00Z", "2026-01-02T00:00:00Z", "2026-01-02T00:00:00Z",
                         "2026-01-02T00:00:00Z", None],
            "updated_at": ["2026-01-02T08:00:00Z"] * 5,
        }
    )
    cleaned = clean_orders(batch)

    assert cleaned.schema.names == ["order_id", "customer_id", "status", "order_ts", "updated_at", *LINEAGE]
    assert column(cleaned, "order_id") == [42, 43, None, 45, 46]
    assert column(cleaned, "customer_id") == [7, None, 7, 7, 7]
    assert column(cleaned, "order_ts")[0] == utc(2026, 1, 1, 23, 30)
    assert column(cleaned, REJECTED_REASON) == [
        None,
        None,
        "order_id: not an integer ('abc')",
        "status: unknown value ('lost')",
        "order_ts: missing",
    ]


def test_clean_order_items_checks_quantities_and_prices() -> None:
    batch = bronze(
        {
            "order_id": ["1", "1", "2", "3", "4", "5"],
            "line_number": ["1", "2", "1", "1", "1", "1"],
            "product_id": ["10", "11", "12", "13", "14", "15"],
            "quantity": ["2", "two", "-3", "0", "1", "1"],
            "unit_price": ["2.50", "1", "1", "1", "N/A", "-0.5"],
            "updated_at": ["2026-01-01T00:00:00Z"] * 6,
        },
        source_file="order_items-0002.csv",
    )
    cleaned = clean_order_items(batch)

    assert cleaned.schema.names == [
        "order_id", "line_number", "product_id", "quantity", "unit_price", "updated_at", *LINEAGE,
    ]
    assert column(cleaned, "quantity") == [2, None, -3, 0, 1, 1]
    assert column(cleaned, "unit_price") == [2.5, 1.0, 1.0, 1.0, None, -0.5]
    assert column(cleaned, REJECTED_REASON) == [
        None,
        "quantity: not an integer ('two')",
        "quantity: not positive (-3)",
        "quantity: not positive (0)",
        "unit_price: not a number ('N/A')",
        "unit_price: negative (-0.5)",
    ]
    assert column(cleaned, SOURCE_FILE) == ["order_items-0002.csv"] * 6


def test_clean_events_flattens_payload() -> None:
    payload = (
        '{"page": "/p/12", "product_id": 12, "query": null, "device": {"os": "ios", "browser": "safari"}}'
    )
    batch = bronze(
        {
            "event_id": ["e1", "e2", "e3", "e4", "e5", "  "],
            "customer_id": ["42", None, "abc", "5", "5", "5"],
            "session_id": ["s1", "s2", "s3", "s4", "s5", "s6"],
            "event_type": ["page_view", "search", "page_view", "add_to_cart", "page_view", "checkout"],
            "event_ts": ["2026-01-01T10:00:00Z"] * 4 + ["not-a-date", "2026-01-01T10:00:00Z"],
            "payload": [payload, None, payload, '{"product_id": "x", "device": null}', payload, payload],
        }
    )
    cleaned = clean_events(batch)

    assert cleaned.schema.names == [
        "event_id", "customer_id", "session_id", "event_type", "event_ts", "page", "product_id",
        "query", "device_os", "device_browser", *LINEAGE,
    ]
    assert cleaned.slice(0, 2).select(cleaned.schema.names[:10]).to_pylist() == [
        {
            "event_id": "e1",
            "customer_id": 42,
            "session_id": "s1",
            "event_type": "page_view",
            "event_ts": utc(2026, 1, 1, 10),
            "page": "/p/12",
            "product_id": 12,
            "query": None,
            "device_os": "ios",
            "device_browser": "safari",
        },
        {
            "event_id": "e2",
            "customer_id": None,
            "session_id": "s2",
            "event_type": "search",
            "event_ts": utc(2026, 1, 1, 10),
            "page": None,
            "product_id": None,
            "query": None,
            "device_os": None,
            "device_browser": None,
        },
    ]
    assert column(cleaned, REJECTED_REASON) == [
        None,
        None,
        "customer_id: not an integer ('abc')",
        "product_id: not an integer ('x')",
        "event_ts: not a timestamp ('not-a-date')",
        "event_id: missing",
    ]


def test_cleaners_accept_an_empty_batch() -> None:
    cleaned = clean_events(bronze({"event_id": []}))
    assert cleaned.num_rows == 0
    assert cleaned.schema.field("product_id").type == pa.int64()


# Silver fixture for gold. Customer 1 orders on 03-01, 03-02, 03-24, 03-25 and twice on 03-31 (one
# cancelled), product 1 in several orders, sessions s0 (03-24) and s1 (03-27 23:50 .. 03-28 00:10).
# Customer 2 starts with a session on 03-20, then orders on 03-22. Order 301 has no customer, order
# 199 no lines; the latest date in the data, 04-02, comes from an anonymous event.
ORDERS = [
    (101, 1, "delivered", utc(2026, 3, 1, 9)),
    (102, 1, "delivered", utc(2026, 3, 2, 23, 59, 59)),
    (103, 1, "shipped", utc(2026, 3, 24, 0, 0)),
    (104, 1, "paid", utc(2026, 3, 25, 12)),
    (105, 1, "placed", utc(2026, 3, 31, 8)),
    (106, 1, "cancelled", utc(2026, 3, 31, 18)),
    (199, 1, "placed", utc(2026, 3, 31, 19)),
    (201, 2, "paid", utc(2026, 3, 22, 7)),
    (301, None, "paid", utc(2026, 3, 10, 7)),
]
ORDER_ITEMS = [
    (101, 1, 1, 1, 10.0),
    (102, 1, 1, 2, 5.0),
    (102, 2, 2, 1, 3.5),
    (103, 1, 3, 1, 7.0),
    (104, 1, 1, 3, 2.0),
    (105, 1, 4, 1, 20.0),
    (106, 1, 5, 2, 1.25),
    (201, 1, 1, 1, 4.0),
    (301, 1, 2, 1, 100.0),
]
EVENTS = [
    ("e1", 1, "s0", utc(2026, 3, 24, 12)),
    ("e2", 1, "s1", utc(2026, 3, 27, 23, 50)),
    ("e3", 1, "s1", utc(2026, 3, 28, 0, 10)),
    ("e4", 2, "s2", utc(2026, 3, 20, 15)),
    ("e5", None, "s9", utc(2026, 4, 2, 6)),
]


def silver_orders(rows: list[tuple[Any, ...]]) -> pa.Table:
    """``silver.orders`` rows from (order_id, customer_id, status, order_ts)."""
    order_id, customer_id, status, order_ts = zip(*rows) if rows else ([], [], [], [])
    return pa.table(
        {
            "order_id": pa.array(order_id, pa.int64()),
            "customer_id": pa.array(customer_id, pa.int64()),
            "status": pa.array(status, pa.string()),
            "order_ts": pa.array(order_ts, UTC_MICROS),
            "updated_at": pa.array(order_ts, UTC_MICROS),
            SOURCE_FILE: pa.array(["orders-0001.json"] * len(rows), pa.string()),
        }
    )


def silver_order_items(rows: list[tuple[Any, ...]]) -> pa.Table:
    """``silver.order_items`` rows from (order_id, line_number, product_id, quantity, unit_price)."""
    order_id, line_number, product_id, quantity, unit_price = zip(*rows) if rows else ([],) * 5
    return pa.table(
        {
            "order_id": pa.array(order_id, pa.int64()),
            "line_number": pa.array(line_number, pa.int64()),
            "product_id": pa.array(product_id, pa.int64()),
            "quantity": pa.array(quantity, pa.int64()),
            "unit_price": pa.array(unit_price, pa.float64()),
            "updated_at": pa.array([INGESTED] * len(rows), UTC_MICROS),
        }
    )


def silver_events(rows: list[tuple[Any, ...]]) -> pa.Table:
    """``silver.events`` rows from (event_id, customer_id, session_id, event_ts)."""
    event_id, customer_id, session_id, event_ts = zip(*rows) if rows else ([],) * 4
    return pa.table(
        {
            "event_id": pa.array(event_id, pa.string()),
            "customer_id": pa.array(customer_id, pa.int64()),
            "session_id": pa.array(session_id, pa.string()),
            "event_type": pa.array(["page_view"] * len(rows), pa.string()),
            "event_ts": pa.array(event_ts, UTC_MICROS),
            "product_id": pa.array([None] * len(rows), pa.int64()),
        }
    )


def order_lines(orders: pa.Table, order_items: pa.Table) -> pa.Table:
    """``gold.fct_order_lines`` built the way the engine does: inner join, then the measures."""
    order_columns = orders.select(["order_id", "customer_id", "status", "order_ts"])
    return order_line_measures(order_items.join(order_columns, "order_id", join_type="inner"))


def last_date(fct: pa.Table, events: pa.Table) -> dt.date:
    """Latest order date or event date in the data."""
    latest_event = pc.max(events.column("event_ts")).as_py()
    return max(pc.max(fct.column("order_date")).as_py(), latest_event.date())


def gold_tables(orders: pa.Table, order_items: pa.Table, events: pa.Table) -> tuple[pa.Table, pa.Table]:
    """``gold.customer_daily`` and ``gold.customer_features`` computed with the transforms."""
    fct = order_lines(orders, order_items)
    activity = pa.concat_tables([order_activity(fct), session_activity(events)])
    return customer_daily(activity), customer_features(activity, last_date(fct, events))


@pytest.fixture(name="silver")
def fixture_silver() -> tuple[pa.Table, pa.Table, pa.Table]:
    """The hand-built silver orders, order items and events."""
    return silver_orders(ORDERS), silver_order_items(ORDER_ITEMS), silver_events(EVENTS)


def test_order_line_measures(silver: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    orders, order_items, _ = silver
    fct = order_lines(orders, order_items).sort_by([("order_id", "ascending"), ("line_number", "ascending")])

    assert fct.schema == FCT_ORDER_LINES_SCHEMA
    assert fct.num_rows == len(ORDER_ITEMS)
    assert fct.slice(1, 1).to_pylist()[0] == {
        "order_id": 102,
        "line_number": 1,
        "customer_id": 1,
        "product_id": 1,
        "status": "delivered",
        "order_ts": utc(2026, 3, 2, 23, 59, 59),
        "order_date": dt.date(2026, 3, 2),
        "quantity": 2,
        "unit_price": 5.0,
        "revenue": 10.0,
    }


def test_activity_tables_share_one_schema(silver: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    orders, order_items, events = silver
    orders_activity = order_activity(order_lines(orders, order_items))
    sessions_activity = session_activity(events)

    assert orders_activity.schema == sessions_activity.schema == ACTIVITY_SCHEMA
    assert 301 not in column(orders_activity, "order_id")
    assert sorted(column(sessions_activity, "session_id")) == ["s0", "s1", "s1", "s2"]


def test_customer_daily(silver: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    daily, _ = gold_tables(*silver)
    rows = {(row["customer_id"], row["date"]): row for row in daily.to_pylist()}

    assert daily.schema == CUSTOMER_DAILY_SCHEMA
    assert rows[1, dt.date(2026, 3, 31)] == {
        "customer_id": 1,
        "date": dt.date(2026, 3, 31),
        "orders": 2,
        "revenue": 22.5,
        "items": 3,
        "sessions": 0,
    }
    assert rows[1, dt.date(2026, 3, 24)]["orders"] == 1
    assert rows[1, dt.date(2026, 3, 24)]["sessions"] == 1
    assert rows[1, dt.date(2026, 3, 27)]["sessions"] == rows[1, dt.date(2026, 3, 28)]["sessions"] == 1
    assert rows[1, dt.date(2026, 3, 28)]["revenue"] == 0.0
    assert {customer for customer, _ in rows} == {1, 2}
    assert_tables_equal(daily, reference_customer_daily(*silver), ["customer_id", "date"])


def end_of(day: dt.date) -> dt.datetime:
    """The last microsecond of ``day`` in UTC."""
    return dt.datetime.combine(day, dt.time(23, 59, 59, 999999), dt.UTC)


def test_customer_features(silver: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    _, features = gold_tables(*silver)
    rows = {(row["customer_id"], row["event_timestamp"]): row for row in features.to_pylist()}

    assert features.schema == CUSTOMER_FEATURES_SCHEMA
    assert features.num_rows == 33 + 14
    assert rows[1, end_of(dt.date(2026, 3, 31))] == {
        "customer_id": 1,
        "event_timestamp": end_of(dt.date(2026, 3, 31)),
        "order_count_7d": 3,
        "order_count_30d": 5,
        "revenue_7d": 28.5,
        "revenue_30d": 49.0,
        "avg_order_value_30d": 9.8,
        "days_since_last_order": 0,
        "distinct_products_30d": 5,
        "sessions_7d": 1,
    }
    on_march_30 = rows[1, end_of(dt.date(2026, 3, 30))]
    assert (on_march_30["order_count_7d"], on_march_30["order_count_30d"]) == (2, 4)
    assert on_march_30["revenue_30d"] == 36.5
    assert on_march_30["days_since_last_order"] == 5
    assert rows[1, end_of(dt.date(2026, 3, 28))]["sessions_7d"] == 2
    first_day_of_2 = rows[2, end_of(dt.date(2026, 3, 20))]
    assert first_day_of_2["sessions_7d"] == 1
    assert first_day_of_2["days_since_last_order"] is None
    assert first_day_of_2["avg_order_value_30d"] is None
    assert first_day_of_2["revenue_30d"] == 0.0
    assert rows[2, end_of(dt.date(2026, 4, 2))]["days_since_last_order"] == 11
    assert_tables_equal(features, reference_customer_features(*silver), ["customer_id", "event_timestamp"])


def test_gold_is_equal_to_the_last_bit_whatever_order_the_activity_rows_arrive_in() -> None:
    rng = random.Random(7)
    revenue = [round(rng.uniform(0.01, 999.99), 2) for _ in range(400)]
    activity = pa.table({
        "customer_id": pa.array([i % 3 for i in range(400)], pa.int64()),
        "activity_date": pa.array([dt.date(2026, 3, 1) + dt.timedelta(days=i % 20) for i in range(400)]),
        "order_id": pa.array(list(range(400)), pa.int64()),
        "product_id": pa.array([i % 7 for i in range(400)], pa.int64()),
        "revenue": pa.array(revenue, pa.float64()),
        "quantity": pa.array([1 + i % 4 for i in range(400)], pa.int64()),
        "session_id": pa.nulls(400, pa.string()),
    }).select(ACTIVITY_SCHEMA.names).cast(ACTIVITY_SCHEMA)
    orders = list(range(400))
    shuffled = []
    for _ in range(5):
        rng.shuffle(orders)
        shuffled.append(activity.take(orders))
    for compute in (customer_daily, lambda rows: customer_features(rows, dt.date(2026, 3, 31))):
        expected = compute(activity)
        for rows in shuffled:
            assert compute(rows).equals(expected)


def test_gold_of_empty_activity() -> None:
    empty = ACTIVITY_SCHEMA.empty_table()

    assert customer_daily(empty).schema == CUSTOMER_DAILY_SCHEMA
    assert customer_daily(empty).num_rows == 0
    assert customer_features(empty, dt.date(2026, 1, 1)).schema == CUSTOMER_FEATURES_SCHEMA
    assert customer_features(empty, dt.date(2026, 1, 1)).num_rows == 0


def random_silver(rng: np.random.Generator) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Random silver orders, order items and events over 20 customers and about 60 days."""
    start = utc(2026, 1, 1)
    minutes = 60 * 24 * 60
    orders = [
        (
            order_id,
            None if rng.random() < 0.05 else int(rng.integers(1, 21)),
            str(rng.choice(["placed", "paid", "shipped", "delivered", "cancelled"])),
            start + dt.timedelta(minutes=int(rng.integers(minutes))),
        )
        for order_id in range(1, 301)
    ]
    order_items = [
        (order_id, line, int(rng.integers(1, 16)), int(rng.integers(1, 6)), round(rng.uniform(1, 50), 2))
        for order_id in range(1, 301)
        for line in range(1, int(rng.integers(0, 4)) + 1)
    ]
    session_starts = {
        f"s{session}": (
            None if rng.random() < 0.1 else int(rng.integers(1, 21)),
            start + dt.timedelta(minutes=int(rng.integers(minutes))),
        )
        for session in range(80)
    }
    events = [
        (f"e{event}", customer, session, begin + dt.timedelta(minutes=int(rng.integers(180))))
        for event, (session, (customer, begin)) in enumerate(
            (session, session_starts[session]) for session in rng.choice(list(session_starts), 400)
        )
    ]
    return silver_orders(orders), silver_order_items(order_items), silver_events(events)


def test_random_gold_matches_reference_when_partitioned_by_customer() -> None:
    orders, order_items, events = random_silver(np.random.default_rng(20260301))
    fct = order_lines(orders, order_items)
    activity = pa.concat_tables([order_activity(fct), session_activity(events)])
    latest = last_date(fct, events)
    parities = pc.bit_wise_and(activity["customer_id"], 1)
    partitions = [activity.filter(pc.equal(parities, parity)) for parity in (0, 1)]

    daily = pa.concat_tables([customer_daily(part) for part in partitions])
    features = pa.concat_tables([customer_features(part, latest) for part in partitions])

    assert features.num_rows > 500
    assert_tables_equal(daily, reference_customer_daily(orders, order_items, events), ["customer_id", "date"])
    assert_tables_equal(
        features,
        reference_customer_features(orders, order_items, events),
        ["customer_id", "event_timestamp"],
    )
