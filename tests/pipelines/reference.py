"""Reference gold tables of the retail pipeline, computed in DuckDB SQL straight from silver tables.

Independent of ``pipelines.retail.transforms``: it follows docs/retail.md with range joins instead of
exploded windows, so the two implementations check each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

_UTC_MICROS = pa.timestamp("us", tz="UTC")

_CUSTOMER_DAILY_SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("date", pa.date32()),
        ("orders", pa.int64()),
        ("revenue", pa.float64()),
        ("items", pa.int64()),
        ("sessions", pa.int64()),
    ]
)
_CUSTOMER_FEATURES_SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("event_timestamp", _UTC_MICROS),
        ("order_count_7d", pa.int64()),
        ("order_count_30d", pa.int64()),
        ("revenue_7d", pa.float64()),
        ("revenue_30d", pa.float64()),
        ("avg_order_value_30d", pa.float64()),
        ("days_since_last_order", pa.int64()),
        ("distinct_products_30d", pa.int64()),
        ("sessions_7d", pa.int64()),
    ]
)

_ACTIVITY_VIEWS = """
CREATE TEMP VIEW fct_order_lines AS
SELECT i.order_id, o.customer_id, i.product_id, i.quantity, i.quantity * i.unit_price AS revenue,
       CAST(o.order_ts AS DATE) AS order_date
FROM order_items AS i JOIN orders AS o ON o.order_id = i.order_id;

CREATE TEMP VIEW customer_lines AS
SELECT * FROM fct_order_lines WHERE customer_id IS NOT NULL;

CREATE TEMP VIEW customer_sessions AS
SELECT DISTINCT customer_id, CAST(event_ts AS DATE) AS session_date, session_id
FROM events WHERE customer_id IS NOT NULL AND session_id IS NOT NULL;
"""

_CUSTOMER_DAILY = """
WITH activity AS (
    SELECT customer_id, order_date AS date, order_id, quantity, revenue, NULL AS session_id
    FROM customer_lines
    UNION ALL
    SELECT customer_id, session_date, NULL, NULL, NULL, session_id FROM customer_sessions
)
SELECT customer_id, date,
       COUNT(DISTINCT order_id) AS orders,
       COALESCE(SUM(revenue), 0) AS revenue,
       CAST(COALESCE(SUM(quantity), 0) AS BIGINT) AS items,
       COUNT(DISTINCT session_id) AS sessions
FROM activity
GROUP BY customer_id, date
ORDER BY customer_id, date
"""

_CUSTOMER_FEATURES = """
WITH last_day AS (
    SELECT GREATEST(
        (SELECT MAX(order_date) FROM fct_order_lines),
        (SELECT MAX(CAST(event_ts AS DATE)) FROM events)
    ) AS day
),
first_days AS (
    SELECT customer_id, MIN(day) AS first_day
    FROM (SELECT customer_id, order_date AS day FROM customer_lines
          UNION ALL SELECT customer_id, session_date FROM customer_sessions)
    GROUP BY customer_id
),
grid AS (
    SELECT f.customer_id, CAST(d.day AS DATE) AS day
    FROM first_days AS f, last_day AS l,
         LATERAL (SELECT UNNEST(generate_series(f.first_day, l.day, INTERVAL 1 DAY)) AS day) AS d
),
order_windows AS (
    SELECT g.customer_id, g.day,
           COUNT(DISTINCT CASE WHEN c.order_date > g.day - 7 THEN c.order_id END) AS order_count_7d,
           COUNT(DISTINCT c.order_id) AS order_count_30d,
           SUM(CASE WHEN c.order_date > g.day - 7 THEN c.revenue END) AS revenue_7d,
           SUM(c.revenue) AS revenue_30d,
           COUNT(DISTINCT c.product_id) AS distinct_products_30d
    FROM grid AS g JOIN customer_lines AS c
      ON c.customer_id = g.customer_id AND c.order_date BETWEEN g.day - 29 AND g.day
    GROUP BY g.customer_id, g.day
),
session_windows AS (
    SELECT g.customer_id, g.day, COUNT(DISTINCT s.session_id) AS sessions_7d
    FROM grid AS g JOIN customer_sessions AS s
      ON s.customer_id = g.customer_id AND s.session_date BETWEEN g.day - 6 AND g.day
    GROUP BY g.customer_id, g.day
),
last_orders AS (
    SELECT g.customer_id, g.day, MAX(c.order_date) AS last_order_date
    FROM grid AS g JOIN customer_lines AS c ON c.customer_id = g.customer_id AND c.order_date <= g.day
    GROUP BY g.customer_id, g.day
)
SELECT g.customer_id,
       CAST(g.day AS TIMESTAMP) + INTERVAL 1 DAY - INTERVAL 1 MICROSECOND AS event_timestamp,
       COALESCE(o.order_count_7d, 0) AS order_count_7d,
       COALESCE(o.order_count_30d, 0) AS order_count_30d,
       COALESCE(o.revenue_7d, 0) AS revenue_7d,
       COALESCE(o.revenue_30d, 0) AS revenue_30d,
       o.revenue_30d / NULLIF(o.order_count_30d, 0) AS avg_order_value_30d,
       g.day - l.last_order_date AS days_since_last_order,
       COALESCE(o.distinct_products_30d, 0) AS distinct_products_30d,
       COALESCE(s.sessions_7d, 0) AS sessions_7d
FROM grid AS g
LEFT JOIN order_windows AS o USING (customer_id, day)
LEFT JOIN session_windows AS s USING (customer_id, day)
LEFT JOIN last_orders AS l USING (customer_id, day)
ORDER BY g.customer_id, g.day
"""


def _query(
    sql: str, schema: pa.Schema, orders: pa.Table, order_items: pa.Table, events: pa.Table
) -> pa.Table:
    """Run ``sql`` over the silver tables in a UTC DuckDB session and cast the result to ``schema``."""
    with duckdb.connect() as connection:
        connection.execute("SET TimeZone = 'UTC'")
        connection.register("orders", orders)
        connection.register("order_items", order_items)
        connection.register("events", events)
        connection.execute(_ACTIVITY_VIEWS)
        result = connection.sql(sql).to_arrow_table()
    return result.select(schema.names).cast(schema)


def reference_customer_daily(orders: pa.Table, order_items: pa.Table, events: pa.Table) -> pa.Table:
    """``gold.customer_daily`` computed from the silver orders, order items and events."""
    return _query(_CUSTOMER_DAILY, _CUSTOMER_DAILY_SCHEMA, orders, order_items, events)


def reference_customer_features(orders: pa.Table, order_items: pa.Table, events: pa.Table) -> pa.Table:
    """``gold.customer_features`` computed from the silver tables, up to the last date in the data."""
    return _query(_CUSTOMER_FEATURES, _CUSTOMER_FEATURES_SCHEMA, orders, order_items, events)


def _values_equal(actual: Any, expected: Any, float_rel_tol: float) -> bool:
    """Whether two cell values match: nulls equal nulls, floats within the relative tolerance."""
    if actual is None or expected is None:
        return actual is None and expected is None
    if isinstance(actual, float) or isinstance(expected, float):
        return math.isclose(actual, expected, rel_tol=float_rel_tol, abs_tol=float_rel_tol)
    return actual == expected


def _keyed_rows(table: pa.Table, keys: Sequence[str]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Rows of ``table`` by their key values; fails on a duplicate key."""
    rows = table.sort_by([(key, "ascending") for key in keys]).to_pylist()
    keyed = {tuple(row[key] for key in keys): row for row in rows}
    assert len(keyed) == len(rows), f"duplicate keys {keys} in a table of {len(rows)} rows"
    return keyed


def assert_tables_equal(
    actual: pa.Table, expected: pa.Table, keys: list[str], float_rel_tol: float = 1e-9
) -> None:
    """Assert two tables hold the same rows, matched by ``keys``.

    Column names must be the same, in the same order. Values are compared after sorting by ``keys``:
    nulls equal nulls, floats match within ``float_rel_tol`` (relative, and absolute near zero).

    Raises:
        AssertionError: naming the first differing column and key with both values, or the keys
            present in only one table.
    """
    assert actual.column_names == expected.column_names, (
        f"columns differ: actual {actual.column_names}, expected {expected.column_names}"
    )
    actual_rows, expected_rows = _keyed_rows(actual, keys), _keyed_rows(expected, keys)
    only_actual = sorted(actual_rows.keys() - expected_rows.keys())
    only_expected = sorted(expected_rows.keys() - actual_rows.keys())
    assert not only_actual and not only_expected, (
        f"keys {keys} only in actual: {only_actual[:5]} ({len(only_actual)}), "
        f"only in expected: {only_expected[:5]} ({len(only_expected)})"
    )
    for key, expected_row in expected_rows.items():
        for column, expected_value in expected_row.items():
            actual_value = actual_rows[key][column]
            assert _values_equal(actual_value, expected_value, float_rel_tol), (
                f"column {column!r} at {dict(zip(keys, key))}: actual {actual_value!r}, "
                f"expected {expected_value!r}"
            )
