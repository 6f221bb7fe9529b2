"""A faulty SQLite online store: it drops, or alters a value of, the row of one entity in every write.

It stands for an online store that loses or corrupts writes; everything else about it is Feast's SQLite
store. It is configured by type (`online_store: {type: FAULTY, ...}`) rather than patched in, because the
materialization writes from Ray worker processes, which create their own online store from the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from feast import FeatureView, RepoConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

FAULTY = "tests.features.faulty.FaultySqliteOnlineStore"


class FaultySqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Feast's SQLite settings, plus the entity whose row goes wrong and how."""

    type: Literal["tests.features.faulty.FaultySqliteOnlineStore"] = FAULTY  # type: ignore[assignment]
    damaged_key: int
    """The int64 entity key whose row is damaged."""
    fault: Literal["drop", "alter"] = "drop"
    """`drop`: the row is not written; `alter`: its `altered_feature` (an int64) is written one too high."""
    altered_feature: str = "visits"


class FaultySqliteOnlineStore(SqliteOnlineStore):
    """Feast's SQLite online store, damaging the configured entity's row on every write."""

    def online_write_batch(self, config: RepoConfig, table: FeatureView, data: list[Any],
                           progress: Callable[[int], Any] | None) -> None:
        settings = config.online_store
        rows = []
        for key, values, event_ts, created_ts in data:
            if key.entity_values[0].int64_val == settings.damaged_key:
                if settings.fault == "drop":
                    continue
                values = {**values, settings.altered_feature: ValueProto(
                    int64_val=values[settings.altered_feature].int64_val + 1)}
            rows.append((key, values, event_ts, created_ts))
        super().online_write_batch(config, table, rows, progress)
