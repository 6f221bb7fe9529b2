"""`DeltaOfflineStore`: Feast's offline store over Delta tables, reading through the Delta log on Ray.

Point-in-time joins hash the entity rows and the feature rows of each feature view into the same
partitions (one plain-Ray-task shuffle per set of join keys) and run a polars as-of join per partition.
Every retrieval (a point-in-time join, or a pull of the latest or all rows of a source) reads one snapshot
per table, resolved when the retrieval is created, and records the versions it used
(`DeltaRetrievalJob.table_versions`, and the lineage table under the root).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import ray
import ray.data
import ray.exceptions
from feast.feature_view import DUMMY_ENTITY_ID, FeatureView
from feast.infra.offline_stores.offline_store import OfflineStore, RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from feast.utils import _get_column_names
from pydantic import StrictStr

from engine.errors import FeatureStoreError
from engine.features import lineage
from engine.features.entities import EntityRows, KeyTarget, entity_rows
from engine.features.on_demand import with_on_demand_features
from engine.features.pit import CREATED_TS, FEATURE_TS, ROW, ViewJoin, as_of_join, latest_per_key
from engine.features.snapshot import Snapshot, read_snapshot
from engine.features.source import DeltaSource
from engine.partitioning import co_partition, map_partitions
from engine.runtime import ensure_ray, raised_in_task

log = logging.getLogger(__name__)

STORE_TYPE = "engine.features.offline.DeltaOfflineStore"


class DeltaOfflineStoreConfig(FeastConfigBaseModel):
    """Settings of the Delta offline store (`offline_store:` in the Feast configuration)."""

    type: Literal["engine.features.offline.DeltaOfflineStore"] = STORE_TYPE
    root: StrictStr
    """The storage root: `DeltaSource` tables resolve to `<root>/<layer>/<name>`."""
    ray_address: StrictStr | None = None
    """The Ray cluster to use when Ray is not initialised yet (default `$RAY_ADDRESS`, else a private one)."""
    partitions: int | None = None
    """Hash partitions of a point-in-time join (default: twice the cluster's CPUs)."""
    record_lineage: bool = True
    """Append the table versions every retrieval used to `<root>/_meta/features/lineage`."""


def delta_source(view: FeatureView) -> DeltaSource:
    """The view's batch source, which must be a `DeltaSource`.

    Raises:
        FeatureStoreError: it is another kind of source.
    """
    source = view.batch_source
    if not isinstance(source, DeltaSource):
        raise FeatureStoreError(f"feature view `{view.name}` reads a {type(source).__name__}; the Delta offline "
                                "store serves only `DeltaSource` views (engine.features.DeltaSource)",
                                feature=view.name)
    return source


def store_config(config: RepoConfig) -> DeltaOfflineStoreConfig:
    """The offline store settings, checked to be this store's."""
    offline = config.offline_store
    if not isinstance(offline, DeltaOfflineStoreConfig):
        raise FeatureStoreError(f"the Feast configuration uses the offline store `{offline.type}`; set "
                                f"`offline_store.type: {STORE_TYPE}` with a `root`")
    return offline


class DeltaRetrievalJob(RetrievalJob):
    """A retrieval whose table snapshots were fixed when it was created; runs on Ray when converted: to a Ray
    Dataset whose blocks stay in the cluster (`to_ray_dataset`, `persist` to Parquet), or collected in this
    process (`to_arrow`, `to_df`)."""

    def __init__(
        self,
        build: Callable[[], ray.data.Dataset],
        snapshots: Sequence[Snapshot],
        *,
        ray_address: str | None,
        order_by: str | None = None,
        columns: Sequence[str] | None = None,
        full_feature_names: bool = False,
        on_demand_feature_views: Sequence[OnDemandFeatureView] = (),
        metadata: RetrievalMetadata | None = None,
        on_done: Callable[[int], None] | None = None,
    ) -> None:
        self._build = build
        self._snapshots = tuple(snapshots)
        self._ray_address = ray_address
        self._order_by = order_by
        self._columns = list(columns) if columns is not None else None
        self._full_feature_names = full_feature_names
        self._odfvs = list(on_demand_feature_views)
        self._metadata = metadata
        self._on_done = on_done

    @property
    def table_versions(self) -> dict[str, int]:
        """The Delta version of every table this retrieval reads."""
        return {s.table: s.version for s in self._snapshots}

    @property
    def full_feature_names(self) -> bool:
        """Whether feature columns are named `view__feature`."""
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        """On-demand views Feast computes on the result."""
        return self._odfvs

    @property
    def metadata(self) -> RetrievalMetadata | None:
        """Requested features, entity keys and the entity time range."""
        return self._metadata

    def to_ray_dataset(self) -> ray.data.Dataset:
        """The result as a materialized Ray Dataset, in the entity rows' order for a historical retrieval, with
        its on-demand features computed by Ray tasks: its blocks stay in the cluster's object store, and no row
        comes to this process."""
        ensure_ray(self._ray_address)
        with task_errors(self._snapshots):
            rows = self._build()
            if self._order_by is not None:
                rows = rows.sort(self._order_by)
            if self._columns is not None:
                rows = rows.select_columns(self._columns)
            if self._odfvs:
                rows = rows.map_batches(with_on_demand_features, batch_format="pyarrow", fn_kwargs={
                    "views": self._odfvs, "full_feature_names": self._full_feature_names,
                    "metadata": self._metadata})
            rows = rows.materialize()
        self._done(rows.count())
        return rows

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        ensure_ray(self._ray_address)
        with task_errors(self._snapshots):
            table = collect(self._build())
        if self._order_by is not None:
            table = table.sort_by(self._order_by)
        if self._columns is not None:
            table = table.select(self._columns)
        self._done(table.num_rows)
        return table

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def persist(self, storage: Any, allow_overwrite: bool = False, timeout: int | None = None) -> None:
        """Write the result to the Parquet folder of a `SavedDatasetFileStorage`, from Ray's workers (no row
        comes to this process).

        Raises:
            FeatureStoreError: the storage is of another kind, or its folder holds files and `allow_overwrite`
                is off.
        """
        import pyarrow.fs as pafs
        from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

        from engine.storage import filesystem_of

        if not isinstance(storage, SavedDatasetFileStorage):
            raise FeatureStoreError(f"the Delta offline store saves a retrieval to Parquet files only "
                                    f"(`SavedDatasetFileStorage`), not to a {type(storage).__name__}; or write "
                                    "`job.to_ray_dataset()` where you like")
        path = storage.file_options.uri
        filesystem, folder = filesystem_of(path)
        exists = filesystem.get_file_info(folder).type != pafs.FileType.NotFound
        if exists and not allow_overwrite:
            raise FeatureStoreError(f"`{path}` exists; pass allow_overwrite=True to replace it")
        if exists:
            filesystem.delete_dir_contents(folder)
        self.to_ray_dataset().write_parquet(path)

    def _done(self, rows: int) -> None:
        if self._on_done is not None:
            self._on_done(rows)


@dataclass(frozen=True)
class _ViewPlan:
    """What one feature view contributes to a point-in-time join."""

    name: str
    snapshot: Snapshot
    columns: tuple[str, ...]
    rename: dict[str, str]
    join: ViewJoin


class DeltaOfflineStore(OfflineStore):
    """Feast offline store over `DeltaSource` tables; every read goes through the Delta log, on Ray."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | ray.data.Dataset | str | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        **kwargs: Any,
    ) -> RetrievalJob:
        """Point-in-time join of `feature_refs` onto `entity_df` (see `engine.features.pit.as_of_join`): a
        DataFrame, or a Ray Dataset whose rows stay in the cluster (`engine.features.entities`)."""
        settings = store_config(config)
        if not isinstance(entity_df, (pd.DataFrame, ray.data.Dataset)):
            raise FeatureStoreError("historical retrieval needs entity rows: a DataFrame or a Ray Dataset (entity "
                                    "columns and an event timestamp column); SQL entity queries and time-range "
                                    "retrievals are not supported by the Delta offline store")
        plans = [_plan_view(settings.root, view, feature_refs, registry, project, full_feature_names)
                 for view in feature_views]
        plans = [plan for plan in plans if plan.join.features]
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        outputs = [f for plan in plans for f in plan.join.features]
        requests = {field: view.name for view in odfvs for field in view.get_request_data_schema()}
        entities = entity_rows(entity_df, [target for plan in plans for target in _key_targets(plan)], outputs,
                               requests)
        metadata = RetrievalMetadata(
            features=feature_refs,
            keys=[c for c in entities.columns if c != entities.time_column],
            min_event_timestamp=entities.first,
            max_event_timestamp=entities.last,
        )
        snapshots = [plan.snapshot for plan in plans]
        return DeltaRetrievalJob(lambda: _run_join(entities, plans, settings.partitions), snapshots,
                                 ray_address=settings.ray_address, order_by=ROW, columns=[*entities.columns, *outputs],
                                 full_feature_names=full_feature_names, on_demand_feature_views=odfvs,
                                 metadata=metadata,
                                 on_done=_recorder(settings, "historical", snapshots, [p.name for p in plans]))

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: Any,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: dt.datetime,
        end_date: dt.datetime,
    ) -> RetrievalJob:
        """The latest row per key with its event time in `[start_date, end_date]`."""
        settings = store_config(config)
        snapshot = _source(data_source).snapshot(settings.root)
        return DeltaRetrievalJob(
            lambda: latest_rows(snapshot, join_key_columns, feature_name_columns, timestamp_field,
                                created_timestamp_column, start_date, end_date),
            [snapshot], ray_address=settings.ray_address, on_done=_recorder(settings, "pull_latest", [snapshot]))

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: Any,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: dt.datetime | None = None,
        end_date: dt.datetime | None = None,
    ) -> RetrievalJob:
        """Every row with its event time in `[start_date, end_date]`."""
        settings = store_config(config)
        snapshot = _source(data_source).snapshot(settings.root)
        columns = _unique([*join_key_columns, *feature_name_columns, timestamp_field, created_timestamp_column])
        return DeltaRetrievalJob(
            lambda: read_snapshot(snapshot, columns, time_column=timestamp_field, start=utc(start_date),
                                  end=utc(end_date)),
            [snapshot], ray_address=settings.ray_address, on_done=_recorder(settings, "pull_all", [snapshot]))

    @staticmethod
    def validate_data_source(config: RepoConfig, data_source: Any) -> None:
        """Check the source's table exists under the root with its timestamp columns."""
        _source(data_source).validate(config)


def latest_rows(
    snapshot: Snapshot,
    keys: Sequence[str],
    features: Sequence[str],
    time_column: str,
    created_column: str | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    *,
    rename: dict[str, str] | None = None,
    hash_columns: Sequence[str] = (),
    partitions: int | None = None,
) -> ray.data.Dataset:
    """The latest row per key of `snapshot` with its event time in `[start, end]`, hash-partitioned by key.

    `rename` maps source columns to output names (the time columns keep theirs); `hash_columns` (output
    names) adds a `__row_hash` column.
    """
    columns = _unique([*keys, *features, time_column, created_column])
    rows = read_snapshot(snapshot, columns, rename=rename, time_column=time_column, start=utc(start),
                         end=utc(end))
    out_keys = [(rename or {}).get(k, k) for k in keys]
    return map_partitions(rows, out_keys, latest_per_key, num_partitions=partitions,
                          fn_kwargs={"keys": out_keys, "time_column": time_column,
                                     "created_column": created_column, "hash_columns": list(hash_columns)})


def utc(moment: dt.datetime | None) -> dt.datetime | None:
    """`moment` as an aware UTC datetime (a naive one is taken as UTC)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def collect(rows: ray.data.Dataset) -> pa.Table:
    """All blocks of `rows` on the driver."""
    return pa.concat_tables(ray.get(rows.to_arrow_refs()), promote_options="permissive")


@contextmanager
def task_errors(snapshots: Sequence[Snapshot]) -> Iterator[None]:
    """Turn a failed Ray task into a `FeatureStoreError` naming the table versions being read.

    Raises:
        FeatureStoreError: a Ray task failed in the block.
    """
    try:
        yield
    except ray.exceptions.RayTaskError as err:
        cause = raised_in_task(err)
        if isinstance(cause, FeatureStoreError):
            raise cause from None
        read = ", ".join(f"`{s.table}` version {s.version}" for s in snapshots)
        raise FeatureStoreError(f"reading {read} failed in a Ray task: {cause!r}; a version whose files were "
                                "vacuumed cannot be read any more", table=snapshots[0].table if snapshots else None,
                                ) from err


def _recorder(settings: DeltaOfflineStoreConfig, kind: str, snapshots: Sequence[Snapshot],
              views: Sequence[str] = ()) -> Callable[[int], None]:
    """Records a finished retrieval of `snapshots` and its row count in the lineage table (when `record_lineage` is
    on)."""

    def record(rows: int) -> None:
        if settings.record_lineage:
            lineage.record(settings.root, kind, snapshots, rows, views=views)

    return record


def _source(data_source: Any) -> DeltaSource:
    if not isinstance(data_source, DeltaSource):
        raise FeatureStoreError(f"data source `{getattr(data_source, 'name', data_source)}` is a "
                                f"{type(data_source).__name__}; the Delta offline store reads only `DeltaSource`")
    return data_source


def _unique(names: Sequence[str | None]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n))


def _plan_view(root: str, view: FeatureView, feature_refs: Sequence[str], registry: BaseRegistry, project: str,
               full_feature_names: bool) -> _ViewPlan:
    source = delta_source(view)
    name = view.projection.name_to_use()
    wanted = [ref.split(":", 1)[1] for ref in feature_refs if ref.split(":", 1)[0] == name]
    known = {f.name for f in view.features}
    unknown = [f for f in wanted if f not in known]
    if unknown:
        raise FeatureStoreError(f"feature view `{name}` has no feature(s) {unknown}; it has {sorted(known)}",
                                feature=name)
    entities = [registry.get_entity(e, project) for e in view.entities]
    source_keys, _, source_time, source_created = _get_column_names(view, entities)
    if not source_keys:
        raise FeatureStoreError(f"feature view `{name}` has no entity; the Delta offline store joins on entity keys",
                                feature=name)
    reverse = {v: k for k, v in source.field_mapping.items()}
    entity_keys = [view.projection.join_key_map.get(e.join_key, e.join_key) for e in entities
                   if e.join_key != DUMMY_ENTITY_ID]
    rename = dict(zip(source_keys, entity_keys)) | {source_time: FEATURE_TS}
    if source_created:
        rename[source_created] = CREATED_TS
    outputs = []
    for feature in wanted:
        out = f"{name}__{feature}" if full_feature_names else feature
        rename[reverse.get(feature, feature)] = out
        outputs.append(out)
    columns = _unique([*source_keys, source_time, source_created, *[reverse.get(f, f) for f in wanted]])
    ttl = int(view.ttl.total_seconds() * 1_000_000) if view.ttl else None
    join = ViewJoin(f"view__{name}", tuple(entity_keys), tuple(outputs), ttl, bool(source_created))
    return _ViewPlan(name, source.snapshot(root), tuple(columns), rename, join)


def _key_targets(plan: _ViewPlan) -> list[KeyTarget]:
    """The view's join keys and the types of its table's key columns."""
    source_of = {out: src for src, out in plan.rename.items()}
    return [KeyTarget(key, plan.name, plan.snapshot.table, plan.snapshot.schema.field(source_of[key]).type)
            for key in plan.join.keys]


def _run_join(entities: EntityRows, plans: Sequence[_ViewPlan], partitions: int | None) -> ray.data.Dataset:
    """Join every plan onto the entity rows: one co-partitioned as-of join per set of join keys; unordered."""
    groups: dict[tuple[str, ...], list[_ViewPlan]] = {}
    for plan in plans:
        groups.setdefault(plan.join.keys, []).append(plan)
    current = entities.dataset()
    for keys, group in groups.items():
        inputs = {"entities": current} | {
            plan.join.input: read_snapshot(plan.snapshot, plan.columns, rename=plan.rename) for plan in group}
        current = co_partition(inputs, list(keys), as_of_join, num_partitions=partitions,
                               fn_kwargs={"views": [plan.join for plan in group]})
    return current
