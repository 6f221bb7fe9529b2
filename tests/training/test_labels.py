"""The churn label, read off its documented rule: "no order in the 30 days after the feature timestamp". The
window is (t, t + 30 days]: an order at t itself is not after t (the features at t already count it), and an
order exactly 30 days later is still within the 30 days after t."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from engine.features.offline import collect
from engine.layout import Layout
from engine.training.dataset import TableReader
from pipelines.retail.train import churn_examples

T = dt.datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
ORDERS = {  # customer -> its orders' times
    1: [T + 29 * DAY],
    2: [T + 30 * DAY],
    3: [T + 31 * DAY],
    4: [],
    5: [T],
}
CHURNED = {1: 0, 2: 0, 3: 1, 4: 1, 5: 1}


def test_churn_is_no_order_in_the_30_days_after_the_feature_timestamp(ray_local: None, tmp_path: Path) -> None:
    layout = Layout.at(str(tmp_path))
    stamp = pa.timestamp("us", "UTC")
    write_deltalake(layout.table("gold.customer_features"), pa.table({
        "customer_id": pa.array(list(ORDERS), pa.int64()), "event_timestamp": pa.array([T] * len(ORDERS), stamp)}))
    placed = [(customer, at) for customer, times in ORDERS.items() for at in times]
    write_deltalake(layout.table("gold.fct_order_lines"), pa.table({
        "customer_id": pa.array([c for c, _ in placed], pa.int64()),
        "order_ts": pa.array([at for _, at in placed], stamp),
        "order_date": pa.array([at.date() for _, at in placed], pa.date32())}))

    examples = collect(churn_examples(TableReader(str(tmp_path)), {"step_days": 1})).sort_by("customer_id")

    assert examples.column("event_timestamp").to_pylist() == [T] * len(ORDERS)
    assert dict(zip(examples.column("customer_id").to_pylist(), examples.column("churned").to_pylist(),
                    strict=True)) == CHURNED
