"""The notebooks of `notebooks/` run top to bottom against the session's retail build, and what they print
(the JSON summary of their last cell) agrees with the tables read independently here; no cell writes to
stderr (no library warning, progress bar or log line)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import nbformat
import polars as pl
import pytest
import ray
from deltalake import DeltaTable
from nbclient import NotebookClient

from engine.layout import Layout
from engine.quality.metrics import read_metrics
from engine.training.tracking import use_tracking
from tests.conftest import RetailBuild, settings_at
from tests.features.conftest import REPO
from tests.training.conftest import ChurnRoot, churn_root

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> dict[str, Any]:
    """Run notebook `name` with `env` in its kernel's environment; the JSON its last cell printed."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if ray.is_initialized():
        monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    printed = [out["text"] for out in notebook.cells[-1].outputs if out.get("name") == "stdout"]
    stderr = [out["text"] for cell in notebook.cells for out in cell.get("outputs", []) if out.get("name") == "stderr"]
    assert not stderr, stderr  # no library warning, progress bar or log line
    return json.loads(printed[-1])


def test_notebooks_are_listed_in_the_readme() -> None:
    readme = (NOTEBOOKS / "README.md").read_text()
    for notebook in NOTEBOOKS.glob("*.ipynb"):
        assert f"`{notebook.name}`" in readme


def test_explore_gold_lists_tables_aggregates_and_time_travels(
        retail_build: RetailBuild, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = execute("explore_gold.ipynb", monkeypatch, {"MEDALLION_ROOT": str(retail_build.root)})

    layout = Layout.at(str(retail_build.root))
    for table, shown in summary["tables"].items():
        stored = DeltaTable(layout.location(table))
        assert shown == {"version": stored.version(), "rows": stored.to_pyarrow_table().num_rows}, table
    assert {"gold.fct_order_lines", "gold.customer_features", "silver.orders"} <= set(summary["tables"])

    lines = pl.read_delta(layout.table("gold.fct_order_lines"))
    products = pl.read_delta(layout.table("gold.dim_product"))
    expected = (lines.filter(pl.col("status") != "cancelled").join(products, on="product_id")
                .group_by("category").agg(pl.col("revenue").sum()))
    assert summary["revenue_by_category"] == pytest.approx(
        {row["category"]: round(row["revenue"], 2) for row in expected.iter_rows(named=True)}, abs=0.01)
    assert summary["orders_by_status"] == {
        status: orders.n_unique() for (status,), orders in lines.group_by("status") for orders in [orders["order_id"]]}
    daily = pl.read_delta(layout.table("gold.customer_daily"))
    revenue = daily.group_by("customer_id").agg(pl.col("revenue").sum())
    top = revenue.sort(["revenue", "customer_id"], descending=[True, False])["customer_id"].head(5).to_list()
    assert summary["top_customers"] == top
    assert summary["days_plotted"] == daily["date"].n_unique()

    travel = summary["time_travel"]
    gold_versions = {t: v["version"] for t, v in summary["tables"].items() if t.startswith("gold.")}
    assert gold_versions[travel["table"]] == max(gold_versions.values())
    uri = layout.table(travel["table"])
    assert travel["version"] == max(gold_versions[travel["table"]] - 1, 0)
    assert travel["rows_then"] == DeltaTable(uri, version=travel["version"]).to_pyarrow_table().num_rows
    assert travel["rows_now"] == DeltaTable(uri).to_pyarrow_table().num_rows


@pytest.fixture
def failing_checks_root(retail_build: RetailBuild, tmp_path: Path) -> Path:
    """A copy of the retail build after a second run whose new delivery fails a check of
    `silver.order_items` (quantities over the contract's 1,000)."""
    from engine import Runner
    from pipelines.retail.pipeline import retail

    root = tmp_path / "lake"
    shutil.copytree(retail_build.root, root)
    (root / "landing" / "order_items" / "order_items-0099.csv").write_text(
        "order_id,line_number,product_id,quantity,unit_price,updated_at\n"
        "501,91,6,5000,46.99,2026-05-16T10:00:00Z\n"
        "501,92,6,2,46.99,2026-05-16T10:00:00Z\n"
        "501,93,9,7000,7.99,2026-05-16T10:00:00Z\n")
    result = Runner(retail, settings_at(root)).run()
    assert result.succeeded, [r.error for r in result.records if r.error]
    return root


def test_quality_investigation_finds_failed_checks_quarantine_and_files(
        failing_checks_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = "silver.order_items"
    summary = execute("quality_investigation.ipynb", monkeypatch,
                      {"MEDALLION_ROOT": str(failing_checks_root), "MEDALLION_TABLE": table})

    layout = Layout.at(str(failing_checks_root))
    metrics = read_metrics(layout.quality())
    runs = metrics["run_id"].n_unique()  # the shared build's runs (other tests may add some) and the bad one
    assert summary["runs_with_checks"] == runs >= 2
    failed = metrics.filter(pl.col("rows_failed") > 0).sort("run_id", "table", "check")
    assert summary["failed_checks"] == [[r["run_id"], r["table"], r["check"], r["rows_failed"]]
                                        for r in failed.iter_rows(named=True)]
    latest = metrics.sort("recorded_at")["run_id"][-1]
    assert summary["latest_run"] == latest
    assert [table, "quantity:less_than_or_equal_to(1000)", 2] in [row[1:] for row in summary["failed_checks"]
                                                                   if row[0] == latest]

    quarantine = pl.read_delta(layout.quarantine(table))
    assert summary["quarantined"] == quarantine.height
    assert summary["reasons"] == dict(quarantine["_rejected_reason"].value_counts().iter_rows())
    assert summary["files"] == dict(quarantine["_source_file"].value_counts().iter_rows())
    assert summary["files"]["order_items-0099.csv"] == 2
    assert summary["trend"]["check"] == "quantity:less_than_or_equal_to(1000)"
    assert summary["trend"]["rates"][0] == 0.0 and summary["trend"]["rates"][-1] > 0
    assert len(summary["trend"]["rates"]) == runs


@pytest.fixture
def churn(retail_build: RetailBuild, tmp_path: Path) -> ChurnRoot:
    """The churn job's gold tables copied from the retail build, the feature repository applied."""
    return churn_root(retail_build, tmp_path / "lake")


def test_quickstart_trains_tracks_registers_and_scores(
        ray_local: None, churn: ChurnRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "")  # restored after the test, which sets it through MLflow
    monkeypatch.delenv("MLFLOW_REGISTRY_URI")
    summary = execute("quickstart_data_scientist.ipynb", monkeypatch, {
        "MEDALLION_ROOT": str(churn.root), "MEDALLION_FEATURE_REPO": str(REPO), "MLFLOW_TRACKING_URI": tracking})

    assert summary["training_rows"] == 100
    assert summary["model_version"] == summary["champion"] == "1"
    use_tracking(tracking)
    run = mlflow.MlflowClient().get_run(summary["run_id"])
    assert summary["auc"] == pytest.approx(run.data.metrics["auc"])
    expected_versions = {f"gold.{name}": DeltaTable(str(churn.root / "gold" / name)).version()
                         for name in ("customer_features", "dim_customer", "fct_order_lines")}
    assert summary["table_versions"] == expected_versions

    from engine.training.job import load_job
    from engine.training.registry import load_model
    from engine.training.scoring import score_online

    model = load_model("retail_churn", 1)
    _, job = load_job("retail/churn")
    customers = [int(c) for c in summary["scores"]]
    assert len(customers) == 5
    scores = score_online(churn.store, job, model, customers)
    assert summary["scores"] == pytest.approx(
        {str(c): s for c, s in zip(scores["customer_id"].to_pylist(), scores["score"].to_pylist(), strict=True)})
    assert all(0.0 <= s <= 1.0 for s in summary["scores"].values())
    assert summary["online"]["customer_id"] == customers
