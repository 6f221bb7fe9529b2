"""The PySpark peer of the TPC-H medallion workload: DataFrame API in local mode, Parquet directories per table.

Usage: benchmarks/spark-env/.venv/bin/python benchmarks/tpch/peers/spark_run.py --data DATA/sf0.01 --out OUT

Runs Spark with `local[2]`, reads the CSV files of `DATA/raw/<table>/` with a header and no schema inference (all
strings), deletes and rewrites OUT with the layout of `WORKLOAD.md` section 2, each table a Parquet directory (the Delta
jars cannot be fetched offline). Each layer reads the Parquet the previous one wrote.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

TABLES = ("lineitem", "orders", "customer", "nation")
KEYS = {"lineitem": ["l_orderkey", "l_linenumber"], "orders": ["o_orderkey"], "customer": ["c_custkey"],
        "nation": ["n_nationkey"]}
TYPES = {
    "lineitem": {"l_orderkey": "bigint", "l_partkey": "bigint", "l_suppkey": "bigint", "l_linenumber": "bigint",
                 "l_quantity": "double", "l_extendedprice": "double", "l_discount": "double", "l_tax": "double",
                 "l_returnflag": "string", "l_linestatus": "string", "l_shipdate": "date", "l_commitdate": "date",
                 "l_receiptdate": "date", "l_shipinstruct": "string", "l_shipmode": "string",
                 "l_comment": "string"},
    "orders": {"o_orderkey": "bigint", "o_custkey": "bigint", "o_orderstatus": "string", "o_totalprice": "double",
               "o_orderdate": "date", "o_orderpriority": "string", "o_clerk": "string", "o_shippriority": "bigint",
               "o_comment": "string"},
    "customer": {"c_custkey": "bigint", "c_name": "string", "c_address": "string", "c_nationkey": "bigint",
                 "c_phone": "string", "c_acctbal": "double", "c_mktsegment": "string", "c_comment": "string"},
    "nation": {"n_nationkey": "bigint", "n_name": "string", "n_regionkey": "bigint", "n_comment": "string"},
}
LINEAGE = ["_source_file", "_ingested_at"]


def session() -> SparkSession:
    """A local Spark on two cores: few shuffle partitions, UTC, microsecond Parquet timestamps."""
    return (SparkSession.builder.master("local[2]").appName("tpch-medallion")
            .config("spark.driver.memory", "2g")
            .config("spark.sql.shuffle.partitions", "8")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .getOrCreate())


def silver(bronze: DataFrame, table: str) -> DataFrame:
    """Canonical types, one row per key."""
    typed = bronze.select(*(F.col(c).cast(t).alias(c) for c, t in TYPES[table].items()), *LINEAGE)
    return typed.dropDuplicates(KEYS[table])


def reason() -> Column:
    """Why a lineitem row is quarantined (null when it is valid)."""
    return (F.when(F.col("l_quantity") < 0, "negative_quantity")
            .when((F.col("l_discount") < 0) | (F.col("l_discount") > 0.10), "discount_out_of_range")
            .when(F.col("l_shipdate").isNull(), "null_shipdate"))


def q1(lineitem: DataFrame) -> DataFrame:
    """TPC-H Q1 on silver lineitem."""
    price, discount = F.col("l_extendedprice"), F.col("l_discount")
    return (lineitem.where(F.col("l_shipdate") <= F.lit(dt.date(1998, 9, 2)))
            .groupBy("l_returnflag", "l_linestatus")
            .agg(F.sum("l_quantity").alias("sum_qty"), F.sum(price).alias("sum_base_price"),
                 F.sum(price * (1 - discount)).alias("sum_disc_price"),
                 F.sum(price * (1 - discount) * (1 + F.col("l_tax"))).alias("sum_charge"),
                 F.avg("l_quantity").alias("avg_qty"), F.avg(price).alias("avg_price"),
                 F.avg(discount).alias("avg_disc"), F.count(F.lit(1)).alias("count_order")))


def customer_monthly_revenue(lineitem: DataFrame, orders: DataFrame, customer: DataFrame,
                             nation: DataFrame) -> DataFrame:
    """Revenue, orders and lines per customer, nation name and order month."""
    return (lineitem.join(orders, lineitem.l_orderkey == orders.o_orderkey)
            .join(customer, orders.o_custkey == customer.c_custkey)
            .join(nation, customer.c_nationkey == nation.n_nationkey)
            .groupBy("c_custkey", "n_name", F.trunc("o_orderdate", "month").alias("order_month"))
            .agg(F.sum(F.col("l_extendedprice") * (1 - F.col("l_discount"))).alias("revenue"),
                 F.countDistinct("o_orderkey").alias("order_count"), F.count(F.lit(1)).alias("line_count")))


def run(data: Path, out: Path) -> None:
    """The whole workload: bronze, silver (with lineitem quarantine), gold."""
    ingested_at = dt.datetime.now(dt.UTC)
    shutil.rmtree(out, ignore_errors=True)
    spark = session()

    def write(frame: DataFrame, name: str) -> None:
        frame.write.mode("overwrite").parquet(str(out / name))

    def read(name: str) -> DataFrame:
        return spark.read.parquet(str(out / name))

    for table in TABLES:
        write(spark.read.csv(str(data / "raw" / table), header=True)
              .withColumn("_source_file", F.regexp_extract(F.input_file_name(), r"([^/]+)$", 1))
              .withColumn("_ingested_at", F.lit(ingested_at)), f"bronze/{table}")
    for table in ("orders", "customer", "nation"):
        write(silver(read(f"bronze/{table}"), table), f"silver/{table}")
    checked = silver(read("bronze/lineitem"), "lineitem").withColumn("_reason", reason()).cache()
    write(checked.where(F.col("_reason").isNull()).drop("_reason"), "silver/lineitem")
    write(checked.where(F.col("_reason").isNotNull()), "silver/lineitem_quarantine")
    checked.unpersist()
    lineitem, orders, customer, nation = (read(f"silver/{table}") for table in TABLES)
    write(q1(lineitem), "gold/q1_pricing_summary")
    write(customer_monthly_revenue(lineitem, orders, customer, nation), "gold/customer_monthly_revenue")
    spark.stop()


def main() -> None:
    """Command line: one run of the workload."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a prepared scale-factor folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    run(args.data, args.out)


if __name__ == "__main__":
    main()
