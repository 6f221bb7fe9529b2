"""A training job, and a saved retrieval, whose driver must not grow with the data: `python -m
tests.training.budget_training ROOT ADDRESS REPO OUT` trains the job on the tables under ROOT (set up by
`prepare`), attached to the Ray at ADDRESS, tracking in ROOT; saves a retrieval of every account's note and score
as Parquet under OUT; and prints the driver's peak resident memory and what the run recorded.

Every example carries a `NOTE_BYTES` note, which the training set keeps (it is no feature) and the saved
retrieval fetches as a feature, so either weighs what its row count says."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray.data
from deltalake import write_deltalake
from feast import Entity, FeatureService, FeatureView, Field, ValueType
from feast.types import Int64, String

from engine.features.source import DeltaSource
from engine.layout import Layout
from engine.training.job import ENTITY_TIME, TableSource, TrainingJob
from tests.engine.budget_pipeline import peak_resident_mib

BASE = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
DAYS = 20
NOTE_BYTES = 4096
EXAMPLES_TABLE = "gold.account_examples"
account = Entity(name="account", join_keys=["account_id"], value_type=ValueType.INT64)
scores = FeatureView(name="account_scores", entities=[account], ttl=dt.timedelta(days=60),
                     schema=[Field(name="account_id", dtype=Int64), Field(name="score", dtype=Int64)],
                     source=DeltaSource(table="gold.account_scores", timestamp_field="ts"))
notes = FeatureView(name="account_notes", entities=[account], ttl=dt.timedelta(days=60),
                    schema=[Field(name="account_id", dtype=Int64), Field(name="note", dtype=String)],
                    source=DeltaSource(table=EXAMPLES_TABLE, timestamp_field=ENTITY_TIME))
training = FeatureService(name="account_training", features=[scores])
SAVED_AT = BASE + dt.timedelta(days=DAYS + 1)


def labels(ids: np.ndarray) -> np.ndarray:
    """An account's label: its score above 50, flipped for every seventh account."""
    return ((ids * 7 % 100 > 50) ^ (ids % 7 == 0)).astype(np.int64)


def prepare(root: Path, accounts: int) -> None:
    """The feature table (a score per account), the examples (an account on one of `DAYS` days, its label and
    a note) and the store over `root` applied."""
    from engine.features.repo import apply_repo, open_store

    layout = Layout.at(str(root))
    ids = np.arange(accounts)
    write_deltalake(layout.table("gold.account_scores"), pa.table({
        "account_id": pa.array(ids, pa.int64()), "ts": pa.array([BASE] * accounts, pa.timestamp("us", tz="UTC")),
        "score": pa.array(ids * 7 % 100, pa.int64())}))
    days = pa.array([BASE + dt.timedelta(days=1 + int(i) % DAYS) for i in ids], pa.timestamp("us", tz="UTC"))
    write_deltalake(layout.table(EXAMPLES_TABLE), pa.table({
        "account_id": pa.array(ids, pa.int64()), ENTITY_TIME: days, "label": pa.array(labels(ids)),
        "note": pa.array(np.full(accounts, "n" * NOTE_BYTES))}))
    apply_repo(open_store(str(root)), [account, scores, notes, training])


def examples(reader: TableSource, params: Mapping[str, Any]) -> ray.data.Dataset:
    return reader.read(EXAMPLES_TABLE, ["account_id", ENTITY_TIME, "label", "note"])


def model(params: Mapping[str, Any], numeric: Sequence[str], categorical: Sequence[str]) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression()


jobs = {"accounts": TrainingJob(name="accounts", model_name="budget_accounts", feature_service="account_training",
                                entity_key="account_id", label="label", examples=examples, model=model,
                                holdout_fraction=0.25, resources={"num_cpus": 1, "memory": 256 * 2**20})}


def saved_entities(accounts: int) -> pd.DataFrame:
    """An entity row per account, after every example's day."""
    return pd.DataFrame({"account_id": np.arange(accounts), ENTITY_TIME: pd.Timestamp(SAVED_AT)})


def main(root: str, address: str, repo: str, out: str) -> None:
    from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

    from engine import load_settings
    from engine.features.repo import open_store
    from engine.runtime import join_ray
    from engine.training.trainer import train

    join_ray(address, logging_level="ERROR")
    result = train("tests.training.budget_training:jobs", load_settings(overrides={"storage": {"root": root}}),
                   repo=repo)
    accounts = result.training_set.num_rows
    open_store(root).get_historical_features(entity_df=saved_entities(accounts), features=[
        "account_notes:note", "account_scores:score"]).persist(SavedDatasetFileStorage(path=out))
    print(json.dumps({"peak_mib": peak_resident_mib(), "rows": result.training_set.num_rows,
                      "fingerprint": result.training_set.fingerprint, "auc": result.metrics["auc"],
                      "model_version": result.model_version}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
