"""Correctness check of one engine's TPC-H workload output (`WORKLOAD.md` section 6).

Usage: python -m benchmarks.tpch.check --data DATA/sf0.01 --out OUT [--layout engine] --reference DUCKDB_OUT

Compares bronze and silver against the manifest, the quarantine against the manifest's corruptions, and both
gold tables against the DuckDB peer's output. `--layout workload` reads `WORKLOAD.md`'s layout (the peers);
`--layout engine` reads a medallion root, whose quarantine lives in `quarantine/silver/lineitem` with the
reason in `_rejected_reason`. A table is read as Delta when it has a `_delta_log`, else as a Parquet directory
(the Spark peer's output).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.types as pt
from deltalake import DeltaTable

from benchmarks.tpch.prepare import TABLES, load_manifest
from engine.errors import EngineError
from pipelines.tpch.transforms import COLUMNS, KEYS, Q1_SCHEMA, REVENUE_SCHEMA

RELATIVE = 1e-6
Layout = Literal["workload", "engine"]
GOLD_KEYS = {"q1_pricing_summary": ["l_returnflag", "l_linestatus"],
             "customer_monthly_revenue": ["c_custkey", "n_name", "order_month"]}
EXACT = {"count_order", "order_count", "line_count"}
_FAMILIES = {pl.Int64: pt.is_integer, pl.Float64: pt.is_floating, pl.Date: pt.is_date32, pl.String: None}


class CheckFailed(EngineError):
    """An engine's output does not match the manifest or the reference."""


@dataclass(frozen=True)
class Output:
    """Where one engine wrote its tables.

    Attributes:
        root: the `--out` folder (workload layout) or the medallion root (engine layout).
        layout: `workload` or `engine`.
    """

    root: Path
    layout: Layout = "workload"

    @property
    def reason_column(self) -> str:
        """Name of the quarantine reason column."""
        return "_rejected_reason" if self.layout == "engine" else "_reason"

    def read(self, name: str) -> pl.DataFrame:
        """Table `name` of the workload layout (`silver/lineitem_quarantine`, `gold/...`), reasons as `_reason`."""
        return pl.DataFrame(self.arrow(name))

    def arrow(self, name: str) -> pa.Table:
        """Table `name` as Arrow, string views as strings, reasons as `_reason`."""
        path = self.root / name
        if self.layout == "engine" and name == "silver/lineitem_quarantine":
            path = self.root / "quarantine" / "silver" / "lineitem"
        table = DeltaTable(str(path)).to_pyarrow_table() if (path / "_delta_log").is_dir() else pq.read_table(path)
        table = table.cast(pa.schema([pa.field(f.name, pa.string()) if pt.is_string_view(f.type) else f
                                      for f in table.schema]))
        if self.reason_column in table.column_names and self.reason_column != "_reason":
            table = table.rename_columns(["_reason" if c == self.reason_column else c for c in table.column_names])
        return table


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=RELATIVE, abs_tol=0.0) or a == b


def check_bronze(output: Output, manifest: dict[str, Any]) -> list[str]:
    """Row counts, lineage columns and source file names of every bronze table."""
    problems = []
    for table in TABLES:
        expected = manifest["tables"][table]
        frame = output.read(f"bronze/{table}")
        if frame.height != expected["raw_rows"]:
            problems.append(f"bronze/{table}: {frame.height} rows, expected {expected['raw_rows']}")
        missing = {"_source_file", "_ingested_at"} - set(frame.columns)
        if missing:
            problems.append(f"bronze/{table}: missing {sorted(missing)}")
            continue
        files = frame.get_column("_source_file").unique()
        if files.len() != expected["files"] or files.str.contains("/").any():
            problems.append(f"bronze/{table}: _source_file values {sorted(files.to_list())[:3]}..., "
                            f"expected {expected['files']} file names without a directory")
    return problems


def _reason(frame: pl.DataFrame) -> pl.Series:
    return frame.select(
        pl.when(pl.col("l_quantity") < 0).then(pl.lit("negative_quantity"))
        .when((pl.col("l_discount") < 0) | (pl.col("l_discount") > 0.10)).then(pl.lit("discount_out_of_range"))
        .when(pl.col("l_shipdate").is_null()).then(pl.lit("null_shipdate")).alias("reason")
    ).to_series()


def check_silver(output: Output, manifest: dict[str, Any]) -> list[str]:
    """Row counts, unique keys, canonical types, no invalid lineitem row, quarantine counts per reason."""
    problems = []
    for table in TABLES:
        arrow = output.arrow(f"silver/{table}")
        frame = pl.DataFrame(arrow)
        expected = manifest["tables"][table]["silver_rows"]
        if frame.height != expected:
            problems.append(f"silver/{table}: {frame.height} rows, expected {expected}")
        if frame.select(KEYS[table]).is_duplicated().any():
            problems.append(f"silver/{table}: duplicate keys {KEYS[table]}")
        for column, dtype in COLUMNS[table].items():
            family = _FAMILIES[dtype]
            if column not in arrow.column_names:
                problems.append(f"silver/{table}: missing column {column}")
            elif not (family(arrow.schema.field(column).type) if family else
                      pt.is_string(arrow.schema.field(column).type) or pt.is_large_string(
                          arrow.schema.field(column).type)):
                problems.append(f"silver/{table}.{column}: type {arrow.schema.field(column).type}, expected {dtype}")
    silver = output.read("silver/lineitem")
    invalid = _reason(silver).is_not_null().sum()
    if invalid:
        problems.append(f"silver/lineitem: {invalid} invalid rows")
    quarantine = output.read("silver/lineitem_quarantine")
    expected_reasons = manifest["tables"]["lineitem"]["corrupted_by_reason"]
    found = dict(quarantine.group_by("_reason").len().iter_rows())
    if found != {k: v for k, v in expected_reasons.items() if v}:
        problems.append(f"silver/lineitem_quarantine: reasons {found}, expected {expected_reasons}")
    return problems


def compare_gold(output: Output, reference: Output, name: str) -> list[str]:
    """Same keys, every measure within `RELATIVE` (counts exact), column totals within `RELATIVE`."""
    keys = GOLD_KEYS[name]
    schema = Q1_SCHEMA if name == "q1_pricing_summary" else REVENUE_SCHEMA
    measures = [c for c in schema if c not in keys]
    mine, theirs = output.read(f"gold/{name}"), reference.read(f"gold/{name}")
    problems = []
    if mine.height != theirs.height:
        problems.append(f"gold/{name}: {mine.height} rows, reference {theirs.height}")
    unmatched = (mine.join(theirs, on=keys, how="anti", nulls_equal=True).height
                 + theirs.join(mine, on=keys, how="anti", nulls_equal=True).height)
    if unmatched:
        problems.append(f"gold/{name}: {unmatched} keys not in both outputs")
    joined = mine.select(keys + measures).join(theirs.select(keys + measures), on=keys, how="inner",
                                               nulls_equal=True, suffix="_ref")
    for measure in measures:
        a, b = pl.col(measure), pl.col(f"{measure}_ref")
        differs = (a != b) if measure in EXACT else ((a - b).abs() > RELATIVE * pl.max_horizontal(a.abs(), b.abs()))
        bad = joined.select(differs.fill_null(True).sum()).item()
        if bad:
            problems.append(f"gold/{name}.{measure}: {bad} groups differ from the reference")
        if not _close(mine.get_column(measure).sum(), theirs.get_column(measure).sum()):
            problems.append(f"gold/{name}.{measure}: total differs from the reference")
    return problems


def check(data: Path, output: Output, reference: Output) -> list[str]:
    """Every problem of `output` against the manifest under `data` and the `reference` (DuckDB) output."""
    manifest = load_manifest(data)
    return (check_bronze(output, manifest) + check_silver(output, manifest)
            + [p for name in GOLD_KEYS for p in compare_gold(output, reference, name)])


def assert_correct(data: Path, output: Output, reference: Output) -> None:
    """Raise `CheckFailed` listing every problem, if any."""
    problems = check(data, output, reference)
    if problems:
        raise CheckFailed(f"{output.root}: " + "; ".join(problems))


def main() -> None:
    """Command line: check one output, print the verdict, exit 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layout", choices=["workload", "engine"], default="workload")
    parser.add_argument("--reference", type=Path, required=True, help="the DuckDB peer's output")
    args = parser.parse_args()
    problems = check(args.data, Output(args.out, args.layout), Output(args.reference))
    print(json.dumps({"passed": not problems, "problems": problems}, indent=2))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
