"""Feature definitions of the retail data product over its gold tables.

Every source is a `DeltaSource`: it names a table under the storage root and is read through the Delta
log, so retrievals see exactly the table's current (or pinned) version.
"""

from datetime import timedelta

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String

from engine.features import DeltaSource

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64,
                  description="A shop customer.")
product = Entity(name="product", join_keys=["product_id"], value_type=ValueType.INT64,
                 description="A catalogue product.")

customer_features = FeatureView(
    name="customer_features",
    entities=[customer],
    ttl=timedelta(days=2),
    schema=[
        Field(name="customer_id", dtype=Int64),
        Field(name="order_count_7d", dtype=Int64),
        Field(name="order_count_30d", dtype=Int64),
        Field(name="revenue_7d", dtype=Float64),
        Field(name="revenue_30d", dtype=Float64),
        Field(name="avg_order_value_30d", dtype=Float64),
        Field(name="days_since_last_order", dtype=Int64),
        Field(name="distinct_products_30d", dtype=Int64),
        Field(name="sessions_7d", dtype=Int64),
    ],
    source=DeltaSource(table="gold.customer_features", timestamp_field="event_timestamp"),
    description="Daily order and session windows per customer; a value holds for two days.",
)

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(0),
    schema=[
        Field(name="customer_id", dtype=Int64),
        Field(name="country", dtype=String),
        Field(name="segment", dtype=String),
    ],
    source=DeltaSource(table="gold.dim_customer", timestamp_field="valid_from"),
    description="The customer's country and segment as of each time: the SCD2 version valid then.",
)

product_features = FeatureView(
    name="product_features",
    entities=[product],
    ttl=timedelta(0),
    schema=[
        Field(name="product_id", dtype=Int64),
        Field(name="category", dtype=String),
        Field(name="price", dtype=Float64),
    ],
    source=DeltaSource(table="gold.dim_product", timestamp_field="updated_at"),
    description="The current product record, known from its last update on.",
)

cart = RequestSource(name="cart", schema=[Field(name="cart_value", dtype=Float64)],
                     description="The value of the customer's cart, sent with the request.")


@on_demand_feature_view(
    sources=[customer_features, cart],
    schema=[Field(name="cart_to_avg_order_value", dtype=Float64), Field(name="revenue_share_7d", dtype=Float64)],
    description="Computed at request time: the cart against the customer's usual order value.",
)
def cart_context(inputs: pd.DataFrame) -> pd.DataFrame:
    """The cart value over the 30-day average order value, and the 7-day share of 30-day revenue."""
    average = inputs["avg_order_value_30d"].astype("float64")
    revenue_30d = inputs["revenue_30d"].astype("float64")
    return pd.DataFrame({
        "cart_to_avg_order_value": inputs["cart_value"].astype("float64") / average.where(average > 0),
        "revenue_share_7d": (inputs["revenue_7d"].astype("float64") / revenue_30d.where(revenue_30d > 0)).fillna(0.0),
    })


customer_training = FeatureService(
    name="customer_training",
    features=[customer_features, customer_profile[["country", "segment"]], cart_context],
    description="The features of the customer model's training set and online scoring.",
)
