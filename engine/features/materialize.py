"""Materialization: make the online store hold, for every entity, the features a point-in-time lookup at
`end` returns from the current Delta version, and nothing else.

The desired rows (the latest row per entity with its event time in `[end - ttl, end]`) are read through
the Delta log on Ray and compared, partition by partition, with the state of the previous
materialization (entity keys, event time and a hash of the values, kept as a Delta table under
`<root>/_meta/features/state/`). Only new and changed rows are written; a changed row's old entry is
deleted first (Redis skips writes that are not newer than what it holds); entities that left the table,
or whose latest row fell out of the TTL, are deleted. Every written row is read back (event time and a
hash of its values compared) and the online row count checked before the run is reported as done.
Without a state (first run, or a full rebuild) the view's online rows are dropped and all desired rows
written. The table version read is pinned while the materialization runs, so a vacuum meanwhile keeps
its files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from deltalake import CommitProperties, DeltaTable, write_deltalake
from feast import FeatureStore, FeatureView, RepoConfig
from feast.feature_view import DUMMY_ENTITY_ID
from feast.infra.online_stores.helpers import get_online_store_from_config
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.infra.registry.base_registry import BaseRegistry
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.utils import _build_entity_keys, _columns_to_proto_values, _convert_arrow_to_proto, _get_column_names

from engine.arrow import to_storage
from engine.config import StorageSettings
from engine.errors import FeatureStoreError
from engine.features import lineage, online
from engine.features.offline import delta_source, latest_rows, store_config, task_errors, utc
from engine.features.pit import ROW_HASH
from engine.layout import Layout
from engine.maintenance.pins import pinned
from engine.partitioning import co_partition
from engine.runtime import ensure_ray
from engine.storage import delete_tree
from engine.tables.delta import METADATA_PREFIX, commit_files, read_dataset
from engine.tables.delta_files import add_actions
from engine.tables.files import DataFile, RollingParquetWriter, discard_files

ACTION = "__action"
WRITE, REWRITE, KEEP, DELETE = "write", "rewrite", "keep", "delete"
STATE_TIME = "__event_ts"
META_VERSION = "medallion.source_version"
META_END = "medallion.end"
META_TABLE = "medallion.table"
META_VIEW = "medallion.view_fingerprint"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
"""Redis answers a key it does not hold with this event time and empty values."""
OnlineRow = tuple[EntityKeyProto, dict[str, ValueProto], dt.datetime, dt.datetime | None]
"""One row as Feast writes it to an online store: entity key, feature values, event and created time."""


@dataclass(frozen=True)
class MaterializationReport:
    """What one materialization of a feature view did.

    Attributes:
        view: the feature view.
        table: its source table, read at `version`.
        version: the Delta version materialized.
        end: the point in time the online rows represent.
        incremental: whether only changes since the previous materialization were applied.
        written: rows written (new entities, or changed values).
        deleted: entities removed (gone from the table, or older than the TTL at `end`).
        unchanged: rows already online as they are.
        online_rows: rows of the view in the online store afterwards (checked).
    """

    view: str
    table: str
    version: int
    end: dt.datetime
    incremental: bool
    written: int
    deleted: int
    unchanged: int
    online_rows: int


def materialize(store: FeatureStore, *, end: dt.datetime | None = None, incremental: bool = False,
                views: Sequence[str] | None = None,
                on_view: Callable[[str | None, int, int], None] | None = None) -> list[MaterializationReport]:
    """Materialize the online feature views (`views`, default all) of `store` as of `end` (default now).

    `on_view(view, done, total)` is called before each view (with the views done so far) and once at the end
    with None (progress reporting).

    Raises:
        FeatureStoreError: a view is unknown, its table unreadable, or the online store did not end up
            holding exactly the desired rows.
    """
    end = utc(end) or dt.datetime.now(dt.UTC)
    known = {v.name: v for v in store.list_feature_views() if v.online}
    unknown = sorted(set(views or ()) - set(known))
    if unknown:
        raise FeatureStoreError(f"no online feature view(s) {unknown} in project `{store.project}`; known: "
                                f"{sorted(known)} (run `medallion features apply` after changing definitions)",
                                feature=unknown[0])
    provider = store._get_provider()
    reports = []
    names = list(views or sorted(known))
    for done, name in enumerate(names):
        if on_view is not None:
            on_view(name, done, len(names))
        view = known[name]
        report = sync_view(store.config, provider.online_store, store.registry, view, end, reset=not incremental)
        start = end - view.ttl if view.ttl else dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        store.registry.apply_materialization(view, store.project, start, end)
        reports.append(report)
    if on_view is not None:
        on_view(None, len(names), len(names))
    return reports


def sync_view(config: RepoConfig, online_store: OnlineStore, registry: BaseRegistry, view: FeatureView,
              end: dt.datetime, *, reset: bool) -> MaterializationReport:
    """Bring the online rows of `view` to the state at `end` of its table's current version (see module doc).

    Raises:
        FeatureStoreError: the online store cannot delete rows, or does not hold the desired rows afterwards.
    """
    if not online.supports(online_store):
        raise FeatureStoreError(f"materializing `{view.name}` needs an online store that can delete rows "
                                f"(sqlite or redis), not `{config.online_store.type}`", feature=view.name)
    settings = store_config(config)
    end = utc(end)
    assert end is not None
    snapshot = delta_source(view).snapshot(settings.root)
    state_uri = _migrated_state(config, view, keep=not reset)
    marker = (snapshot.version, end.isoformat(), _fingerprint(view))
    previous = None if reset else _state_marker(state_uri)
    ensure_ray(settings.ray_address)
    if previous == marker:
        rows = _state_rows(state_uri)
        _check_count(config, online_store, view, rows)
        return MaterializationReport(view.name, snapshot.table, snapshot.version, end, True, 0, 0, rows, rows)

    entities = [registry.get_entity(e, config.project) for e in view.entities]
    source_keys, source_features, time_column, created_column = _get_column_names(view, entities)
    keys = [e.join_key for e in entities if e.join_key != DUMMY_ENTITY_ID]
    mapping = dict(zip(source_keys, keys)) | {f: view.batch_source.field_mapping.get(f, f) for f in source_features}
    features = [mapping[f] for f in source_features]
    hashed = [*features, time_column] + ([created_column] if created_column else [])
    start = end - view.ttl if view.ttl else None
    with task_errors([snapshot]), pinned(Layout.at(settings.root), snapshot.table, snapshot.version,
                                         who=f"materialization of feature view {view.name}"):
        desired = latest_rows(snapshot, source_keys, source_features, time_column, created_column, start, end,
                              rename=mapping, hash_columns=hashed, partitions=settings.partitions)
        if previous is None:
            _drop_online_rows(config, online_store, view)
            state = ray.data.from_arrow(_empty_state(desired, keys))
        else:
            state = read_dataset(state_uri, f"state of feature view {view.name}")
        changes = co_partition({"desired": desired, "state": state}, keys, diff_state,
                               num_partitions=settings.partitions, fn_kwargs={"keys": keys})
        outcome = _apply_changes(config, view, changes.to_arrow_refs(), keys, time_column, state_uri,
                                 sequential=isinstance(online_store, SqliteOnlineStore))
    if outcome["mismatched"]:
        discard_files(state_uri, outcome["state"])
        raise FeatureStoreError(f"materializing `{view.name}`: {outcome['mismatched']} row(s) did not reach the "
                                f"online store as written (of {outcome['written']} written, {outcome['deleted']} "
                                "deleted); nothing was recorded, run the materialization again without --incremental",
                                feature=view.name, table=snapshot.table)
    try:
        _check_count(config, online_store, view, outcome["rows"])
    except FeatureStoreError:
        discard_files(state_uri, outcome["state"])
        raise
    _commit_state(state_uri, outcome["state"], _empty_state(desired, keys).schema, snapshot.table, marker)
    lineage.record(settings.root, "materialize", [snapshot], outcome["written"], views=[view.name])
    return MaterializationReport(view.name, snapshot.table, snapshot.version, end, previous is not None,
                                 outcome["written"], outcome["deleted"], outcome["rows"] - outcome["written"],
                                 outcome["rows"])


def diff_state(desired: pa.Table, state: pa.Table, keys: Sequence[str]) -> pa.Table:
    """The desired rows tagged `write` (new key), `rewrite` (changed values) or `keep`, plus `delete` rows
    for keys of the previous state that are no longer desired."""
    want = pl.from_arrow(desired)
    had = pl.from_arrow(state).select([*keys, pl.col(ROW_HASH).alias("__old_hash")])
    assert isinstance(want, pl.DataFrame) and isinstance(had, pl.DataFrame)
    tagged = want.join(had, on=list(keys), how="left", nulls_equal=False).with_columns(
        pl.when(pl.col("__old_hash").is_null()).then(pl.lit(WRITE))
        .when(pl.col("__old_hash") != pl.col(ROW_HASH)).then(pl.lit(REWRITE))
        .otherwise(pl.lit(KEEP)).alias(ACTION)).drop("__old_hash")
    gone = had.join(want.select(keys), on=list(keys), how="anti").select(keys).with_columns(
        pl.lit(DELETE).alias(ACTION))
    return pl.concat([tagged, gone], how="diagonal_relaxed").to_arrow()


def _apply_changes(config: RepoConfig, view: FeatureView, parts: list[ray.ObjectRef], keys: Sequence[str],
                   time_column: str, state_uri: str, *, sequential: bool) -> dict[str, Any]:
    """Apply every partition's changes in Ray tasks (one at a time for SQLite, whose file has one writer); each
    writes its part of the new state as files of the state table (`state`: their list, not committed)."""
    prefix = f"state-{uuid.uuid4().hex[:8]}"
    tasks = (_apply_partition.remote(part, config, view, list(keys), time_column, state_uri, prefix)
             for part in parts)
    results = [ray.get(task) for task in tasks] if sequential else ray.get(list(tasks))
    return {
        "written": sum(r["written"] for r in results),
        "deleted": sum(r["deleted"] for r in results),
        "mismatched": sum(r["mismatched"] for r in results),
        "rows": sum(r["rows"] for r in results),
        "state": [file for r in results for file in r["state"]],
    }


@ray.remote
def _apply_partition(changes: pa.Table, config: RepoConfig, view: FeatureView, keys: list[str],
                     time_column: str, state_uri: str, prefix: str) -> dict[str, Any]:
    """Delete, write and read back one partition's changed rows; return counts and the files of its part of the
    new state, written under `state_uri`."""
    store = get_online_store_from_config(config.online_store)
    key_types = {c.name: c.dtype.to_value_type() for c in view.entity_columns if c.name in keys}
    actions = changes.column(ACTION) if changes.num_rows else pa.array([], pa.string())
    stale = changes.filter(pc.is_in(actions, pa.array([REWRITE, DELETE])))
    fresh = changes.filter(pc.is_in(actions, pa.array([WRITE, REWRITE])))
    gone = changes.filter(pc.equal(actions, DELETE))
    online.delete_entities(config, store, view, _entity_keys(stale, key_types))
    written = _convert_arrow_to_proto(_one_batch(fresh), view, key_types) if fresh.num_rows else []
    if written:
        store.online_write_batch(config, view, written, None)
    mismatched = _unwritten(config, store, view, written, fresh.column(time_column))
    mismatched += _undeleted(config, store, view, _entity_keys(gone, key_types))
    kept = changes.filter(pc.not_equal(actions, DELETE)) if changes.num_rows else changes
    writer = RollingParquetWriter(state_uri, StorageSettings(), prefix)
    if kept.num_rows:
        writer.write(to_storage(kept.select([*keys, time_column, ROW_HASH]).rename_columns(
            [*keys, STATE_TIME, ROW_HASH])))
    return {"written": fresh.num_rows, "deleted": gone.num_rows, "mismatched": mismatched, "rows": kept.num_rows,
            "state": writer.close()}


def _unwritten(config: RepoConfig, store: OnlineStore, view: FeatureView, written: list[OnlineRow],
               times: pa.ChunkedArray) -> int:
    """Written rows (event times `times`) whose online entry differs from what was written: its event time,
    or a value (compared by a hash of the row's serialized values)."""
    if not written:
        return 0
    found = store.online_read(config, view, [key for key, _, _, _ in written])
    stored = pa.array([ts if ts is not None and ts != EPOCH else None for ts, _ in found],
                      pa.timestamp("us", tz="UTC"))
    expected = times.combine_chunks().cast(pa.timestamp("us", tz="UTC"))
    same_time = pc.equal(_seconds(stored), _seconds(expected))
    same_values = pc.equal(pa.array([_row_digest(values) for _, values, _, _ in written], pa.binary()),
                           pa.array([_row_digest(values) for _, values in found], pa.binary()))
    same = pc.fill_null(pc.and_(same_time, same_values), False)
    return int(np.count_nonzero(~same.to_numpy(zero_copy_only=False)))


def _undeleted(config: RepoConfig, store: OnlineStore, view: FeatureView, keys: list[EntityKeyProto]) -> int:
    """Deleted keys that still have an online entry."""
    if not keys:
        return 0
    return sum(1 for ts, _ in store.online_read(config, view, keys) if ts is not None and ts != EPOCH)


def _row_digest(values: Mapping[str, ValueProto] | None) -> bytes | None:
    """A hash of one online row's feature values as the online store serializes them; None for no row."""
    if values is None:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(values):
        digest.update(name.encode())
        digest.update(values[name].SerializeToString(deterministic=True))
    return digest.digest()


def _seconds(times: pa.Array) -> pa.Array:
    """Timestamps truncated to seconds, the precision some online stores keep."""
    return pc.floor_temporal(times, unit="second")


def _entity_keys(rows: pa.Table, key_types: dict[str, Any]) -> list[EntityKeyProto]:
    if not rows.num_rows:
        return []
    values = _columns_to_proto_values(_one_batch(rows), list(key_types.items()), allow_missing=False)
    return _build_entity_keys(rows.num_rows, key_types, values)


def _one_batch(rows: pa.Table) -> pa.RecordBatch:
    """The table as one record batch: Feast's converters read only the first batch of a table."""
    return rows.combine_chunks().to_batches()[0]


def _drop_online_rows(config: RepoConfig, online_store: OnlineStore, view: FeatureView) -> None:
    online_store.update(config, tables_to_delete=[view], tables_to_keep=[], entities_to_delete=[],
                        entities_to_keep=[], partial=True)
    online_store.update(config, tables_to_delete=[], tables_to_keep=[view], entities_to_delete=[],
                        entities_to_keep=[], partial=True)


def _check_count(config: RepoConfig, online_store: OnlineStore, view: FeatureView, expected: int) -> None:
    found = online.count_rows(config, online_store, view)
    if found != expected:
        raise FeatureStoreError(f"feature view `{view.name}` has {found} rows in the online store where {expected} "
                                "were expected (rows were skipped, or changed by another writer); run `medallion "
                                "features materialize` without --incremental to rebuild it", feature=view.name)


def state_folder(config: RepoConfig, view: FeatureView) -> str:
    """State of one view in one online store; stores are told apart by a hash of what identifies them
    (`online.store_identity`), never of their password."""
    identity = json.dumps(online.store_identity(config), sort_keys=True)
    return _folder(config, view, hashlib.sha1(identity.encode()).hexdigest()[:12])


def legacy_state_folder(config: RepoConfig, view: FeatureView) -> str:
    """Where the state used to be kept: under a hash of every online store setting, the password included."""
    settings = json.dumps(config.online_store.model_dump(mode="json"), sort_keys=True)
    return _folder(config, view, hashlib.sha1(settings.encode()).hexdigest()[:12])


def _folder(config: RepoConfig, view: FeatureView, store_id: str) -> str:
    return f"{Layout.at(store_config(config).root).feature_state()}/{config.project}/{store_id}/{view.name}"


def _migrated_state(config: RepoConfig, view: FeatureView, *, keep: bool) -> str:
    """`state_folder`, given the state of the legacy folder when it has none yet and `keep` (an incremental run),
    and the legacy folder deleted: an incremental run then only writes changes instead of rebuilding the view."""
    uri, legacy = state_folder(config, view), legacy_state_folder(config, view)
    if legacy == uri or not DeltaTable.is_deltatable(legacy):
        return uri
    marker = _state_marker(legacy)
    if keep and marker is not None and not DeltaTable.is_deltatable(uri):
        table = DeltaTable(legacy)
        _write_state(uri, table.to_pyarrow_table(), str(table.history(1)[0].get(META_TABLE, "")), marker)
    delete_tree(legacy)
    return uri


def _state_marker(uri: str) -> tuple[int, str, str] | None:
    """The source version, end and view fingerprint of the previous materialization, None without one."""
    if not DeltaTable.is_deltatable(uri):
        return None
    commit = DeltaTable(uri).history(1)[0]
    if META_VERSION not in commit:
        return None
    return int(commit[META_VERSION]), str(commit[META_END]), str(commit.get(META_VIEW))


def _fingerprint(view: FeatureView) -> str:
    """A hash of what decides the online rows of `view`: its source, keys, features, types and TTL."""
    source = view.batch_source
    described = {
        "source": [getattr(source, "table", source.name), source.timestamp_field, source.created_timestamp_column,
                   sorted(source.field_mapping.items())],
        "entities": sorted(view.entities),
        "features": [(f.name, str(f.dtype)) for f in view.features],
        "ttl": view.ttl.total_seconds() if view.ttl else 0,
    }
    return hashlib.sha1(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _state_rows(uri: str) -> int:
    counts = add_actions(DeltaTable(uri)).column("num_records")
    return int(pc.sum(counts).as_py() or 0)


def _empty_state(desired: ray.data.Dataset, keys: Sequence[str]) -> pa.Table:
    schema = desired.schema().base_schema
    return pa.schema([*(schema.field(k) for k in keys), pa.field(STATE_TIME, pa.timestamp("us", tz="UTC")),
                      pa.field(ROW_HASH, pa.int64())]).empty_table()


def _commit_state(uri: str, files: Sequence[DataFile], schema: pa.Schema, table: str,
                  marker: tuple[int, str, str]) -> None:
    """Replace the state table with the files the partitions wrote, in one commit recording `marker`."""
    version, end, fingerprint = marker
    commit_files(uri, files, mode="overwrite", empty_schema=schema, metadata={
        META_VERSION.removeprefix(METADATA_PREFIX): str(version), META_END.removeprefix(METADATA_PREFIX): end,
        META_VIEW.removeprefix(METADATA_PREFIX): fingerprint, META_TABLE.removeprefix(METADATA_PREFIX): table})


def _write_state(uri: str, state: pa.Table | None, table: str, marker: tuple[int, str, str]) -> None:
    assert state is not None
    version, end, fingerprint = marker
    write_deltalake(uri, state, mode="overwrite", schema_mode="overwrite", commit_properties=CommitProperties(
        custom_metadata={META_VERSION: str(version), META_END: end, META_VIEW: fingerprint, META_TABLE: table}))
