"""`DeltaSource`: a Feast data source naming a Delta table under the storage root, optionally at a version."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from feast.data_source import DataSource
from feast.protos.feast.core.DataSource_pb2 import DataSource as DataSourceProto
from feast.repo_config import RepoConfig
from feast.type_map import pa_to_feast_value_type
from feast.value_type import ValueType

from engine.errors import FeatureStoreError
from engine.features.snapshot import Snapshot, open_snapshot, resolve_version

CLASS_PATH = "engine.features.source.DeltaSource"


class DeltaSource(DataSource):
    """A Delta table `<layer>.<name>` under the storage root, read through its Delta log.

    The source names the table, not a path: the offline store resolves it under its `root`, so one
    feature repository serves any storage root. `version` pins the source to one Delta version; without
    it every retrieval reads the latest version at the time it is made.

    Example:
        ```python
        DeltaSource(table="gold.customer_features", timestamp_field="event_timestamp")
        ```
    """

    def __init__(
        self,
        *,
        table: str,
        timestamp_field: str,
        name: str | None = None,
        version: int | None = None,
        created_timestamp_column: str | None = None,
        field_mapping: dict[str, str] | None = None,
        description: str | None = "",
        tags: dict[str, str] | None = None,
        owner: str | None = "",
    ) -> None:
        super().__init__(
            name=name or table,
            timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column,
            field_mapping=field_mapping,
            description=description,
            tags=tags,
            owner=owner,
        )
        self.table = table
        self.version = version

    def source_type(self) -> DataSourceProto.SourceType.ValueType:
        """Custom source: Feast stores our options as JSON."""
        return DataSourceProto.CUSTOM_SOURCE

    def snapshot(self, root: str) -> Snapshot:
        """The version of the table this source reads now under `root` (an `at_versions` pin, the source's
        pin, or the latest)."""
        return open_snapshot(root, self.table, resolve_version(self.table, self.version))

    @staticmethod
    def from_proto(data_source: DataSourceProto) -> DeltaSource:
        """The source stored in the registry."""
        options = json.loads(data_source.custom_options.configuration)
        return DeltaSource(
            name=data_source.name,
            table=options["table"],
            version=options.get("version"),
            timestamp_field=data_source.timestamp_field,
            created_timestamp_column=data_source.created_timestamp_column or None,
            field_mapping=dict(data_source.field_mapping),
            description=data_source.description,
            tags=dict(data_source.tags),
            owner=data_source.owner,
        )

    def _to_proto_impl(self) -> DataSourceProto:
        proto = DataSourceProto(
            name=self.name,
            type=DataSourceProto.CUSTOM_SOURCE,
            data_source_class_type=CLASS_PATH,
            field_mapping=self.field_mapping,
            description=self.description,
            tags=self.tags,
            owner=self.owner,
            custom_options=DataSourceProto.CustomSourceOptions(
                configuration=json.dumps({"table": self.table, "version": self.version}).encode()),
        )
        proto.timestamp_field = self.timestamp_field
        proto.created_timestamp_column = self.created_timestamp_column
        return proto

    def validate(self, config: RepoConfig) -> None:
        """Check that the table exists under the offline store's root and has the timestamp columns.

        Raises:
            FeatureStoreError: it does not.
        """
        snapshot = self.snapshot(_root(config))
        for column in filter(None, [self.timestamp_field, self.created_timestamp_column]):
            if column not in snapshot.schema.names:
                raise FeatureStoreError(f"feature source `{self.table}` has no column `{column}`; its columns are "
                                        f"{snapshot.schema.names}", table=self.table, path=snapshot.uri)

    @staticmethod
    def source_datatype_to_feast_value_type() -> Callable[[str], ValueType]:
        """Arrow type names to Feast value types (dates count as timestamps)."""
        return _arrow_to_feast

    def get_table_column_names_and_types(self, config: RepoConfig) -> Iterable[tuple[str, str]]:
        """Columns and Arrow types of the table at the version this source reads."""
        schema = self.snapshot(_root(config)).schema
        return [(field.name, str(field.type)) for field in schema]

    def get_table_query_string(self) -> str:
        """How the source appears in messages."""
        return self.table if self.version is None else f"{self.table}@v{self.version}"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, DeltaSource) and super().__eq__(other)
                and (self.table, self.version) == (other.table, other.version))

    def __hash__(self) -> int:
        return super().__hash__()


def _arrow_to_feast(type_name: str) -> ValueType:
    return ValueType.UNIX_TIMESTAMP if type_name.startswith("date") else pa_to_feast_value_type(type_name)


def _root(config: Any) -> str:
    root = getattr(config.offline_store, "root", None)
    if not root:
        raise FeatureStoreError("the feature store's offline store has no `root`; use the offline store type "
                                "`engine.features.offline.DeltaOfflineStore` with `root` set (see docs/features.md)")
    return root
