"""A data subject's rows out of Feast's online store: every feature view keyed by the subject column."""

from __future__ import annotations

from feast import FeatureStore
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType

from engine.features import online


def erase_entity(store: FeatureStore, column: str, value: str) -> list[str]:
    """Delete the online rows of entity `column` = `value` from every online view keyed by `column` alone,
    then compact a SQLite store so the deleted rows leave the file; returns the views concerned."""
    provider = store._get_provider()
    views = [v for v in store.list_feature_views() if v.online and list(v.join_keys) == [column]]
    for view in views:
        value_type = next(c.dtype.to_value_type() for c in view.entity_columns if c.name == column)
        typed = int(value) if value_type in (ValueType.INT32, ValueType.INT64) else value
        key = EntityKeyProto(join_keys=[column], entity_values=python_values_to_proto_values([typed], value_type))
        online.delete_entities(store.config, provider.online_store, view, [key])
    if views and isinstance(provider.online_store, SqliteOnlineStore):
        provider.online_store._get_conn(store.config).execute("VACUUM")
    return [v.name for v in views]
