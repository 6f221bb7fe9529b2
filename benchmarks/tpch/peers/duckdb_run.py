"""The DuckDB peer of the TPC-H medallion workload: SQL per layer, Delta tables written with `deltalake`.

Usage: python -m benchmarks.tpch.peers.duckdb_run --data DATA/sf0.01 --out OUT

Reads `DATA/raw/<table>/*.csv`, deletes and rewrites OUT with the layout of `WORKLOAD.md` section 2. Each layer
reads the Delta tables the previous one wrote (through `deltalake`'s Arrow dataset, scanned by DuckDB).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

TABLES = ("lineitem", "orders", "customer", "nation")
KEYS = {"lineitem": "l_orderkey, l_linenumber", "orders": "o_orderkey", "customer": "c_custkey",
        "nation": "n_nationkey"}
CASTS = {
    "lineitem": """l_orderkey::BIGINT AS l_orderkey, l_partkey::BIGINT AS l_partkey, l_suppkey::BIGINT AS l_suppkey,
        l_linenumber::BIGINT AS l_linenumber, l_quantity::DOUBLE AS l_quantity,
        l_extendedprice::DOUBLE AS l_extendedprice, l_discount::DOUBLE AS l_discount, l_tax::DOUBLE AS l_tax,
        l_returnflag::VARCHAR AS l_returnflag, l_linestatus::VARCHAR AS l_linestatus,
        l_shipdate::DATE AS l_shipdate, l_commitdate::DATE AS l_commitdate, l_receiptdate::DATE AS l_receiptdate,
        l_shipinstruct::VARCHAR AS l_shipinstruct, l_shipmode::VARCHAR AS l_shipmode,
        l_comment::VARCHAR AS l_comment""",
    "orders": """o_orderkey::BIGINT AS o_orderkey, o_custkey::BIGINT AS o_custkey,
        o_orderstatus::VARCHAR AS o_orderstatus, o_totalprice::DOUBLE AS o_totalprice,
        o_orderdate::DATE AS o_orderdate, o_orderpriority::VARCHAR AS o_orderpriority,
        o_clerk::VARCHAR AS o_clerk, o_shippriority::BIGINT AS o_shippriority, o_comment::VARCHAR AS o_comment""",
    "customer": """c_custkey::BIGINT AS c_custkey, c_name::VARCHAR AS c_name, c_address::VARCHAR AS c_address,
        c_nationkey::BIGINT AS c_nationkey, c_phone::VARCHAR AS c_phone, c_acctbal::DOUBLE AS c_acctbal,
        c_mktsegment::VARCHAR AS c_mktsegment, c_comment::VARCHAR AS c_comment""",
    "nation": """n_nationkey::BIGINT AS n_nationkey, n_name::VARCHAR AS n_name, n_regionkey::BIGINT AS n_regionkey,
        n_comment::VARCHAR AS n_comment""",
}
REASON = """CASE WHEN l_quantity < 0 THEN 'negative_quantity'
                 WHEN l_discount < 0 OR l_discount > 0.10 THEN 'discount_out_of_range'
                 WHEN l_shipdate IS NULL THEN 'null_shipdate' END"""
Q1 = """
SELECT l_returnflag, l_linestatus,
       sum(l_quantity) AS sum_qty, sum(l_extendedprice) AS sum_base_price,
       sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
       sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
       avg(l_quantity) AS avg_qty, avg(l_extendedprice) AS avg_price,
       avg(l_discount) AS avg_disc, count(*)::BIGINT AS count_order
FROM silver_lineitem WHERE l_shipdate <= DATE '1998-09-02'
GROUP BY l_returnflag, l_linestatus
"""
CUSTOMER_MONTHLY_REVENUE = """
SELECT c.c_custkey, n.n_name, date_trunc('month', o.o_orderdate)::DATE AS order_month,
       sum(l.l_extendedprice * (1 - l.l_discount)) AS revenue,
       count(DISTINCT o.o_orderkey)::BIGINT AS order_count, count(*)::BIGINT AS line_count
FROM silver_lineitem l JOIN silver_orders o ON l.l_orderkey = o.o_orderkey
     JOIN silver_customer c ON o.o_custkey = c.c_custkey
     JOIN silver_nation n ON c.c_nationkey = n.n_nationkey
GROUP BY c.c_custkey, n.n_name, order_month
"""


def _write(con: duckdb.DuckDBPyConnection, sql: str, path: Path) -> None:
    """Run `sql` and write its result as a Delta table at `path` (overwrite)."""
    table: pa.Table = con.sql(sql).to_arrow_table()
    write_deltalake(str(path), table, mode="overwrite")


def _register(con: duckdb.DuckDBPyConnection, name: str, path: Path) -> None:
    """Expose the Delta table at `path` to SQL as `name`."""
    con.register(name, DeltaTable(str(path)).to_pyarrow_dataset())


def run(data: Path, out: Path) -> None:
    """The whole workload: bronze, silver (with lineitem quarantine), gold."""
    ingested_at = dt.datetime.now(dt.UTC)
    shutil.rmtree(out, ignore_errors=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for table in TABLES:
        files = str(data / "raw" / table / "*.csv")
        _write(con, f"""SELECT * EXCLUDE (filename), parse_filename(filename) AS _source_file,
                              $ts::TIMESTAMPTZ AS _ingested_at
                       FROM read_csv('{files}', header = true, filename = true)""".replace(
            "$ts", f"'{ingested_at.isoformat()}'"), out / "bronze" / table)
    for table in TABLES:
        _register(con, f"bronze_{table}", out / "bronze" / table)
    for table in ("orders", "customer", "nation"):
        _write(con, f"""SELECT {CASTS[table]}, _source_file, _ingested_at FROM bronze_{table}
                       QUALIFY row_number() OVER (PARTITION BY {KEYS[table]}) = 1""", out / "silver" / table)
    con.execute(f"""CREATE TEMP TABLE checked AS
                    SELECT *, {REASON} AS _reason FROM (
                        SELECT {CASTS['lineitem']}, _source_file, _ingested_at FROM bronze_lineitem
                        QUALIFY row_number() OVER (PARTITION BY {KEYS['lineitem']}) = 1)""")
    _write(con, "SELECT * EXCLUDE (_reason) FROM checked WHERE _reason IS NULL", out / "silver" / "lineitem")
    _write(con, "SELECT * FROM checked WHERE _reason IS NOT NULL", out / "silver" / "lineitem_quarantine")
    for table in TABLES:
        _register(con, f"silver_{table}", out / "silver" / table)
    _write(con, Q1, out / "gold" / "q1_pricing_summary")
    _write(con, CUSTOMER_MONTHLY_REVENUE, out / "gold" / "customer_monthly_revenue")
    con.close()


def main() -> None:
    """Command line: one run of the workload."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a prepared scale-factor folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    run(args.data, args.out)


if __name__ == "__main__":
    main()
