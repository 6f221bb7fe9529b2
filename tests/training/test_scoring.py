"""Batch scoring is the on-demand pipeline table `gold.churn_scores`: committed by a run of the engine (run
record, lineage, access checks), and equal to online scores of the same customers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from engine import Runner, load_settings
from engine.errors import AccessDenied
from engine.layout import Layout
from engine.runlog import read_records
from engine.training.job import load_job
from engine.training.registry import load_model
from engine.training.scoring import score_online
from engine.training.trainer import train
from pipelines.retail.pipeline import retail
from tests.conftest import settings_at
from tests.features.conftest import REPO
from tests.training.conftest import ChurnRoot

SCORES = "gold.churn_scores"
INPUTS = ("gold.customer_features", "gold.dim_customer")


def test_scores_are_a_pipeline_table_run_by_the_engine_and_agree_with_online_scores(
        ray_local: None, churn_materialized: ChurnRoot, tracking: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "lake"
    shutil.copytree(churn_materialized.root, root)
    settings, layout = settings_at(root), Layout.at(str(root))
    monkeypatch.setenv("MEDALLION_FEATURE_REPO", str(REPO))
    assert SCORES not in retail.select() and retail.select(SCORES) == [SCORES]

    [untracked] = Runner(retail, settings).run(SCORES).records
    assert untracked.status == "failed" and "nothing was tracked under" in untracked.error
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    [unregistered] = Runner(retail, settings).run(SCORES).records
    assert unregistered.status == "failed" and "cannot load model `retail_churn` version `champion`" in \
        unregistered.error
    assert not Path(layout.table(SCORES)).exists()

    trained = train("retail/churn", settings, repo=str(REPO), tracking_uri=tracking)
    refused = load_settings(overrides={"storage": {"root": str(root)}, "access": {
        "enforce": True, "roles": {"analyst": {"read": ["gold.*"]}}, "default_roles": ["analyst"]}})
    with pytest.raises(AccessDenied, match="may not write `gold.churn_scores`"):
        Runner(retail, refused).run(SCORES)
    assert not Path(layout.table(SCORES)).exists()

    run = Runner(retail, settings).run(SCORES)
    [record] = run.records
    assert (record.status, record.output_version) == ("succeeded", 0)
    assert record.input_versions == {t: DeltaTable(layout.table(t)).version() for t in INPUTS}
    [stored] = read_records(layout.runs()).filter(pl.col("table") == SCORES).filter(
        pl.col("status") == "succeeded").iter_rows(named=True)
    assert stored["run_id"] == run.run_id and stored["rows_written"] == record.rows_written
    commit = DeltaTable(layout.table(SCORES)).history(1)[0]
    assert commit["medallion.run_id"] == run.run_id and commit["medallion.pipeline"] == "retail"
    events = [json.loads(line) for line in Path(Layout.at(str(root)).lineage_events()).read_text().splitlines()]
    [event] = [e for e in events if e["job"]["name"] == f"retail.{SCORES}" and e["eventType"] == "COMPLETE"]
    assert {i["facets"]["symlinks"]["identifiers"][0]["name"] for i in event["inputs"]} == set(INPUTS)

    scores = pl.read_delta(layout.table(SCORES))
    assert scores.columns == ["customer_id", "event_timestamp", "score", "model_name", "model_version",
                              "scored_at"]
    features = pl.read_delta(layout.table("gold.customer_features"))
    latest = features.group_by("customer_id").agg(pl.col("event_timestamp").max())
    assert scores.height == record.rows_written == latest.height == scores["customer_id"].n_unique() > 10
    assert scores.select("customer_id", "event_timestamp").sort("customer_id").equals(latest.sort("customer_id"))
    assert scores["score"].is_between(0.0, 1.0).all() and scores["scored_at"].n_unique() == 1
    assert scores.select("model_name", "model_version").unique().rows() == [("retail_churn",
                                                                               int(trained.model_version))]
    [unchanged] = Runner(retail, settings).run(SCORES).records
    assert unchanged.status == "unchanged" and DeltaTable(layout.table(SCORES)).version() == 0

    _, job = load_job("retail/churn")
    customers = scores["customer_id"].to_list()[:25]
    online = pl.from_arrow(score_online(churn_materialized.store, job, load_model("retail_churn"), customers))
    assert isinstance(online, pl.DataFrame)
    assert online["order_count_30d"].null_count() < online.height
    both = online.select("customer_id", pl.col("score").alias("online")).join(scores, on="customer_id")
    assert both.height == len(customers)
    assert (both["online"] - both["score"]).abs().max() < 1e-12
