"""The driver's memory does not grow with the data: the same pipeline (a `Merge` table with deletes and an `SCD2`
history, on Delta and on Iceberg, and a `RecomputeKeys` aggregate) run at two sizes 10x apart, then a Z-order of
its bronze table, a compaction of its bucketed merge table and a backup of the root, each size by a driver process
of its own attached to the test's Ray, whose peak resident memory is compared. The changes of the larger run
weigh about 160 MiB: a driver that read them (or their staged files, or the tables it rewrites or copies) whole
would grow by more than that."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import ray
from deltalake import DeltaTable

from engine.tables.iceberg import IcebergTables
from tests.engine import budget_pipeline

REPO = Path(__file__).resolve().parents[2]
GROWTH_MIB = 150
SMALL, LARGE = 4_000, 40_000


def run_in_own_driver(root: Path) -> dict[str, Any]:
    """The budget pipeline run on `root`, and its maintenance, by a driver process attached to this process's Ray:
    its report."""
    done = subprocess.run([sys.executable, "-m", "tests.engine.budget_pipeline", str(root),
                           ray.get_runtime_context().gcs_address, f"{root}-backup"], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["failed"] == [], report
    return report


def expected_totals(root: Path) -> pl.DataFrame:
    """The landed changes summed per account, independently of the engine."""
    changes = pl.read_csv(root / "landing" / "changes" / "*.csv", columns=["account_id", "amount"])
    return changes.group_by("account_id").agg(pl.col("amount").sum(), pl.len().cast(pl.UInt32).alias("changes"))


def live_accounts(root: Path) -> list[int]:
    """The accounts whose latest change is not a delete, independently of the engine."""
    changes = pl.read_csv(root / "landing" / "changes" / "*.csv", columns=["account_id", "seq", "op"])
    latest = changes.sort("seq").group_by("account_id").last()
    return sorted(latest.filter(pl.col("op") != "d")["account_id"].to_list())


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_the_driver_does_not_grow_with_merge_scd2_and_recompute_keys_tables(tmp_path: Path) -> None:
    peaks = {}
    for size in (SMALL, LARGE):
        root = tmp_path / f"root-{size}"
        budget_pipeline.land(root / "landing", size)
        report = run_in_own_driver(root)
        peaks[size] = report["peak_mib"]
        bronze = DeltaTable(str(root / "bronze" / "changes"))
        assert report["optimized"]["bronze.changes"] >= 1 and bronze.history(1)[0]["medallion.z_order"] == "account_id"
        assert bronze.to_pyarrow_table(columns=["seq"]).num_rows == size
        assert report["backed_up"]["bronze/changes"] == size and report["backed_up"]["silver/accounts"] == len(
            live_accounts(root))
        totals = pl.from_arrow(DeltaTable(str(root / "gold" / "account_totals")).to_pyarrow_table())
        assert isinstance(totals, pl.DataFrame)
        expected = expected_totals(root)
        assert totals.height == expected.height
        assert totals.sort("account_id").select("account_id", "changes").equals(
            expected.sort("account_id").select("account_id", pl.col("changes").cast(totals["changes"].dtype)))
        merged = DeltaTable(str(root / "silver" / "accounts")).to_pyarrow_table(columns=["account_id"])
        assert sorted(merged.column("account_id").to_pylist()) == live_accounts(root)
        history = pl.from_arrow(DeltaTable(str(root / "gold" / "account_history")).to_pyarrow_table())
        assert isinstance(history, pl.DataFrame)
        assert sorted(history.filter(pl.col("is_current"))["account_id"].to_list()) == live_accounts(root)
        iceberg = IcebergTables(str(root))
        merged = iceberg.read_columns(str(root / "silver" / "accounts_iceberg"), "silver.accounts_iceberg", ["account_id"])
        assert sorted(merged.column("account_id").to_pylist()) == live_accounts(root)
        current = iceberg.read_columns(str(root / "gold" / "account_history_iceberg"), "gold.account_history_iceberg",
                                       ["account_id", "is_current"])
        assert sorted(current.filter(current.column("is_current")).column("account_id").to_pylist()) == \
            live_accounts(root)
    assert peaks[LARGE] - peaks[SMALL] < GROWTH_MIB, peaks
