"""Data contracts of the retail tables: pandera models plus expectations, references and unique keys.

`docs/quality.md` explains each check and what it protects.
"""

from __future__ import annotations

import datetime as dt

import pandera.polars as pa
import polars as pl

from engine.quality.checks import Expect, Quality, References
from pipelines.retail.transforms import ORDER_STATUSES

EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
EVENT_TYPES = ("page_view", "search", "add_to_cart", "checkout")
UTC_US = pl.Datetime("us", "UTC")
WARN = {"action": "warn"}


def _not_in_future(column: str) -> Expect:
    return Expect(f"{column}_not_in_future", f"{column} <= now() + INTERVAL 1 DAY")


def _not_too_old(column: str) -> Expect:
    return Expect(f"{column}_after_2000", f"{column} >= '{EARLIEST.isoformat()}'::timestamptz")


class CustomerContract(pa.DataFrameModel):
    """`silver.customers` (before the merge: CDC deletes carry only the key and `updated_at`)."""

    customer_id: int = pa.Field(ge=1)
    email: str = pa.Field(nullable=True, str_matches=r"^[a-z0-9]{1,8}:[0-9a-f]{32}$", metadata=WARN)
    """Tokenized before the checks run (`docs/governance.md`): the check is that no plaintext slipped through."""
    country: str = pa.Field(nullable=True, str_length={"min_value": 2, "max_value": 2}, metadata=WARN)
    updated_at: UTC_US = pa.Field()  # type: ignore[valid-type]

    class Config:
        strict = False


class ProductContract(pa.DataFrameModel):
    """`silver.products`."""

    product_id: int = pa.Field(ge=1)
    name: str = pa.Field(nullable=True)
    price: float = pa.Field(ge=0, le=100_000)
    updated_at: UTC_US = pa.Field()  # type: ignore[valid-type]

    class Config:
        strict = False


class OrderContract(pa.DataFrameModel):
    """`silver.orders`."""

    order_id: int = pa.Field(ge=1)
    customer_id: int = pa.Field(nullable=True, ge=1)
    status: str = pa.Field(isin=list(ORDER_STATUSES))
    order_ts: UTC_US = pa.Field()  # type: ignore[valid-type]
    updated_at: UTC_US = pa.Field()  # type: ignore[valid-type]

    class Config:
        strict = False


class OrderItemContract(pa.DataFrameModel):
    """`silver.order_items`."""

    order_id: int = pa.Field(ge=1)
    line_number: int = pa.Field(ge=1)
    product_id: int = pa.Field(ge=1)
    quantity: int = pa.Field(gt=0, le=1_000)
    unit_price: float = pa.Field(ge=0)

    class Config:
        strict = False


class EventContract(pa.DataFrameModel):
    """`silver.events`."""

    event_id: str = pa.Field()
    customer_id: int = pa.Field(nullable=True, ge=1)
    session_id: str = pa.Field(nullable=True)
    event_type: str = pa.Field(isin=list(EVENT_TYPES), metadata=WARN)
    event_ts: UTC_US = pa.Field()  # type: ignore[valid-type]

    class Config:
        strict = False


class OrderLineContract(pa.DataFrameModel):
    """`gold.fct_order_lines`."""

    order_id: int = pa.Field()
    line_number: int = pa.Field()
    product_id: int = pa.Field()
    quantity: int = pa.Field(gt=0)
    revenue: float = pa.Field(ge=0)
    order_date: dt.date = pa.Field()

    class Config:
        strict = False


class CustomerDailyContract(pa.DataFrameModel):
    """`gold.customer_daily`."""

    customer_id: int = pa.Field()
    date: dt.date = pa.Field()
    orders: int = pa.Field(ge=0)
    revenue: float = pa.Field(ge=0)
    items: int = pa.Field(ge=0)
    sessions: int = pa.Field(ge=0)

    class Config:
        strict = False


class CustomerFeaturesContract(pa.DataFrameModel):
    """`gold.customer_features`: the feature store's source, so any violation fails the table."""

    customer_id: int = pa.Field()
    event_timestamp: UTC_US = pa.Field()  # type: ignore[valid-type]
    order_count_7d: int = pa.Field(ge=0)
    order_count_30d: int = pa.Field(ge=0)
    revenue_7d: float = pa.Field(ge=0)
    revenue_30d: float = pa.Field(ge=0)
    avg_order_value_30d: float = pa.Field(nullable=True, ge=0)
    days_since_last_order: int = pa.Field(nullable=True, ge=0)
    distinct_products_30d: int = pa.Field(ge=0)
    sessions_7d: int = pa.Field(ge=0)

    class Config:
        strict = False


SILVER_CUSTOMERS = Quality(contract=CustomerContract, conserves_rows=True,
                           expectations=(_not_in_future("updated_at"), _not_too_old("updated_at")))
SILVER_PRODUCTS = Quality(contract=ProductContract, conserves_rows=True,
                          expectations=(_not_in_future("updated_at"),))
SILVER_ORDERS = Quality(
    contract=OrderContract,
    conserves_rows=True,
    expectations=(
        _not_in_future("order_ts"),
        _not_too_old("order_ts"),
        Expect("updated_not_before_order", "updated_at >= order_ts"),
    ),
)
SILVER_ORDER_ITEMS = Quality(contract=OrderItemContract, conserves_rows=True,
                             references=(References("order_id", "silver.orders"),))
SILVER_EVENTS = Quality(contract=EventContract, conserves_rows=True,
                        expectations=(_not_in_future("event_ts"), _not_too_old("event_ts")))
GOLD_DIM_CUSTOMER = SILVER_CUSTOMERS
"""The customer history is built from the same feed, so its changes pass the same checks."""
GOLD_DIM_PRODUCT = Quality(unique=("product_id",))
GOLD_FCT_ORDER_LINES = Quality(
    contract=OrderLineContract,
    unique=("order_id", "line_number"),
    references=(
        References("product_id", "gold.dim_product"),
        References("customer_id", "gold.dim_customer", action="warn"),
    ),
)
GOLD_CUSTOMER_DAILY = Quality(contract=CustomerDailyContract, unique=("customer_id", "date"),
                              default_action="fail")
GOLD_CUSTOMER_FEATURES = Quality(contract=CustomerFeaturesContract, unique=("customer_id", "event_timestamp"),
                                 default_action="fail",
                                 expectations=(Expect("avg_matches_totals",
                                                      "order_count_30d = 0 OR abs(avg_order_value_30d * "
                                                      "order_count_30d - revenue_30d) < 0.000001 * "
                                                      "(1 + revenue_30d)", action="fail"),))
