"""A retrieval kept in the cluster: `to_ray_dataset()` and `persist()` give the rows `to_df()` gives, in the same
order, without collecting them in the driver (whose memory the training budget test,
`tests/training/test_training_budget.py`, holds flat while a saved retrieval grows tenfold); entity rows given as
a Ray Dataset, checked as a DataFrame's are; on-demand features computed in the cluster."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

from engine.errors import FeatureStoreError
from engine.features import entities, offline
from engine.features.repo import open_store
from tests.features import wide_features
from tests.features.conftest import RetailFeatures

REPO = Path(__file__).resolve().parents[2]
FEATURES = ["account_notes:note", "account_notes:score"]


def test_a_retrieval_as_a_ray_dataset_or_parquet_equals_the_collected_one(
        ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wide_features.prepare(tmp_path, 500)
    store = open_store(str(tmp_path), overrides={"project": "budget"})
    wanted = wide_features.entities(600).sample(frac=1, random_state=3).reset_index(drop=True)  # 100 unknown
    collected = store.get_historical_features(entity_df=wanted, features=FEATURES).to_arrow()

    monkeypatch.setattr(offline, "collect", lambda rows: pytest.fail("rows collected in this process"))
    dataset = store.get_historical_features(entity_df=wanted, features=FEATURES).to_ray_dataset()
    assert isinstance(dataset, ray.data.Dataset)
    in_cluster = dataset.to_arrow_refs()
    monkeypatch.undo()
    assert offline.collect(dataset).equals(collected)  # same rows, same order: the entity rows'
    assert len(in_cluster) >= 1
    assert collected.column("account_id").to_pylist() == wanted["account_id"].tolist()
    assert collected.column("score").to_pylist() == [i * 7 if i < 500 else None for i in wanted["account_id"]]

    out = tmp_path / "saved"
    store.get_historical_features(entity_df=wanted, features=FEATURES).persist(SavedDatasetFileStorage(path=str(out)))
    saved = pq.read_table(out).sort_by("account_id")
    assert saved.equals(collected.sort_by("account_id").select(saved.column_names))
    with pytest.raises(FeatureStoreError, match="exists; pass allow_overwrite=True"):
        store.get_historical_features(entity_df=wanted, features=FEATURES).persist(
            SavedDatasetFileStorage(path=str(out)))
    store.get_historical_features(entity_df=wanted.head(10), features=FEATURES).persist(
        SavedDatasetFileStorage(path=str(out)), allow_overwrite=True)
    assert pq.read_table(out).num_rows == 10


def test_entity_rows_as_a_ray_dataset_stay_in_the_cluster_and_give_the_dataframes_result(
        ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wide_features.prepare(tmp_path, 500)
    store = open_store(str(tmp_path), overrides={"project": "budget"})
    wanted = wide_features.entities(600).sample(frac=1, random_state=5).reset_index(drop=True)
    collected = store.get_historical_features(entity_df=wanted, features=FEATURES).to_arrow()

    blocks = [pa.Table.from_pandas(part, preserve_index=False) for part in (wanted[:250], wanted[250:], wanted[:0])]
    monkeypatch.setattr(offline, "collect", lambda rows: pytest.fail("rows collected in this process"))
    monkeypatch.setattr(entities, "_from_pandas", lambda frame: pytest.fail("entity rows converted here"))
    dataset = store.get_historical_features(entity_df=ray.data.from_arrow(blocks), features=FEATURES).to_ray_dataset()
    monkeypatch.undo()
    assert offline.collect(dataset).equals(collected)  # the Dataset's row order kept across its blocks


def test_entity_rows_in_a_ray_dataset_are_checked_like_a_dataframes(ray_local: None, tmp_path: Path) -> None:
    wide_features.prepare(tmp_path, 20)
    store = open_store(str(tmp_path), overrides={"project": "budget"})
    rows = wide_features.entities(20)
    no_time = ray.data.from_pandas(rows.drop(columns="event_timestamp"))
    with pytest.raises(FeatureStoreError, match="need an `event_timestamp` column"):
        store.get_historical_features(entity_df=no_time, features=FEATURES)
    untimed = pa.Table.from_pandas(rows, preserve_index=False)
    untimed = untimed.set_column(1, "event_timestamp", pa.array([None] * 20, untimed.column(1).type))
    with pytest.raises(FeatureStoreError, match="20 entity row\\(s\\) have no `event_timestamp`"):
        store.get_historical_features(entity_df=ray.data.from_arrow(untimed), features=FEATURES)
    texts = ray.data.from_pandas(rows.assign(account_id=["x"] * 20))
    with pytest.raises(FeatureStoreError, match="entity column `account_id` holds string values that do not "
                                                "convert to int64, the type of `gold.account_notes`"):
        store.get_historical_features(entity_df=texts, features=FEATURES)
    with pytest.raises(FeatureStoreError, match="already have column\\(s\\) \\['score'\\]"):
        store.get_historical_features(entity_df=ray.data.from_pandas(rows.assign(score=1)), features=FEATURES)


def test_on_demand_views_are_computed_in_the_cluster_as_when_collected(
        ray_local: None, retail_features: RetailFeatures) -> None:
    store = retail_features.store
    service = store.get_feature_service("customer_training")
    rows = pd.DataFrame({"customer_id": [1, 2, 3, 999_999], "cart_value": [30.0, 55.0, 0.0, 12.0],
                         "event_timestamp": pd.to_datetime(["2026-05-20", "2026-05-28", "2026-05-01", "2026-05-02"],
                                                           utc=True)})
    collected = store.get_historical_features(entity_df=rows, features=service).to_arrow()
    assert "cart_to_avg_order_value" in collected.column_names
    in_cluster = store.get_historical_features(entity_df=ray.data.from_pandas(rows), features=service)
    assert offline.collect(in_cluster.to_ray_dataset()).equals(collected)
    with pytest.raises(FeatureStoreError, match="no column `cart_value`, a request field of on-demand feature view "
                                                "`cart_context`"):
        store.get_historical_features(entity_df=ray.data.from_pandas(rows.drop(columns="cart_value")),
                                      features=service)
