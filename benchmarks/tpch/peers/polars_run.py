"""The Polars peer of the TPC-H medallion workload: lazy queries per layer, Delta tables sunk with `sink_delta`.

Usage: python -m benchmarks.tpch.peers.polars_run --data DATA/sf0.01 --out OUT

Reads `DATA/raw/<table>/*.csv` with `scan_csv` (types inferred), deletes and rewrites OUT with the layout of
`WORKLOAD.md` section 2. Each layer reads the Delta tables the previous one wrote (`scan_delta`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
from pathlib import Path

import polars as pl

TABLES = ("lineitem", "orders", "customer", "nation")
KEYS = {"lineitem": ["l_orderkey", "l_linenumber"], "orders": ["o_orderkey"], "customer": ["c_custkey"],
        "nation": ["n_nationkey"]}
INT, FLOAT, DATE, STR = pl.Int64, pl.Float64, pl.Date, pl.String
TYPES: dict[str, dict[str, type[pl.DataType]]] = {
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
REASON = (pl.when(pl.col("l_quantity") < 0).then(pl.lit("negative_quantity"))
          .when((pl.col("l_discount") < 0) | (pl.col("l_discount") > 0.10)).then(pl.lit("discount_out_of_range"))
          .when(pl.col("l_shipdate").is_null()).then(pl.lit("null_shipdate")))


def _cast(name: str, dtype: type[pl.DataType]) -> pl.Expr:
    """Column `name` as its canonical type; dates are parsed from their ISO text."""
    if dtype is DATE:
        return pl.col(name).cast(STR).str.to_date("%Y-%m-%d")
    return pl.col(name).cast(dtype)


def silver(bronze: pl.LazyFrame, table: str) -> pl.LazyFrame:
    """Canonical types, one row per key."""
    typed = bronze.select(*(_cast(c, t) for c, t in TYPES[table].items()), *LINEAGE)
    return typed.unique(subset=KEYS[table], keep="any")


def q1(lineitem: pl.LazyFrame) -> pl.LazyFrame:
    """TPC-H Q1 on silver lineitem."""
    price, discount, tax = pl.col("l_extendedprice"), pl.col("l_discount"), pl.col("l_tax")
    return (lineitem.filter(pl.col("l_shipdate") <= dt.date(1998, 9, 2))
            .group_by("l_returnflag", "l_linestatus")
            .agg(pl.col("l_quantity").sum().alias("sum_qty"), price.sum().alias("sum_base_price"),
                 (price * (1 - discount)).sum().alias("sum_disc_price"),
                 (price * (1 - discount) * (1 + tax)).sum().alias("sum_charge"),
                 pl.col("l_quantity").mean().alias("avg_qty"), price.mean().alias("avg_price"),
                 discount.mean().alias("avg_disc"), pl.len().cast(pl.Int64).alias("count_order")))


def customer_monthly_revenue(lineitem: pl.LazyFrame, orders: pl.LazyFrame, customer: pl.LazyFrame,
                             nation: pl.LazyFrame) -> pl.LazyFrame:
    """Revenue, orders and lines per customer, nation name and order month."""
    return (lineitem.select("l_orderkey", "l_extendedprice", "l_discount")
            .join(orders.select("o_orderkey", "o_custkey", "o_orderdate"), left_on="l_orderkey",
                  right_on="o_orderkey")
            .join(customer.select("c_custkey", "c_nationkey"), left_on="o_custkey", right_on="c_custkey")
            .join(nation.select("n_nationkey", "n_name"), left_on="c_nationkey", right_on="n_nationkey")
            .group_by(pl.col("o_custkey").alias("c_custkey"), "n_name",
                      pl.col("o_orderdate").dt.truncate("1mo").alias("order_month"))
            .agg((pl.col("l_extendedprice") * (1 - pl.col("l_discount"))).sum().alias("revenue"),
                 pl.col("l_orderkey").n_unique().cast(pl.Int64).alias("order_count"),
                 pl.len().cast(pl.Int64).alias("line_count")))


def run(data: Path, out: Path) -> None:
    """The whole workload: bronze, silver (with lineitem quarantine), gold."""
    ingested_at = dt.datetime.now(dt.UTC)
    shutil.rmtree(out, ignore_errors=True)
    for table in TABLES:
        (pl.scan_csv(data / "raw" / table / "*.csv", include_file_paths="_source_file")
         .with_columns(pl.col("_source_file").str.extract(r"([^/]+)$"),
                       pl.lit(ingested_at).dt.cast_time_unit("us").alias("_ingested_at"))
         .sink_delta(out / "bronze" / table, mode="overwrite"))
    for table in ("orders", "customer", "nation"):
        silver(pl.scan_delta(str(out / "bronze" / table)), table).sink_delta(out / "silver" / table,
                                                                               mode="overwrite")
    checked = silver(pl.scan_delta(str(out / "bronze" / "lineitem")), "lineitem").with_columns(
        REASON.alias("_reason")).collect()
    checked.filter(pl.col("_reason").is_null()).drop("_reason").write_delta(out / "silver" / "lineitem",
                                                                            mode="overwrite")
    checked.filter(pl.col("_reason").is_not_null()).write_delta(out / "silver" / "lineitem_quarantine",
                                                                mode="overwrite")
    del checked
    lineitem, orders, customer, nation = (pl.scan_delta(str(out / "silver" / t)) for t in TABLES)
    q1(lineitem).sink_delta(out / "gold" / "q1_pricing_summary", mode="overwrite")
    customer_monthly_revenue(lineitem, orders, customer, nation).sink_delta(
        out / "gold" / "customer_monthly_revenue", mode="overwrite")


def main() -> None:
    """Command line: one run of the workload."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a prepared scale-factor folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    run(args.data, args.out)


if __name__ == "__main__":
    main()
