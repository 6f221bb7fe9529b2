"""The TPC-H medallion benchmark workload (`benchmarks/tpch/WORKLOAD.md`) as an ordinary pipeline.

Landing: `<root>/landing/<table>/<table>.<i>.csv` for lineitem, orders, customer and nation (what
`benchmarks/tpch/prepare.py` writes as `raw/`). Table names map onto the workload's output layout as
`bronze.<t>` -> `bronze/<t>`, `silver.<t>` -> `silver/<t>`, the quarantine of `silver.lineitem`
(`<root>/quarantine/silver/lineitem`, reason in `_rejected_reason`) -> `silver/lineitem_quarantine` (`_reason`),
`gold.q1_pricing_summary` and `gold.customer_monthly_revenue` -> the same names under `gold/`.
"""

from __future__ import annotations

from functools import partial

import pyarrow as pa
import ray
from ray.data import Dataset

from engine import FileSource, Overwrite, Pipeline, aggregate, co_partition, map_partitions
from engine.quality.checks import Quality
from pipelines.tpch import transforms

tpch = Pipeline("tpch", description="TPC-H medallion benchmark: lineitem, orders, customer, nation; Q1 and "
                                    "customer monthly revenue.")

for _table in transforms.COLUMNS:
    tpch.ingest(f"bronze.{_table}", FileSource(_table, "csv", pattern=f"{_table}.*.csv",
                                               types=transforms.BRONZE_TYPES[_table]),
                description=f"TPC-H {_table} files as received, numbers and dates typed.")


def _silver(bronze: Dataset, table: str) -> Dataset:
    """Cast row by row (in the read tasks, before the shuffle), then deduplicate on the key and (lineitem) flag
    invalid rows, one call per hash partition of the key."""
    rows = bronze.map_batches(partial(transforms.typed, table=table), batch_format="pyarrow", batch_size=None)
    return map_partitions(rows, transforms.KEYS[table], partial(transforms.deduplicated, table=table))


def _unique(table: str) -> Quality:
    """Fail the table when a key occurs twice."""
    return Quality(unique=tuple(transforms.KEYS[table]))


@tpch.table("silver.lineitem", kind=Overwrite(), quality=_unique("lineitem"))
def lineitem(bronze_lineitem: Dataset) -> Dataset:
    """Typed, deduplicated lines; negative quantities, out-of-range discounts and missing ship dates quarantined."""
    return _silver(bronze_lineitem, "lineitem")


@tpch.table("silver.orders", kind=Overwrite(), quality=_unique("orders"))
def orders(bronze_orders: Dataset) -> Dataset:
    """Typed orders, one per key."""
    return _silver(bronze_orders, "orders")


@tpch.table("silver.customer", kind=Overwrite(), quality=_unique("customer"))
def customer(bronze_customer: Dataset) -> Dataset:
    """Typed customers, one per key."""
    return _silver(bronze_customer, "customer")


@tpch.table("silver.nation", kind=Overwrite(), quality=_unique("nation"))
def nation(bronze_nation: Dataset) -> Dataset:
    """Typed nations, one per key."""
    return _silver(bronze_nation, "nation")


@tpch.table("gold.q1_pricing_summary", kind=Overwrite(),
            quality=Quality(unique=("l_returnflag", "l_linestatus")))
def q1_pricing_summary(silver_lineitem: Dataset) -> Dataset:
    """TPC-H Q1: pricing summary per return flag and line status of lines shipped by 1998-09-02, aggregated in
    two phases (each read task's lines, then the few partial rows per group)."""
    lines = silver_lineitem.select_columns(["l_returnflag", "l_linestatus", "l_quantity", "l_extendedprice",
                                            "l_discount", "l_tax", "l_shipdate"])
    terms = lines.map_batches(transforms.q1_terms, batch_format="pyarrow", batch_size=None)
    return aggregate(terms, ["l_returnflag", "l_linestatus"], transforms.Q1_AGGREGATIONS)


@tpch.table("gold.customer_monthly_revenue", kind=Overwrite(),
            quality=Quality(unique=("c_custkey", "n_name", "order_month")))
def customer_monthly_revenue(silver_lineitem: Dataset, silver_orders: Dataset, silver_customer: Dataset,
                             silver_nation: Dataset) -> Dataset:
    """Revenue, distinct orders and lines per customer and order month, with the customer's nation name."""
    lines = silver_lineitem.select_columns(["l_orderkey", "l_extendedprice", "l_discount"]).rename_columns(
        {"l_orderkey": "orderkey"})
    headers = silver_orders.select_columns(["o_orderkey", "o_custkey", "o_orderdate"]).rename_columns(
        {"o_orderkey": "orderkey"})
    joined = co_partition({"lines": lines, "orders": headers}, ["orderkey"], transforms.order_lines)
    customers = silver_customer.select_columns(["c_custkey", "c_nationkey"])
    return co_partition({"lines": joined, "customers": customers}, ["c_custkey"],
                        transforms.customer_monthly_revenue, fn_kwargs={"nations": _nations(silver_nation)})


def _nations(silver_nation: Dataset) -> pa.Table:
    """The 25 nations as one small Arrow table, handed to every partition."""
    blocks = ray.get(silver_nation.select_columns(["n_nationkey", "n_name"]).to_arrow_refs())
    return pa.concat_tables(blocks)
