"""What Feast's online store interface lacks: deleting entity rows of one feature view, and counting them.

Implemented for the SQLite and Redis online stores, over their storage formats (`docs/features.md`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from feast import FeatureView, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key, serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3, _redis_key, compute_table_id, compute_versioned_name
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto

from engine.errors import FeatureStoreError

SCAN_BATCH = 1000
IDENTITY = ("type", "redis_type", "sentinel_master", "path", "host", "port", "database", "db_schema", "user")
"""Online store settings that tell one store from another; none is a secret."""


def store_identity(config: RepoConfig) -> dict[str, Any]:
    """What tells the online store of `config` from others, without a secret: its type, file path, hosts and
    ports, database (the Redis db number), schema and user; never its password, nor tuning such as TTLs."""
    settings = config.online_store.model_dump(mode="json")
    identity = {key: settings[key] for key in IDENTITY if settings.get(key) is not None}
    connection = settings.get("connection_string")
    if isinstance(connection, str):  # Redis: `host:port[,host:port...][,db=1][,password=...][,ssl=true]`
        parts = [part.strip() for part in connection.split(",")]
        identity["nodes"] = sorted(part for part in parts if "=" not in part)
        identity["db"] = next((part.partition("=")[2] for part in parts if part.startswith("db=")), "0")
    return identity


def supports(online_store: OnlineStore) -> bool:
    """Whether entity rows can be deleted from and counted in this online store."""
    return isinstance(online_store, SqliteOnlineStore | RedisOnlineStore)


def delete_entities(config: RepoConfig, online_store: OnlineStore, view: FeatureView,
                    keys: Sequence[EntityKeyProto]) -> None:
    """Remove the rows of `view` for `keys` from the online store (other views' rows stay)."""
    if not keys:
        return
    if isinstance(online_store, SqliteOnlineStore):
        table = _sqlite_table(config, view)
        connection = online_store._get_conn(config)
        with connection:
            connection.executemany(f'DELETE FROM "{table}" WHERE entity_key = ?',
                                   [(_serialized(config, key),) for key in keys])
    elif isinstance(online_store, RedisOnlineStore):
        client = online_store._get_client(config.online_store)
        fields = _redis_fields(config, view)
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hdel(_redis_key(config.project, key, config.entity_key_serialization_version), *fields)
            pipe.execute()
    else:
        raise _unsupported(config, view)


def count_rows(config: RepoConfig, online_store: OnlineStore, view: FeatureView) -> int:
    """Entities that have a row of `view` in the online store."""
    if isinstance(online_store, SqliteOnlineStore):
        table = _sqlite_table(config, view)
        connection = online_store._get_conn(config)
        exists = connection.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                                    (table,)).fetchone()[0]
        if not exists:
            return 0
        return int(connection.execute(f'SELECT count(DISTINCT entity_key) FROM "{table}"').fetchone()[0])
    if isinstance(online_store, RedisOnlineStore):
        client = online_store._get_client(config.online_store)
        marker = f"_ts:{compute_versioned_name(view, config.registry.enable_online_feature_view_versioning)}"
        pattern = serialize_entity_key_prefix(view.join_keys, config.entity_key_serialization_version) + b"*" + \
            config.project.encode()
        total, batch = 0, []
        for key in client.scan_iter(match=pattern, count=SCAN_BATCH):
            batch.append(key)
            if len(batch) == SCAN_BATCH:
                total += _count_marked(client, batch, marker)
                batch = []
        return total + _count_marked(client, batch, marker)
    raise _unsupported(config, view)


def _count_marked(client: object, keys: list[bytes], marker: str) -> int:
    if not keys:
        return 0
    with client.pipeline(transaction=False) as pipe:  # type: ignore[attr-defined]
        for key in keys:
            pipe.hexists(key, marker)
        return sum(1 for present in pipe.execute() if present)


def _serialized(config: RepoConfig, key: EntityKeyProto) -> bytes:
    return serialize_entity_key(key, entity_key_serialization_version=config.entity_key_serialization_version)


def _sqlite_table(config: RepoConfig, view: FeatureView) -> str:
    return compute_table_id(config.project, view, config.registry.enable_online_feature_view_versioning)


def _redis_fields(config: RepoConfig, view: FeatureView) -> list[bytes | str]:
    name = compute_versioned_name(view, config.registry.enable_online_feature_view_versioning)
    return [_mmh3(f"{name}:{feature.name}") for feature in view.features] + [f"_ts:{name}"]


def _unsupported(config: RepoConfig, view: FeatureView) -> FeatureStoreError:
    return FeatureStoreError(f"online store `{config.online_store.type}` cannot delete or count rows of feature view "
                             f"`{view.name}`; use the `sqlite` or `redis` online store", feature=view.name)
