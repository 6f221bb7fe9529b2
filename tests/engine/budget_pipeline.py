"""A pipeline whose driver must not grow with its data: account changes ingested, merged by key with deletes
(`Merge`), kept as history (`SCD2`), both on Delta and on Iceberg, and summed per account (`RecomputeKeys`).
Importable as `tests.engine.budget_pipeline:pipeline` by a driver process; `python -m tests.engine.budget_pipeline
ROOT ADDRESS BACKUP` runs it there, attached to the Ray at ADDRESS, then Z-orders and compacts two of its tables and
backs the root up to BACKUP, and prints the driver's peak resident memory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import ray.data

from engine import SCD2, FileSource, Merge, Pipeline, RecomputeKeys, map_partitions

PAYLOAD_BYTES = 4096
"""Bytes of the `note` of every change: rows wide enough that a batch's changes weigh what its row count says."""

pipeline = Pipeline("budget")
pipeline.ingest("bronze.changes", FileSource("changes", "csv"))


def parse(batch: pa.Table) -> pa.Table:
    return pl.from_arrow(batch).select(pl.col("account_id").cast(pl.Int64), pl.col("seq").cast(pl.Int64),
                                       pl.col("op"), pl.col("amount").cast(pl.Float64), pl.col("note")).to_arrow()


@pipeline.table("silver.accounts", kind=Merge(keys=["account_id"], sequence_by="seq", delete_when="op = 'd'",
                                              except_columns=["op"]))
def accounts(bronze_changes: ray.data.Dataset) -> ray.data.Dataset:
    return bronze_changes.map_batches(parse, batch_format="pyarrow")


@pipeline.table("gold.account_history", kind=SCD2(keys=["account_id"], sequence_by="seq", tracked_columns=["amount"],
                                                 delete_when="op = 'd'", except_columns=["op"]))
def account_history(bronze_changes: ray.data.Dataset) -> ray.data.Dataset:
    return bronze_changes.map_batches(parse, batch_format="pyarrow")


pipeline.table("silver.accounts_iceberg", table_format="iceberg",
               kind=Merge(keys=["account_id"], sequence_by="seq", delete_when="op = 'd'", except_columns=["op"]))(accounts)
pipeline.table("gold.account_history_iceberg", table_format="iceberg",
               kind=SCD2(keys=["account_id"], sequence_by="seq", tracked_columns=["amount"], delete_when="op = 'd'",
                         except_columns=["op"]))(account_history)


def total(rows: pa.Table) -> pa.Table:
    return pl.from_arrow(rows).group_by("account_id").agg(pl.col("amount").sum(), pl.len().alias("changes")).to_arrow()


@pipeline.table("gold.account_totals", kind=RecomputeKeys(keys=["account_id"]))
def account_totals(bronze_changes: ray.data.Dataset) -> ray.data.Dataset:
    return map_partitions(bronze_changes.map_batches(parse, batch_format="pyarrow"), ["account_id"], total)


def land(landing: Path, changes: int, seed: int = 7) -> None:
    """`changes` account changes (a tenth of them deletes, keys repeating) as CSV files of about 40 MiB."""
    rng = np.random.default_rng(seed)
    folder = landing / "changes"
    folder.mkdir(parents=True, exist_ok=True)
    per_file = max(1, (40 * 2**20) // PAYLOAD_BYTES)
    for number, start in enumerate(range(0, changes, per_file)):
        size = min(per_file, changes - start)
        notes = pa.array(np.full(size, "x" * PAYLOAD_BYTES))
        rows = pa.table({"account_id": rng.integers(0, max(1, changes // 2), size), "seq": np.arange(start, start + size),
                         "op": rng.choice(["c", "u", "u", "u", "u", "u", "u", "u", "u", "d"], size),
                         "amount": rng.random(size).round(2), "note": notes})
        pacsv.write_csv(rows, folder / f"changes-{number:04d}.csv")


def peak_resident_mib() -> float:
    """This process's peak resident memory so far (`VmHWM`, Linux)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    return int(line.split()[1]) / 2**10


def main(root: str, address: str, backup_to: str) -> None:
    """Run the pipeline, then Z-order `bronze.changes` (a compaction that rewrites every file along one curve),
    compact `silver.accounts` within its buckets, and back the root up to `backup_to`."""
    from engine import Runner, load_settings
    from engine.layout import Layout
    from engine.maintenance.backup import backup
    from engine.maintenance.optimize import optimize_table
    from engine.maintenance.policy import Maintenance
    from engine.runtime import join_ray

    join_ray(address, logging_level="ERROR")
    settings = load_settings(overrides={"storage": {"root": root}})
    result = Runner(pipeline, settings).run()
    failed = [record.error for record in result.records if record.error]
    layout = Layout.at(root)
    optimized = {table: optimize_table(layout.table(table), table, storage=settings.storage, policy=policy,
                                       reason="budget").files_rewritten
                 for table, policy in (("bronze.changes", Maintenance(z_order=("account_id",))),
                                       ("silver.accounts", Maintenance(z_order=("seq",))))}
    saved = backup(layout, backup_to)
    print(json.dumps({"peak_mib": peak_resident_mib(), "failed": failed, "optimized": optimized,
                      "backed_up": {t.path: t.rows for t in saved.tables},
                      "rows": {record.table: record.rows_written for record in result.records}}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
