"""A store over one wide feature table (a 4 KiB note and a score per account), for retrievals kept in the
cluster."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from deltalake import write_deltalake
from feast import Entity, FeatureView, Field, ValueType
from feast.types import Int64, String

from engine.features.source import DeltaSource
from engine.layout import Layout

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
