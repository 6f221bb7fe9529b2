"""A training-set retrieval whose driver must not grow with the data: `python -m tests.features.budget_retrieval
ROOT ADDRESS ENTITIES OUT` retrieves a wide feature for ENTITIES entity rows from the store over ROOT (set up by
`prepare`), attached to the Ray at ADDRESS, saves it as Parquet under OUT, and prints the driver's peak resident
memory."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from deltalake import write_deltalake
from feast import Entity, FeatureView, Field, ValueType
from feast.types import Int64, String

from engine.features.source import DeltaSource
from engine.layout import Layout
from tests.engine.budget_pipeline import peak_resident_mib

BASE = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
NOTE_BYTES = 4096
account = Entity(name="account", join_keys=["account_id"], value_type=ValueType.INT64)
notes = FeatureView(name="account_notes", entities=[account], ttl=dt.timedelta(days=30),
                    schema=[Field(name="account_id", dtype=Int64), Field(name="note", dtype=String),
                            Field(name="score", dtype=Int64)],
                    source=DeltaSource(table="gold.account_notes", timestamp_field="ts"))


def prepare(root: Path, accounts: int) -> None:
    """The feature table: one row per account, a `NOTE_BYTES` note and a score; the store over `root` applied."""
    from engine.features.repo import apply_repo, open_store

    ids = np.arange(accounts)
    write_deltalake(Layout.at(str(root)).table("gold.account_notes"), pa.table({
        "account_id": pa.array(ids, pa.int64()), "ts": pa.array([BASE] * accounts, pa.timestamp("us", tz="UTC")),
        "note": pa.array(np.full(accounts, "n" * NOTE_BYTES)), "score": pa.array(ids * 7, pa.int64())}))
    apply_repo(open_store(str(root), overrides={"project": "budget"}), [account, notes])


def entities(rows: int) -> pd.DataFrame:
    """An entity row per account, a day after its feature row."""
    return pd.DataFrame({"account_id": np.arange(rows), "event_timestamp": pd.Timestamp(BASE + dt.timedelta(days=1))})


def main(root: str, address: str, rows: int, out: str) -> None:
    from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

    from engine.features.repo import open_store
    from engine.runtime import join_ray

    join_ray(address, logging_level="ERROR")
    store = open_store(root, overrides={"project": "budget"})
    job = store.get_historical_features(entity_df=entities(rows), features=["account_notes:note", "account_notes:score"])
    job.persist(SavedDatasetFileStorage(path=out))
    print(json.dumps({"peak_mib": peak_resident_mib()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
