"""Hyper-parameter search with Ray Tune: every trial is a nested MLflow run of the training run."""

from __future__ import annotations

import mlflow

from engine.training.job import load_job
from engine.training.trainer import train
from tests.features.conftest import REPO
from tests.training.conftest import ChurnRoot


def test_two_trials_are_nested_runs_and_the_best_parameters_are_fitted(
        ray_local: None, churn_materialized: ChurnRoot, tracking: str) -> None:
    result = train("retail/churn", churn_materialized.settings, repo=str(REPO), tracking_uri=tracking, trials=2)

    parent = mlflow.get_run(result.run_id)
    trials = mlflow.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'",
                                output_format="list")
    assert len(trials) == 2
    _, job = load_job("retail/churn")
    for trial in trials:
        assert set(trial.data.params) == set(job.search_space)
        assert 0.0 <= trial.data.metrics["validation_auc"] <= 1.0
    best = max(t.data.metrics["validation_auc"] for t in trials)
    fitted = {k: parent.data.params[k] for k in job.search_space}
    assert fitted in [t.data.params for t in trials if t.data.metrics["validation_auc"] == best]
    assert parent.data.params["trials"] == "2" and 0.5 < parent.data.metrics["auc"] <= 1.0
