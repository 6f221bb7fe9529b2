"""Partition functions of the TPC-H workload: Arrow tables in and out, the work done in polars.

Each function sees whole keys (the engine hash-partitions its inputs), so deduplication, group-bys and joins
are local. Every output is cast to a fixed schema, so empty partitions agree with full ones.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pyarrow as pa

from engine.aggregates import Aggregation
from engine.columns import INGESTED_AT, REJECTED_REASON, RESCUED_DATA, SOURCE_FILE

LINEAGE = [SOURCE_FILE, INGESTED_AT]
Q1_CUTOFF = dt.date(1998, 9, 2)

_INT, _FLOAT, _DATE = pl.Int64, pl.Float64, pl.Date
COLUMNS: dict[str, dict[str, type[pl.DataType]]] = {
    "lineitem": {
        "l_orderkey": _INT, "l_partkey": _INT, "l_suppkey": _INT, "l_linenumber": _INT, "l_quantity": _FLOAT,
        "l_extendedprice": _FLOAT, "l_discount": _FLOAT, "l_tax": _FLOAT, "l_returnflag": pl.String,
        "l_linestatus": pl.String, "l_shipdate": _DATE, "l_commitdate": _DATE, "l_receiptdate": _DATE,
        "l_shipinstruct": pl.String, "l_shipmode": pl.String, "l_comment": pl.String,
    },
    "orders": {
        "o_orderkey": _INT, "o_custkey": _INT, "o_orderstatus": pl.String, "o_totalprice": _FLOAT,
        "o_orderdate": _DATE, "o_orderpriority": pl.String, "o_clerk": pl.String, "o_shippriority": _INT,
        "o_comment": pl.String,
    },
    "customer": {
        "c_custkey": _INT, "c_name": pl.String, "c_address": pl.String, "c_nationkey": _INT, "c_phone": pl.String,
        "c_acctbal": _FLOAT, "c_mktsegment": pl.String, "c_comment": pl.String,
    },
    "nation": {"n_nationkey": _INT, "n_name": pl.String, "n_regionkey": _INT, "n_comment": pl.String},
}
"""Canonical silver types of every source column, in header order (`benchmarks/tpch/WORKLOAD.md` section 4)."""
BRONZE_TYPES: dict[str, dict[str, str]] = {
    table: {name: {_INT: "int64", _FLOAT: "float64", _DATE: "date32"}[dtype]
            for name, dtype in columns.items() if dtype is not pl.String}
    for table, columns in COLUMNS.items()
}
"""The non-string columns of each source, declared to bronze, which stores them typed."""
KEYS = {"lineitem": ["l_orderkey", "l_linenumber"], "orders": ["o_orderkey"], "customer": ["c_custkey"],
        "nation": ["n_nationkey"]}

Q1_SCHEMA = {
    "l_returnflag": pl.String, "l_linestatus": pl.String, "sum_qty": _FLOAT, "sum_base_price": _FLOAT,
    "sum_disc_price": _FLOAT, "sum_charge": _FLOAT, "avg_qty": _FLOAT, "avg_price": _FLOAT, "avg_disc": _FLOAT,
    "count_order": _INT,
}
Q1_AGGREGATIONS: dict[str, tuple[str, Aggregation]] = {
    "sum_qty": ("l_quantity", "sum"), "sum_base_price": ("l_extendedprice", "sum"),
    "sum_disc_price": ("disc_price", "sum"), "sum_charge": ("charge", "sum"), "avg_qty": ("l_quantity", "mean"),
    "avg_price": ("l_extendedprice", "mean"), "avg_disc": ("l_discount", "mean"),
    "count_order": ("l_quantity", "count_all"),
}
"""TPC-H Q1's aggregates of the lines `q1_terms` gives, in output order."""
REVENUE_SCHEMA = {
    "c_custkey": _INT, "n_name": pl.String, "order_month": _DATE, "revenue": _FLOAT, "order_count": _INT,
    "line_count": _INT,
}


def _typed(name: str, dtype: type[pl.DataType], stored: pl.DataType) -> pl.Expr:
    """Bronze column `name` as `dtype`: as stored when bronze typed it, else parsed from its text (an empty or
    missing value is null, anything unparseable fails)."""
    if stored == dtype:
        return pl.col(name)
    text = pl.col(name).cast(pl.String)
    if dtype is _DATE:
        return text.str.to_date("%Y-%m-%d").alias(name)
    return text.cast(dtype).alias(name)


class UnparsedValueError(ValueError):
    """A bronze row holds a value bronze could not type."""


def typed(batch: pa.Table, table: str) -> pa.Table:
    """Bronze rows of `table` in the canonical types, with their lineage columns (row by row, so it runs before
    the shuffle and the shuffle moves typed columns).

    Raises:
        UnparsedValueError: a row holds a value that does not parse as its column's type.
    """
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)
    if RESCUED_DATA in frame.columns and (unparsed := frame.filter(pl.col(RESCUED_DATA).is_not_null())).height:
        row = unparsed.row(0, named=True)
        raise UnparsedValueError(f"bronze.{table}: {unparsed.height} row(s) hold values that do not parse, the first "
                                 f"in {row[SOURCE_FILE]}: {row[RESCUED_DATA]}")
    return frame.select([_typed(c, t, frame.schema[c]) for c, t in COLUMNS[table].items()]
                        + [pl.col(SOURCE_FILE), pl.col(INGESTED_AT)]).to_arrow()


def deduplicated(batch: pa.Table, table: str) -> pa.Table:
    """Typed rows of whole keys of `table`, one row per key; lineitem rows explain rejects.

    A lineitem row's `_rejected_reason` is the first failing rule of `negative_quantity`,
    `discount_out_of_range`, `null_shipdate`, else null; the engine routes such rows to quarantine.
    """
    frame = pl.from_arrow(batch).unique(subset=KEYS[table], keep="any", maintain_order=False)
    if table == "lineitem":
        frame = frame.with_columns(
            pl.when(pl.col("l_quantity") < 0).then(pl.lit("negative_quantity"))
            .when((pl.col("l_discount") < 0) | (pl.col("l_discount") > 0.10)).then(pl.lit("discount_out_of_range"))
            .when(pl.col("l_shipdate").is_null()).then(pl.lit("null_shipdate"))
            .otherwise(pl.lit(None, pl.String)).alias(REJECTED_REASON)
        )
    return frame.to_arrow()


def q1_terms(lines: pa.Table) -> pa.Table:
    """The lines TPC-H Q1 counts (shipped by 1998-09-02), with each line's discounted price and charge."""
    price = pl.col("l_extendedprice")
    discounted = price * (1 - pl.col("l_discount"))
    return (pl.from_arrow(lines).filter(pl.col("l_shipdate") <= Q1_CUTOFF)
            .with_columns(disc_price=discounted, charge=discounted * (1 + pl.col("l_tax"))).to_arrow())


def order_lines(lines: pa.Table, orders: pa.Table) -> pa.Table:
    """Lines joined to their orders (partitions of `orderkey`): customer, month, order key and line revenue."""
    return (pl.from_arrow(lines).join(pl.from_arrow(orders), on="orderkey", how="inner")
            .select(c_custkey=pl.col("o_custkey"), order_month=pl.col("o_orderdate").dt.month_start(),
                    orderkey=pl.col("orderkey"),
                    revenue=pl.col("l_extendedprice") * (1 - pl.col("l_discount")))
            .to_arrow())


def customer_monthly_revenue(lines: pa.Table, customers: pa.Table, nations: pa.Table) -> pa.Table:
    """Revenue, distinct orders and lines per customer, nation name and month (partitions of `c_custkey`)."""
    frame = (pl.from_arrow(lines)
             .join(pl.from_arrow(customers), on="c_custkey", how="inner")
             .join(pl.from_arrow(nations), left_on="c_nationkey", right_on="n_nationkey", how="inner")
             .group_by("c_custkey", "n_name", "order_month")
             .agg(revenue=pl.col("revenue").sum(), order_count=pl.col("orderkey").n_unique(), line_count=pl.len()))
    return frame.cast(REVENUE_SCHEMA).select(list(REVENUE_SCHEMA)).to_arrow()  # type: ignore[arg-type]
