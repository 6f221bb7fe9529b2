"""The retail data product: landing files -> bronze -> silver -> gold star schema and customer features."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Dataset

from engine import (
    SCD2,
    Append,
    FileSource,
    Freshness,
    Merge,
    Overwrite,
    Pipeline,
    RecomputeKeys,
    co_partition,
    map_partitions,
)
from engine.columns import INGESTED_AT, SOURCE_FILE
from engine.training.scoring import score_table
from pipelines.retail import contracts, transforms
from pipelines.retail.train import churn, latest_feature_rows

retail = Pipeline("retail", description="Online retail: customers, products, orders and clickstream.")

SUBJECT = "customer_id"
"""The data subject's id: `medallion erase --customer-id ID` removes a customer's rows through it."""
CUSTOMER_PII = {"email": "tokenize", "first_name": "mask", "last_name": "mask"}
"""Personal data of a customer, protected from silver on (`docs/governance.md`)."""

retail.ingest("bronze.customers", FileSource("customers", "jsonl", pattern="*.jsonl"), subject=SUBJECT,
              description="Customer CDC feed as received.")
retail.ingest("bronze.products", FileSource("products", "csv", pattern="*.csv"),
              description="Product catalogue snapshots as received.")
retail.ingest("bronze.orders", FileSource("orders", "jsonl", pattern="*.jsonl"), subject=SUBJECT,
              description="Order status changes as received.")
retail.ingest("bronze.order_items", FileSource("order_items", "csv", pattern="*.csv"),
              description="Order lines as received.")
retail.ingest("bronze.events", FileSource("events", "jsonl", pattern="*.jsonl"), subject=SUBJECT,
              description="Clickstream events as received.")

LINEAGE_COLUMNS = [SOURCE_FILE, INGESTED_AT]

SILVER_OWNER = "retail-data-engineering"
GOLD_OWNER = "retail-analytics"
NIGHTLY = Freshness(max_age="26h")
"""Gold is rebuilt by the nightly run (`cluster/kuberay/raycronjob-retail.yaml`): a day plus two hours' slack."""
CUSTOMER_ID = "the customer's id"
UPDATED_AT = "time of the source change this row reflects (UTC)"


@retail.table("silver.customers", kind=Merge(keys=["customer_id"], sequence_by="updated_at",
                                             delete_when="op = 'd'", except_columns=["op"]),
              quality=contracts.SILVER_CUSTOMERS, incremental=True, subject=SUBJECT, pii=CUSTOMER_PII,
              owner=SILVER_OWNER, tags=("customer", "pii", "cdc"),
              columns={"customer_id": CUSTOMER_ID, "email": "lower-cased email, tokenized (HMAC-SHA256)",
                       "first_name": "masked", "last_name": "masked", "country": "ISO country code, upper case",
                       "updated_at": UPDATED_AT})
def customers(bronze_customers: Dataset) -> Dataset:
    """Current customers, CDC deletes applied."""
    return bronze_customers.map_batches(transforms.clean_customers, batch_format="pyarrow")


@retail.table("silver.products", kind=Merge(keys=["product_id"], sequence_by="updated_at"),
              quality=contracts.SILVER_PRODUCTS, incremental=True,
              owner=SILVER_OWNER, tags=("product",),
              columns={"product_id": "the product's id", "price": "list price, not negative",
                       "updated_at": UPDATED_AT})
def products(bronze_products: Dataset) -> Dataset:
    """Current products."""
    return bronze_products.map_batches(transforms.clean_products, batch_format="pyarrow")


@retail.table("silver.orders", kind=Merge(keys=["order_id"], sequence_by="updated_at"),
              quality=contracts.SILVER_ORDERS, incremental=True, subject=SUBJECT,
              owner=SILVER_OWNER, tags=("order", "sales"),
              columns={"order_id": "the order's id", "customer_id": CUSTOMER_ID + " (may be null)",
                       "status": "latest known order status", "order_ts": "when the order was placed (UTC)",
                       "updated_at": UPDATED_AT})
def orders(bronze_orders: Dataset) -> Dataset:
    """Orders with their latest status."""
    return bronze_orders.map_batches(transforms.clean_orders, batch_format="pyarrow")


@retail.table("silver.order_items", kind=Merge(keys=["order_id", "line_number"], sequence_by="updated_at"),
              quality=contracts.SILVER_ORDER_ITEMS, incremental=True,
              owner=SILVER_OWNER, tags=("order", "sales"),
              columns={"order_id": "the order's id", "line_number": "position of the line in its order",
                       "quantity": "units ordered, positive", "unit_price": "price per unit, not negative"})
def order_items(bronze_order_items: Dataset) -> Dataset:
    """Order lines, latest version of each."""
    return bronze_order_items.map_batches(transforms.clean_order_items, batch_format="pyarrow")


@retail.table("silver.events", kind=Merge(keys=["event_id"], sequence_by="event_ts"),
              quality=contracts.SILVER_EVENTS, incremental=True, subject=SUBJECT,
              owner=SILVER_OWNER, tags=("clickstream",),
              columns={"event_id": "the event's id", "customer_id": CUSTOMER_ID + " (null for anonymous visitors)",
                       "session_id": "browsing session", "event_type": "page_view, search, add_to_cart or checkout",
                       "event_ts": "when the event happened (UTC)"})
def events(bronze_events: Dataset) -> Dataset:
    """Clickstream events, deduplicated, payload flattened."""
    return bronze_events.map_batches(transforms.clean_events, batch_format="pyarrow")


@retail.table("gold.dim_customer",
              kind=SCD2(keys=["customer_id"], sequence_by="updated_at",
                        tracked_columns=["country", "segment", "loyalty_tier"],
                        delete_when="op = 'd'", except_columns=["op"]),
              quality=contracts.GOLD_DIM_CUSTOMER, incremental=True, subject=SUBJECT, pii=CUSTOMER_PII,
              owner=GOLD_OWNER, tags=("customer", "pii", "dimension", "scd2"), freshness=NIGHTLY,
              columns={"customer_id": CUSTOMER_ID, "valid_from": "`updated_at` of the change that opened the version",
                       "valid_to": "`updated_at` of the change that closed it, null while current",
                       "is_current": "whether this is the customer's current version"})
def dim_customer(bronze_customers: Dataset) -> Dataset:
    """Customer history: a version per change of country, segment or loyalty tier."""
    return bronze_customers.map_batches(transforms.clean_customers, batch_format="pyarrow").drop_columns(
        LINEAGE_COLUMNS)


@retail.table("gold.dim_product", kind=Overwrite(),
              quality=contracts.GOLD_DIM_PRODUCT, owner=GOLD_OWNER, tags=("product", "dimension"),
              freshness=NIGHTLY, columns={"product_id": "the product's id", "price": "current list price"})
def dim_product(silver_products: Dataset) -> Dataset:
    """One row per current product."""
    return silver_products.drop_columns(LINEAGE_COLUMNS)


@retail.table("gold.fct_order_lines", kind=RecomputeKeys(keys=["order_id"]),
              quality=contracts.GOLD_FCT_ORDER_LINES, subject=SUBJECT,
              owner=GOLD_OWNER, tags=("order", "sales", "fact"),
              freshness=Freshness(max_age="26h", time_column="order_ts"),
              columns={"order_id": "the order's id", "line_number": "position of the line in its order",
                       "customer_id": CUSTOMER_ID, "order_ts": "when the order was placed (UTC)",
                       "order_date": "UTC date of order_ts", "revenue": "quantity times unit_price"})
def fct_order_lines(silver_order_items: Dataset, silver_orders: Dataset) -> Dataset:
    """One row per order line, with its order's customer, status and time, and its revenue."""
    lines = silver_order_items.select_columns(["order_id", "line_number", "product_id", "quantity", "unit_price"])
    headers = silver_orders.select_columns(["order_id", "customer_id", "status", "order_ts"])
    return co_partition({"lines": lines, "headers": headers}, ["order_id"], _order_lines)


@retail.table("gold.customer_daily", kind=RecomputeKeys(keys=["customer_id"], time_column="date"),
              quality=contracts.GOLD_CUSTOMER_DAILY, subject=SUBJECT,
              owner=GOLD_OWNER, tags=("customer", "sales", "daily"),
              freshness=Freshness(max_age="26h", partition_column="date", partition_max_age="54h"),
              columns={"customer_id": CUSTOMER_ID, "date": "the UTC day (time partition)",
                       "orders": "distinct orders that day", "revenue": "revenue of that day's order lines",
                       "items": "units ordered that day", "sessions": "distinct browsing sessions that day"})
def customer_daily(gold_fct_order_lines: Dataset, silver_events: Dataset) -> Dataset:
    """Orders, revenue, items and sessions per customer per day."""
    activity = _activity(gold_fct_order_lines, silver_events)
    return map_partitions(activity, ["customer_id"], transforms.customer_daily)


@retail.table("gold.customer_features", kind=Overwrite(),
              quality=contracts.GOLD_CUSTOMER_FEATURES, subject=SUBJECT,
              owner=GOLD_OWNER, tags=("customer", "features", "ml"), freshness=NIGHTLY,
              columns={"customer_id": CUSTOMER_ID, "event_timestamp": "as-of time of the feature row",
                       "order_count_30d": "distinct orders in the 30 days up to event_timestamp",
                       "revenue_30d": "revenue in those 30 days", "sessions_7d": "sessions in the last 7 days"})
def customer_features(gold_fct_order_lines: Dataset, silver_events: Dataset) -> Dataset:
    """Point-in-time customer features, one row per customer per day."""
    last_date = _last_date(gold_fct_order_lines, silver_events)
    activity = _activity(gold_fct_order_lines, silver_events)
    return map_partitions(activity, ["customer_id"], transforms.customer_features,
                          fn_kwargs={"last_date": last_date})


@retail.table("gold.churn_scores", kind=Append(), on_demand=True, subject=SUBJECT,
              owner=GOLD_OWNER, tags=("customer", "ml", "scores"), freshness=NIGHTLY,
              columns={"customer_id": CUSTOMER_ID,
                       "event_timestamp": "time of the customer's latest feature row, the one scored",
                       "score": "probability of no order in the next 30 days",
                       "model_name": "the registered model that scored", "model_version": "its version",
                       "scored_at": "when the scoring run ran (UTC); one value per run"})
def churn_scores(gold_customer_features: Dataset, gold_dim_customer: Dataset) -> Dataset:
    """Churn scores of every customer's latest features by the `champion` model, one set per scoring run
    (`medallion score retail`). On demand: it needs a registered model, which a plain run cannot assume.
    `gold.dim_customer` is read through the feature service, at the version this run pins."""
    return score_table(churn, latest_feature_rows(gold_customer_features))


def _order_lines(lines: pa.Table, headers: pa.Table) -> pa.Table:
    joined = pl.from_arrow(lines).join(pl.from_arrow(headers), on="order_id", how="inner")
    return transforms.order_line_measures(joined.to_arrow())


def _activity(fct_order_lines: Dataset, events: Dataset) -> Dataset:
    return fct_order_lines.map_batches(transforms.order_activity, batch_format="pyarrow").union(
        events.map_batches(transforms.session_activity, batch_format="pyarrow")
    )


def _last_date(fct_order_lines: Dataset, events: Dataset) -> dt.date | None:
    """The latest order date or event date in the data."""
    dates = (fct_order_lines.select_columns(["order_date"]).rename_columns({"order_date": "day"})
             .union(events.map_batches(_event_dates, batch_format="pyarrow"))
             .map_batches(_latest_day, batch_format="pyarrow", batch_size=None))
    latest = [row["day"] for row in dates.take_all() if row["day"] is not None]
    return max(latest) if latest else None


def _event_dates(events: pa.Table) -> pa.Table:
    return pa.table({"day": pc.cast(events.column("event_ts"), pa.date32())})


def _latest_day(days: pa.Table) -> pa.Table:
    return pa.table({"day": pa.array([pc.max(days.column("day")).as_py()], pa.date32())})
