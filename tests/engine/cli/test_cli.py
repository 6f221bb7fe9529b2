"""The `medallion` command: demo, run, status, history, and one-line errors with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

from engine.cli.main import main
from pipelines.retail.pipeline import retail

SCALE = "0.02"


@pytest.fixture(scope="module")
def demo_root(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    result = CliRunner().invoke(main, ["--root", str(root), "demo", "--scale", SCALE, "--as-of", "2026-05-30"])
    assert result.exit_code == 0, result.output
    return root


def invoke(root: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--root", str(root), *args])
    return result.exit_code, result.output


def test_demo_builds_every_table_and_prints_a_summary(demo_root: Path) -> None:
    for table in retail.select():
        layer, name = table.split(".")
        protected = bool(retail.tables[table].pii)  # then a second commit keeps personal columns out of stats
        assert DeltaTable(str(demo_root / layer / name)).version() == (1 if protected else 0)
    code, output = invoke(demo_root, "status")
    assert code == 0
    for table in retail.order():
        assert table in output
    assert "succeeded" in output


def test_history_lists_versions_with_run_and_rows(demo_root: Path) -> None:
    code, output = invoke(demo_root, "history", "silver.orders")
    assert code == 0
    rows = DeltaTable(str(demo_root / "silver" / "orders")).to_pyarrow_table().num_rows
    operations = [commit["operation"] for commit in DeltaTable(str(demo_root / "silver" / "orders")).history()]
    assert all(operation in output for operation in operations)
    assert f"{rows:,}" in output


def test_run_with_a_selection_reports_each_table_and_commits_only_what_changed(demo_root: Path) -> None:
    code, output = invoke(demo_root, "run", "retail", "--select", "gold.customer_daily+")
    assert code == 0, output
    assert "gold.customer_daily" in output and "bronze.orders" not in output
    assert "unchanged" in output and "nothing new: no table committed" in output
    assert DeltaTable(str(demo_root / "gold" / "customer_daily")).version() == 0
    code, output = invoke(demo_root, "run", "retail", "--select", "gold.customer_daily+", "--force")
    assert code == 0 and "1 table(s) committed" in output
    assert DeltaTable(str(demo_root / "gold" / "customer_daily")).version() == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("run", "nosuchpipeline"), "no pipeline named `nosuchpipeline`"),
        (("run", "retail", "--select", "gold.nope"), "selection `gold.nope` matches no table"),
        (("history", "silver.nope"), "no table `silver.nope` under"),
        (("generate", "retail", "--scale", "0"), "scale must be"),
        (("generate", "retail", "--batch", "99"), "batch must be between 1 and"),
    ],
)
def test_failures_exit_non_zero_with_a_one_line_reason(
    ray_local: None, tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    result = CliRunner().invoke(main, ["--root", str(tmp_path), *args])
    assert result.exit_code == 1
    assert expected in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1


def test_invalid_configuration_is_reported_with_where_it_was_looked_for(tmp_path: Path) -> None:
    config = tmp_path / "medallion.yaml"
    config.write_text("storage:\n  target_file_mb: lots\n")
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.exit_code == 1
    assert "storage.target_file_mb" in result.output and str(config) in result.output


@pytest.mark.slow
def test_the_installed_command_runs_the_pipeline_on_its_own_ray(tmp_path: Path) -> None:
    command = [str(Path(sys.executable).with_name("medallion")), "--root", str(tmp_path)]
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled", "MEDALLION__RAY__NUM_CPUS": "2"}
    generated = subprocess.run([*command, "generate", "--scale", SCALE], capture_output=True, text=True,
                               env=environment, timeout=300)
    assert generated.returncode == 0, generated.stderr
    ran = subprocess.run([*command, "run", "retail"], capture_output=True, text=True, env=environment, timeout=600)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "[15/15]" in ran.stdout
    assert DeltaTable(str(tmp_path / "gold" / "customer_features")).to_pyarrow_table().num_rows > 0


def test_backfill_replaces_a_date_range_of_a_time_partitioned_table(demo_root: Path) -> None:
    uri = str(demo_root / "gold" / "customer_daily")
    before = pl.from_arrow(DeltaTable(uri).to_pyarrow_table()).sort(["customer_id", "date"])
    code, output = invoke(demo_root, "backfill", "gold.customer_daily", "--from", "2026-01-05", "--to", "2026-01-06")
    assert code == 0, output
    assert "backfill of `gold.customer_daily` from 2026-01-05 to 2026-01-06, pipeline `retail`" in output
    last = DeltaTable(uri).history(1)[0]
    assert last["medallion.backfill"] == ["2026-01-05", "2026-01-06"]
    after = pl.from_arrow(DeltaTable(uri).to_pyarrow_table()).sort(["customer_id", "date"])
    assert after.equals(before)
    code, output = invoke(demo_root, "backfill", "gold.customer_features", "--from", "2026-01-05", "--to", "2026-01-06")
    assert code == 1 and "table `gold.customer_features` has no time partition to backfill" in output


def test_retail_catalog_declarations_are_true_of_the_built_tables(demo_root: Path) -> None:
    """Every documented retail column exists; status and catalog show the gold tables' freshness."""
    import json

    code, output = invoke(demo_root, "catalog", "--json")
    assert code == 0, output
    entries = {e["table"]: e for e in json.loads(output)}
    assert [e["problems"] for e in entries.values() if e["problems"]] == []
    assert entries["silver.orders"]["owner"] and entries["silver.orders"]["downstream"] == ["gold.fct_order_lines"]
    for table in ("gold.dim_customer", "gold.dim_product", "gold.fct_order_lines", "gold.customer_daily",
                  "gold.customer_features"):
        assert entries[table]["freshness"]["state"] in ("fresh", "late"), entries[table]["freshness"]
    assert entries["gold.customer_daily"]["freshness"]["newest_partition"] is not None
    code, output = invoke(demo_root, "status")
    assert code == 0 and "freshness" in output
