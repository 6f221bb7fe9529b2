"""The retail churn model: will a customer place no order in the 30 days after a given day?

Examples are customer-days of `gold.customer_features` (every `step_days`-th day), labelled from
`gold.fct_order_lines`; both are read through the Delta log at versions the engine pins and records. Days
whose 30-day label window reaches past the last order date in the data are left out (their label is not
known yet). Features come from the Feast feature service `customer_training`. Batch scores are the
on-demand pipeline table `gold.churn_scores` (`pipelines/retail/pipeline.py`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl
import pyarrow as pa
import ray.data
from ray.data import Dataset

from engine import co_partition, map_partitions
from engine.training.dataset import TableReader
from engine.training.job import ENTITY_TIME, TrainingJob

HORIZON = dt.timedelta(days=30)
FEATURES_TABLE = "gold.customer_features"
ORDERS_TABLE = "gold.fct_order_lines"


def churn_examples(reader: TableReader, params: Mapping[str, Any]) -> Dataset:
    """`customer_id, event_timestamp, churned` for every `step_days`-th customer-day with a known label,
    labelled per customer in Ray tasks."""
    days = reader.read(FEATURES_TABLE, ["customer_id", ENTITY_TIME])
    orders = reader.read(ORDERS_TABLE, ["customer_id", "order_ts", "order_date"])
    last_day = orders.max("order_date")
    if last_day is None:
        return ray.data.from_arrow(pa.table({"customer_id": pa.array([], pa.int64()),
                                             ENTITY_TIME: pa.array([], pa.timestamp("us", "UTC")),
                                             "churned": pa.array([], pa.int64())}))
    known_until = dt.datetime.combine(last_day, dt.time.max, dt.UTC) - HORIZON
    return co_partition({"days": days, "orders": orders}, ["customer_id"], _labelled,
                        fn_kwargs={"known_until": known_until, "step": int(params.get("step_days", 7))})


def _labelled(days: pa.Table, orders: pa.Table, known_until: dt.datetime, step: int) -> pa.Table:
    """The examples of some customers: their known days every `step` days, churned when no order follows within
    `HORIZON`."""
    day_rows, order_rows = pl.from_arrow(days), pl.from_arrow(orders)
    assert isinstance(day_rows, pl.DataFrame) and isinstance(order_rows, pl.DataFrame)
    examples = (day_rows.filter((pl.col(ENTITY_TIME) <= known_until)
                                & ((pl.col(ENTITY_TIME).dt.epoch("d") % step) == 0))
                .unique().sort(["customer_id", ENTITY_TIME]))
    next_orders = (order_rows.filter(pl.col("customer_id").is_not_null())
                   .select("customer_id", pl.col("order_ts").alias("next_order")).unique()
                   .sort(["customer_id", "next_order"]))
    labelled = examples.join_asof(next_orders, left_on=ENTITY_TIME, right_on="next_order", by="customer_id",
                                  strategy="forward", allow_exact_matches=False, check_sortedness=False)
    churned = (pl.col("next_order").is_null() | (pl.col("next_order") > pl.col(ENTITY_TIME) + HORIZON)).cast(pl.Int64)
    return labelled.select("customer_id", ENTITY_TIME, churned.alias("churned")).to_arrow()


def latest_feature_rows(features: Dataset) -> Dataset:
    """`customer_id, event_timestamp` of each customer's latest row of `gold.customer_features`: whom batch
    scoring scores, and as of when."""
    return map_partitions(features.select_columns(["customer_id", ENTITY_TIME]), ["customer_id"], _latest)


def _latest(rows: pa.Table) -> pa.Table:
    frame = pl.from_arrow(rows)
    assert isinstance(frame, pl.DataFrame)
    return frame.group_by("customer_id").agg(pl.col(ENTITY_TIME).max()).to_arrow()


def churn_model(params: Mapping[str, Any], numeric: Sequence[str], categorical: Sequence[str]) -> Any:
    """One-hot country and segment, then gradient-boosted trees (missing numbers handled natively)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    encode = ColumnTransformer([("categories", OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                                 list(categorical))], remainder="passthrough")
    trees = HistGradientBoostingClassifier(learning_rate=params.get("learning_rate", 0.1),
                                           max_iter=params.get("max_iter", 100),
                                           max_depth=params.get("max_depth", 3),
                                           min_samples_leaf=params.get("min_samples_leaf", 20),
                                           early_stopping=False, random_state=params.get("seed", 0))
    return Pipeline([("encode", encode), ("trees", trees)])


churn = TrainingJob(
    name="churn",
    model_name="retail_churn",
    feature_service="customer_training",
    entity_key="customer_id",
    label="churned",
    examples=churn_examples,
    model=churn_model,
    params={"step_days": 7, "learning_rate": 0.1, "max_iter": 100, "max_depth": 3, "min_samples_leaf": 20,
            "seed": 0},
    search_space={"learning_rate": [0.03, 0.1, 0.3], "max_depth": [2, 3, 5], "max_iter": [50, 100, 200]},
    request_values={"cart_value": 0.0},
    holdout_fraction=0.25,
    gap=HORIZON,
    resources={"num_cpus": 1, "memory": 1024 * 2**20},
    scores_table="gold.churn_scores",
    trusted_types=["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"],
)

jobs = {"churn": churn}
