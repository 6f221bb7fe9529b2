"""`train` on the retail churn job: metrics, lineage and the model recorded in MLflow, the champion alias,
and reproduction of a training set from its recorded versions."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from sklearn.metrics import roc_auc_score

from engine.errors import TrainingError
from engine.training.dataset import time_split
from engine.training.fit import predict
from engine.training.job import load_job
from engine.training.registry import load_model
from engine.training.trainer import reproduce, train
from tests.conftest import settings_at
from tests.features.conftest import REPO
from tests.training.conftest import ChurnRoot

JOB = "retail/churn"
WEAK = {"min_samples_leaf": 10**6}


def test_training_records_metrics_lineage_and_a_registered_model_in_the_embedded_store(
        ray_local: None, churn: ChurnRoot, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = train(JOB, churn.settings, repo=str(REPO))

    assert (churn.root / "_meta" / "mlflow" / "mlflow.db").is_file()
    run = mlflow.MlflowClient().get_run(result.run_id)
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location.startswith((churn.root / "_meta" / "mlflow" / "artifacts").as_uri())
    metrics = run.data.metrics
    assert 0.6 < metrics["auc"] <= 1.0
    assert 0.0 < metrics["brier"] < 0.25 and 0.0 <= metrics["ece"] < 0.2 and 0.0 < metrics["log_loss"] < 0.7
    rows = result.training_set.to_arrow()
    assert metrics["rows"] == rows.num_rows == result.training_set.num_rows > metrics["rows_train"] + metrics[
        "rows_holdout"]
    assert run.data.params["max_depth"] == "3" and run.data.params["ray_resources"] == json.dumps(
        {"memory": 1024 * 2**20, "num_cpus": 1})

    tags = run.data.tags
    versions = json.loads(tags["medallion.table_versions"])
    assert set(versions) == {"gold.customer_features", "gold.dim_customer", "gold.fct_order_lines"}
    for table, version in versions.items():
        assert version == DeltaTable(str(churn.root / "gold" / table.split(".")[1])).version()
        assert tags[f"medallion.table_version.{table}"] == str(version)
    assert tags["medallion.feature_service"] == "customer_training"
    assert len(tags["medallion.feast_registry_hash"]) == 64
    assert tags["medallion.training_rows"] == str(rows.num_rows)
    times = rows.column("event_timestamp")
    assert tags["medallion.training_start"] == pc.min(times).as_py().isoformat()
    assert tags["medallion.training_end"] == pc.max(times).as_py().isoformat()
    assert tags["medallion.training_start"] < tags["medallion.holdout_start"] < tags["medallion.training_end"]
    assert tags["medallion.code_version"]
    assert tags["medallion.champion.decision"] == "promoted" and result.model_version == "1"

    model = mlflow.models.get_model_info(f"models:/retail_churn/{result.model_version}")
    assert model.signature is not None and model.saved_input_example_info is not None
    assert {spec.name for spec in model.signature.inputs.inputs} == set(result.training_set.features)
    assert {"country", "segment", "order_count_30d", "cart_to_avg_order_value"} <= set(result.training_set.features)


def test_champion_moves_only_to_a_version_that_beats_it_on_the_same_holdout(
        ray_local: None, churn_materialized: ChurnRoot, tracking: str) -> None:
    def run(params: dict[str, object] | None = None) -> tuple[str | None, str, str]:
        """Train; the new version, the champion's version and the run's decision."""
        result = train(JOB, churn_materialized.settings, repo=str(REPO), tracking_uri=tracking, params=params)
        champion = mlflow.MlflowClient().get_model_version_by_alias("retail_churn", "champion").version
        return result.model_version, str(champion), mlflow.get_run(result.run_id).data.tags[
            "medallion.champion.decision"]

    assert run(WEAK) == ("1", "1", "promoted")
    assert run() == ("2", "2", "promoted")
    assert run() == ("3", "2", "kept")
    assert run(WEAK) == ("4", "2", "kept")
    versions = mlflow.MlflowClient().search_model_versions("name = 'retail_churn'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]


def test_the_champion_is_rescored_on_the_challengers_holdout_not_judged_by_its_stored_auc(
        ray_local: None, churn: ChurnRoot, tracking: str) -> None:
    champion = train(JOB, churn.settings, repo=str(REPO), tracking_uri=tracking)
    DeltaTable(str(churn.root / "gold" / "fct_order_lines")).delete("customer_id % 3 = 0")
    challenger = train(JOB, churn.settings, repo=str(REPO), tracking_uri=tracking, params={"step_days": 14})

    _, job = load_job(JOB)
    holdout = time_split(challenger.training_set.to_arrow(), job).holdout
    assert holdout.num_rows == mlflow.get_run(challenger.run_id).data.metrics["rows_holdout"]
    assert holdout.num_rows != mlflow.get_run(champion.run_id).data.metrics["rows_holdout"]
    assert (champion.model_version, challenger.model_version) == ("1", "2")
    first = load_model("retail_churn", "1")
    rescored = float(roc_auc_score(holdout.column("churned").to_numpy(),
                                   predict(first.model, holdout, first.numeric, first.categorical)))
    decided = mlflow.get_run(challenger.run_id).data
    assert decided.metrics["champion_previous_auc"] == pytest.approx(rescored, abs=1e-12)
    assert abs(rescored - champion.metrics["auc"]) > 1e-3
    assert f"champion v1's {rescored:.4f} on the same holdout" in decided.tags["medallion.champion.reason"]
    assert challenger.promoted == (challenger.metrics["auc"] > rescored)


def test_reproduce_rebuilds_the_identical_training_set_after_the_tables_changed(
        ray_local: None, churn: ChurnRoot, tracking: str) -> None:
    first = train(JOB, churn.settings, repo=str(REPO), tracking_uri=tracking, params={"step_days": 14})
    orders = DeltaTable(str(churn.root / "gold" / "fct_order_lines"))
    orders.delete("customer_id % 3 = 0")
    features = DeltaTable(str(churn.root / "gold" / "customer_features"))
    features.update(updates={"order_count_30d": "order_count_30d + 1"})

    again = reproduce(first.run_id, churn.settings, repo=str(REPO), tracking_uri=tracking)
    assert again.training_set.to_arrow().equals(first.training_set.to_arrow())
    assert again.training_set.fingerprint == first.training_set.fingerprint
    assert again.training_set.versions == first.training_set.versions
    assert again.metrics == first.metrics and again.model_version is None and again.warnings == ()
    assert mlflow.get_run(again.run_id).data.tags["medallion.reproduces"] == first.run_id

    latest = train(JOB, churn.settings, repo=str(REPO), tracking_uri=tracking, params={"step_days": 14})
    assert latest.training_set.fingerprint != first.training_set.fingerprint
    assert latest.training_set.versions["gold.fct_order_lines"] == first.training_set.versions[
        "gold.fct_order_lines"] + 1


def test_unknown_run_and_unknown_job_name_the_fix(ray_local: None, churn_materialized: ChurnRoot, tracking: str,
                                                  tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no MLflow run `nope`.*--tracking-uri"):
        reproduce("nope", churn_materialized.settings, repo=str(REPO), tracking_uri=tracking)
    with pytest.raises(TrainingError, match="pipeline `retail` has no training job `upsell`; it has \\['churn'\\]"):
        train("retail/upsell", churn_materialized.settings, repo=str(REPO), tracking_uri=tracking)
    with pytest.raises(TrainingError, match="table `gold.customer_features` does not exist under .*; run its pipeline first"):
        train(JOB, settings_at(tmp_path), repo=str(REPO), tracking_uri=tracking)
