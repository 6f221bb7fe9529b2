"""The data scientist's notebook runs top to bottom against a materialized store, and what it prints is
the truth of the gold tables."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import ray
from deltalake import DeltaTable
from nbclient import NotebookClient

from tests.features.conftest import REPO, RetailFeatures
from tests.features.test_server import expected_online

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "feature_store.ipynb"


def test_feature_store_notebook_builds_a_training_set_and_reads_online_features(
        retail_features: RetailFeatures, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLION_ROOT", str(retail_features.root))
    monkeypatch.setenv("MEDALLION_FEATURE_REPO", str(REPO))
    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    printed = [out["text"] for out in notebook.cells[-1].outputs if out.get("name") == "stdout"]
    summary = json.loads(printed[-1])
    assert summary["training_rows"] == 200
    gold = {name: DeltaTable(str(retail_features.root / "gold" / name)).version()
            for name in ("customer_features", "dim_customer")}
    assert summary["table_versions"] == {f"gold.{name}": version for name, version in gold.items()}
    customers = summary["online"]["customer_id"]
    expected = expected_online(retail_features.root, customers)["revenue_30d"].fill_null(float("nan")).to_list()
    assert summary["online"]["revenue_30d"] == pytest.approx(expected, nan_ok=True)
