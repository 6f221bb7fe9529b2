"""The Daft peer of the TPC-H medallion workload: DataFrame API per layer, Delta tables with `write_deltalake`.

Usage: python -m benchmarks.tpch.peers.daft_run --data DATA/sf0.01 --out OUT [--runner native|ray]

Reads `DATA/raw/<table>/*.csv` with `read_csv` (types inferred), deletes and rewrites OUT with the layout of
`WORKLOAD.md` section 2. Each layer reads the Delta tables the previous one wrote (`read_deltalake`).
`--runner ray` runs Daft on a private local Ray instance (two CPUs) started inside the process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
from pathlib import Path

import daft
from daft import DataFrame, DataType, Expression, col
from daft.functions import regexp_extract, when

TABLES = ("lineitem", "orders", "customer", "nation")
KEYS = {"lineitem": ["l_orderkey", "l_linenumber"], "orders": ["o_orderkey"], "customer": ["c_custkey"],
        "nation": ["n_nationkey"]}
INT, FLOAT, DATE, STR = DataType.int64(), DataType.float64(), DataType.date(), DataType.string()
TYPES = {
    "lineitem": {"l_orderkey": INT, "l_partkey": INT, "l_suppkey": INT, "l_linenumber": INT, "l_quantity": FLOAT,
                 "l_extendedprice": FLOAT, "l_discount": FLOAT, "l_tax": FLOAT, "l_returnflag": STR,
                 "l_linestatus": STR, "l_shipdate": DATE, "l_commitdate": DATE, "l_receiptdate": DATE,
                 "l_shipinstruct": STR, "l_shipmode": STR, "l_comment": STR},
    "orders": {"o_orderkey": INT, "o_custkey": INT, "o_orderstatus": STR, "o_totalprice": FLOAT,
               "o_orderdate": DATE, "o_orderpriority": STR, "o_clerk": STR, "o_shippriority": INT,
               "o_comment": STR},
    "customer": {"c_custkey": INT, "c_name": STR, "c_address": STR, "c_nationkey": INT, "c_phone": STR,
                 "c_acctbal": FLOAT, "c_mktsegment": STR, "c_comment": STR},
    "nation": {"n_nationkey": INT, "n_name": STR, "n_regionkey": INT, "n_comment": STR},
}
LINEAGE = ["_source_file", "_ingested_at"]


def silver(bronze: DataFrame, table: str) -> DataFrame:
    """Canonical types, one row per key."""
    typed = bronze.select(*(col(c).cast(t) for c, t in TYPES[table].items()), *LINEAGE)
    return typed.drop_duplicates(*KEYS[table])


def reason() -> Expression:
    """Why a lineitem row is quarantined (null when it is valid)."""
    return (when(col("l_quantity") < 0, "negative_quantity")
            .when((col("l_discount") < 0) | (col("l_discount") > 0.10), "discount_out_of_range")
            .when(col("l_shipdate").is_null(), "null_shipdate"))


def q1(lineitem: DataFrame) -> DataFrame:
    """TPC-H Q1 on silver lineitem."""
    price, discount = col("l_extendedprice"), col("l_discount")
    return (lineitem.where(col("l_shipdate") <= dt.date(1998, 9, 2))
            .groupby("l_returnflag", "l_linestatus")
            .agg(col("l_quantity").sum().alias("sum_qty"), price.sum().alias("sum_base_price"),
                 (price * (1 - discount)).sum().alias("sum_disc_price"),
                 (price * (1 - discount) * (1 + col("l_tax"))).sum().alias("sum_charge"),
                 col("l_quantity").mean().alias("avg_qty"), price.mean().alias("avg_price"),
                 discount.mean().alias("avg_disc"), col("l_orderkey").count().cast(INT).alias("count_order")))


def customer_monthly_revenue(lineitem: DataFrame, orders: DataFrame, customer: DataFrame,
                             nation: DataFrame) -> DataFrame:
    """Revenue, orders and lines per customer, nation name and order month."""
    return (lineitem.select("l_orderkey", "l_extendedprice", "l_discount")
            .join(orders.select("o_orderkey", "o_custkey", "o_orderdate"), left_on="l_orderkey",
                  right_on="o_orderkey")
            .join(customer.select("c_custkey", "c_nationkey"), left_on="o_custkey", right_on="c_custkey")
            .join(nation.select("n_nationkey", "n_name"), left_on="c_nationkey", right_on="n_nationkey")
            .with_columns({"c_custkey": col("o_custkey"),
                           "order_month": col("o_orderdate").strftime("%Y-%m-01").to_date("%Y-%m-%d"),
                           "revenue": col("l_extendedprice") * (1 - col("l_discount"))})
            .groupby("c_custkey", "n_name", "order_month")
            .agg(col("revenue").sum(), col("l_orderkey").count_distinct().cast(INT).alias("order_count"),
                 col("l_orderkey").count().cast(INT).alias("line_count")))


def run(data: Path, out: Path) -> None:
    """The whole workload: bronze, silver (with lineitem quarantine), gold."""
    ingested_at = dt.datetime.now(dt.UTC)
    shutil.rmtree(out, ignore_errors=True)

    def write(frame: DataFrame, name: str) -> None:
        frame.write_deltalake(str(out / name), mode="overwrite")

    def read(name: str) -> DataFrame:
        return daft.read_deltalake(str(out / name))

    for table in TABLES:
        write(daft.read_csv(str(data / "raw" / table / "*.csv"), file_path_column="_source_file")
              .with_columns({"_source_file": regexp_extract(col("_source_file"), r"[^/]+$"),
                             "_ingested_at": daft.lit(ingested_at).cast(DataType.timestamp("us", "UTC"))}),
              f"bronze/{table}")
    for table in ("orders", "customer", "nation"):
        write(silver(read(f"bronze/{table}"), table), f"silver/{table}")
    checked = silver(read("bronze/lineitem"), "lineitem").with_column("_reason", reason()).collect()
    write(checked.where(col("_reason").is_null()).exclude("_reason"), "silver/lineitem")
    write(checked.where(col("_reason").not_null()), "silver/lineitem_quarantine")
    del checked
    lineitem, orders, customer, nation = (read(f"silver/{table}") for table in TABLES)
    write(q1(lineitem), "gold/q1_pricing_summary")
    write(customer_monthly_revenue(lineitem, orders, customer, nation), "gold/customer_monthly_revenue")


def use_ray() -> None:
    """Run Daft on a private local Ray instance with two CPUs."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    daft.set_runner_ray()


def main() -> None:
    """Command line: one run of the workload."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a prepared scale-factor folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runner", choices=["native", "ray"], default="native")
    args = parser.parse_args()
    if args.runner == "ray":
        use_ray()
    run(args.data, args.out)


if __name__ == "__main__":
    main()
