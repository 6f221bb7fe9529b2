"""Table functions of the retail pipeline: row-local silver cleaners and vectorised gold helpers.

Every function takes and returns a ``pyarrow.Table``; the work is done in polars. Cleaners keep invalid
rows and explain them in ``_rejected_reason`` (first failing rule wins); the reasons read
``<column>: <problem>``, where the problem is one of ``missing``, ``not an integer ('<raw>')``,
``not a number ('<raw>')``, ``not a timestamp ('<raw>')``, ``not a date ('<raw>')``,
``negative (<value>)``, ``not positive (<value>)`` or ``unknown value ('<raw>')``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial

import polars as pl
import pyarrow as pa

from engine.columns import INGESTED_AT, REJECTED_REASON, RESCUED_DATA, SOURCE_FILE
from engine.ids import parse_integer, tidy_text

UTC_MICROS = pa.timestamp("us", tz="UTC")
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%#z"
DATE_FORMAT = "%Y-%m-%d"
UNPARSEABLE = "record could not be parsed (its raw text is in _rescued_data)"
CDC_OPS = ("c", "u", "d")
ORDER_STATUSES = ("placed", "paid", "shipped", "delivered", "cancelled")
PAYLOAD_PATHS = {
    "page": "$.page",
    "product_id": "$.product_id",
    "query": "$.query",
    "device_os": "$.device.os",
    "device_browser": "$.device.browser",
}
_INT, _FLOAT, _TEXT, _DATE = pa.int64(), pa.float64(), pa.string(), pa.date32()


def _cleaned_schema(**fields: pa.DataType) -> pa.Schema:
    """Schema of a cleaner's output: ``fields`` in order, the bronze lineage, the raw text of a record that
    could not be parsed (null otherwise; the engine keeps it only on quarantined rows), then the reason."""
    lineage = {SOURCE_FILE: _TEXT, INGESTED_AT: UTC_MICROS, RESCUED_DATA: _TEXT, REJECTED_REASON: _TEXT}
    return pa.schema({**fields, **lineage})


_CUSTOMERS = _cleaned_schema(
    customer_id=_INT, email=_TEXT, first_name=_TEXT, last_name=_TEXT, country=_TEXT, segment=_TEXT,
    signup_date=_DATE, loyalty_tier=_TEXT, updated_at=UTC_MICROS, op=_TEXT,
)
_PRODUCTS = _cleaned_schema(product_id=_INT, name=_TEXT, category=_TEXT, price=_FLOAT, updated_at=UTC_MICROS)
_ORDERS = _cleaned_schema(
    order_id=_INT, customer_id=_INT, status=_TEXT, order_ts=UTC_MICROS, updated_at=UTC_MICROS
)
_ORDER_ITEMS = _cleaned_schema(
    order_id=_INT, line_number=_INT, product_id=_INT, quantity=_INT, unit_price=_FLOAT, updated_at=UTC_MICROS
)
_EVENTS = _cleaned_schema(
    event_id=_TEXT, customer_id=_INT, session_id=_TEXT, event_type=_TEXT, event_ts=UTC_MICROS,
    page=_TEXT, product_id=_INT, query=_TEXT, device_os=_TEXT, device_browser=_TEXT,
)

FCT_ORDER_LINES_SCHEMA = pa.schema(dict(
    order_id=_INT, line_number=_INT, customer_id=_INT, product_id=_INT, status=_TEXT, order_ts=UTC_MICROS,
    order_date=_DATE, quantity=_INT, unit_price=_FLOAT, revenue=_FLOAT,
))
ACTIVITY_SCHEMA = pa.schema(dict(
    customer_id=_INT, activity_date=_DATE, order_id=_INT, product_id=_INT, quantity=_INT, revenue=_FLOAT,
    session_id=_TEXT,
))
"""Common shape of order lines and sessions, the input of ``customer_daily`` and ``customer_features``."""
CUSTOMER_DAILY_SCHEMA = pa.schema(
    dict(customer_id=_INT, date=_DATE, orders=_INT, revenue=_FLOAT, items=_INT, sessions=_INT)
)
CUSTOMER_FEATURES_SCHEMA = pa.schema(dict(
    customer_id=_INT, event_timestamp=UTC_MICROS, order_count_7d=_INT, order_count_30d=_INT,
    revenue_7d=_FLOAT, revenue_30d=_FLOAT, avg_order_value_30d=_FLOAT, days_since_last_order=_INT,
    distinct_products_30d=_INT, sessions_7d=_INT,
))

_Check = Callable[[str, pl.Expr], pl.Expr]
"""A rule on a parsed column: given the column name and its typed value, the reason or null."""


def _to_arrow(frame: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """Select ``schema``'s columns from ``frame`` and cast them to exactly its Arrow types."""
    return frame.select(schema.names).to_arrow().cast(schema)


def _raw_frame(bronze: pa.Table, columns: Iterable[str]) -> pl.DataFrame:
    """Bronze rows with ``columns`` tidied (see ``engine.ids.tidy_text``), absent columns added as null."""
    frame = pl.DataFrame(bronze)
    absent = [name for name in [*columns, RESCUED_DATA] if name not in frame.columns]
    frame = frame.with_columns(pl.lit(None, pl.String).alias(name) for name in absent)
    return frame.with_columns(tidy_text(pl.col(name)).alias(name) for name in columns)


def _parse(raw: pl.Expr, dtype: pa.DataType) -> pl.Expr:
    """The value of the string ``raw`` as ``dtype``, null where it does not parse."""
    if pa.types.is_int64(dtype):
        return parse_integer(raw)
    if pa.types.is_float64(dtype):
        number = raw.cast(pl.Float64, strict=False)
        return pl.when(number.is_finite()).then(number)
    if pa.types.is_timestamp(dtype):
        return raw.str.to_datetime(TIMESTAMP_FORMAT, time_unit="us", time_zone="UTC", strict=False)
    if pa.types.is_date32(dtype):
        return raw.str.to_date(DATE_FORMAT, strict=False)
    return raw


_KIND_NAMES = {_INT: "an integer", _FLOAT: "a number", UTC_MICROS: "a timestamp", _DATE: "a date"}


def _unparsed(name: str, dtype: pa.DataType, value: pl.Expr) -> pl.Expr:
    """Reason ``<name>: not <kind> ('<raw>')`` where the raw value is present but did not parse."""
    raw = pl.col(name)
    return pl.when(raw.is_not_null() & value.is_null()).then(
        pl.format(f"{name}: not {_KIND_NAMES[dtype]} ('{{}}')", raw)
    )


def _missing(name: str) -> pl.Expr:
    """Reason ``<name>: missing`` where the required column is null."""
    return pl.when(pl.col(name).is_null()).then(pl.lit(f"{name}: missing"))


def _negative(name: str, value: pl.Expr) -> pl.Expr:
    """Reason ``<name>: negative (<value>)`` where the value is below zero."""
    return pl.when(value < 0).then(pl.format(f"{name}: negative ({{}})", value))


def _not_positive(name: str, value: pl.Expr) -> pl.Expr:
    """Reason ``<name>: not positive (<value>)`` where the value is zero or below."""
    return pl.when(value <= 0).then(pl.format(f"{name}: not positive ({{}})", value))


def _unknown_value(allowed: Sequence[str], name: str, value: pl.Expr) -> pl.Expr:
    """Reason ``<name>: unknown value ('<value>')`` where the value is not one of ``allowed``."""
    return pl.when(value.is_not_null() & ~value.is_in(allowed)).then(
        pl.format(f"{name}: unknown value ('{{}}')", value)
    )


def _source_columns(schema: pa.Schema) -> list[str]:
    """Names of ``schema``'s columns that come straight from a bronze field of the same name."""
    return [name for name in schema.names if name not in (SOURCE_FILE, INGESTED_AT, RESCUED_DATA, REJECTED_REASON)]


def _validated(
    raw: pl.DataFrame, schema: pa.Schema, required: Sequence[str], checks: Mapping[str, _Check]
) -> pa.Table:
    """Type the raw string columns of ``schema`` and set the reason of the first failing rule.

    Rules run column by column in schema order: missing (for ``required``), unparseable, then the
    column's entry in ``checks``.
    """
    columns = [schema.field(name) for name in _source_columns(schema)]
    typed = {field.name: _parse(pl.col(field.name), field.type) for field in columns}
    reasons = [pl.when(pl.col(RESCUED_DATA).is_not_null()).then(pl.lit(UNPARSEABLE))]
    for field in columns:
        if field.name in required:
            reasons.append(_missing(field.name))
        if field.type in _KIND_NAMES:
            reasons.append(_unparsed(field.name, field.type, typed[field.name]))
        if field.name in checks:
            reasons.append(checks[field.name](field.name, typed[field.name]))
    cleaned = raw.with_columns(
        pl.coalesce(reasons).alias(REJECTED_REASON),
        *(value.alias(name) for name, value in typed.items()),
    )
    return _to_arrow(cleaned, schema)


def clean_customers(bronze: pa.Table) -> pa.Table:
    """Type and tidy bronze customer CDC records.

    Args:
        bronze: Rows of ``bronze.customers``; ``loyalty_tier`` may be absent or all null.

    Returns:
        The ``silver.customers`` columns, then ``op``, lineage and ``_rejected_reason``. Email is
        lower case, country upper case. Only ``customer_id``, ``updated_at`` and ``op`` are required,
        so a delete (``op == 'd'``) carrying just those is valid.
    """
    raw = _raw_frame(bronze, _source_columns(_CUSTOMERS)).with_columns(
        pl.col("email").str.to_lowercase(), pl.col("country").str.to_uppercase()
    )
    return _validated(
        raw, _CUSTOMERS, ("customer_id", "updated_at", "op"), {"op": partial(_unknown_value, CDC_OPS)}
    )


def clean_products(bronze: pa.Table) -> pa.Table:
    """Type and tidy bronze product snapshot rows.

    Args:
        bronze: Rows of ``bronze.products``.

    Returns:
        The ``silver.products`` columns, lineage and ``_rejected_reason``; ``price`` is required and
        not negative.
    """
    raw = _raw_frame(bronze, _source_columns(_PRODUCTS))
    return _validated(raw, _PRODUCTS, ("product_id", "price", "updated_at"), {"price": _negative})


def clean_orders(bronze: pa.Table) -> pa.Table:
    """Type and tidy bronze order status changes.

    Args:
        bronze: Rows of ``bronze.orders``.

    Returns:
        The ``silver.orders`` columns, lineage and ``_rejected_reason``. ``customer_id`` may be null;
        ``status`` must be a known status and ``order_ts`` a timestamp.
    """
    raw = _raw_frame(bronze, _source_columns(_ORDERS))
    return _validated(
        raw,
        _ORDERS,
        ("order_id", "status", "order_ts", "updated_at"),
        {"status": partial(_unknown_value, ORDER_STATUSES)},
    )


def clean_order_items(bronze: pa.Table) -> pa.Table:
    """Type and tidy bronze order lines.

    Args:
        bronze: Rows of ``bronze.order_items``.

    Returns:
        The ``silver.order_items`` columns, lineage and ``_rejected_reason``. Every column is required;
        ``quantity`` must be positive and ``unit_price`` not negative.
    """
    raw = _raw_frame(bronze, _source_columns(_ORDER_ITEMS))
    required = _source_columns(_ORDER_ITEMS)
    return _validated(raw, _ORDER_ITEMS, required, {"quantity": _not_positive, "unit_price": _negative})


def clean_events(bronze: pa.Table) -> pa.Table:
    """Type bronze clickstream events and flatten their JSON ``payload``.

    Args:
        bronze: Rows of ``bronze.events``; ``payload`` is JSON text or null.

    Returns:
        The ``silver.events`` columns, lineage and ``_rejected_reason``. ``event_id`` and ``event_ts``
        are required; ``customer_id`` (null for anonymous visitors) and the payload's ``product_id``
        must be integers when present. Fields absent from the payload are null.
    """
    bronze_fields = [name for name in _source_columns(_EVENTS) if name not in PAYLOAD_PATHS]
    raw = _raw_frame(bronze, [*bronze_fields, "payload"])
    flattened = raw.with_columns(
        tidy_text(pl.col("payload").str.json_path_match(path)).alias(name)
        for name, path in PAYLOAD_PATHS.items()
    )
    return _validated(flattened, _EVENTS, ("event_id", "event_ts"), {})


def order_line_measures(joined: pa.Table) -> pa.Table:
    """Build ``gold.fct_order_lines`` rows.

    Args:
        joined: ``silver.order_items`` rows inner-joined on ``order_id`` with the ``customer_id``,
            ``status`` and ``order_ts`` of ``silver.orders``.

    Returns:
        The ``gold.fct_order_lines`` columns, with ``order_date`` the UTC date of ``order_ts`` and
        ``revenue = quantity * unit_price``.
    """
    lines = pl.DataFrame(joined).with_columns(
        pl.col("order_ts").dt.date().alias("order_date"),
        (pl.col("quantity") * pl.col("unit_price")).alias("revenue"),
    )
    return _to_arrow(lines, FCT_ORDER_LINES_SCHEMA)


def _as_activity(frame: pl.DataFrame, **columns: pl.Expr) -> pl.DataFrame:
    """``columns`` of ``frame`` named as in ``ACTIVITY_SCHEMA``, the activity columns not given null."""
    return frame.select(columns.get(name, pl.lit(None)).alias(name) for name in ACTIVITY_SCHEMA.names)


def order_activity(fct: pa.Table) -> pa.Table:
    """Map order lines to customer activity.

    Args:
        fct: ``gold.fct_order_lines`` rows.

    Returns:
        One ``ACTIVITY_SCHEMA`` row per line of an order with a customer, dated by ``order_date``.
    """
    lines = pl.DataFrame(fct).filter(pl.col("customer_id").is_not_null())
    activity = _as_activity(
        lines,
        customer_id=pl.col("customer_id"),
        activity_date=pl.col("order_date"),
        order_id=pl.col("order_id"),
        product_id=pl.col("product_id"),
        quantity=pl.col("quantity"),
        revenue=pl.col("revenue"),
    )
    return _to_arrow(activity, ACTIVITY_SCHEMA)


def session_activity(events: pa.Table) -> pa.Table:
    """Map clickstream events to customer activity.

    Args:
        events: ``silver.events`` rows.

    Returns:
        One ``ACTIVITY_SCHEMA`` row per distinct (customer, UTC date of ``event_ts``, session) of the
        events that have a customer and a session.
    """
    visits = pl.DataFrame(events).filter(pl.all_horizontal(pl.col("customer_id", "session_id").is_not_null()))
    activity = _as_activity(
        visits,
        customer_id=pl.col("customer_id"),
        activity_date=pl.col("event_ts").dt.date(),
        session_id=pl.col("session_id"),
    )
    return _to_arrow(activity.unique(), ACTIVITY_SCHEMA)


def _activity_frame(activity: pa.Table) -> pl.DataFrame:
    """``activity`` as a polars frame with exactly the ``ACTIVITY_SCHEMA`` columns and types."""
    return pl.DataFrame(activity.select(ACTIVITY_SCHEMA.names).cast(ACTIVITY_SCHEMA))


def _sum(name: str) -> pl.Expr:
    """The sum of column ``name``, added in value order: a float sum then does not depend on the order the rows
    arrive in from the Ray tasks, so a table recomputed from the same inputs is equal to the last bit."""
    return pl.col(name).sort().sum()


def _distinct_count(name: str) -> pl.Expr:
    """Number of distinct non-null values of column ``name``."""
    return pl.col(name).drop_nulls().n_unique()


def customer_daily(activity: pa.Table) -> pa.Table:
    """Aggregate activity to ``gold.customer_daily``.

    Args:
        activity: ``ACTIVITY_SCHEMA`` rows holding every activity row of each customer present.

    Returns:
        One row per (customer, date) with activity: distinct orders, revenue, items (sum of
        quantity) and distinct sessions, sorted by customer and date.
    """
    daily = (
        _activity_frame(activity)
        .group_by("customer_id", pl.col("activity_date").alias("date"))
        .agg(
            _distinct_count("order_id").alias("orders"),
            _sum("revenue"),
            _sum("quantity").alias("items"),
            _distinct_count("session_id").alias("sessions"),
        )
        .sort("customer_id", "date")
    )
    return _to_arrow(daily, CUSTOMER_DAILY_SCHEMA)


def _daily_grid(activity: pl.DataFrame, last_date: dt.date) -> pl.DataFrame:
    """One row per customer and ``day`` from the customer's first active day to ``last_date``."""
    first_days = activity.group_by("customer_id").agg(pl.col("activity_date").min())
    return first_days.select(
        "customer_id", pl.date_ranges("activity_date", pl.lit(last_date)).alias("day")
    ).explode("day")


def _window_totals(rows: pl.DataFrame, days: int, *aggregations: pl.Expr) -> pl.DataFrame:
    """Aggregate, per customer and ``day``, the rows whose ``activity_date`` is in ``day - days + 1 .. day``.

    Each row is repeated on every day whose window covers it, so distinct counts stay exact.
    """
    covered_days = pl.date_ranges("activity_date", pl.col("activity_date").dt.offset_by(f"{days - 1}d"))
    return (
        rows.with_columns(covered_days.alias("day"))
        .explode("day")
        .group_by("customer_id", "day")
        .agg(*aggregations)
    )


def _with_last_order_date(grid: pl.DataFrame, orders: pl.DataFrame) -> pl.DataFrame:
    """Add ``last_order_date``: the latest order date of the customer on or before ``day``."""
    order_dates = orders.select("customer_id", pl.col("activity_date").alias("last_order_date")).unique()
    return grid.sort("day").join_asof(
        order_dates.sort("last_order_date"),
        left_on="day",
        right_on="last_order_date",
        by="customer_id",
        coalesce=False,
        check_sortedness=False,
    )


def _end_of_day(day: pl.Expr) -> pl.Expr:
    """The last microsecond (UTC) of the date ``day``."""
    return day.cast(pl.Datetime("us", "UTC")) + pl.duration(days=1) - pl.duration(microseconds=1)


def customer_features(activity: pa.Table, last_date: dt.date) -> pa.Table:
    """Compute ``gold.customer_features``, one row per customer per day.

    Args:
        activity: ``ACTIVITY_SCHEMA`` rows holding every activity row of each customer present.
        last_date: Last day of the grid: the latest order or event date in the data.

    Returns:
        A dense daily grid per customer, from the first active day to ``last_date``, of the 7 and
        30 day window features of docs/retail.md, sorted by customer and ``event_timestamp``.
    """
    frame = _activity_frame(activity)
    orders = frame.filter(pl.col("order_id").is_not_null())
    sessions = frame.filter(pl.col("session_id").is_not_null()).select(
        "customer_id", "activity_date", "session_id"
    ).unique()
    windows = [
        _window_totals(
            orders,
            7,
            _distinct_count("order_id").alias("order_count_7d"),
            _sum("revenue").alias("revenue_7d"),
        ),
        _window_totals(
            orders,
            30,
            _distinct_count("order_id").alias("order_count_30d"),
            _sum("revenue").alias("revenue_30d"),
            _distinct_count("product_id").alias("distinct_products_30d"),
        ),
        _window_totals(sessions, 7, _distinct_count("session_id").alias("sessions_7d")),
    ]
    grid = _with_last_order_date(_daily_grid(frame, last_date), orders)
    for window in windows:
        grid = grid.join(window, on=["customer_id", "day"], how="left")
    features = grid.with_columns(
        pl.col("order_count_7d", "order_count_30d", "distinct_products_30d", "sessions_7d").fill_null(0),
        pl.col("revenue_7d", "revenue_30d").fill_null(0.0),
    ).with_columns(
        _end_of_day(pl.col("day")).alias("event_timestamp"),
        pl.when(pl.col("order_count_30d") > 0)
        .then(pl.col("revenue_30d") / pl.col("order_count_30d"))
        .alias("avg_order_value_30d"),
        (pl.col("day") - pl.col("last_order_date")).dt.total_days().alias("days_since_last_order"),
    )
    return _to_arrow(features.sort("customer_id", "day"), CUSTOMER_FEATURES_SCHEMA)
