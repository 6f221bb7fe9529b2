"""A retrieval kept in the cluster: `to_ray_dataset()` and `persist()` give the rows `to_df()` gives, in the same
order, without collecting them in the driver, whose memory does not grow with the training set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

from engine.errors import FeatureStoreError
from engine.features import offline
from engine.features.repo import open_store
from tests.features import budget_retrieval
from tests.features.conftest import RetailFeatures

REPO = Path(__file__).resolve().parents[2]
FEATURES = ["account_notes:note", "account_notes:score"]


def test_a_retrieval_as_a_ray_dataset_or_parquet_equals_the_collected_one(
        ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budget_retrieval.prepare(tmp_path, 500)
    store = open_store(str(tmp_path), overrides={"project": "budget"})
    wanted = budget_retrieval.entities(600).sample(frac=1, random_state=3).reset_index(drop=True)  # 100 unknown
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


@pytest.mark.slow
def test_the_driver_of_a_saved_training_set_does_not_grow_with_it(ray_local: None, tmp_path: Path) -> None:
    """The same retrieval at two sizes 10x apart, each by a driver process of its own: 4 KiB of feature per
    row, about 160 MiB in the larger training set, which a driver that collected it would hold."""
    peaks = {}
    for rows in (4_000, 40_000):
        root = tmp_path / f"root-{rows}"
        budget_retrieval.prepare(root, rows)
        out = tmp_path / f"saved-{rows}"
        done = subprocess.run([sys.executable, "-m", "tests.features.budget_retrieval", str(root),
                               ray.get_runtime_context().gcs_address, str(rows), str(out)],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        peaks[rows] = json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]
        saved = pq.read_table(out, columns=["account_id", "score"]).sort_by("account_id")
        assert saved.column("score").to_pylist() == [i * 7 for i in range(rows)]
    assert peaks[40_000] - peaks[4_000] < 150, peaks


def test_on_demand_views_are_refused_in_the_cluster_and_computed_when_collected(
        retail_features: RetailFeatures) -> None:
    store = retail_features.store
    service = store.get_feature_service("customer_training")
    rows = pd.DataFrame({"customer_id": [1, 2], "cart_value": [30.0, 55.0],
                         "event_timestamp": pd.to_datetime(["2026-05-20", "2026-05-28"], utc=True)})
    with pytest.raises(FeatureStoreError, match=r"on-demand feature views \(cart_context\).*`to_df\(\)`"):
        store.get_historical_features(entity_df=rows, features=service).to_ray_dataset()
    assert len(store.get_historical_features(entity_df=rows, features=service).to_df()) == 2
