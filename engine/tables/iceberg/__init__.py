"""Apache Iceberg tables through pyiceberg: reads at a version, one-commit writes, and merges by key.

The same operations as `engine.tables.delta`, on an Iceberg table registered in a SQL catalog (SQLite under
`<root>/_meta/iceberg/catalog.db` by default, or `storage.iceberg_catalog_uri`): namespace = layer, table name
= name, location `<root>/<layer>/<name>`. `catalog` loads and commits tables, `snapshots` maps snapshots to
versions and records commit metadata and batch markers, `schema` converts and evolves schemas, `scan` reads
scan plans in Ray tasks and rows by key, `merge` (with the row-level steps of `merge_tasks`, in Ray tasks) and
`slices` build merge and slice-replacement snapshots, and `tables` offers it all as `IcebergTables`.
"""

from engine.tables.iceberg.catalog import without_metrics
from engine.tables.iceberg.tables import IcebergTables

__all__ = ["IcebergTables", "without_metrics"]
