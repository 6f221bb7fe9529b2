"""Batch scores in `gold.churn_scores` and online scores from Feast agree for the same customers."""

from __future__ import annotations

import polars as pl
import pytest
from deltalake import DeltaTable

from engine.errors import TrainingError
from engine.training.job import load_job
from engine.training.registry import load_model
from engine.training.scoring import score_batch, score_online
from engine.training.train import train
from tests.features.conftest import REPO, RETAIL_END
from tests.training.conftest import ChurnRoot


def test_batch_and_online_scores_agree_for_the_same_features(ray_local: None, churn_materialized: ChurnRoot,
                                                             tracking: str) -> None:
    settings = churn_materialized.settings
    with pytest.raises(TrainingError, match="cannot load model `retail_churn` version `champion`"):
        score_batch("retail/churn", settings, repo=str(REPO), tracking_uri=tracking, at=RETAIL_END)
    trained = train("retail/churn", settings, repo=str(REPO), tracking_uri=tracking)

    written = score_batch("retail/churn", settings, repo=str(REPO), tracking_uri=tracking, at=RETAIL_END)
    path = str(churn_materialized.root / "gold" / "churn_scores")
    table = DeltaTable(path)
    assert table.version() == written.version and len(table.history()) == written.version + 1
    commit = table.history(1)[0]
    assert commit["model_version"] == trained.model_version == written.model_version
    scores = pl.read_delta(path, version=written.version).filter(pl.col("scored_at") == RETAIL_END)
    assert scores.columns == ["customer_id", "score", "model_version", "scored_at"]
    assert scores.height == written.rows == scores["customer_id"].n_unique() > 10
    assert scores["score"].is_between(0.0, 1.0).all() and scores["model_version"].unique().to_list() == [1]

    _, job = load_job("retail/churn")
    model = load_model("retail_churn")
    customers = scores["customer_id"].to_list()[:25]
    online = pl.from_arrow(score_online(churn_materialized.store, job, model, customers))
    assert isinstance(online, pl.DataFrame)
    assert online["order_count_30d"].null_count() < online.height
    both = online.select("customer_id", pl.col("score").alias("online")).join(scores, on="customer_id")
    assert both.height == len(customers)
    assert (both["online"] - both["score"]).abs().max() < 1e-12
