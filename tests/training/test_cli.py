"""`medallion train`, `medallion train --reproduce` and `medallion score` on the retail churn job."""

from __future__ import annotations

import re

import mlflow
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

from engine.cli.main import main
from tests.features.conftest import REPO
from tests.training.conftest import ChurnRoot


def medallion(churn: ChurnRoot, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, ["--root", str(churn.root), *args])
    assert result.exit_code == code, result.output
    return result.output


def test_train_reproduce_and_score_from_the_command_line(ray_local: None, churn: ChurnRoot,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    trained = medallion(churn, "train", "retail/churn", "--repo", str(REPO))
    assert "registered version 1: no champion yet" in trained
    run_id = re.search(r"run ([0-9a-f]{32}):", trained).group(1)  # type: ignore[union-attr]
    experiment = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    assert (f"tracked at http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run_id} (serve it: `medallion "
            "mlflow-ui`)") in trained

    again = medallion(churn, "train", "--reproduce", run_id, "--repo", str(REPO))
    assert f"training set identical to run {run_id}'s" in again and "warning" not in again
    for tag in ("code_version", "feast_registry_hash"):
        mlflow.MlflowClient().set_tag(run_id, f"medallion.{tag}", "recorded-then")
    drifted = medallion(churn, "train", "--reproduce", run_id, "--repo", str(REPO))
    assert f"training set identical to run {run_id}'s" in drifted
    for what in ("code version", "Feast registry hash"):
        assert f"warning: the {what} was recorded-then when run {run_id} trained and is " in drifted

    scored = medallion(churn, "score", "retail", "--repo", str(REPO))
    assert "scores by model `retail_churn` version 1 written to `gold.churn_scores` v0" in scored
    rescored = medallion(churn, "score", "retail/churn", "--model-version", "1", "--repo", str(REPO))
    assert "`gold.churn_scores` v1" in rescored
    scores = DeltaTable(str(churn.root / "gold" / "churn_scores"))
    assert [c["medallion.reason"] for c in scores.history()] == ["batch scoring with retail_churn v1"] * 2

    failed = medallion(churn, "train", "retail/upsell", "--repo", str(REPO), code=1)
    assert "error: pipeline `retail` has no training job `upsell`" in failed
